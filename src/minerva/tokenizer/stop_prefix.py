"""How much of a stream's text tail to hold back because it may begin a stop string, in O(new
characters) per step whatever the stop list (an Aho-Corasick automaton over the stops). No torch.

The hold-back is the longest proper prefix of any stop string that the text ends with; the
quadratic scan it replaces is kept as ``longest_stop_prefix``, the slow twin the tests compare.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class StopPrefixTracker:
    """Fed the text as it grows; ``held`` is the longest stop-string prefix the text ends with."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._goto: list[dict[str, int]] = [{}]  # trie of the stop strings; node 0 is the root
        self._depth = [0]
        for stop in stops:
            node = 0
            for ch in stop:
                nxt = self._goto[node].get(ch)
                if nxt is None:
                    nxt = len(self._goto)
                    self._goto[node][ch] = nxt
                    self._goto.append({})
                    self._depth.append(self._depth[node] + 1)
                node = nxt
        self._fail = self._failure_links()
        self._state = 0

    def _failure_links(self) -> list[int]:
        """Per node, the longest proper suffix of its string that is also a trie node (BFS)."""
        fail = [0] * len(self._goto)
        queue = deque(self._goto[0].values())
        while queue:
            node = queue.popleft()
            for ch, child in self._goto[node].items():
                queue.append(child)
                f = fail[node]
                while f and ch not in self._goto[f]:
                    f = fail[f]
                fail[child] = self._goto[f].get(ch, 0)
        return fail

    def feed(self, text: str) -> None:
        """Advance over appended ``text`` (amortised O(len(text)))."""
        goto, fail, state = self._goto, self._fail, self._state
        for ch in text:
            while state and ch not in goto[state]:
                state = fail[state]
            state = goto[state].get(ch, 0)
        self._state = state

    @property
    def held(self) -> int:
        """Length of the longest text tail that is a prefix of some stop string."""
        return self._depth[self._state]


def longest_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """The slow twin: the longest tail of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest

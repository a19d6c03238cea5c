"""ParallelWorker: a tensor- or pipeline-parallel group of Workers behind the one-Worker step
contract.

Rank 0 runs in the engine's process and is the Worker the engine reads; ranks 1..N-1 are
spawned processes (runner/rank_process.py) that receive every call the engine makes (each
step's plain-data SchedulerOutput, pickled over a pipe) and run the same forward, meeting rank 0
in its collectives. Sampling needs no broadcast: the logits are the same on every rank
(gathered across a tensor-parallel group, sent from a pipeline's last stage) and the noise is
counter-based (seed, token index), so every rank samples the same ids and their persistent
batches stay in step.

Failures never hang the engine: a rank that dies is seen before each call (its process polled)
and inside a collective (gloo raises at once, any backend after parallel_timeout); the engine
then gets a DistributedError naming the rank, its exit code and the error it reported.
"""

from __future__ import annotations

import logging
import pickle
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any

import torch.multiprocessing as mp

from minerva.config import EngineConfig
from minerva.distributed import (
    DistributedError,
    create_store,
    destroy_process_group,
    init_process_group,
)
from minerva.errors import MinervaError
from minerva.platform import resolve_platform
from minerva.request import Logprobs, RunnerOutput, SchedulerOutput
from minerva.runner import model_loading
from minerva.runner.mirrored_constraints import without_matchers
from minerva.runner.model_runner import LaunchedStep
from minerva.runner.parallel_checks import check_model, world_size_of
from minerva.runner.rank_process import run_rank
from minerva.runner.worker import Worker

logger = logging.getLogger(__name__)

START_TIMEOUT = 120.0
"""Seconds a spawned rank gets at least to import torch and report (a loaded host is slow)."""

_DIED_WAIT = 2.0
"""Seconds to let a rank that broke a collective finish dying (and say why) before reporting."""


_NOT_STARTED = (
    "it exited before it started (its error is on stderr); a script that starts a "
    'parallel engine must guard its code with `if __name__ == "__main__":`, as '
    "spawned processes import the script again"
)


def create_worker(config: EngineConfig, progress: bool = True) -> Worker | ParallelWorker:
    """The engine's worker: one Worker, or a parallel group of them."""
    if world_size_of(config) == 1:
        return Worker(config, progress=progress)
    return ParallelWorker(config, progress=progress)


class _Rank:
    """A spawned rank: its process and the pipe to it."""

    def __init__(self, rank: int, process: Any, conn: Connection) -> None:
        self.rank, self.process, self.conn = rank, process, conn
        self.error: str | None = None  # what it reported before exiting

    def read_error(self, timeout: float = 0.0) -> str | None:
        """The error the rank sent before it exited, if it did (waits up to `timeout`)."""
        try:
            while self.error is None and self.conn.poll(timeout):
                kind, payload = self.conn.recv()
                if kind == "error":
                    self.error = payload
        except (EOFError, OSError):
            pass
        return self.error

    def describe(self) -> str:
        code = self.process.exitcode
        state = "is running" if code is None else f"exited with code {code}"
        words = f"parallel rank {self.rank} (pid {self.process.pid}) {state}"
        return f"{words}: {self.error}" if self.error else words


class ParallelWorker:
    """Rank 0's Worker plus ranks 1..N-1 in their own processes, supervised: the engine calls
    launch / sample / wait / score / prompt_logprobs as on a Worker; every other attribute is rank 0's."""

    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        self.config = config
        self.world_size = n = world_size_of(config)
        self.timeout = config.device.parallel_timeout
        check_model(config, model_loading.open_model_source(config).config)
        device_type = resolve_platform(config.device.device).kind
        store = create_store(n, self.timeout)
        context = mp.get_context("spawn")
        self._ranks: list[_Rank] = []
        for rank in range(1, n):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=run_rank,
                args=(config, rank, n, device_type, store.port, self.timeout, theirs),
                name=f"minerva-rank{rank}",
                daemon=True,  # never outlives the engine's process
            )
            process.start()
            theirs.close()  # a dead rank's pipe then reads EOF / breaks here
            self._ranks.append(_Rank(rank, process, ours))
        self._closer = weakref.finalize(self, _close, self._ranks)
        try:
            self._wait_for("started")
            init_process_group(0, n, device_type, store.port, self.timeout, store=store)
            self.worker = Worker(config, 0, n, progress=progress)
            self._wait_for("ready")
        except MinervaError as e:
            self.close()
            raise self._failure(e) from None
        except Exception as e:  # noqa: BLE001 - a collective broken by a rank that failed
            self.close()
            raise self._failure(e) from e

    def __getattr__(self, name: str) -> Any:
        # the facts the engine reads (tokenizer, num_kv_blocks, platform...) are rank 0's
        if name == "worker":
            raise AttributeError(name)
        return getattr(self.worker, name)

    # -- the step contract ------------------------------------------------------------------
    def launch(self, scheduled: SchedulerOutput) -> LaunchedStep:
        self._send(("launch", without_matchers(scheduled)))
        return self._guard(self.worker.launch, scheduled)

    def sample(self, step: LaunchedStep) -> None:
        if step.sampled:  # every rank decides alike (a mirrored matcher counts as a grammar)
            return
        self._send(("sample", None))
        self._guard(self.worker.sample, step)

    def wait(self, step: LaunchedStep) -> RunnerOutput:
        self._send(("wait", None))
        return self._guard(self.worker.wait, step)

    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        return self.wait(self.launch(scheduled))

    def score(self, token_ids: list[int], block_ids: list[int]) -> list[float]:
        self._send(("score", (token_ids, block_ids)))
        return self._guard(self.worker.score, token_ids, block_ids)

    def prompt_logprobs(
        self, token_ids: list[int], block_ids: list[int], num_top: int
    ) -> list[Logprobs]:
        self._send(("prompt_logprobs", (token_ids, block_ids, num_top)))
        return self._guard(self.worker.prompt_logprobs, token_ids, block_ids, num_top)

    def close(self) -> None:
        """Stop the other ranks and leave the process group (the engine is unusable after)."""
        self._closer()

    # -- supervision -----------------------------------------------------------------------
    def _wait_for(self, stage: str) -> None:
        """Every rank says `stage`: "started" (spawned and imported: the group can form) and
        "ready" (its Worker built; it met rank 0 in the start-up collectives, so this is quick).
        A rank that dies or stays silent past the timeout fails the start."""
        deadline = time.monotonic() + max(self.timeout, START_TIMEOUT)
        for r in self._ranks:
            while not r.conn.poll(0.1):
                if not r.process.is_alive() or time.monotonic() > deadline:
                    if stage == "started" and r.process.exitcode is not None:
                        r.error = _NOT_STARTED
                    raise self._failure(None)
            kind, payload = r.conn.recv()
            if kind != stage:
                r.error = payload
                raise self._failure(None)

    def _send(self, message: tuple) -> None:
        """One call for every other rank: pickled once, sent to each."""
        try:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - nothing was sent: the ranks are still in step
            raise DistributedError(f"a call could not be sent to the other ranks: {e}") from e
        for r in self._ranks:
            if not r.process.is_alive():
                raise self._failure(None)
        try:
            for r in self._ranks:
                r.conn.send_bytes(data)
        except OSError:
            raise self._failure(None) from None

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except MinervaError:
            raise
        except Exception as e:  # noqa: BLE001 - a collective a rank broke: say which and why
            raise self._failure(e) from e

    def _failure(self, cause: BaseException | None) -> MinervaError:
        """The error to raise: the user's own (a ConfigError every rank raised alike), else a
        DistributedError naming the ranks that died and what they reported."""
        deadline = time.monotonic() + _DIED_WAIT
        for r in self._ranks:
            r.process.join(max(0.0, deadline - time.monotonic()))
            r.read_error()
        if isinstance(cause, MinervaError):
            return cause  # rank 0's own (the others raise the same and exit)
        dead = [r for r in self._ranks if r.process.exitcode is not None]
        if dead:
            what = "; ".join(r.describe() for r in dead)
        elif cause is not None:
            what = (
                f"rank 0's collective failed: {cause}; a rank alive but stuck for "
                f"parallel_timeout={self.timeout:g}s ends like this"
            )
        else:
            what = f"a rank did not answer within parallel_timeout={self.timeout:g}s"
        return DistributedError(
            f"the parallel engine failed ({what}); restart the engine (a supervisor "
            "restarts `minerva serve`, which exits non-zero)"
        )


def _close(ranks: list[_Rank]) -> None:
    """Ask every rank to stop, leave the group, kill the ranks that do not stop."""
    stop = pickle.dumps(("stop", None))
    for r in ranks:
        try:
            r.conn.send_bytes(stop)
        except OSError:
            pass
    destroy_process_group()  # a rank still inside a collective sees it fail
    for r in ranks:
        r.process.join(3.0)
        if r.process.is_alive():
            r.process.kill()  # SIGKILL: a stopped or hung process ignores SIGTERM
            r.process.join(5.0)
        r.conn.close()

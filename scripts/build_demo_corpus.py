"""Build the demo model's English corpus from documentation that Debian ships as HTML.

Sources (all free to redistribute; install them with
``apt-get install python3.11-doc postgresql-doc-15 sqlite3-doc python-django-doc nodejs-doc
rust-doc cmake-doc python-sqlalchemy-doc sphinx-doc erlang-doc``, Debian 12):

    python     /usr/share/doc/python3.11/html           PSF License 2.0
    postgresql /usr/share/doc/postgresql-doc-15/html    PostgreSQL License (BSD-style)
    sqlite     /usr/share/doc/sqlite3                   public domain
    django     /usr/share/doc/python-django-doc/html    BSD-3-Clause
    nodejs     /usr/share/doc/nodejs/api                MIT (Expat)
    rust       /usr/share/doc/rust-doc/html (books, std) MIT OR Apache-2.0
    cmake      /usr/share/doc/cmake-data/html           BSD-3-Clause
    sqlalchemy /usr/share/doc/python-sqlalchemy-doc/html MIT (Expat)
    sphinx     /usr/share/doc/sphinx-doc/html           BSD-2-Clause
    erlang     /usr/share/doc/erlang-doc (guides, manuals) Apache-2.0

Each HTML page becomes one document of prose paragraphs: code blocks, tables, navigation and
scripts are dropped, short or symbol-heavy fragments filtered out, and every paragraph is kept
only at its first occurrence across the whole corpus. About 2% of the documents (chosen by a
hash of their path, so the split never moves) are held out. Chat examples are made from section
headings and the paragraph under them, rendered with the demo chat template.

Writes ``train.jsonl``, ``valid.jsonl`` ({"source", "path", "kind", "text"} per line),
``heldout.txt`` (the first held-out documents, at most --heldout-bytes) and ``stats.json``.
Deterministic: same input files, same output bytes.

    python scripts/build_demo_corpus.py --out build/demo_data
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

SOURCES: dict[str, tuple[str, str]] = {
    "python": ("/usr/share/doc/python3.11/html", "PSF-2.0"),
    "postgresql": ("/usr/share/doc/postgresql-doc-15/html", "PostgreSQL"),
    "sqlite": ("/usr/share/doc/sqlite3", "public-domain"),
    "django": ("/usr/share/doc/python-django-doc/html", "BSD-3-Clause"),
    "nodejs": ("/usr/share/doc/nodejs/api", "MIT"),
    "rust": ("/usr/share/doc/rust-doc/html", "MIT OR Apache-2.0"),
    "cmake": ("/usr/share/doc/cmake-data/html", "BSD-3-Clause"),
    "sqlalchemy": ("/usr/share/doc/python-sqlalchemy-doc/html", "MIT"),
    "sphinx": ("/usr/share/doc/sphinx-doc/html", "BSD-2-Clause"),
    "erlang": ("/usr/share/doc/erlang-doc", "Apache-2.0"),
}
# Only these folders of a source (Rust: the books and std; core/alloc repeat std's text).
INCLUDE_PATH = {
    "rust": re.compile(
        r"^(book|reference|nomicon|rust-by-example|embedded-book|edition-guide|rustc|rustdoc|std)/"
    ),
    # Erlang/OTP: the guides, ERTS and the applications' manuals; not the wx and Java API stubs.
    "erlang": re.compile(r"^(doc|erts-[\d.]+|lib/(?!wx-|jinterface-)[^/]+)/"),
}
# Pages that are indexes, changelogs, generated source listings or duplicates of other pages.
SKIP_PATH = re.compile(
    r"(^|/)(_modules|_sources|_static|genindex|py-modindex|search|changelog|releasenotes|"
    r"release-|all\.html|print\.html|releases/|whatsnew/changelog|bugs\.html|license\.html|"
    r"copyright|404\.html)"
)
DROP_TAGS = {"script", "style", "pre", "table", "nav", "head", "title", "svg", "code-block"}
DROP_CLASSES = {
    "navheader", "navfooter", "related", "sphinxsidebar", "footer", "mobile-nav", "toc",
    "api_metadata", "header-container", "gtoc", "column2", "highlight", "sidebar",
    "menu-wrapper", "breadcrumbs", "toctree-wrapper", "contents", "admonition-seealso",
}  # fmt: skip
BLOCK_TAGS = {
    "p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "div", "blockquote",
    "section", "ul", "ol", "dl", "br", "hr", "body", "article", "main", "figure",
}  # fmt: skip
HEADINGS = {"h1", "h2", "h3"}
VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base"}

CHAT_SYSTEM = "You are a helpful assistant that explains software documentation."
CHAT_QUESTIONS = (
    "Tell me about {h}.",
    "Explain {h}.",
    "What should I know about {h}?",
    "Can you describe {h}?",
    "Give me an overview of {h}.",
)


@dataclass
class Block:
    kind: str  # "heading" or "text"
    text: str


class ProseExtractor(HTMLParser):
    """Collects the text of block elements, skipping code, tables and navigation."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._buf: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, dropped)
        self._drop_depth = 0

    def _flush(self) -> None:
        text = " ".join("".join(self._buf).split())
        self._buf = []
        if text:
            open_blocks = [t for t, _ in self._stack if t in BLOCK_TAGS]
            kind = "heading" if open_blocks and open_blocks[-1] in HEADINGS else "text"
            self.blocks.append(Block(kind, text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in VOID_TAGS:
            return
        classes = set((dict(attrs).get("class") or "").split())
        role = dict(attrs).get("role")
        dropped = tag in DROP_TAGS or bool(classes & DROP_CLASSES) or role == "navigation"
        dropped = dropped or "headerlink" in classes
        self._stack.append((tag, dropped))
        self._drop_depth += dropped

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            return
        # Pop to the matching tag (HTML in the wild leaves some tags unclosed).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                if tag in BLOCK_TAGS:
                    self._flush()
                for _, dropped in self._stack[i:]:
                    self._drop_depth -= dropped
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if self._drop_depth == 0:
            self._buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def clean(text: str) -> str:
    text = html.unescape(text).replace("\u00b6", "").replace("\u00a0", " ")
    return " ".join(text.split())


def keep_paragraph(text: str) -> bool:
    """Prose, not a fragment: long enough, mostly letters, and at least a few words."""
    if len(text) < 60 or len(text.split()) < 8:
        return False
    letters = sum(c.isalpha() for c in text)
    visible = sum(not c.isspace() for c in text)
    return letters / visible > 0.72 and text.count("(") < 6 and "\ufffd" not in text


def clean_heading(text: str) -> str:
    text = re.sub(r"^(Chapter |Appendix )?[\dA-Z]{0,3}(\.\d+)*\.?\s+", "", clean(text))
    return text.strip(" .:")


def extract(path: Path) -> list[Block]:
    parser = ProseExtractor()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    blocks = []
    for b in parser.blocks:
        text = clean_heading(b.text) if b.kind == "heading" else clean(b.text)
        if b.kind == "heading" and 3 <= len(text) <= 80:
            blocks.append(Block("heading", text))
        elif b.kind == "text" and keep_paragraph(text):
            blocks.append(b if text == b.text else Block("text", text))
    return blocks


def iter_pages(source: str, root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        include = INCLUDE_PATH.get(source)
        if not SKIP_PATH.search(rel) and (include is None or include.search(rel)):
            yield f"{source}/{rel}", path


def is_heldout(doc_path: str, percent: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc_path.encode()).digest()[:8], "big")
    return (h % 10_000) < percent * 100


def stable_choice(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % n


def render_chat(messages: list[dict[str, str]]) -> str:
    """The demo chat template, written out (train_demo_model.CHAT_TEMPLATE renders the same)."""
    text = "<s>"
    for m in messages:
        text += f"<|{m['role']}|>\n{m['content']}</s>\n"
    return text


def chat_examples(doc_path: str, blocks: list[Block], max_chars: int = 700) -> list[str]:
    """One question per heading that has prose under it; the answer is that prose."""
    examples = []
    for i, b in enumerate(blocks[:-1]):
        nxt = blocks[i + 1]
        if b.kind != "heading" or nxt.kind != "text" or len(b.text.split()) > 10:
            continue
        key = f"{doc_path}#{i}"
        if stable_choice(key + "keep", 2):  # half of the sections: chat is a seasoning
            continue
        answer = nxt.text
        if i + 2 < len(blocks) and blocks[i + 2].kind == "text":
            if len(answer) + len(blocks[i + 2].text) < max_chars:
                answer += "\n\n" + blocks[i + 2].text
        h = b.text
        if h.endswith("?"):
            question = h
        else:
            if len(h) > 1 and h[0].isupper() and h[1].islower():
                h = h[0].lower() + h[1:]
            question = CHAT_QUESTIONS[stable_choice(key, len(CHAT_QUESTIONS))].format(h=h)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if stable_choice(key + "system", 3) == 0:
            messages.insert(0, {"role": "system", "content": CHAT_SYSTEM})
        examples.append(render_chat(messages))
    return examples


def document_text(blocks: list[Block]) -> str:
    """Headings on their own line, paragraphs separated by blank lines; drop dangling headings."""
    parts = []
    for i, b in enumerate(blocks):
        if b.kind == "heading" and (i + 1 == len(blocks) or blocks[i + 1].kind != "text"):
            continue
        parts.append(b.text)
    return "\n\n".join(parts)


def build(out: Path, heldout_percent: float, heldout_bytes: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    stats: dict = {"sources": {}, "heldout_percent": heldout_percent}
    heldout_docs: list[tuple[str, str]] = []  # (hash of path, text)
    with (out / "train.jsonl").open("w") as ftrain, (out / "valid.jsonl").open("w") as fvalid:
        for source, (root, licence) in SOURCES.items():
            if not Path(root).is_dir():
                raise SystemExit(f"missing {root}: apt-get install the package named in the docs")
            n_docs = n_chars = n_chat = 0
            for doc_path, path in iter_pages(source, Path(root)):
                blocks = []
                for b in extract(path):
                    key = hashlib.sha1(" ".join(b.text.lower().split()).encode()).digest()
                    if b.kind == "text":
                        if key in seen:
                            continue
                        seen.add(key)
                    blocks.append(b)
                text = document_text(blocks)
                if len(text) < 200:
                    continue
                held = is_heldout(doc_path, heldout_percent)
                f = fvalid if held else ftrain
                row = {"source": source, "path": doc_path, "kind": "doc", "text": text}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                for chat in chat_examples(doc_path, blocks):
                    row = {"source": source, "path": doc_path, "kind": "chat", "text": chat}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n_chat += 1
                if held:
                    heldout_docs.append((hashlib.sha256(doc_path.encode()).hexdigest(), text))
                n_docs += 1
                n_chars += len(text)
            stats["sources"][source] = {
                "root": root,
                "license": licence,
                "documents": n_docs,
                "characters": n_chars,
                "chat_examples": n_chat,
            }
    # Held-out paragraphs in a hash order of their documents (mixes the sources), to the budget.
    paras = [p for _, text in sorted(heldout_docs) for p in text.split("\n\n")]
    heldout = ""
    for para in paras:
        candidate = heldout + ("\n\n" if heldout else "") + para
        if len(candidate.encode()) > heldout_bytes:
            break
        heldout = candidate
    (out / "heldout.txt").write_text(heldout + "\n", encoding="utf-8")
    stats["heldout_txt_bytes"] = len((heldout + "\n").encode())
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("build/demo_data"))
    p.add_argument("--heldout-percent", type=float, default=2.0)
    p.add_argument("--heldout-bytes", type=int, default=48_000)
    args = p.parse_args()
    print(json.dumps(build(args.out, args.heldout_percent, args.heldout_bytes), indent=2))


if __name__ == "__main__":
    main()

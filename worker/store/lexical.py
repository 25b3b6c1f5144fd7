"""Lexical search over one owner's memories: BM25 with that owner's statistics alone.

Questions name people, places, objects and dates that a small sentence embedding
blurs and a word index catches. The index is built per (collection, owner) group,
like the exact path's embedding matrix, by bm25s (a sparse matrix of precomputed
BM25 weights: a query is a sum of a few columns) and cached with the group:

- statistics per owner: one tenant's scores never depend on another tenant's
  memories (global IDF would let a tenant probe which words others store), and
  per-conversation BM25 is what measured best on LoCoMo;
- no query language: a query is split into words by the same tokenizer as the
  memories, so quotes, NEAR, column filters or `-` in a query are just text;
- one code path for every exact store (SQLite, MongoDB without Atlas Search), so
  they answer alike.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from schemas.memory import Memory

Scores = npt.NDArray[np.float32]
DIGITS = re.compile(r"(\d+)")
WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s's default token pattern
TOKEN_BYTES = 24  # a sparse entry (value + index) and its share of the vocabulary
SETTINGS_FILE = "lexical.json"


@dataclass(frozen=True)
class LexicalSettings:
    """How memories and queries become words, and BM25's parameters. The defaults are
    what measured best on LoCoMo's development split (README, Retrieval quality)."""

    stem: bool = True  # English Snowball stemmer: "running" finds "run"
    stopwords: str | None = "en"  # "en": bm25s's English list (Lucene's 33 words); None: none
    k1: float = 1.2
    b: float = 0.75
    dates: bool = True  # a memory's date as words ("8 May 2023"): "what happened in May?"
    neighbours: int = 1  # memories indexed with this many before and after them in time
    neighbour_gap_s: float = 3600.0  # ... no further apart than this (one conversation)


DEFAULT = LexicalSettings()
_local = threading.local()  # a stemmer per thread: PyStemmer objects are not shared


def _stemmer(settings: LexicalSettings) -> Stemmer.Stemmer | None:
    if not settings.stem:
        return None
    if not hasattr(_local, "stemmer"):
        _local.stemmer = Stemmer.Stemmer("english")
    stemmer: Stemmer.Stemmer = _local.stemmer
    return stemmer


def documents(memories: Sequence[Memory], settings: LexicalSettings = DEFAULT) -> list[str]:
    """The words each memory is found by, in the order given: its own text with its
    neighbours' (the memories just before and after it in time, within
    `neighbour_gap_s`; equal times in the natural order of their ids, "D1:2" before
    "D1:10", the same in every store), and its date.

    A turn that answers a question often does not repeat its words ("Yes, last
    Saturday!"): the turn before it does. Measured on LoCoMo, neighbours are the
    largest single gain (R@5 +10)."""
    order = sorted(range(len(memories)), key=lambda i: _in_time(memories[i]))
    place = {index: position for position, index in enumerate(order)}
    found = []
    for index, memory in enumerate(memories):
        position, n = place[index], settings.neighbours
        window = order[max(0, position - n) : position + n + 1]
        near = [memories[i] for i in window if i == index or _close(memories[i], memory, settings)]
        parts = [_text(m) for m in near]
        if settings.dates and memory.timestamp is not None:
            moment = datetime.fromtimestamp(memory.timestamp, UTC)
            parts.append(f"{moment.day} {moment:%B %Y}")
        found.append(" ".join(part for part in parts if part))
    return found


def _in_time(memory: Memory) -> tuple[float, list[tuple[int, int, str]]]:
    time = float("-inf") if memory.timestamp is None else memory.timestamp
    return time, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in DIGITS.split(memory.id)]


def _text(memory: Memory) -> str:
    return " ".join(part for part in (memory.content, memory.summary_content) if part)


def _close(a: Memory, b: Memory, settings: LexicalSettings) -> bool:
    if a.timestamp is None or b.timestamp is None:
        return False
    return abs(a.timestamp - b.timestamp) <= settings.neighbour_gap_s


class LexicalIndex:
    """BM25 over one group's documents, in the group's row order."""

    def __init__(self, texts: Sequence[str], settings: LexicalSettings = DEFAULT) -> None:
        self.settings = settings
        self.size = len(texts)
        self._bm25 = bm25s.BM25(k1=settings.k1, b=settings.b, method="lucene")
        self._vocabulary: set[str] = set()
        self._stopwords = frozenset(STOPWORDS_EN if settings.stopwords == "en" else ())
        self.nbytes = 0
        if texts:
            tokens = bm25s.tokenize(
                list(texts),
                stopwords=settings.stopwords,
                stemmer=_stemmer(settings),
                show_progress=False,
            )
            self._bm25.index(tokens, show_progress=False)
            self._vocabulary = set(tokens.vocab)
            arrays = self._bm25.scores.values()
            self.nbytes = sum(getattr(a, "nbytes", 0) for a in arrays)
            self.nbytes += TOKEN_BYTES * len(self._vocabulary)

    def save(self, directory: Path) -> None:
        """Write the index (bm25s's arrays, vocabulary and parameters, and the settings the
        documents were made with) into `directory`, for a large group's vector file."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.size:
            self._bm25.save(str(directory), show_progress=False)
        fields = {**asdict(self.settings), "size": self.size}
        (directory / SETTINGS_FILE).write_text(json.dumps(fields))

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        """An index `save` wrote, its arrays memory-mapped (paged in as queries touch them)."""
        fields = json.loads((directory / SETTINGS_FILE).read_text())
        size = fields.pop("size")
        index = cls((), LexicalSettings(**fields))
        index.size = size
        if size:
            index._bm25 = bm25s.BM25.load(str(directory), mmap=True, show_progress=False)
            index._vocabulary = set(index._bm25.vocab_dict)
            index.nbytes = TOKEN_BYTES * len(index._vocabulary)  # the arrays: page cache
        return index

    @classmethod
    def of(cls, memories: Sequence[Memory], settings: LexicalSettings = DEFAULT) -> LexicalIndex:
        """The index of a group's memories, in the order given."""
        return cls(documents(memories, settings), settings)

    def scores(self, query: str) -> Scores:
        """BM25 of every document for `query` (0 where no word matches)."""
        if not self.size:
            return np.zeros(0, dtype=np.float32)
        words = self.words(query)
        if not words:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(words), dtype=np.float32)

    def words(self, query: str) -> list[str]:
        """The query's distinct words that occur in the index (the rest cannot score),
        split as bm25s splits the memories: lower-cased words of two or more characters,
        stop words dropped, then stemmed. Done here because bm25s.tokenize costs ~120 us a
        call (it builds progress bars even when hidden), most of a query's lexical cost."""
        tokens = [w for w in WORD.findall(query.lower()) if w not in self._stopwords]
        stemmer = _stemmer(self.settings)
        if stemmer is not None:
            tokens = stemmer.stemWords(tokens)
        return list(dict.fromkeys(word for word in tokens if word in self._vocabulary))

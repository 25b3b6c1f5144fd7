"""LoCoMo (Maharana et al., ACL 2024): long conversations, questions and their evidence turns.

The development split (5 of the 10 conversations, 2,760 turns, 999 questions) is read
from outside the repository: its licence (CC BY-NC 4.0) keeps it out of the project, so
nothing here copies any of it. `DATA` is where it is expected (next to the repository,
under shared/data/locomo/); `data_path()` says whether it is there.

Each conversation is one owner (memory_id) and each turn is one memory: its content is
"<speaker>: <text>", plus " [shares <blip caption>]" for a turn that shares an image, and
its timestamp is its session's date ("1:56 pm on 8 May, 2023", read as UTC).

The metric is the paper's retrieval recall (Table 3, "recall accuracy" R@k): for each
question, the share of its evidence turns among the top k retrieved from its own
conversation's turns; a question without evidence counts 1; averaged over questions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CATEGORIES",
    "DATA",
    "Conversation",
    "Question",
    "Turn",
    "data_path",
    "load",
    "memory_records",
    "normalise_evidence",
    "recall_at",
]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "locomo" / "locomo-dev.json"

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
MEMORY_TYPE = "conversation_memory"  # schemas.messages.MemoryType.CONVERSATION
DATE_FORMAT = "%I:%M %p on %d %B, %Y"  # "1:56 pm on 8 May, 2023"

_SESSION = re.compile(r"session_(\d+)")
_DIA_ID = re.compile(r"D:?(\d+):0*(\d+)")


@dataclass(frozen=True, slots=True)
class Turn:
    """One dialogue turn: one memory."""

    dia_id: str  # "D<session>:<turn>", e.g. "D1:3"
    speaker: str
    text: str
    caption: str | None  # the BLIP caption of the image the turn shares, if it shares one
    session: int
    date_text: str  # the session's date as written, e.g. "1:56 pm on 8 May, 2023"
    timestamp: float  # the session's date, epoch seconds (UTC)
    content: str  # "<speaker>: <text>" (+ " [shares <caption>]"): what is stored and embedded


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    evidence: tuple[str, ...]  # dia_ids, normalised (see normalise_evidence)
    category: int  # 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial


@dataclass(frozen=True, slots=True)
class Conversation:
    sample_id: str  # e.g. "conv-26"
    speakers: tuple[str, str]
    turns: list[Turn]  # in order: by session, then as spoken
    questions: list[Question]


def data_path(path: Path = DATA) -> Path | None:
    """The data file, or None where it is absent (a checkout without shared/)."""
    return path if path.is_file() else None


def parse_date(text: str) -> float:
    """A session date ("1:56 pm on 8 May, 2023") as epoch seconds, read as UTC."""
    return datetime.strptime(text.strip(), DATE_FORMAT).replace(tzinfo=UTC).timestamp()


def normalise_evidence(raw: Iterable[str]) -> tuple[str, ...]:
    """Evidence strings as canonical dia_ids, in order, without repeats.

    Fixes the dataset's malformed strings: several ids in one string ("D8:6; D9:17"),
    a stray colon ("D:11:26" -> "D11:26") and leading zeros ("D30:05" -> "D30:5").
    A string with no id in it ("D") is dropped. A well-formed id naming a turn the
    conversation lacks is kept: it counts as evidence that cannot be found.
    """
    found: dict[str, None] = {}
    for item in raw:
        for session, turn in _DIA_ID.findall(item):
            found[f"D{int(session)}:{int(turn)}"] = None
    return tuple(found)


def content_of(speaker: str, text: str, caption: str | None) -> str:
    content = f"{speaker}: {text}"
    return f"{content} [shares {caption}]" if caption else content


def _conversation(sample: dict[str, Any]) -> Conversation:
    talk = sample["conversation"]
    sessions = sorted(
        int(match.group(1)) for key in talk if (match := _SESSION.fullmatch(key)) is not None
    )
    turns = []
    for session in sessions:
        date_text = talk[f"session_{session}_date_time"]
        timestamp = parse_date(date_text)
        for raw in talk[f"session_{session}"]:
            caption = raw.get("blip_caption") or None
            turns.append(
                Turn(
                    dia_id=raw["dia_id"],
                    speaker=raw["speaker"],
                    text=raw["text"],
                    caption=caption,
                    session=session,
                    date_text=date_text,
                    timestamp=timestamp,
                    content=content_of(raw["speaker"], raw["text"], caption),
                )
            )
    questions = [
        Question(
            question=qa["question"],
            evidence=normalise_evidence(qa.get("evidence", ())),
            category=int(qa["category"]),
        )
        for qa in sample["qa"]
    ]
    return Conversation(
        sample_id=sample["sample_id"],
        speakers=(talk["speaker_a"], talk["speaker_b"]),
        turns=turns,
        questions=questions,
    )


def load(path: Path = DATA) -> list[Conversation]:
    """Every conversation of a LoCoMo file (the layout of snap-research/LoCoMo's
    data/locomo10.json), in file order."""
    with path.open(encoding="utf-8") as file:
        samples = json.load(file)
    return [_conversation(sample) for sample in samples]


def memory_records(conversation: Conversation, memory_id: str) -> list[dict[str, Any]]:
    """The conversation's turns as recallq ingest records (one JSONL line each), owned by
    memory_id; a record's id is its turn's dia_id."""
    return [
        {
            "id": turn.dia_id,
            "memory_id": memory_id,
            "memory_type": MEMORY_TYPE,
            "content": turn.content,
            "timestamp": turn.timestamp,
        }
        for turn in conversation.turns
    ]


def recall_at(ranked_ids: Sequence[str], evidence: Sequence[str], k: int) -> float:
    """The share of the evidence ids among the first k ranked ids; 1.0 without evidence."""
    if not evidence:
        return 1.0
    top = set(ranked_ids[:k])
    wanted = set(evidence)
    return len(wanted & top) / len(wanted)

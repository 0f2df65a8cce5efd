"""LoCoMo and LongMemEval files as conversations to ingest and questions to ask.

Only what a memory system may see is read: turns, speakers, dates and questions. Answer
keys (`answer`, `evidence`, `has_answer`, `answer_session_ids`) are never touched here;
scoring is left to an external scorer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchTurn:
    message_id: str
    role: str  # "user" | "assistant"
    content: str
    chat_time: str | None
    # A person's name where the dataset has one (LoCoMo); None where roles are all there is.
    speaker: str | None = None


@dataclass(frozen=True)
class BenchSession:
    session_id: str
    turns: list[BenchTurn]


@dataclass(frozen=True)
class BenchQuestion:
    qid: str
    question: str
    asked_at: str | None = None


@dataclass(frozen=True)
class BenchCube:
    """One cube to fill and query: a LoCoMo conversation or a LongMemEval haystack."""

    cube_id: str
    sessions: list[BenchSession]
    questions: list[BenchQuestion]

    @property
    def turn_count(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


def _load(path: Path) -> list[dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list")
    return data


_LOCOMO_TIME = re.compile(r"(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+(\w+),?\s+(\d{4})", re.I)


def parse_locomo_time(text: str) -> str | None:
    """'1:56 pm on 8 May, 2023' -> '2023-05-08T13:56:00' (None when unrecognised)."""
    match = _LOCOMO_TIME.search(text or "")
    if not match:
        return None
    hour, minute, ampm, day, month, year = match.groups()
    try:
        when = datetime.strptime(
            f"{day} {month[:3]} {year} {hour}:{minute} {ampm}", "%d %b %Y %I:%M %p"
        )
    except ValueError:
        return None
    return when.isoformat()


def parse_longmemeval_time(text: str) -> str | None:
    """'2023/05/30 (Tue) 23:40' -> '2023-05-30T23:40:00'."""
    cleaned = re.sub(r"\s*\(\w+\)\s*", " ", text or "").strip()
    try:
        return datetime.strptime(cleaned, "%Y/%m/%d %H:%M").isoformat()
    except ValueError:
        return None


def locomo_cubes(path: Path) -> Iterator[BenchCube]:
    for conv in _load(path):
        sample = conv["sample_id"]
        dialogue = conv["conversation"]
        speaker_a = dialogue.get("speaker_a")
        numbers = sorted(
            int(k.split("_")[1])
            for k, v in dialogue.items()
            if re.fullmatch(r"session_\d+", k) and isinstance(v, list)
        )
        sessions = []
        for n in numbers:
            when = parse_locomo_time(dialogue.get(f"session_{n}_date_time", ""))
            turns = []
            for turn in dialogue[f"session_{n}"]:
                text = turn.get("text", "")
                if turn.get("blip_caption"):
                    text = f"{text} [shares a photo of {turn['blip_caption']}]".strip()
                role = "user" if turn.get("speaker") == speaker_a else "assistant"
                turns.append(BenchTurn(turn["dia_id"], role, text, when, turn.get("speaker")))
            sessions.append(BenchSession(f"session_{n}", turns))
        questions = [
            BenchQuestion(f"{sample}:{i}", qa["question"]) for i, qa in enumerate(conv["qa"])
        ]
        yield BenchCube(f"locomo-{sample}", sessions, questions)


def longmemeval_cubes(path: Path) -> Iterator[BenchCube]:
    for item in _load(path):
        sessions = []
        seen: set[str] = set()
        for sid, date, turns in zip(
            item["haystack_session_ids"],
            item["haystack_dates"],
            item["haystack_sessions"],
            strict=True,
        ):
            if sid in seen:  # a filler session repeated under the same id: keep one copy
                continue
            seen.add(sid)
            when = parse_longmemeval_time(date)
            sessions.append(
                BenchSession(
                    sid,
                    [
                        BenchTurn(f"{sid}:{i}", t["role"], t["content"], when)
                        for i, t in enumerate(turns, start=1)
                    ],
                )
            )
        asked = parse_longmemeval_time(item.get("question_date", ""))
        qid = item["question_id"]
        yield BenchCube(
            f"lme-{qid}", sessions, [BenchQuestion(qid, item["question"], asked_at=asked)]
        )

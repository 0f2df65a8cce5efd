"""Input formats of the bulk ingest job, read into validated `Unit`s with line numbers.

JSONL and Parquet hold one record per line / row, of three kinds (told apart by their fields):

- message:      {cube_id?, user_id?, session_id?, role, content, chat_time?, message_id?, name?,
                 tool_calls?, tool_call_id?}
- conversation: {cube_id?, user_id?, session_id?, messages: [message...], tools?, tags?, info?}
- document:     {cube_id?, user_id?, session_id?, name, text, file_id?, tags?, info?}

Agent traces are conversations whose assistant messages carry OpenAI-style `tool_calls` and
whose `tool` messages carry the `tool_call_id` they answer; `tools` holds the tool schemas.
They become tool memories exactly as the API's add makes them.

`user_id` defaults to the job's user, `cube_id` to the user id (a user's own cube, as in the
API), `session_id` to DEFAULT_SESSION. Message records of one (cube, user, session) form
one conversation, in file order. A record that does not validate is a `BadRecord` (file,
line, reason): counted and reported, never silently dropped, never fatal to the job.

LoCoMo and LongMemEval files are read with the bench readers (one cube per conversation /
haystack, one unit per session); only what a memory system may see is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memos_ray.domain.memory import DEFAULT_SESSION
from memos_ray.services.ingest.datasets import locomo_cubes, longmemeval_cubes

Format = Literal["jsonl", "parquet", "locomo", "longmemeval"]
FORMATS: tuple[str, ...] = ("jsonl", "parquet", "locomo", "longmemeval")
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "parquet": (".parquet", ".pq"),
    "locomo": (".json",),
    "longmemeval": (".json",),
}

Name = Annotated[str, Field(min_length=1, max_length=128)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TurnRecord(_Record):
    role: Literal["system", "user", "assistant", "tool"]
    # Null, empty or absent for an assistant message that only calls tools.
    content: str
    chat_time: str | None = None
    message_id: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _tool_call_content(cls, data: Any) -> Any:
        missing = isinstance(data, dict) and data.get("content") is None
        if missing and ("content" in data or data.get("tool_calls")):
            return {**data, "content": ""}
        return data


class _Scoped(_Record):
    cube_id: Name | None = None
    user_id: Name | None = None
    session_id: Name = DEFAULT_SESSION


class MessageRecord(_Scoped, TurnRecord):
    pass


class ConversationRecord(_Scoped):
    messages: list[TurnRecord] = Field(min_length=1)
    # OpenAI-format tool definitions used in the conversation.
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)


class DocumentRecord(_Scoped):
    name: str = Field(min_length=1)
    text: str
    file_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)


class DocumentPart(BaseModel):
    name: str
    text: str
    file_id: str | None = None


class Unit(BaseModel):
    """What one /product/add would carry: a session's turns or one document, for one cube.

    `order` (file index, line) fixes where it stands in the cube: units are cut in that
    order, so ids, duplicates and arrival order never depend on how the job was scheduled.
    """

    cube_id: str
    user_id: str
    session_id: str = DEFAULT_SESSION
    order: tuple[int, int]
    # "message": one record of a conversation kept as one record per message; the messages
    # of one (user, session) are joined into one conversation before cutting.
    kind: Literal["conversation", "message", "document"] = "conversation"
    turns: list[TurnRecord] = Field(default_factory=list)
    document: DocumentPart | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)
    # Input records this unit stands for (for the job's row count).
    records: int = 1


@dataclass(frozen=True)
class BadRecord:
    source: str
    line: int
    error: str


def input_files(paths: list[str], fmt: str) -> list[Path]:
    """Files in a stable order: each path as given, directories expanded and sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES[fmt]
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"input {raw} does not exist")
    if not found:
        raise FileNotFoundError(f"no {fmt} files under {paths}")
    return found


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def record_to_unit(raw: Any, default_user: str, order: tuple[int, int]) -> Unit | str:
    """A validated unit, or the reason the record is bad."""
    if not isinstance(raw, dict):
        return f"expected an object, got {type(raw).__name__}"
    # Parquet files with several kinds of records carry every column: absent is null there.
    data = {k: v for k, v in raw.items() if v is not None}
    model: type[_Scoped]
    if "messages" in data:
        model = ConversationRecord
    elif "text" in data:
        model = DocumentRecord
    else:
        model = MessageRecord
    try:
        record = model.model_validate(data)
    except ValidationError as exc:
        return _reason(exc)
    user = record.user_id or default_user
    scope = {
        "cube_id": record.cube_id or user,
        "user_id": user,
        "session_id": record.session_id,
        "order": order,
    }
    if isinstance(record, ConversationRecord):
        return Unit(
            **scope, turns=record.messages, tools=record.tools, tags=record.tags, info=record.info
        )
    if isinstance(record, DocumentRecord):
        part = DocumentPart(name=record.name, text=record.text, file_id=record.file_id)
        return Unit(**scope, kind="document", document=part, tags=record.tags, info=record.info)
    assert isinstance(record, MessageRecord)
    turn = TurnRecord.model_validate(record.model_dump(include=set(TurnRecord.model_fields)))
    return Unit(**scope, kind="message", turns=[turn])


def read_jsonl(
    path: Path, file_index: int, default_user: str, limit: int | None = None
) -> Iterator[Unit | BadRecord]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        taken = 0
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if limit is not None and taken >= limit:
                return
            taken += 1
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRecord(str(path), line_no, f"not JSON: {exc.msg}")
                continue
            unit = record_to_unit(raw, default_user, (file_index, line_no))
            yield BadRecord(str(path), line_no, unit) if isinstance(unit, str) else unit


def read_parquet(
    path: Path, file_index: int, default_user: str, limit: int | None = None
) -> Iterator[Unit | BadRecord]:
    """Row numbers count from 1, like lines."""
    # deferred: imports pyarrow
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for raw in batch.to_pylist():
            row_no += 1
            if limit is not None and row_no > limit:
                return
            unit = record_to_unit(raw, default_user, (file_index, row_no))
            yield BadRecord(str(path), row_no, unit) if isinstance(unit, str) else unit


def read_benchmark(
    path: Path, file_index: int, fmt: str, default_user: str, limit: int | None = None
) -> Iterator[Unit | BadRecord]:
    """LoCoMo conversations / LongMemEval haystacks: one unit per session, `records` = turns."""

    loader = locomo_cubes if fmt == "locomo" else longmemeval_cubes
    position = 0
    try:
        for n, cube in enumerate(loader(path)):
            if limit is not None and n >= limit:
                return
            for session in cube.sessions:
                position += 1
                turns = [
                    TurnRecord(
                        role="user" if t.role == "user" else "assistant",
                        content=t.content,
                        chat_time=t.chat_time,
                        message_id=t.message_id,
                        name=t.speaker,
                    )
                    for t in session.turns
                ]
                yield Unit(
                    cube_id=cube.cube_id,
                    user_id=default_user,
                    session_id=session.session_id,
                    order=(file_index, position),
                    turns=turns,
                    records=len(turns),
                )
    except (ValueError, KeyError, TypeError) as exc:
        # The bench readers take a file whole: a malformed one is one bad record.
        yield BadRecord(str(path), 0, f"not a {fmt} file: {exc!r}")


def read_units(
    path: Path, file_index: int, fmt: str, default_user: str, limit: int | None = None
) -> Iterator[Unit | BadRecord]:
    if fmt == "jsonl":
        return read_jsonl(path, file_index, default_user, limit)
    if fmt == "parquet":
        return read_parquet(path, file_index, default_user, limit)
    if fmt in ("locomo", "longmemeval"):
        return read_benchmark(path, file_index, fmt, default_user, limit)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")

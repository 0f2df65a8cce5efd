"""Wire messages to reader input, with the size and emptiness checks of the API contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memos_ray.config import LimitsConfig, ReaderConfig
from memos_ray.core.documents import Document, chunk_text, decode_file_data, parse_document
from memos_ray.core.filters import FilterExpr, parse_filter
from memos_ray.core.reader import Turn, Window, fast_windows, text_memory
from memos_ray.core.tools import ToolMessage, schema_windows, trajectory_windows
from memos_ray.domain.memory import TEXT_MEMORY_TYPES, MemoryType
from memos_ray.errors import BadRequestError, PayloadTooLargeError
from memos_ray.models.chat import Message
from memos_ray.schemas.messages import ChatMessage, FilePart, ImagePart, TextPart
from memos_ray.schemas.product import AddRequest


def _check_size(text: str, limits: LimitsConfig, what: str) -> None:
    size = len(text.encode())
    if size > limits.max_message_bytes:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes; the limit is {limits.max_message_bytes} bytes"
        )


def message_text(message: ChatMessage) -> tuple[str, tuple[str, ...]]:
    """Flatten content parts; images and files become short markers in fast mode."""
    if message.content is None:
        return "", ()
    if isinstance(message.content, str):
        return message.content, ()
    pieces: list[str] = []
    file_ids: list[str] = []
    for part in message.content:
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif isinstance(part, ImagePart):
            pieces.append(f"[image: {part.image_url.url}]")
        elif isinstance(part, FilePart):
            if part.file.file_data:
                continue  # the file itself is stored as a document (documents_from_request)
            name = part.file.filename or part.file.file_id or "file"
            pieces.append(f"[file: {name}]")
            if part.file.file_id:
                file_ids.append(part.file.file_id)
    return "\n".join(p for p in pieces if p), tuple(file_ids)


def documents_from_request(req: AddRequest, limits: LimitsConfig) -> list[Document]:
    """Files sent inline (`file` parts with `file_data`): parsed into text now."""
    documents: list[Document] = []
    if not isinstance(req.messages, list):
        return documents
    for message in req.messages:
        if isinstance(message.content, str) or not message.content:
            continue
        for part in message.content:
            if isinstance(part, FilePart) and not part.file.file_data and _server_path(part):
                raise BadRequestError(
                    "a file part names a path on the server (MemOS's doc_path); memos-ray "
                    "reads no server files: send the file's content as `file_data` (base64)"
                )
            if not isinstance(part, FilePart) or not part.file.file_data:
                continue
            name = part.file.filename or part.file.file_id or "document"
            data, mime = decode_file_data(part.file.file_data, name)
            if len(data) > limits.max_message_bytes:
                raise PayloadTooLargeError(
                    f"file {name} is {len(data)} bytes; the limit is "
                    f"{limits.max_message_bytes} bytes"
                )
            text = parse_document(name, data, mime, max_chars=limits.max_document_chars)
            if not text.strip():
                continue
            chunks = len(chunk_text(text))
            if chunks > limits.max_document_chunks:
                raise PayloadTooLargeError(
                    f"file {name} makes {chunks} chunks; the limit is "
                    f"{limits.max_document_chunks} (limits.max_document_chunks); nothing was stored"
                )
            documents.append(Document(name=name, text=text, file_id=part.file.file_id))
    return documents


def _server_path(part: FilePart) -> bool:
    extra = part.file.model_extra or {}
    return bool(extra.get("path") or extra.get("doc_path"))


def tool_windows_from_request(req: AddRequest) -> list[Window]:
    """Tool schemas (`tools`) and trajectories (assistant tool calls with their results)."""
    windows = schema_windows(req.tools or [])
    if isinstance(req.messages, list) and any(m.tool_calls for m in req.messages):
        messages = [
            ToolMessage(
                role=m.role,
                content=message_text(m)[0],
                message_id=m.message_id,
                chat_time=m.chat_time,
                tool_call_id=m.tool_call_id,
                tool_calls=tuple(m.tool_calls or ()),
            )
            for m in req.messages
        ]
        windows += trajectory_windows(messages)
    return windows


def windows_from_request(
    req: AddRequest, reader: ReaderConfig, limits: LimitsConfig, *, allow_empty: bool = False
) -> list[Window]:
    windows: list[Window] = []
    for text, what in ((req.memory_content, "memory_content"),):
        if text is not None and text.strip():
            _check_size(text, limits, what)
            windows.append(text_memory(text))
    if isinstance(req.messages, str):
        _check_size(req.messages, limits, "messages")
        if req.messages.strip():
            windows.append(text_memory(req.messages))
    elif req.messages:
        if len(req.messages) > limits.max_messages:
            raise PayloadTooLargeError(
                f"{len(req.messages)} messages; the limit is {limits.max_messages} per request"
            )
        turns: list[Turn] = []
        for index, message in enumerate(req.messages):
            text, file_ids = message_text(message)
            _check_size(text, limits, f"messages[{index}]")
            if message.role == "system" or not text.strip():
                continue
            turns.append(
                Turn(
                    role=message.role,
                    content=text.strip(),
                    chat_time=message.chat_time,
                    message_id=message.message_id,
                    file_ids=file_ids,
                    name=message.name,
                )
            )
        windows.extend(fast_windows(turns, reader.window_messages, reader.window_chars))
    if not windows and not allow_empty:
        raise BadRequestError("messages is empty: nothing to remember")
    return windows


def check_query(query: str, limits: LimitsConfig) -> None:
    """A query is embedded and scanned against every memory: its length is bounded."""
    if len(query) > limits.max_query_chars:
        raise PayloadTooLargeError(
            f"query is {len(query)} characters; the limit is {limits.max_query_chars}"
        )


def check_top_k(limits: LimitsConfig, **top_ks: int) -> None:
    for name, value in top_ks.items():
        if value > limits.max_top_k:
            raise BadRequestError(f"{name} is over the limit of {limits.max_top_k}")


def requested_cubes(cube_ids: list[str] | None, mem_cube_id: str | None) -> list[str] | None:
    """The cube list of a request; MemOS's deprecated `mem_cube_id` stands for both lists."""
    return cube_ids or ([mem_cube_id] if mem_cube_id else None)


def filters_by_cube(raw: dict[str, Any] | None, cubes: list[str]) -> dict[str, FilterExpr | None]:
    """A filter keyed by cube ids applies per cube; any other filter applies to all cubes."""
    if raw and all(k in cubes for k in raw) and all(isinstance(v, dict) for v in raw.values()):
        return {c: parse_filter(raw.get(c)) for c in cubes}
    parsed = parse_filter(raw)
    return {c: parsed for c in cubes}


@dataclass(frozen=True)
class SearchTypes:
    """What a `search_memory_type` asks for: text types (None: all), tool types, and
    whether preferences are wanted."""

    text: tuple[str, ...] | None
    tools: tuple[str, ...]
    preferences: bool
    explicit: bool


# Kinds MemOS names that memos-ray keeps none of: asking for them finds nothing.
_KEPT_NONE = ("SkillMemory", "AllSummaryMemory")
_TOOL_TYPES = (str(MemoryType.TOOL_SCHEMA), str(MemoryType.TOOL_TRAJECTORY))


def search_types(search_memory_type: str | None) -> SearchTypes:
    """`search_memory_type`: "All", or a comma list of MemOS memory types."""
    if search_memory_type in ("All", "", None):
        return SearchTypes(text=None, tools=_TOOL_TYPES, preferences=True, explicit=False)
    text_types = {str(t) for t in TEXT_MEMORY_TYPES}
    allowed = text_types | set(_TOOL_TYPES) | {str(MemoryType.PREFERENCE), *_KEPT_NONE}
    wanted = [t.strip() for t in search_memory_type.split(",")]
    unknown = [t for t in wanted if t not in allowed]
    if unknown:
        raise BadRequestError(
            f"search_memory_type {unknown} unknown; expected 'All' or one of {sorted(allowed)}"
        )
    return SearchTypes(
        text=tuple(t for t in wanted if t in text_types),
        tools=tuple(t for t in wanted if t in _TOOL_TYPES),
        preferences=str(MemoryType.PREFERENCE) in wanted,
        explicit=True,
    )


def history_messages(messages: list[ChatMessage] | None) -> list[Message]:
    """Chat history as model messages, empty ones dropped."""
    return [
        Message(role=m.role, content=text)
        for m in messages or []
        if (text := message_text(m)[0]).strip()
    ]

"""Wire messages to reader input, with the size and emptiness checks of the API contract."""

from __future__ import annotations

from memos_ray.config import LimitsConfig, ReaderConfig
from memos_ray.core.documents import Document, chunk_text, decode_file_data, parse_document
from memos_ray.core.reader import Turn, Window, fast_windows, text_memory
from memos_ray.core.tools import ToolMessage, schema_windows, trajectory_windows
from memos_ray.errors import BadRequestError, PayloadTooLargeError
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

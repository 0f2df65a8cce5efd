"""Pure mapping for the MemOS SDK dialect (`sdk_routes`): memos-ray's objects in the shapes
`MemOSClient` reads, conversations rebuilt from memory sources, knowledge-base file ids,
and multipart uploads. No I/O here.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from memos_ray.domain.memory import MemoryItem, SourceMessage
from memos_ray.errors import BadRequestError
from memos_ray.stores.preference.base import Preference
from memos_ray.stores.sql.tasks import Task

# Ids of tasks that ran to the end before the answer (no scheduler, or nothing to queue).
SYNC_TASK_PREFIX = "sync-"
# A knowledge-base file id is `<knowledge base id>::<digest>`: it says which cube to look in.
FILE_ID_SEPARATOR = "::"


def memory_detail(item: MemoryItem) -> dict[str, Any]:
    """A text memory as a `memory_detail_list` entry (MemOS field names, and the cube)."""
    meta = item.metadata
    return {
        "id": item.id,
        "memory_key": meta.key or "",
        "memory_value": item.memory,
        "memory_type": str(meta.memory_type),
        "create_time": meta.created_at,
        "update_time": meta.updated_at,
        "conversation_id": meta.session_id,
        "status": str(meta.status),
        "confidence": meta.confidence,
        "tags": list(meta.tags),
        "relativity": meta.relativity,
        "user_id": meta.user_id,
        "cube_id": item.cube_id,
        "info": dict(meta.info),
    }


def tool_detail(item: MemoryItem) -> dict[str, Any]:
    """A tool schema or trajectory as a `tool_memory_detail_list` entry."""
    meta = item.metadata
    return {
        "id": item.id,
        "tool_type": str(meta.memory_type),
        "tool_value": item.memory,
        "create_time": meta.created_at,
        "update_time": meta.updated_at,
        "conversation_id": meta.session_id,
        "status": str(meta.status),
        "relativity": meta.relativity,
        "cube_id": item.cube_id,
    }


def preference_detail(preference: Preference) -> dict[str, Any]:
    return {
        "id": preference.id,
        "preference": preference.preference,
        "preference_type": f"{preference.kind}_preference",
        "reasoning": preference.reasoning,
        "create_time": preference.created_at,
        "update_time": preference.updated_at,
        "conversation_id": preference.session_id,
        "status": preference.status,
        "relativity": preference.score,
        "cube_id": preference.cube_id,
    }


def best_first(items: Iterable[MemoryItem], limit: int) -> list[MemoryItem]:
    """Several cubes' ranked memories as one list, best first, at most `limit`."""
    ranked = sorted(items, key=lambda i: -(i.metadata.relativity or 0.0))
    return ranked[:limit]


def conversation_messages(items: Sequence[MemoryItem], limit: int) -> list[dict[str, Any]]:
    """The chat messages memories were made from, oldest first, each once; the newest
    `limit`. Memories are taken in the order they were stored and their sources in order, so
    a message read again later (by fine extraction, by another window) keeps its first place.
    A message is known by its role, text, chat_time and message_id: two identical messages
    with neither time nor id are one."""
    seen: set[tuple[str | None, ...]] = set()
    messages: list[dict[str, Any]] = []
    for item in sorted(items, key=lambda i: i.metadata.created_at):
        for source in item.metadata.sources:
            if source.type != "chat" or not source.role or source.content is None:
                continue
            key = (source.role, source.content, source.chat_time, source.message_id)
            if key in seen:
                continue
            seen.add(key)
            messages.append(_message(source, item))
    return messages[-limit:] if limit else []


def _message(source: SourceMessage, item: MemoryItem) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": source.role,
        "content": source.content,
        "create_time": source.chat_time or item.metadata.created_at,
        "update_time": item.metadata.updated_at,
        "conversation_id": item.metadata.session_id,
    }
    if source.message_id:
        message["message_id"] = source.message_id
    if source.name:
        message["name"] = source.name
    return message


def sync_task_id() -> str:
    return f"{SYNC_TASK_PREFIX}{uuid.uuid4().hex}"


def is_sync_task(task_id: str) -> bool:
    return task_id.startswith(SYNC_TASK_PREFIX)


def task_status(task: Task | None, task_id: str) -> dict[str, Any]:
    """A task as `GetTaskStatusData`: a recorded one, or (None) one that ran synchronously."""
    if task is None:
        return {"task_id": task_id, "status": "completed", "memory_views": None}
    data: dict[str, Any] = {
        "task_id": task.task_id,
        "status": task.state,
        "memory_views": None,
        "label": task.label,
        "cube_id": task.cube_id,
        "attempts": task.attempts,
    }
    if task.error:
        data["error"] = task.error
    return data


def file_id(knowledgebase_id: str, name: str, content: bytes | str) -> str:
    """The same file (name and content) in the same knowledge base always gets the same id,
    as its chunks always get the same memory ids: a second upload is a no-op, not a twin."""
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass") + b"\x00" + raw).hexdigest()
    return f"{knowledgebase_id}{FILE_ID_SEPARATOR}file-{digest[:24]}"


def knowledgebase_of(file_id: str) -> str | None:
    """The knowledge base a file id names, or None for an id no upload here made."""
    cube, separator, rest = file_id.rpartition(FILE_ID_SEPARATOR)
    if not separator or not cube or not rest.startswith("file-"):
        return None
    return cube


def file_ids_of(item: MemoryItem) -> list[str]:
    ids = item.metadata.info.get("file_ids") or []
    return [str(i) for i in ids] if isinstance(ids, list) else []


def file_details(
    chunks: Sequence[MemoryItem], wanted: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One entry per file among document chunks (RawFileMemory), in upload order: its id,
    name, chunk count and size (bytes of text kept). `wanted` keeps only those file ids."""
    files: dict[str, dict[str, Any]] = {}
    for chunk in sorted(chunks, key=lambda i: i.metadata.created_at):
        for fid in file_ids_of(chunk):
            if wanted is not None and fid not in wanted:
                continue
            entry = files.setdefault(
                fid,
                {
                    "id": fid,
                    "type": "document",
                    "name": _file_name(chunk),
                    "size": 0,
                    "status": "completed",
                    "chunks": 0,
                    "knowledgebase_id": chunk.cube_id,
                    "create_time": chunk.metadata.created_at,
                },
            )
            entry["chunks"] += 1
            entry["size"] += sum(len((s.content or "").encode()) for s in chunk.metadata.sources)
    for entry in files.values():
        entry["sizeMB"] = round(entry["size"] / 2**20, 6)
        entry["size"] = str(entry["size"])
    return list(files.values())


def empty_file(fid: str, name: str, knowledgebase_id: str) -> dict[str, Any]:
    """The entry of an uploaded file that held no text (nothing of it was stored)."""
    return {
        "id": fid,
        "type": "document",
        "name": name,
        "size": "0",
        "sizeMB": 0.0,
        "status": "failed",
        "chunks": 0,
        "knowledgebase_id": knowledgebase_id,
        "memory_ids": [],
        "error": "the file holds no text",
    }


def _file_name(chunk: MemoryItem) -> str:
    for source in chunk.metadata.sources:
        if source.doc_path:
            return source.doc_path
    return "document"


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> list[Upload]:
    """The parts of a `multipart/form-data` body (with the standard library's MIME parser:
    memos-ray does not depend on python-multipart)."""
    if "boundary=" not in content_type:
        raise BadRequestError("multipart/form-data without a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequestError("the multipart body could not be read")
    uploads: list[Upload] = []
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition")
        if disposition is None:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        mime = part.get_content_type() if part.get("Content-Type") else None
        uploads.append(
            Upload(
                field=str(part.get_param("name", header="content-disposition") or ""),
                filename=part.get_filename(),
                content_type=mime,
                data=data,
            )
        )
    return uploads

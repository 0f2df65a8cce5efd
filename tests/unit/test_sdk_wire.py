"""The SDK dialect's pure mapping: conversations rebuilt from sources, file ids, uploads."""

from __future__ import annotations

import pytest

from memos_ray.api import sdk_wire
from memos_ray.domain.memory import MemoryItem, MemoryMetadata, MemoryType, SourceMessage
from memos_ray.errors import BadRequestError


def _chat(role: str, content: str, **fields: str) -> SourceMessage:
    return SourceMessage(type="chat", role=role, content=content, **fields)


def _item(n: int, sources: list[SourceMessage], **meta: object) -> MemoryItem:
    return MemoryItem(
        id=f"m-{n}",
        memory=" ".join(s.content or "" for s in sources),
        cube_id="cube",
        metadata=MemoryMetadata(
            user_id="u",
            session_id="s",
            sources=sources,
            created_at=f"2026-01-01T00:00:0{n}.000000Z",
            **meta,
        ),
    )


def test_conversation_is_rebuilt_in_order_each_message_once() -> None:
    first = _item(1, [_chat("user", "Hi", chat_time="t1"), _chat("assistant", "Hello")])
    second = _item(2, [_chat("user", "I like tea", message_id="m3")])
    # A later fine memory read the same turns again; a document source is no message.
    fine = _item(
        3, [_chat("user", "Hi", chat_time="t1"), _chat("user", "I like tea", message_id="m3")]
    )
    doc = _item(4, [SourceMessage(type="file", content="chunk", doc_path="a.md")])
    messages = sdk_wire.conversation_messages([doc, fine, second, first], limit=10)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "I like tea"),
    ]
    assert messages[0]["create_time"] == "t1"  # the message's own time when it has one
    assert messages[1]["create_time"] == first.metadata.created_at
    assert messages[2]["message_id"] == "m3"
    newest = sdk_wire.conversation_messages([first, second], limit=2)
    assert [m["content"] for m in newest] == ["Hello", "I like tea"]


def test_file_ids_name_their_knowledge_base_and_are_stable() -> None:
    a = sdk_wire.file_id("kb-1", "notes.md", "text")
    assert a == sdk_wire.file_id("kb-1", "notes.md", b"text")
    assert a != sdk_wire.file_id("kb-1", "other.md", "text")
    assert a != sdk_wire.file_id("kb-2", "notes.md", "text")
    assert sdk_wire.knowledgebase_of(a) == "kb-1"
    assert sdk_wire.knowledgebase_of(sdk_wire.file_id("a::b", "n", "x")) == "a::b"
    for foreign in ("file_123", "kb-1::", "::file-1", "kb-1::other"):
        assert sdk_wire.knowledgebase_of(foreign) is None


def test_file_details_group_chunks_by_file() -> None:
    def chunk(n: int, fid: str, name: str, text: str) -> MemoryItem:
        source = SourceMessage(type="file", content=text, doc_path=name)
        return _item(n, [source], info={"file_ids": [fid]}, memory_type=MemoryType.RAW_FILE)

    chunks = [
        chunk(3, "f2", "b.txt", "bb"),
        chunk(1, "f1", "a.md", "aaa"),
        chunk(2, "f1", "a.md", "é"),
    ]
    details = sdk_wire.file_details(chunks)
    assert [(d["id"], d["name"], d["chunks"], d["size"]) for d in details] == [
        ("f1", "a.md", 2, "5"),
        ("f2", "b.txt", 1, "2"),
    ]
    assert [d["id"] for d in sdk_wire.file_details(chunks, ["f2"])] == ["f2"]


def test_multipart_form_files_are_read_byte_for_byte() -> None:
    boundary = "XyZ"
    pdf = b"%PDF-1.4\r\n\x00\xff--XyZ not a boundary\r\n"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="a.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        ).encode()
        + pdf
        + (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="b.txt"\r\n\r\n'
            f"plain text\r\n--{boundary}--\r\n"
        ).encode()
    )
    uploads = sdk_wire.parse_multipart(f"multipart/form-data; boundary={boundary}", body)
    assert [(u.field, u.filename, u.content_type) for u in uploads] == [
        ("file", "a.pdf", "application/pdf"),
        ("file", "b.txt", None),
    ]
    assert uploads[0].data == pdf and uploads[1].data == b"plain text"
    with pytest.raises(BadRequestError):
        sdk_wire.parse_multipart("multipart/form-data", body)

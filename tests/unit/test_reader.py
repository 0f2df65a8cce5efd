from __future__ import annotations

from memos_ray.core.reader import Turn, fast_windows, split_windows
from memos_ray.domain.memory import MemoryType


def turns(n: int, role: str = "user") -> list[Turn]:
    return [Turn(role=role, content=f"turn {i}", message_id=f"m{i}") for i in range(n)]


def test_windows_cap_messages_and_keep_every_turn_once() -> None:
    windows = split_windows(turns(9), max_messages=4)
    assert [len(w) for w in windows] == [4, 4, 1]
    assert [t.message_id for w in windows for t in w] == [f"m{i}" for i in range(9)]


def test_windows_cap_characters_but_never_split_a_turn() -> None:
    long = [Turn(role="user", content="x" * 150), Turn(role="user", content="y" * 150)]
    assert [len(w) for w in split_windows(long, max_messages=10, max_chars=200)] == [1, 1]


def test_memory_type_and_rendering_and_sources() -> None:
    mixed = [
        Turn(role="user", content="Hi", chat_time="2026-01-01T10:00:00", message_id="a"),
        Turn(role="assistant", content="Hello", message_id="b"),
    ]
    (window,) = fast_windows(mixed)
    assert window.memory_type == MemoryType.LONG_TERM
    assert window.text == "user: [2026-01-01T10:00:00]: Hi\nassistant: Hello"
    assert [(s.role, s.message_id, s.chat_time) for s in window.sources] == [
        ("user", "a", "2026-01-01T10:00:00"),
        ("assistant", "b", None),
    ]
    (user_only,) = fast_windows(turns(2))
    assert user_only.memory_type == MemoryType.USER


def test_blank_turns_are_dropped() -> None:
    assert fast_windows([Turn(role="user", content="  ")]) == []

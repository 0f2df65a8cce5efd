"""Pure helpers of fine mode: lenient JSON, relative dates, tool trajectories, documents."""

from __future__ import annotations

import pytest

from memos_ray.core.dates import resolve_relative_dates
from memos_ray.core.documents import chunk_text, decode_file_data, parse_document
from memos_ray.core.json_repair import JSONRepairError, parse_json
from memos_ray.core.tools import ToolMessage, trajectory_windows
from memos_ray.services.fine_reader import Extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Here you go:\n```json\n{"a": [1, 2,],}\n```', {"a": [1, 2]}),
        ("{'a': 'Ann\\'s', 'b': True, 'c': None}", {"a": "Ann's", "b": True, "c": None}),
        ('{memories: [{value: "x"}]}', {"memories": [{"value": "x"}]}),
        ('Sure. {"a": {"b": "cut off', {"a": {"b": "cut off"}}),
        ('[{"value": "x"}] and some chatter', [{"value": "x"}]),
    ],
)
def test_json_is_read_and_repaired(text: str, expected: object) -> None:
    assert parse_json(text) == expected


def test_text_without_json_raises() -> None:
    with pytest.raises(JSONRepairError, match="no JSON"):
        parse_json("I could not find anything worth remembering.")


def test_extraction_accepts_the_shapes_small_models_write() -> None:
    loose = Extraction.model_validate(
        [{"memory": "Ann runs.", "type": "UserMemory", "tags": "sport, health"}, "Bo swims."]
    )
    assert [m.value for m in loose.memories] == ["Ann runs.", "Bo swims."]
    assert (
        loose.memories[0].tags == ["sport", "health"]
        and str(loose.memories[0].type) == "UserMemory"
    )
    partial = Extraction.model_validate(
        {"memories": [{"value": "Ann runs."}, {"key": "half", "memory_type": "User"}, 7]}
    )
    assert [m.value for m in partial.memories] == ["Ann runs."]  # the broken entries are dropped
    prefs = Extraction.model_validate({"preferences": [{"text": "likes tea", "type": "Implicit"}]})
    assert (
        prefs.preferences[0].kind == "implicit" and prefs.preferences[0].preference == "likes tea"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mel went to the park yesterday.", "Mel went to the park on 7 May 2023."),
        ("Yesterday was fun", "On 7 May 2023 was fun"),
        ("She met him last Friday", "She met him on 5 May 2023"),
        ("They moved 2 weeks ago", "They moved in the week of 24 April 2023"),
        ("I start next month", "I start in June 2023"),
        ("since yesterday", "since 7 May 2023"),
        ("painted last weekend", "painted on the weekend of 6 May 2023"),
        ("Nothing relative here.", "Nothing relative here."),
    ],
)
def test_relative_dates_resolve_against_the_time_said(text: str, expected: str) -> None:
    assert resolve_relative_dates(text, "2023-05-08T13:56:00") == expected  # a Monday


def test_dates_unchanged_without_a_time() -> None:
    assert resolve_relative_dates("yesterday", None) == "yesterday"


def test_trajectory_records_failure_and_lesson() -> None:
    call = {"id": "c1", "function": {"name": "search", "arguments": '{"q": ""}'}}
    windows = trajectory_windows(
        [
            ToolMessage("user", "Find flights"),
            ToolMessage("assistant", "", tool_calls=(call,)),
            ToolMessage("tool", "Error: empty query", tool_call_id="c1"),
            ToolMessage("assistant", "I could not search."),
        ]
    )
    [window] = windows
    assert window.text.startswith("Task: Find flights")
    assert "Result: failure. Lesson: search" in window.text and "empty query" in window.text
    assert "failure" in window.tags and len(window.sources) == 3


def test_documents_decode_parse_and_chunk() -> None:
    data, mime = decode_file_data("data:text/markdown;base64,IyBUaXRsZQoKSGVsbG8=")
    assert (data, mime) == (b"# Title\n\nHello", "text/markdown")
    assert parse_document("a.md", data, mime) == "# Title\n\nHello"
    chunks = chunk_text("\n\n".join(["word " * 100] * 5), max_chars=1100)
    assert len(chunks) == 3 and all(len(c) <= 1100 for c in chunks)
    long_sentence = "x" * 2500
    assert [len(c) for c in chunk_text(long_sentence, 1000)] == [1000, 1000, 500]

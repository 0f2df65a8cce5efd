"""The lenient JSON reader against a set of broken model outputs, with the `json-repair`
package alone as the yardstick: every case reads as expected, and no case that the library
alone reads right is lost (the project's own fixes run first, the library after them)."""

from __future__ import annotations

from typing import Any

import json_repair
import pytest

from memos_ray.core.json_repair import JSONRepairError, parse_json

CASES: list[tuple[str, Any]] = [
    (
        '{"memories": [{"value": "Ann runs"} {"value": "Bo swims"}]}',
        {"memories": [{"value": "Ann runs"}, {"value": "Bo swims"}]},
    ),
    ('{"value": "He said "hi" to me"}', {"value": 'He said "hi" to me'}),
    ('// the facts\n{"a": 1}', {"a": 1}),
    ('{"a": 1, /* why */ "b": 2}', {"a": 1, "b": 2}),
    ('Answer: {"decision": "keep", "operations": [],}', {"decision": "keep", "operations": []}),
    ('{"a": [1, 2, 3}', {"a": [1, 2, 3]}),
    ('{"value": "line one\nline two"}', {"value": "line one\nline two"}),
    ('```\n{"a": 1}\n```', {"a": 1}),
    ('{"key": "v", "tags": ["x", "y",]}', {"key": "v", "tags": ["x", "y"]}),
    (
        'Here is the JSON:\n{\n  "memories": [\n    {"value": "x", "type": "UserMemory"},\n',
        {"memories": [{"value": "x", "type": "UserMemory"}]},
    ),
    ('{"a": True, "b": None}', {"a": True, "b": None}),
    ('{"a": "x"}}', {"a": "x"}),
    ("{'value': 'the cat', 'tags': ['pet']}", {"value": "the cat", "tags": ["pet"]}),
    ('{memories: [{value: "x"}]}', {"memories": [{"value": "x"}]}),
    ('{"a": "tab\there"}', {"a": "tab\there"}),
    ('[{"value": "a"}, {"value": "b"]', [{"value": "a"}, {"value": "b"}]),
    ('{"value": "50% off", "note": "it\'s fine"}', {"value": "50% off", "note": "it's fine"}),
    (
        '{"operations": [{"op": "add", "text": "x"}], "answer": "ok"} That is all.',
        {"operations": [{"op": "add", "text": "x"}], "answer": "ok"},
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_each_broken_output_reads_as_expected(text: str, expected: Any) -> None:
    assert parse_json(text) == expected


def test_at_least_as_good_as_the_library_alone() -> None:
    ours = sum(parse_json(text) == expected for text, expected in CASES)
    library = sum(json_repair.loads(text) == expected for text, expected in CASES)
    assert ours == len(CASES) and ours >= library


@pytest.mark.parametrize("text", ["", "I found nothing worth remembering."])
def test_no_object_is_an_error_not_an_empty_guess(text: str) -> None:
    with pytest.raises(JSONRepairError):
        parse_json(text)

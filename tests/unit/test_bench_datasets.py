"""The bench readers see turns, dates and questions, never the answer keys."""

from __future__ import annotations

import json
from pathlib import Path

from memos_ray.bench.retrieval import ranked_turn_ids
from memos_ray.services.ingest.datasets import (
    locomo_cubes,
    longmemeval_cubes,
    parse_locomo_time,
    parse_longmemeval_time,
)


def test_time_formats() -> None:
    assert parse_locomo_time("1:56 pm on 8 May, 2023") == "2023-05-08T13:56:00"
    assert parse_locomo_time("10:04 am on 19 January, 2024") == "2024-01-19T10:04:00"
    assert parse_locomo_time("sometime") is None
    assert parse_longmemeval_time("2023/05/30 (Tue) 23:40") == "2023-05-30T23:40:00"


def test_locomo_reader(tmp_path: Path) -> None:
    conv = {
        "sample_id": "conv-x",
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Bo",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "Look!", "blip_caption": "a dog"},
                {"speaker": "Bo", "dia_id": "D1:2", "text": "Cute."},
            ],
        },
        "qa": [{"question": "What did Ann show?", "answer": "a dog", "evidence": ["D1:1"]}],
    }
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps([conv]))
    (cube,) = locomo_cubes(path)
    assert cube.cube_id == "locomo-conv-x"
    first, second = cube.sessions[0].turns
    assert (first.message_id, first.role, first.chat_time) == (
        "D1:1",
        "user",
        "2023-05-08T13:56:00",
    )
    assert (first.speaker, first.content) == ("Ann", "Look! [shares a photo of a dog]")
    assert second.role == "assistant"
    assert [(q.qid, q.question) for q in cube.questions] == [("conv-x:0", "What did Ann show?")]


def test_longmemeval_reader(tmp_path: Path) -> None:
    item = {
        "question_id": "q1",
        "question": "What car do I drive?",
        "question_date": "2023/05/30 (Tue) 23:40",
        "answer": "a red van",
        "answer_session_ids": ["s2"],
        "haystack_session_ids": ["s1", "s2"],
        "haystack_dates": ["2023/05/01 (Mon) 10:00", "2023/05/02 (Tue) 11:00"],
        "haystack_sessions": [
            [{"role": "user", "content": "hi"}],
            [{"role": "user", "content": "I drive a red van", "has_answer": True}],
        ],
    }
    path = tmp_path / "lme.json"
    path.write_text(json.dumps([item]))
    (cube,) = longmemeval_cubes(path)
    assert [t.message_id for s in cube.sessions for t in s.turns] == ["s1:1", "s2:1"]
    assert cube.questions[0].asked_at == "2023-05-30T23:40:00"


def test_ranked_turn_ids_keep_rank_order_and_deduplicate() -> None:
    data = {
        "text_mem": [
            {
                "cube_id": "c",
                "memories": [
                    {"metadata": {"sources": [{"message_id": "D1:2"}, {"message_id": "D1:3"}]}},
                    {"metadata": {"sources": [{"message_id": "D1:3"}, {"message_id": "D2:1"}]}},
                ],
            }
        ]
    }
    assert ranked_turn_ids(data, "c") == ["D1:2", "D1:3", "D2:1"]

"""Turn-level ranking over a whole cube, without an LLM (fast mode).

Every component is z-scored over the cube's turns, so the weights are scale-free:

1. BM25 over each turn's `speaker: content`.
2. Dense: cos(q, e_t) + cos(q, n(e_prev + e_t)) + cos(q, n(e_t + e_next)); the context
   vectors are sums of neighbouring turn embeddings (no extra encoding).
3. S = z(bm25) + w_dense * z(dense) + w_speaker * [the query names the turn's speaker].
4. Neighbours: S_t += g_neighbour * max(S_prev, S_next) within a session (answers and
   their questions sit next to each other).
5. Sessions: + lam_session_max * z(best S in the session) + lam_session_bm25 * z(BM25 of the
   session as one document) + w_date * [the session's date falls in a date the query names].
6. The top `rerank_n` are re-sorted by z(S) + w_maxsim * z(MaxSim), a late-interaction
   score over MiniLM token embeddings.

Measured on the LoCoMo and LongMemEval development files (see the README's bench
section); this module is pure: numpy and the project's tokenizer only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from memos_ray.memory.keywords import tokenize

ROLE_WORDS = frozenset({"user", "assistant", "system", "tool"})

Embed = Callable[[list[str]], np.ndarray]
TokenEmbed = Callable[[list[str]], list[np.ndarray]]


@dataclass(frozen=True)
class RankingParams:
    k1: float = 1.2
    b: float = 0.75
    w_dense: float = 1.0
    w_speaker: float = 0.5
    g_neighbour: float = 0.5
    lam_session_max: float = 0.5
    lam_session_bm25: float = 0.5
    w_date: float = 2.0
    rerank_n: int = 50
    w_maxsim: float = 1.0


@dataclass(frozen=True)
class RankTurn:
    id: str
    session: str
    content: str
    speaker: str | None = None
    chat_time: str | None = None


def turn_text(turn: RankTurn) -> str:
    """What is indexed: the speaker's name in front when it is a name, not a role."""
    speaker = (turn.speaker or "").strip()
    if not speaker or speaker.lower() in ROLE_WORDS:
        return turn.content
    return f"{speaker}: {turn.content}"


# -- BM25 -------------------------------------------------------------------------------


@dataclass
class BM25Index:
    postings: dict[str, tuple[np.ndarray, np.ndarray]]
    size: int


def bm25_build(docs: Sequence[Sequence[str]], k1: float, b: float) -> BM25Index:
    n = len(docs)
    avg = max(sum(len(d) for d in docs) / max(n, 1), 1.0)
    raw: dict[str, tuple[list[int], list[float]]] = {}
    for i, tokens in enumerate(docs):
        norm = k1 * (1 - b + b * len(tokens) / avg)
        for term, tf in Counter(tokens).items():
            ids, weights = raw.setdefault(term, ([], []))
            ids.append(i)
            weights.append(tf * (k1 + 1) / (tf + norm))
    postings = {}
    for term, (ids, weights) in raw.items():
        idf = math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5))
        postings[term] = (np.asarray(ids, np.int64), np.asarray(weights, np.float32) * idf)
    return BM25Index(postings, n)


def bm25_score(index: BM25Index, query_tokens: Sequence[str]) -> np.ndarray:
    scores = np.zeros(index.size, np.float32)
    for term in set(query_tokens):
        posting = index.postings.get(term)
        if posting is not None:
            scores[posting[0]] += posting[1]
    return scores


# -- dates ------------------------------------------------------------------------------

_MONTHS = [
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
]  # fmt: skip
_MONTH_NUMBER = {m: i + 1 for i, m in enumerate(_MONTHS)} | {
    m[:3]: i + 1 for i, m in enumerate(_MONTHS)
}
_MONTH_NUMBER["sept"] = 9
_MONTH = r"(" + "|".join(_MONTHS) + r"|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)"
_COUNT_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_COUNT = r"(\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten)"
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}

DateWindow = tuple[dt.date, int] | tuple[str, int]


def parse_date(text: str | None) -> dt.date | None:
    """ISO ('2023-05-08T13:56:00'), LongMemEval ('2023/05/20 (Sat) 02:21') or LoCoMo text."""
    s = (text or "").lower()
    match = re.search(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})", s)
    if match:
        try:
            return dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None
    match = re.search(r"(\d{1,2})\s+" + _MONTH + r",?\s+(\d{4})", s)
    if match:
        try:
            return dt.date(int(match[3]), _MONTH_NUMBER[match[2]], int(match[1]))
        except ValueError:
            return None
    return None


def _count(word: str) -> int:
    return int(word) if word.isdigit() else _COUNT_WORDS[word]


def query_date_windows(query: str, asked_on: dt.date | None = None) -> list[DateWindow]:
    """Dates a question names, as (centre, half-width in days) or ("month", m)."""
    s = query.lower()
    out: list[DateWindow] = []
    for m in re.finditer(r"(\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH + r",?\s*(\d{4})", s):
        with contextlib.suppress(ValueError):
            out.append((dt.date(int(m[3]), _MONTH_NUMBER[m[2]], int(m[1])), 1))
    for m in re.finditer(_MONTH + r"\s+(\d{1,2})(?:st|nd|rd|th)?,?\s*(\d{4})", s):
        with contextlib.suppress(ValueError):
            out.append((dt.date(int(m[3]), _MONTH_NUMBER[m[1]], int(m[2])), 1))
    if not out:
        for m in re.finditer(_MONTH + r",?\s+(\d{4})", s):
            out.append((dt.date(int(m[2]), _MONTH_NUMBER[m[1]], 15), 16))
    if not out:
        for m in re.finditer(r"\b(?:in|of|during)\s+" + _MONTH + r"\b", s):
            out.append(("month", _MONTH_NUMBER[m[1]]))
    if asked_on is not None:
        for m in re.finditer(r"\b" + _COUNT + r"\s+(day|week|month|year)s?\s+ago", s):
            unit = _UNIT_DAYS[m[2]]
            out.append((asked_on - dt.timedelta(days=_count(m[1]) * unit), max(1, unit // 2 + 1)))
        for m in re.finditer(r"\blast\s+(week|month|year|weekend)\b", s):
            unit = {"week": 7, "weekend": 7, "month": 30, "year": 365}[m[1]]
            out.append((asked_on - dt.timedelta(days=unit), unit // 2 + 1))
        if re.search(r"\byesterday\b", s):
            out.append((asked_on - dt.timedelta(days=1), 1))
        for m in re.finditer(r"\b(?:past|last)\s+" + _COUNT + r"\s+(day|week|month)s?\b", s):
            width = _count(m[1]) * _UNIT_DAYS[m[2]]
            out.append((asked_on - dt.timedelta(days=width / 2), width // 2 + 1))
    return out


def _date_hits(windows: Sequence[DateWindow], dates: Sequence[dt.date | None]) -> np.ndarray:
    hits = np.zeros(len(dates), np.float32)
    for i, day in enumerate(dates):
        if day is None:
            continue
        for centre, width in windows:
            if centre == "month":
                if day.month == width:
                    hits[i] = 1.0
                    break
            elif abs((day - centre).days) <= width:  # type: ignore[operator]
                hits[i] = 1.0
                break
    return hits


# -- index and search -------------------------------------------------------------------


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


@dataclass
class CubeIndex:
    ids: list[str]
    texts: list[str]
    speakers: list[str]
    session_of: np.ndarray
    prev: np.ndarray
    next: np.ndarray
    session_dates: list[dt.date | None]
    bm25: BM25Index
    bm25_sessions: BM25Index
    vectors: np.ndarray  # (3, n, d): the turn, with the previous turn, with the next turn
    tokens: list[np.ndarray] | None


def build_index(
    turns: Sequence[RankTurn],
    embed: Embed,
    token_embed: TokenEmbed | None = None,
    params: RankingParams | None = None,
) -> CubeIndex:
    """Turns in chronological order; a session's turns are contiguous."""
    params = params or RankingParams()
    n = len(turns)
    session_keys: list[str] = []
    session_of = np.zeros(n, np.int64)
    for i, turn in enumerate(turns):
        if not session_keys or session_keys[-1] != turn.session:
            session_keys.append(turn.session)
        session_of[i] = len(session_keys) - 1
    pos = np.arange(n)
    prev = np.where((pos > 0) & (session_of[np.maximum(pos - 1, 0)] == session_of), pos - 1, -1)
    nxt = np.where(
        (pos < n - 1) & (session_of[np.minimum(pos + 1, n - 1)] == session_of), pos + 1, -1
    )
    texts = [turn_text(t) for t in turns]
    tokens = [tokenize(t) for t in texts]
    e = np.asarray(embed(texts), np.float32).reshape(n, -1)
    with_prev = e + np.where(prev[:, None] >= 0, e[np.maximum(prev, 0)], 0)
    with_next = e + np.where(nxt[:, None] >= 0, e[np.maximum(nxt, 0)], 0)
    with_prev /= np.linalg.norm(with_prev, axis=1, keepdims=True) + 1e-9
    with_next /= np.linalg.norm(with_next, axis=1, keepdims=True) + 1e-9
    session_docs: list[list[str]] = [[] for _ in session_keys]
    first_turn: dict[int, int] = {}
    for i, toks in enumerate(tokens):
        session_docs[session_of[i]].extend(toks)
        first_turn.setdefault(int(session_of[i]), i)
    return CubeIndex(
        ids=[t.id for t in turns],
        texts=texts,
        speakers=[(t.speaker or "").lower() for t in turns],
        session_of=session_of,
        prev=prev,
        next=nxt,
        session_dates=[
            parse_date(turns[first_turn[s]].chat_time) for s in range(len(session_keys))
        ],
        bm25=bm25_build(tokens, params.k1, params.b),
        bm25_sessions=bm25_build(session_docs, params.k1, params.b),
        vectors=np.stack([e, with_prev, with_next]),
        tokens=token_embed(texts) if token_embed is not None else None,
    )


def first_stage(
    index: CubeIndex,
    query: str,
    query_vector: np.ndarray,
    asked_at: str | None = None,
    params: RankingParams | None = None,
) -> np.ndarray:
    """Steps 1-5: one fused score per turn."""
    params = params or RankingParams()
    query_tokens = tokenize(query)
    score = _z(bm25_score(index.bm25, query_tokens))
    score += params.w_dense * _z((index.vectors @ query_vector).sum(0))
    lowered = query.lower()
    named = {
        s
        for s in set(index.speakers)
        if s and s not in ROLE_WORDS and re.search(rf"\b{re.escape(s)}\b", lowered)
    }
    if named:
        score += params.w_speaker * np.array([s in named for s in index.speakers], np.float32)
    low = score.min()
    neighbour = np.maximum(
        np.where(index.prev >= 0, score[np.maximum(index.prev, 0)], low),
        np.where(index.next >= 0, score[np.maximum(index.next, 0)], low),
    )
    score = score + params.g_neighbour * neighbour
    sessions = index.session_of
    best = np.full(len(index.session_dates), -np.inf, np.float32)
    np.maximum.at(best, sessions, score)
    score = (
        score
        + params.lam_session_max * _z(best)[sessions]
        + params.lam_session_bm25 * _z(bm25_score(index.bm25_sessions, query_tokens))[sessions]
    )
    windows = query_date_windows(query, parse_date(asked_at))
    if windows:
        score = score + params.w_date * _date_hits(windows, index.session_dates)[sessions]
    return score


def maxsim(query_tokens: np.ndarray, doc_tokens: np.ndarray) -> float:
    """Mean over query tokens of the best cosine against the document's tokens."""
    return float((query_tokens @ doc_tokens.T).max(1).mean())


def rank(
    index: CubeIndex,
    query: str,
    query_vector: np.ndarray,
    query_tokens: np.ndarray | None = None,
    asked_at: str | None = None,
    top_k: int = 50,
    params: RankingParams | None = None,
) -> list[str]:
    """Turn ids, best first."""
    params = params or RankingParams()
    score = first_stage(index, query, query_vector, asked_at, params)
    order = np.argsort(-score, kind="stable")
    if params.w_maxsim and query_tokens is not None and index.tokens is not None:
        head = order[: params.rerank_n]
        late = np.array(
            [maxsim(query_tokens, index.tokens[int(j)].astype(np.float32)) for j in head]
        )
        combined = _z(score[head]) + params.w_maxsim * _z(late)
        order = np.concatenate(
            [head[np.argsort(-combined, kind="stable")], order[params.rerank_n :]]
        )
    return [index.ids[i] for i in order[:top_k]]

"""Turn-level ranking over a whole cube, without an LLM (fast mode).

Every component is z-scored over the cube's turns, so the weights are scale-free:

1. BM25 over each turn's `speaker: content`.
2. Dense: cos(q, e_t) + cos(q, n(e_prev + e_t)) + cos(q, n(e_t + e_next)); the context
   vectors are sums of neighbouring turn embeddings (no extra encoding).
3. S = z(bm25) + w_dense * z(dense) + w_speaker * [the query names the turn's speaker].
4. Neighbours: S_t += g_neighbour * max(S_prev, S_next) within a session (answers and
   their questions sit next to each other).
5. Sessions: + lam_session_max * z(best S in the session) + lam_session_bm25 * z(BM25 of the
   session as one document). Answers: a turn right after a question (a "?" in the previous
   turn of its session) moves `w_answer` of the way up to that question's S when below it.
   Then + w_date * [the turn's date falls in a date the query names]
   + w_role * [the turn is said by the side the question is about]: in a chat between a
   user and an assistant, a question in the first person ("where did I ...", "my dog")
   asks what the user said, one about the assistant's words ("you recommended", "remind
   me") what the assistant said. Only turns known by their role alone count (no speaker
   name: where names are given, step 3 matches them).
6. The top `rerank_n` are re-sorted by z(S) + w_maxsim * z(MaxSim), a late-interaction
   score over MiniLM token embeddings.
7. A question that counts or totals ("how many", "how much", "in total") spreads the list
   over sessions: each turn moves `session_spread` places down per turn of its session
   above it.

Measured on the LoCoMo and LongMemEval development files (README, Benchmarks); this
module is pure: numpy and the project's tokenizer only. The index is built from stored
vectors (no encoding here), and the MaxSim scores of step 6 may come from anywhere (the
vector store computes them next to the stored token vectors).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memos_ray.core.keywords import tokenize

ROLE_WORDS = frozenset({"user", "assistant", "system", "tool"})


def is_name(speaker: str | None) -> bool:
    """A person's name, not a role word or nothing: what steps 1, 3 and 5 tell apart."""
    word = (speaker or "").strip().lower()
    return bool(word) and word not in ROLE_WORDS


Embed = Callable[[list[str]], np.ndarray]
TokenEmbed = Callable[[list[str]], list[np.ndarray]]


class RankingParams(BaseModel):
    """Weights of the recipe (z-score units); defaults are the measured ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k1: float = Field(default=1.2, gt=0)
    b: float = Field(default=0.75, ge=0, le=1)
    w_dense: float = 1.0
    # Step 3, and step 5's w_role: the same reading of a question, at the same strength (a
    # question about Ann is answered by what Ann said; about "me", by what the user said).
    w_speaker: float = 5.0
    g_neighbour: float = 0.5
    lam_session_max: float = 0.5
    lam_session_bm25: float = 0.5
    w_date: float = 2.0
    # Step 5's answers: a turn right after a question moves this share of the way up to
    # the question's score. A question in a chat is often worded like the one asked of
    # the memory, yet asserts little; the turn that answers it holds the fact, in words
    # that may share little with the question's.
    w_answer: float = Field(default=0.5, ge=0, le=1)
    # Units of the search's own session (`session_id` of the request) get this much more.
    w_session: float = 0.5
    rerank_n: int = Field(default=50, ge=0)
    w_maxsim: float = 1.0
    # Step 5's perspective term: strong on purpose (a question about the user's own life is
    # answered by what the user said), yet not a filter: the other side's turns still follow.
    w_role: float = 5.0
    # Step 7, questions that count or total only: a turn moves this many places down the
    # list per turn of its own session ranked above it. Such a question needs every
    # instance, and a conversation tells of separate instances in separate sessions, while
    # steps 4-5 fill the top with one session's turns. 0 turns the step off; 1 and 2 gave
    # the same gain on the development files, 4 pushes a session's second evidence turn out.
    session_spread: float = Field(default=2.0, ge=0)


@dataclass(frozen=True)
class RankTurn:
    id: str
    session: str
    content: str
    speaker: str | None = None
    chat_time: str | None = None
    role: str | None = None  # "user" | "assistant", where the source says


def turn_text(turn: RankTurn) -> str:
    """What is indexed: the speaker's name in front when it is a name, not a role."""
    if not is_name(turn.speaker):
        return turn.content
    return f"{(turn.speaker or '').strip()}: {turn.content}"


# -- BM25 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BM25Index:
    """Term frequencies and document lengths; weights are computed for the query's terms
    at search time, so documents can be appended without touching the others' postings
    (their weights depend on the corpus size and mean length)."""

    postings: dict[str, tuple[np.ndarray, np.ndarray]]  # term -> (documents, frequencies)
    lengths: np.ndarray  # tokens per document, float32
    k1: float
    b: float

    @property
    def size(self) -> int:
        return len(self.lengths)


def bm25_build(docs: Sequence[Sequence[str]], k1: float, b: float) -> BM25Index:
    raw: dict[str, tuple[list[int], list[int]]] = {}
    for i, tokens in enumerate(docs):
        for term, tf in Counter(tokens).items():
            ids, freqs = raw.setdefault(term, ([], []))
            ids.append(i)
            freqs.append(tf)
    postings = {
        term: (np.asarray(ids, np.int64), np.asarray(freqs, np.float32))
        for term, (ids, freqs) in raw.items()
    }
    lengths = np.array([len(d) for d in docs], np.float32)
    return BM25Index(postings, lengths, k1, b)


def bm25_score(index: BM25Index, query_tokens: Sequence[str]) -> np.ndarray:
    n = index.size
    scores = np.zeros(n, np.float32)
    if not n:
        return scores
    avg = max(float(index.lengths.sum()) / n, 1.0)
    k1, b = index.k1, index.b
    for term in set(query_tokens):
        posting = index.postings.get(term)
        if posting is None:
            continue
        ids, tf = posting
        idf = math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5))
        norm = k1 * (1 - b + b * index.lengths[ids] / avg)
        scores[ids] += (tf * (k1 + 1) / (tf + norm)) * np.float32(idf)
    return scores


def bm25_extend(
    index: BM25Index, docs: Sequence[Sequence[str]], grow_last: Sequence[str] = ()
) -> BM25Index:
    """A new index with `grow_last` added to the last document and `docs` appended; the old
    index is left as it was (searches holding it run on unchanged)."""
    postings = dict(index.postings)
    lengths = index.lengths
    last = index.size - 1
    if grow_last:
        if last < 0:
            raise ValueError("no last document to grow")
        lengths = lengths.copy()
        lengths[last] += len(grow_last)
        for term, tf in Counter(grow_last).items():
            ids, freqs = postings.get(term, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
            if len(ids) and ids[-1] == last:
                freqs = freqs.copy()
                freqs[-1] += tf
            else:
                ids = np.append(ids, np.int64(last))
                freqs = np.append(freqs, np.float32(tf))
            postings[term] = (ids, freqs)
    for offset, tokens in enumerate(docs):
        doc = index.size + offset
        for term, tf in Counter(tokens).items():
            ids, freqs = postings.get(term, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
            postings[term] = (np.append(ids, np.int64(doc)), np.append(freqs, np.float32(tf)))
    lengths = np.concatenate([lengths, np.array([len(d) for d in docs], np.float32)])
    return BM25Index(postings, lengths, index.k1, index.b)


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


def _on_day(year: str, month: str, day: str, width: int) -> DateWindow:
    return dt.date(int(year), _MONTH_NUMBER[month], int(day)), width


def _days_before(day: dt.date, days: float, width: int) -> DateWindow:
    return day - dt.timedelta(days=days), width


def _units_ago(day: dt.date, count: str, unit: int) -> DateWindow:
    return day - dt.timedelta(days=_count(count) * unit), max(1, unit // 2 + 1)


def query_date_windows(query: str, asked_on: dt.date | None = None) -> list[DateWindow]:
    """Dates a question names, as (centre, half-width in days) or ("month", m).

    A date outside years 1..9999 (a far `reference_time`, "99999 days ago") names nothing.
    """
    s = query.lower()
    out: list[DateWindow] = []

    def add(make: Callable[..., DateWindow], *args: Any) -> None:
        with contextlib.suppress(ValueError, OverflowError):
            out.append(make(*args))

    for m in re.finditer(r"(\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH + r",?\s*(\d{4})", s):
        add(_on_day, m[3], m[2], m[1], 1)
    for m in re.finditer(_MONTH + r"\s+(\d{1,2})(?:st|nd|rd|th)?,?\s*(\d{4})", s):
        add(_on_day, m[3], m[1], m[2], 1)
    if not out:
        for m in re.finditer(_MONTH + r",?\s+(\d{4})", s):
            add(_on_day, m[2], m[1], "15", 16)
    if not out:
        for m in re.finditer(r"\b(?:in|of|during)\s+" + _MONTH + r"\b", s):
            out.append(("month", _MONTH_NUMBER[m[1]]))
    if asked_on is not None:
        day = asked_on
        for m in re.finditer(r"\b" + _COUNT + r"\s+(day|week|month|year)s?\s+ago", s):
            unit = _UNIT_DAYS[m[2]]
            add(_units_ago, day, m[1], unit)
        for m in re.finditer(r"\blast\s+(week|month|year|weekend)\b", s):
            unit = {"week": 7, "weekend": 7, "month": 30, "year": 365}[m[1]]
            add(_days_before, day, unit, unit // 2 + 1)
        if re.search(r"\byesterday\b", s):
            add(_days_before, day, 1, 1)
        for m in re.finditer(r"\b(?:past|last)\s+" + _COUNT + r"\s+(day|week|month)s?\b", s):
            width = _count(m[1]) * _UNIT_DAYS[m[2]]
            add(_days_before, day, width / 2, width // 2 + 1)
    return out


def _date_hits(windows: Sequence[DateWindow], days: np.ndarray, months: np.ndarray) -> np.ndarray:
    """1 where a unit's day (an ordinal; 0 = unknown) falls in one of the windows."""
    hits = np.zeros(len(days), bool)
    known = days > 0
    for centre, width in windows:
        if centre == "month":
            hits |= known & (months == width)
        else:
            hits |= known & (np.abs(days - centre.toordinal()) <= width)  # type: ignore[union-attr]
    return hits.astype(np.float32)


# -- index and search -------------------------------------------------------------------


def _z(x: np.ndarray) -> np.ndarray:
    """z-scores. Several per search over every unit of a cube: `ndarray.std` does the same
    in more passes, each a Python call under the interpreter lock."""
    centred = x - x.mean()
    return centred / (math.sqrt(float(np.dot(centred, centred)) / max(len(x), 1)) + 1e-9)


@dataclass(frozen=True)
class RankUnit:
    """One indexed memory: a turn, or any item (a document chunk is a session of one)."""

    id: str
    session: str
    text: str
    speaker: str = ""
    day: dt.date | None = None
    role: str = ""


# Step 5's perspective: unit roles as codes, and what a question is about.
ROLE_CODES = {"user": 1, "assistant": 2}
_ABOUT_ASSISTANT = re.compile(
    # What the assistant said before, not a request for something new ("can you suggest").
    r"\b(?:remind me|you (?:told|said|recommended|suggested|mentioned|provided|gave|listed|"
    r"described|explained|shared|wrote|came up with)|did you (?:tell|say|recommend|suggest|"
    r"mention|provide|give|list|describe|explain|share|write|come up with)|our (?:previous|"
    r"last|earlier) (?:chat|conversation|discussion))\b"
)
_FIRST_PERSON = re.compile(r"\b(?:i|me|my|mine|myself|i'm|i've|i'd|i'll)\b")


def role_code(unit: RankUnit) -> int:
    """The unit's side of the chat when its role is all that names its speaker, else 0."""
    return 0 if is_name(unit.speaker) else ROLE_CODES.get(unit.role.strip().lower(), 0)


def query_role(query: str) -> int:
    """Whose words answer the question: the assistant's, the user's (first person), or 0."""
    lowered = query.lower()
    if _ABOUT_ASSISTANT.search(lowered):
        return ROLE_CODES["assistant"]
    if _FIRST_PERSON.search(lowered):
        return ROLE_CODES["user"]
    return 0


@dataclass
class CubeIndex:
    ids: list[str]
    speakers: list[str]
    session_of: np.ndarray
    prev: np.ndarray
    next: np.ndarray
    days: np.ndarray  # date ordinals, 0 where unknown
    months: np.ndarray
    bm25: BM25Index
    bm25_sessions: BM25Index
    vectors: np.ndarray  # (n, d) unit rows
    # |e_t + e_prev| and |e_t + e_next| (1 where there is no neighbour): the context vectors
    # of step 2 are never materialised, their cosines come from e @ q.
    norm_prev: np.ndarray
    norm_next: np.ndarray
    # Whether each unit asks something (a "?" in its text): step 5's answers.
    asks: np.ndarray
    tokens: list[np.ndarray] | None = None
    # Each unit's distinct keyword terms (for query-term coverage without re-tokenising).
    terms: list[frozenset[str]] | None = None
    # Session names in index order (`session_of` numbers them).
    session_keys: list[str] | None = None
    # Spare rows after `vectors` for appends (`vectors` is a view of its head).
    rows: RowBuffer | None = None
    # `role_code` of each unit (int8; None: no unit has one).
    roles: np.ndarray | None = None
    # The distinct speakers that are names and each unit's place among them (-1: none),
    # worked out on the first search rather than over every unit on every search.
    _names: tuple[list[str], np.ndarray] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.ids)

    def speaker_names(self) -> tuple[list[str], np.ndarray]:
        if self._names is None:
            names = [s for s in dict.fromkeys(self.speakers) if is_name(s)]
            place = {name: i for i, name in enumerate(names)}
            codes = np.fromiter((place.get(s, -1) for s in self.speakers), np.int32, self.size)
            self._names = (names, codes)
        return self._names


class RowBuffer:
    """Vectors with room to grow: an append writes past the rows any index views, so older
    indexes sharing the buffer see nothing change; only the newest index may append."""

    def __init__(self, rows: np.ndarray) -> None:
        n, d = rows.shape
        self.data = np.empty((max(2 * n, 64), d), np.float32)
        self.data[:n] = rows
        self.used = n

    def extend(self, viewed: int, rows: np.ndarray) -> tuple[np.ndarray, RowBuffer]:
        """The first `viewed` rows plus `rows`, in this buffer when it can, else a new one."""
        end = viewed + len(rows)
        if viewed == self.used and end <= len(self.data):
            self.data[viewed:end] = rows
            self.used = end
            return self.data[:end], self
        grown = RowBuffer(np.concatenate([self.data[:viewed], rows]))
        return grown.data[:end], grown


def index_units(
    units: Sequence[RankUnit],
    vectors: np.ndarray,
    tokens: list[np.ndarray] | None = None,
    params: RankingParams | None = None,
) -> CubeIndex:
    """Units in order (a session's units contiguous, chronological); vectors row-aligned."""
    params = params or RankingParams()
    n = len(units)
    session_keys: list[str] = []
    session_of = np.zeros(n, np.int64)
    for i, unit in enumerate(units):
        if not session_keys or session_keys[-1] != unit.session:
            session_keys.append(unit.session)
        session_of[i] = len(session_keys) - 1
    pos = np.arange(n)
    prev = np.where((pos > 0) & (session_of[np.maximum(pos - 1, 0)] == session_of), pos - 1, -1)
    nxt = np.where(
        (pos < n - 1) & (session_of[np.minimum(pos + 1, n - 1)] == session_of), pos + 1, -1
    )
    e = np.asarray(vectors, np.float32)
    e = e.reshape(n, e.shape[-1] if e.ndim == 2 else 0)
    rows = RowBuffer(e) if e.shape[1] else None
    if rows is not None:
        e = rows.data[:n]
    norm_prev = np.where(prev >= 0, np.linalg.norm(e + e[np.maximum(prev, 0)], axis=1), 1.0).astype(
        np.float32
    )
    norm_next = np.where(nxt >= 0, np.linalg.norm(e + e[np.maximum(nxt, 0)], axis=1), 1.0).astype(
        np.float32
    )
    token_lists = [tokenize(u.text) for u in units]
    session_docs: list[list[str]] = [[] for _ in session_keys]
    for i, toks in enumerate(token_lists):
        session_docs[session_of[i]].extend(toks)
    return CubeIndex(
        ids=[u.id for u in units],
        speakers=[u.speaker.lower() for u in units],
        session_of=session_of,
        prev=prev,
        next=nxt,
        days=np.array([u.day.toordinal() if u.day else 0 for u in units], np.int64),
        months=np.array([u.day.month if u.day else 0 for u in units], np.int64),
        bm25=bm25_build(token_lists, params.k1, params.b),
        bm25_sessions=bm25_build(session_docs, params.k1, params.b),
        vectors=e,
        norm_prev=np.maximum(norm_prev, 1e-9),
        norm_next=np.maximum(norm_next, 1e-9),
        tokens=tokens,
        terms=[frozenset(toks) for toks in token_lists],
        session_keys=session_keys,
        rows=rows,
        roles=_roles(units),
        asks=_asks(units),
    )


def _asks(units: Sequence[RankUnit]) -> np.ndarray:
    return np.fromiter(("?" in u.text for u in units), bool, len(units))


def _roles(units: Sequence[RankUnit]) -> np.ndarray | None:
    """`role_code` per unit; None when no unit has a side (the term is skipped)."""
    codes = np.array([role_code(u) for u in units], np.int8)
    return codes if codes.any() else None


def append_units(
    index: CubeIndex,
    units: Sequence[RankUnit],
    vectors: np.ndarray,
    tokens: list[np.ndarray] | None = None,
) -> CubeIndex:
    """`index` with `units` added at its end, as `index_units` over all of them would give.

    The units must sort after every indexed one: each continues the last session or starts
    a new one (else ValueError; the caller rebuilds). `index` itself is not changed.
    """
    keys = list(index.session_keys or [])
    if index.session_keys is None or (index.rows is None and index.size):
        raise ValueError("this index cannot take appends (built without session keys)")
    if (tokens is None) != (index.tokens is None):
        raise ValueError("token vectors must come with the units exactly when indexed")
    n, k = index.size, len(units)
    if not k:
        return index
    known = set(keys)
    session_of: list[int] = []
    unit_docs: list[list[str]] = []
    grow_last: list[str] = []
    new_sessions: list[list[str]] = []
    for unit in units:
        if not keys or unit.session != keys[-1]:
            if unit.session in known:
                raise ValueError(f"session {unit.session!r} is not the last one")
            keys.append(unit.session)
            known.add(unit.session)
            new_sessions.append([])
        session_of.append(len(keys) - 1)
        toks = tokenize(unit.text)
        unit_docs.append(toks)
        if new_sessions:
            new_sessions[-1].extend(toks)
        else:
            grow_last.extend(toks)
    sessions = np.concatenate([index.session_of, np.asarray(session_of, np.int64)])
    new = np.asarray(vectors, np.float32).reshape(k, -1)
    if index.rows is None:
        rows = RowBuffer(new)
        e = rows.data[:k]
    else:
        e, rows = index.rows.extend(n, new)
    pos = np.arange(n, n + k)
    prev_new = np.array(
        [p - 1 if p > 0 and sessions[p - 1] == sessions[p] else -1 for p in pos], np.int64
    )
    prev = np.concatenate([index.prev, prev_new])
    nxt = np.concatenate([index.next, np.full(k, -1, np.int64)])
    nxt[prev_new[prev_new >= 0]] = pos[prev_new >= 0]
    norm_next = np.concatenate([index.norm_next, np.ones(k, np.float32)])
    if n and nxt[n - 1] == n:  # the last indexed unit now has a successor
        norm_next[n - 1] = _pair_norms(e, np.array([n - 1]), np.array([n]))[0]
    norm_next[n:] = _pair_norms(e, pos, nxt[n:])
    norm_prev = np.concatenate([index.norm_prev, _pair_norms(e, pos, prev_new)])
    return CubeIndex(
        ids=index.ids + [u.id for u in units],
        speakers=index.speakers + [u.speaker.lower() for u in units],
        session_of=sessions,
        prev=prev,
        next=nxt,
        days=np.concatenate(
            [index.days, np.array([u.day.toordinal() if u.day else 0 for u in units], np.int64)]
        ),
        months=np.concatenate(
            [index.months, np.array([u.day.month if u.day else 0 for u in units], np.int64)]
        ),
        bm25=bm25_extend(index.bm25, unit_docs),
        bm25_sessions=bm25_extend(index.bm25_sessions, new_sessions, grow_last),
        vectors=e,
        norm_prev=norm_prev,
        norm_next=norm_next,
        tokens=None if tokens is None else (index.tokens or []) + list(tokens),
        terms=(index.terms or []) + [frozenset(toks) for toks in unit_docs],
        session_keys=keys,
        rows=rows,
        roles=_appended_roles(index, units),
        asks=np.concatenate([index.asks, _asks(units)]),
    )


def _appended_roles(index: CubeIndex, units: Sequence[RankUnit]) -> np.ndarray | None:
    new = np.array([role_code(u) for u in units], np.int8)
    if index.roles is None and not new.any():
        return None
    old = index.roles if index.roles is not None else np.zeros(index.size, np.int8)
    return np.concatenate([old, new])


def _pair_norms(e: np.ndarray, pos: np.ndarray, other: np.ndarray) -> np.ndarray:
    """|e_p + e_other| per position, 1 where there is no neighbour (as `index_units`)."""
    norms = np.where(other >= 0, np.linalg.norm(e[pos] + e[np.maximum(other, 0)], axis=1), 1.0)
    return np.maximum(norms, 1e-9).astype(np.float32)


def build_index(
    turns: Sequence[RankTurn],
    embed: Embed,
    token_embed: TokenEmbed | None = None,
    params: RankingParams | None = None,
) -> CubeIndex:
    """Turns in chronological order; a session's turns are contiguous."""
    units = [
        RankUnit(
            t.id, t.session, turn_text(t), t.speaker or "", parse_date(t.chat_time), t.role or ""
        )
        for t in turns
    ]
    texts = [u.text for u in units]
    vectors = np.asarray(embed(texts), np.float32)
    tokens = token_embed(texts) if token_embed is not None else None
    return index_units(units, vectors, tokens, params)


def first_stage(
    index: CubeIndex,
    query: str,
    query_vector: np.ndarray,
    asked_at: str | None = None,
    params: RankingParams | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Steps 1-5: one fused score per unit; units outside `allowed` (a mask) get -inf."""
    params = params or RankingParams()
    query_tokens = tokenize(query)
    score = _z(bm25_score(index.bm25, query_tokens))
    cos = index.vectors @ np.asarray(query_vector, np.float32)
    with_prev = np.where(index.prev >= 0, cos + cos[np.maximum(index.prev, 0)], cos)
    with_next = np.where(index.next >= 0, cos + cos[np.maximum(index.next, 0)], cos)
    dense = cos + with_prev / index.norm_prev + with_next / index.norm_next
    score += params.w_dense * _z(dense)
    lowered = query.lower()
    names, codes = index.speaker_names()
    named = [i for i, s in enumerate(names) if re.search(rf"\b{re.escape(s)}\b", lowered)]
    if named:
        boost = np.zeros(len(names) + 1, np.float32)  # the last entry: units with no name
        boost[named] = params.w_speaker
        score += boost[codes]
    low = score.min()
    neighbour = np.maximum(
        np.where(index.prev >= 0, score[np.maximum(index.prev, 0)], low),
        np.where(index.next >= 0, score[np.maximum(index.next, 0)], low),
    )
    score = score + params.g_neighbour * neighbour
    sessions = index.session_of
    best = np.full(int(sessions.max()) + 1 if len(sessions) else 0, -np.inf, np.float32)
    np.maximum.at(best, sessions, score)
    score = (
        score
        + params.lam_session_max * _z(best)[sessions]
        + params.lam_session_bm25 * _z(bm25_score(index.bm25_sessions, query_tokens))[sessions]
    )
    if params.w_answer:
        before = np.maximum(index.prev, 0)
        after_question = (index.prev >= 0) & index.asks[before]
        lift = np.where(after_question, np.maximum(score[before] - score, 0), 0)
        score = score + params.w_answer * lift
    windows = query_date_windows(query, parse_date(asked_at))
    if windows:
        score = score + params.w_date * _date_hits(windows, index.days, index.months)
    if params.w_role and index.roles is not None:
        side = query_role(query)
        if side:
            score = score + params.w_role * (index.roles == side)
    if allowed is not None:
        score = np.where(allowed, score, -np.inf)
    return score


def head(score: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n best finite scores, best first (ties by position)."""
    finite = np.flatnonzero(np.isfinite(score))
    if len(finite) > n:
        part = np.argpartition(-score[finite], n - 1)[:n]
        finite = finite[part]
    return finite[np.lexsort((finite, -score[finite]))]


def late_rerank(
    score: np.ndarray, top: np.ndarray, late: np.ndarray, params: RankingParams | None = None
) -> np.ndarray:
    """Step 6: re-sort `top` by z(first-stage) + w_maxsim * z(MaxSim); NaN late = no vector."""
    params = params or RankingParams()
    if len(top) < 2 or not params.w_maxsim or np.isnan(late).all():
        return top
    late = np.where(np.isnan(late), np.nanmin(late), late)
    combined = _z(score[top]) + params.w_maxsim * _z(late)
    return top[np.argsort(-combined, kind="stable")]


# Counting and totalling questions: their evidence is every instance, not one turn.
_AGGREGATE = re.compile(r"\b(?:how many|how much|in total|total|combined)\b")


def is_aggregate(query: str) -> bool:
    return _AGGREGATE.search(query.lower()) is not None


def spread_sessions(
    index: CubeIndex, query: str, order: np.ndarray, params: RankingParams | None = None
) -> np.ndarray:
    """Step 7: for a counting or totalling question, re-walk `order` (best first): a turn's
    key is its place plus `session_spread` per turn of its session already taken; the
    smallest key goes next (ties: the earlier place). Other questions keep `order`."""
    params = params or RankingParams()
    if not params.session_spread or len(order) < 2 or not is_aggregate(query):
        return order
    sessions = index.session_of[order]
    heap = [(float(p), p) for p in range(len(order))]
    taken: Counter[int] = Counter()
    out = []
    while heap:
        key, p = heapq.heappop(heap)
        due = p + params.session_spread * taken[int(sessions[p])]
        if due > key:
            heapq.heappush(heap, (due, p))
            continue
        out.append(order[p])
        taken[int(sessions[p])] += 1
    return np.asarray(out, dtype=order.dtype)


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
    """Unit ids, best first, with MaxSim over the index's own token vectors."""
    params = params or RankingParams()
    score = first_stage(index, query, query_vector, asked_at, params)
    top = head(score, max(params.rerank_n, top_k))
    rerank = top[: params.rerank_n]
    if query_tokens is not None and index.tokens is not None:
        late = np.array(
            [maxsim(query_tokens, index.tokens[int(j)].astype(np.float32)) for j in rerank]
        )
        rerank = late_rerank(score, rerank, late, params)
    order = np.concatenate([rerank, top[params.rerank_n :]])
    order = spread_sessions(index, query, order, params)
    return [index.ids[i] for i in order[:top_k]]

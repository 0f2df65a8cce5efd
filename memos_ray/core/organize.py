"""Reorganisation algorithms: duplicates, superseded facts and the topic tree (no Ray, no DB).

Inputs are plain `Entry` rows plus the cube's stored dense vectors (unit length, one row per
entry); outputs are plans that `memos_ray.services.reorganize` applies to the stores.
Everything here is deterministic: the same entries and vectors always give the same plan,
which is what makes a second run of the job change nothing.

Rules (documented in jobs/README.md):
- Exact duplicates: the same text once case, punctuation and spacing are ignored.
- Near duplicates: cosine >= a threshold AND the same anchors: every number, capitalised
  word, date/time word and negation of one text occurs in the other. Paraphrases keep their
  anchors; "camping in June 2023" vs "in July 2023" (cosine 0.98 with MiniLM) do not.
- Only memories of the same user, memory type and mode are compared; the oldest survives
  (then the one with more sources, then the smaller id) and absorbs the others.
- Superseded facts without an LLM: memories of one user whose `key` is the same (normalised)
  and whose vectors are at least `key_similarity` alike hold two values of one slot; the newest
  wins and the older ones are archived, pointing at it.
- Topic tree: recursive spherical k-means (seeded) splits the active memories until a group
  has at most `leaf_size` members; each group is a topic node, its id derived from its
  children, so an unchanged group keeps its node and edges.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from memos_ray.core.keywords import STOPWORDS

_TOPIC_NAMESPACE = uuid.UUID("0b6f0a8e-3f1d-4a52-8c8e-6d2f5b7e9a31")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_NEGATIONS = frozenset(
    ["not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without"]
)
# Words that date an event: two texts differing in them describe different occasions.
_TIME_WORDS = frozenset(
    """today yesterday tomorrow tonight morning afternoon evening night noon midnight
    last next ago earlier later soon recently now week weekend month year decade
    monday tuesday wednesday thursday friday saturday sunday
    january february march april may june july august september october november december
    spring summer autumn fall winter""".split()  # noqa: SIM905
)
_APOSTROPHE_NOT = ("n't", "n\u2019t")


@dataclass(frozen=True)
class Entry:
    """What the algorithms need to know about one memory."""

    id: str
    # The memory's text (duplicates and anchors are judged on it).
    text: str
    user_id: str
    memory_type: str
    mode: str
    created_at: str
    sources: int = 0
    key: str | None = None
    # False for memories that may be clustered but never merged or archived (e.g. raw turns).
    mergeable: bool = True
    # What keywords and summaries are drawn from (defaults to `text`).
    plain: str | None = None

    @property
    def words_source(self) -> str:
        return self.plain if self.plain is not None else self.text


@dataclass(frozen=True)
class Merge:
    """`absorbed` says the same as `kept`: its sources join `kept`, it is archived."""

    kept: str
    absorbed: str
    reason: str
    similarity: float


@dataclass(frozen=True)
class Supersede:
    """`old` no longer holds: archived, pointing (MERGED_TO) at `new`."""

    old: str
    new: str
    reason: str
    similarity: float


# -- text ---------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Case, punctuation and spacing removed: exact duplicates compare equal."""
    return " ".join(_WORD.findall(_expand_not(text.casefold())))


def _expand_not(text: str) -> str:
    for contraction in _APOSTROPHE_NOT:
        text = text.replace(contraction, " not")
    return text


def anchors(text: str) -> frozenset[str]:
    """Words a paraphrase must keep: numbers, names (capitalised), time words, negations."""
    found: set[str] = set()
    for raw in _WORD.findall(_expand_not(text)):
        word = raw.casefold()
        named = raw[0].isupper() and word not in STOPWORDS
        if named or word in _NEGATIONS or word in _TIME_WORDS or any(c.isdigit() for c in raw):
            found.add(word)
    return frozenset(found)


def same_anchors(a: str, b: str) -> bool:
    words_a, words_b = set(normalise(a).split()), set(normalise(b).split())
    return anchors(a) <= words_b and anchors(b) <= words_a


# -- duplicates and superseded facts ------------------------------------------------------


def _priority(entry: Entry) -> tuple[str, int, str]:
    """Survivor order: oldest first, then better sourced, then id (a total order)."""
    return (entry.created_at, -entry.sources, entry.id)


def _neighbours(vectors: np.ndarray, threshold: float, block: int = 1024) -> list[list[int]]:
    """For each row, the other rows with cosine >= threshold (blocked matrix products)."""
    n = len(vectors)
    found: list[list[int]] = [[] for _ in range(n)]
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + r != c:
                found[start + r].append(c)
    return found


def plan_duplicates(
    entries: Sequence[Entry], vectors: np.ndarray | None, threshold: float
) -> list[Merge]:
    """Exact and near duplicates among mergeable entries, grouped by user, type and mode.

    A leader pass in survivor order: each surviving entry absorbs the later entries that
    duplicate it directly, so similarity never chains A~B~C into one group.
    """
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, entry in enumerate(entries):
        if entry.mergeable:
            groups.setdefault((entry.user_id, entry.memory_type, entry.mode), []).append(i)
    merges: list[Merge] = []
    for members in groups.values():
        members.sort(key=lambda i: _priority(entries[i]))
        rank = {i: r for r, i in enumerate(members)}
        near: list[list[int]] = [[] for _ in members]
        if vectors is not None and len(members) > 1:
            local = _neighbours(vectors[members], threshold)
            near = [[members[j] for j in row] for row in local]
        by_text: dict[str, list[int]] = {}
        for i in members:
            by_text.setdefault(normalise(entries[i].text), []).append(i)
        absorbed: set[int] = set()
        for r, leader in enumerate(members):
            if leader in absorbed:
                continue
            lead = entries[leader]
            candidates = {j for j in by_text[normalise(lead.text)] if rank[j] > r}
            candidates |= {j for j in near[r] if rank[j] > r}
            for j in sorted(candidates, key=rank.__getitem__):
                if j in absorbed:
                    continue
                other = entries[j]
                sim = _cosine(vectors, leader, j)
                if normalise(other.text) == normalise(lead.text):
                    reason = "exact duplicate"
                elif sim >= threshold and same_anchors(lead.text, other.text):
                    reason = "near duplicate"
                else:
                    continue
                absorbed.add(j)
                merges.append(Merge(lead.id, other.id, reason, round(sim, 4)))
    return sorted(merges, key=lambda m: (m.kept, m.absorbed))


def _cosine(vectors: np.ndarray | None, i: int, j: int) -> float:
    if vectors is None:
        return float("nan")
    return float(vectors[i] @ vectors[j])


def plan_key_conflicts(
    entries: Sequence[Entry], vectors: np.ndarray | None, similarity: float
) -> list[Supersede]:
    """Same user, same key, alike enough: the newest value wins (the no-LLM rule)."""
    slots: dict[tuple[str, str], list[int]] = {}
    for i, entry in enumerate(entries):
        key = normalise(entry.key or "")
        if entry.mergeable and key:
            slots.setdefault((entry.user_id, key), []).append(i)
    out: list[Supersede] = []
    for members in slots.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: _priority(entries[i]), reverse=True)
        newest = members[0]
        for i in members[1:]:
            if normalise(entries[i].text) == normalise(entries[newest].text):
                continue
            sim = _cosine(vectors, newest, i)
            if vectors is not None and sim < similarity:
                continue
            out.append(
                Supersede(entries[i].id, entries[newest].id, "same key, newer value", round(sim, 4))
            )
    return sorted(out, key=lambda s: (s.new, s.old))


@dataclass(frozen=True)
class JudgeCase:
    """A memory and the older, similar memories an LLM should compare it with."""

    new: int
    older: tuple[int, ...]
    similarities: tuple[float, ...]


def judge_cases(
    entries: Sequence[Entry], vectors: np.ndarray, similarity: float, candidates: int
) -> list[JudgeCase]:
    """Oldest first: each mergeable memory with up to `candidates` older ones of its user at
    cosine >= `similarity`, most similar first."""
    mergeable = [i for i, e in enumerate(entries) if e.mergeable]
    if len(mergeable) < 2:
        return []
    local = _neighbours(vectors[mergeable], similarity)
    cases: list[JudgeCase] = []
    for r, i in enumerate(mergeable):
        older = [
            mergeable[c]
            for c in local[r]
            if entries[mergeable[c]].user_id == entries[i].user_id
            and _priority(entries[mergeable[c]]) < _priority(entries[i])
        ]
        if not older:
            continue
        older.sort(key=lambda j: (-_cosine(vectors, i, j), _priority(entries[j])))
        picked = older[:candidates]
        sims = tuple(round(_cosine(vectors, i, j), 4) for j in picked)
        cases.append(JudgeCase(i, tuple(picked), sims))
    return sorted(cases, key=lambda c: _priority(entries[c.new]))


# -- topic tree ---------------------------------------------------------------------------


@dataclass
class TopicPlan:
    """One topic node: `children` are memory ids (a leaf topic) or topic ids."""

    id: str
    level: int
    children: list[str]
    # Indexes (into the entries) of every memory below this topic.
    members: list[int]
    is_root: bool = False
    keywords: list[str] = field(default_factory=list)
    central: int = -1
    fingerprint: str = ""


def topic_id(cube_id: str, children: Sequence[str]) -> str:
    """Derived from the children: the same group always maps to the same node."""
    digest = hashlib.sha256("\n".join(sorted(children)).encode()).hexdigest()
    return str(uuid.uuid5(_TOPIC_NAMESPACE, f"{cube_id}\x00{digest}"))


def kmeans(vectors: np.ndarray, k: int, seed: int, iterations: int = 30) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; labels per row, deterministic."""
    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    rng = np.random.default_rng(seed)
    centres = [int(rng.integers(n))]
    distance = 1.0 - vectors @ vectors[centres[0]]
    for _ in range(1, k):
        weights = np.clip(distance, 0, None)
        total = float(weights.sum())
        nxt = int(rng.choice(n, p=weights / total)) if total > 1e-9 else int(np.argmax(distance))
        centres.append(nxt)
        distance = np.minimum(distance, 1.0 - vectors @ vectors[nxt])
    centroids = vectors[centres].copy()
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.argmax(vectors @ centroids.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        members = np.zeros((k, n))
        members[labels, np.arange(n)] = 1.0
        sums = members @ vectors
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # An emptied cluster keeps its previous centre.
        centroids = np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), centroids)
    return labels


def build_topic_tree(
    cube_id: str,
    entries: Sequence[Entry],
    vectors: np.ndarray,
    *,
    leaf_size: int = 20,
    branching: int = 8,
    seed: int = 0,
) -> list[TopicPlan]:
    """Topics over all entries (each entry under exactly one leaf topic); children first,
    the root last. Entries are taken in id order, so the store's order does not matter."""
    if not entries:
        return []
    order = sorted(range(len(entries)), key=lambda i: entries[i].id)
    topics: list[TopicPlan] = []
    _split(cube_id, entries, vectors, order, 0, leaf_size, branching, seed, topics)
    topics[-1].is_root = True
    _describe(entries, vectors, topics)
    return topics


def _split(
    cube_id: str,
    entries: Sequence[Entry],
    vectors: np.ndarray,
    members: list[int],
    depth: int,
    leaf_size: int,
    branching: int,
    seed: int,
    out: list[TopicPlan],
) -> TopicPlan:
    if len(members) <= leaf_size:
        children = [entries[i].id for i in members]
        plan = TopicPlan(topic_id(cube_id, children), 0, children, list(members))
        out.append(plan)
        return plan
    k = min(branching, math.ceil(len(members) / leaf_size))
    labels = kmeans(vectors[members], k, seed + depth)
    parts = [[m for m, lab in zip(members, labels, strict=True) if lab == c] for c in range(k)]
    parts = [p for p in parts if p]
    if len(parts) < 2:
        # Indistinguishable vectors (e.g. all equal): split evenly so the recursion ends.
        size = math.ceil(len(members) / k)
        parts = [members[s : s + size] for s in range(0, len(members), size)]
    parts.sort(key=lambda p: entries[p[0]].id)
    subtopics = [
        _split(cube_id, entries, vectors, p, depth + 1, leaf_size, branching, seed, out)
        for p in parts
    ]
    children = [t.id for t in subtopics]
    level = 1 + max(t.level for t in subtopics)
    plan = TopicPlan(topic_id(cube_id, children), level, children, sorted(members))
    out.append(plan)
    return plan


def _describe(entries: Sequence[Entry], vectors: np.ndarray, topics: list[TopicPlan]) -> None:
    """Extractive description: distinctive keywords (tf-idf against the cube) and the member
    nearest the topic's centroid; plus a fingerprint of what the topic covers."""
    docs = [_words(e.words_source) for e in entries]
    df = Counter(w for words in docs for w in set(words))
    n = len(entries)
    for topic in topics:
        tf: Counter[str] = Counter()
        for i in topic.members:
            tf.update(set(docs[i]))
        scored = sorted(
            tf.items(), key=lambda kv: (-kv[1] * math.log((n + 1) / (df[kv[0]] + 0.5)), kv[0])
        )
        topic.keywords = [w for w, _ in scored[:5]]
        rows = vectors[topic.members]
        centre = rows.sum(axis=0)
        scores = rows @ centre
        best = max(range(len(topic.members)), key=lambda r: (scores[r], -r))
        topic.central = topic.members[best]
        listing = "\n".join(sorted(f"{entries[i].id}:{entries[i].text}" for i in topic.members))
        topic.fingerprint = hashlib.sha256(f"{topic.children}\n{listing}".encode()).hexdigest()[:32]


def _words(text: str) -> list[str]:
    return [
        w
        for w in _WORD.findall(text.casefold())
        if len(w) > 2 and w not in STOPWORDS and not any(c.isdigit() for c in w)
    ]


def extractive_summary(plan: TopicPlan, entries: Sequence[Entry], limit: int = 240) -> str:
    """The topic's most central memory, shortened, with how many it stands for."""
    text = " ".join(entries[plan.central].words_source.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    count = len(plan.members)
    noun = "memory" if count == 1 else "memories"
    return f"{count} {noun} about {', '.join(plan.keywords[:3])}. For example: {text}"

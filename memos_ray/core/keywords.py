"""Keyword side of hybrid recall: tokens, light stemming and BM25 sparse vectors.

Documents carry the BM25 term-frequency part; the store applies IDF at query time
(Qdrant's IDF modifier), so adding a memory never rewrites the others.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

from memos_ray.domain.memory import SparseVector

BM25_K1 = 1.2
BM25_B = 0.75
AVG_DOC_TOKENS = 48.0

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS: frozenset[str] = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "user",
        "assistant",
    ]
)


def stem(token: str) -> str:
    """A deliberately small suffix stripper: plural and common verb endings."""
    if len(token) <= 3 or token.isdigit():
        return token
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("s", "")):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            if suffix == "s" and token.endswith(("ss", "us", "is")):
                return token
            return token[: -len(suffix)] + keep
    return token


def tokenize(text: str) -> list[str]:
    return [stem(t) for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def term_id(term: str) -> int:
    """Stable across processes and restarts (unlike `hash`)."""
    return zlib.crc32(term.encode())


def document_vector(text: str) -> SparseVector:
    tokens = tokenize(text)
    if not tokens:
        return SparseVector()
    counts = Counter(term_id(t) for t in tokens)
    norm = BM25_K1 * (1 - BM25_B + BM25_B * len(tokens) / AVG_DOC_TOKENS)
    items = sorted(counts.items())
    return SparseVector(
        indices=[i for i, _ in items],
        values=[tf * (BM25_K1 + 1) / (tf + norm) for _, tf in items],
    )


def query_vector(text: str) -> SparseVector:
    ids = sorted({term_id(t) for t in tokenize(text)})
    return SparseVector(indices=ids, values=[1.0] * len(ids))

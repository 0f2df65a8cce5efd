"""Relative dates ("yesterday", "last week", "3 days ago") made absolute against the time a
message was said, so a memory still means the same thing months later.

The extraction prompt asks the LLM to do this; this pass catches what small models leave.
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime, timedelta

from memos_ray.core.turn_ranking import parse_date

_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "a couple of": 2,
    "three": 3,
    "a few": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_PREPOSITIONS = {"on", "in", "since", "until", "till", "by", "from", "before", "after", "of"}
_NUM = r"(\d+|a couple of|a few|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bthe day before yesterday\b", re.I), "day-2"),
    (re.compile(r"\bthe day after tomorrow\b", re.I), "day+2"),
    (re.compile(r"\byesterday\b", re.I), "day-1"),
    (re.compile(r"\btomorrow\b", re.I), "day+1"),
    (re.compile(r"\b(?:today|tonight|this (?:morning|afternoon|evening))\b", re.I), "day+0"),
    (re.compile(rf"\b{_NUM} (day|week|month|year)s? ago\b", re.I), "ago"),
    (re.compile(rf"\bin {_NUM} (day|week|month|year)s?\b", re.I), "ahead"),
    (re.compile(r"\b(last|next|this) (week|weekend|month|year)\b", re.I), "period"),
    (re.compile(rf"\b(last|next|this) ({'|'.join(_WEEKDAYS)})\b", re.I), "weekday"),
]


def resolve_relative_dates(text: str, said_at: str | datetime | date | None) -> str:
    """`text` with relative dates replaced by absolute ones; unchanged without a time."""
    anchor = _anchor(said_at)
    if anchor is None:
        return text
    for pattern, kind in _PATTERNS:
        text = pattern.sub(functools.partial(_resolved, kind=kind, anchor=anchor), text)
    return text


def _resolved(match: re.Match[str], kind: str, anchor: date) -> str:
    """The absolute phrase, or the words as said where the date leaves years 1..9999."""
    try:
        return _sentence_case(match, _replace(match, kind, anchor))
    except (OverflowError, ValueError):
        return match.group(0)


def _anchor(said_at: str | datetime | date | None) -> date | None:
    if said_at is None:
        return None
    if isinstance(said_at, datetime):
        return said_at.date()
    if isinstance(said_at, date):
        return said_at
    return parse_date(said_at)


def _sentence_case(match: re.Match[str], replacement: str) -> str:
    before = match.string[: match.start()].rstrip()
    if not before or before[-1] in ".!?\n":
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _replace(match: re.Match[str], kind: str, anchor: date) -> str:
    before = match.string[: match.start()].split()
    previous = before[-1].lower() if before else ""
    has_preposition = previous in _PREPOSITIONS
    if kind.startswith("day"):
        return _on(anchor + timedelta(days=int(kind[3:])), has_preposition)
    if kind in ("ago", "ahead"):
        count = _count(match.group(1))
        unit = match.group(2).lower()
        sign = -1 if kind == "ago" else 1
        return _shifted(anchor, sign * count, unit, has_preposition)
    if kind == "period":
        which, unit = match.group(1).lower(), match.group(2).lower()
        step = {"last": -1, "next": 1, "this": 0}[which]
        if unit == "weekend":
            monday = anchor - timedelta(days=anchor.weekday())
            saturday = monday + timedelta(days=5 + 7 * step)
            return _prefixed(f"the weekend of {_day(saturday)}", "on", has_preposition)
        return _shifted(anchor, step, unit, has_preposition)
    if kind == "weekday":
        which, name = match.group(1).lower(), match.group(2).lower()
        target = _WEEKDAYS.index(name)
        delta = target - anchor.weekday()
        if which == "last":
            delta = delta - 7 if delta >= 0 else delta
        elif which == "next":
            delta = delta + 7 if delta <= 0 else delta
        return _on(anchor + timedelta(days=delta), has_preposition)
    return match.group(0)


def _count(word: str) -> int:
    word = word.lower()
    return int(word) if word.isdigit() else _NUMBERS.get(word, 1)


def _shifted(anchor: date, amount: int, unit: str, has_preposition: bool) -> str:
    if unit == "day":
        return _on(anchor + timedelta(days=amount), has_preposition)
    if unit == "week":
        monday = anchor - timedelta(days=anchor.weekday()) + timedelta(weeks=amount)
        return _prefixed(f"the week of {_day(monday)}", "in", has_preposition)
    if unit == "month":
        index = anchor.year * 12 + anchor.month - 1 + amount
        month = date(index // 12, index % 12 + 1, 1)
        return _prefixed(month.strftime("%B %Y"), "in", has_preposition)
    return _prefixed(str(anchor.year + amount), "in", has_preposition)


def _day(day: date) -> str:
    return f"{day.day} {day.strftime('%B %Y')}"


def _on(day: date, has_preposition: bool) -> str:
    return _prefixed(_day(day), "on", has_preposition)


def _prefixed(phrase: str, preposition: str, has_preposition: bool) -> str:
    return phrase if has_preposition else f"{preposition} {phrase}"

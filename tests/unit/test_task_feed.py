"""The change feed's bookkeeping (memos_ray.scheduler.feed.ChangeLog): what a waiter is told."""

from __future__ import annotations

from memos_ray.scheduler.feed import ANY, ChangeLog


def test_a_waiter_hears_only_of_its_own_keys() -> None:
    log = ChangeLog()
    start = log.seq
    log.changed(["user:bob", "cube:bob"])
    assert not log.newer(["user:alice"], start)
    assert log.newer(["user:bob"], start)
    after = log.changed(["user:alice"])
    assert not log.newer(["user:alice"], after)
    assert not log.newer(["user:bob"], after)


def test_a_change_to_any_key_reaches_every_waiter() -> None:
    log = ChangeLog()
    start = log.changed(["user:bob"])
    log.changed([ANY])  # a requeue after a crash: whose tasks is not known
    assert log.newer(["user:alice"], start)


def test_a_number_the_feed_never_gave_means_it_restarted() -> None:
    log = ChangeLog()
    assert log.newer(["user:alice"], 7)  # a new feed is at 0: read the log again


def test_forgotten_keys_count_as_changed_when_forgotten() -> None:
    log = ChangeLog(max_keys=2)
    start = log.changed(["a"])
    log.changed(["b"])
    log.changed(["c"])  # "a" is forgotten now
    assert len(log.last) == 2
    assert log.newer(["a"], start)
    assert not log.newer(["a"], log.seq)

"""The scheduler gate's slot policy (pure): a cap, a fair line, leases that expire."""

from __future__ import annotations

from memos_ray.scheduler.actor import Slots


def test_cap_holds_and_a_freed_slot_goes_to_the_longest_waiting() -> None:
    slots = Slots(2)
    assert slots.acquire("a", 0) and slots.acquire("b", 0)
    assert not slots.acquire("c", 1) and not slots.acquire("d", 2)
    slots.release("a")
    # "a" asks again at once, but "c" has waited longest, then "d".
    assert not slots.acquire("a", 3) and not slots.acquire("d", 3)
    assert slots.acquire("c", 3)
    slots.release("b")
    assert slots.acquire("d", 4) and not slots.acquire("a", 4)
    assert sorted(slots.holders) == ["c", "d"]


def test_a_holder_keeps_its_slot_when_it_asks_again() -> None:
    slots = Slots(1)
    assert slots.acquire("a", 0) and slots.acquire("a", 1)
    assert not slots.acquire("b", 1)


def test_abandoned_slots_and_places_expire() -> None:
    slots = Slots(1, lease_s=10, waiter_ttl_s=2)
    assert slots.acquire("dead", 0)
    assert not slots.acquire("gave-up", 1)
    assert not slots.acquire("c", 2) and not slots.acquire("c", 3)
    # "gave-up" lost its place ahead of "c" by not asking again...
    assert not slots.acquire("c", 4) and "gave-up" not in slots.waiting
    # ...and at 10 the dead holder's lease is over: "c" gets the slot.
    assert slots.acquire("c", 10)
    assert not slots.acquire("gave-up", 10)

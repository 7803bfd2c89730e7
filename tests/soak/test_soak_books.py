"""The soak's books (bench/soak/books.py) on made-up records: what counts as a duplicate.

A duplicate is a second reconcile request a delivery caused on one object. A ``queued`` event
marked ``covered`` names a request someone else made after the delivery was stored (the
coalescer sent nothing for it): it confirms the delivery, and is not a second request.
"""

from __future__ import annotations

from bench.soak.books import QUEUED, Window, reconcile
from bench.soak.driving import Delivery, Hook
from bench.soak.observing import SeenEvent, SeenPatch

OBJ = "GitRepository/soak/src-0"
HOOK = Hook(0, "http://127.0.0.1:1/hook/x", "t" * 32, (OBJ,))
WINDOW = Window(0.0, 10.0, 20.0, 30.0)


def queued_event(delivery: str, requested_at: str, *, covered: bool = False) -> SeenEvent:
    return SeenEvent(
        id=f"{delivery}-{requested_at}",
        type=f"{QUEUED}.0.2.0",
        chain_id=None,
        delivery_id=delivery,
        run_id=f"{OBJ}@{requested_at}",
        pipeline=OBJ,
        outcome=None,
        seen_at=5.0,
        covered=covered,
    )


def books_for(events: list[SeenEvent]) -> tuple[int, int, int]:
    delivery = Delivery("d1", HOOK, first_sent=1.0, accepted_at=1.5)
    patches = {OBJ: [SeenPatch(OBJ, "T1", 2.0, "e1"), SeenPatch(OBJ, "T2", 3.0, "e2")]}
    books = reconcile([delivery], patches, events, [], WINDOW)
    return books.confirmed, books.duplicates, books.lost


def test_two_requests_of_its_own_are_a_duplicate() -> None:
    assert books_for([queued_event("d1", "T1"), queued_event("d1", "T2")]) == (1, 1, 0)


def test_a_request_that_covered_it_is_not_a_second_request() -> None:
    events = [queued_event("d1", "T1"), queued_event("d1", "T2", covered=True)]
    assert books_for(events) == (1, 0, 0)


def test_a_covering_request_alone_confirms_the_delivery() -> None:
    assert books_for([queued_event("d1", "T2", covered=True)]) == (1, 0, 0)

"""The collector tuning applied once the receiver has started (see ``settle_heap``)."""

from __future__ import annotations

import gc

from receiver.serving import GC_YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    # CPython's default, whatever an earlier in-process serve() (the TLS tests) left behind.
    gc.set_threshold(700, *before[1:])
    startup = [{"built": i} for i in range(1000)]  # stands for what startup leaves behind
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(startup)
        threshold = gc.get_threshold()
        assert threshold[0] == GC_YOUNG_THRESHOLD > 700
        assert threshold[1:] == before[1:]
        # Frozen objects are out of the collector's reach: no generation lists them.
        assert len(gc.get_objects()) < gc.get_freeze_count()
        assert not any(o is startup for o in gc.get_objects())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

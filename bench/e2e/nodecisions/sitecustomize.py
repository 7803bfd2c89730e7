"""Loaded only by ``bench/e2e/decisions.py``'s "off" arm (on the reconciler's PYTHONPATH):
targeting decisions are not recorded, everything else is as shipped."""

from reconciler import decisions


def _not_recorded(self: decisions.Decisions, target: str, reason: str, detail: str = "") -> None:
    return None


decisions.Decisions.add = _not_recorded  # type: ignore[method-assign]

"""Targeting decisions: which objects a delivery's targeting considered, and why each was or
was not reconciled.

"I pushed and nothing happened" is answered by these: targeting records a :class:`Decision`
per object (or per Receiver entry that failed) and the chain carries them (``queued``
events' ``customData`` and, when nothing was reconciled, the ``untargeted`` event), so the
answer is in the CDEvents stream, readable after the fact.

Bounded, because a sender chooses what a delivery names (a wildcard over thousands of
objects, a push to a repository hundreds of sources follow): at most :data:`MAX_DECISIONS`
are kept per delivery, the rest are only counted (``omitted``). Reasons are a closed set of
tokens (metric labels use them) with the human part in ``detail``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_DECISIONS = 16
"""Decisions kept per delivery; further ones are counted in ``omitted``."""
MAX_DETAIL = 200
"""Characters of one decision's detail kept (CEL expressions, URLs)."""

RECONCILED = "reconciled"
# Why an object was not reconciled (explicit resources).
NOT_FOUND = "not_found"
MATCH_LABELS = "match_labels"
FILTER_FALSE = "filter_false"
SHARD = "shard"
CROSS_NAMESPACE = "cross_namespace"
INVALID_RESOURCE = "invalid_resource"
# Why a source was not reconciled (automatic targeting).
NO_SOURCE = "no_source"
OTHER_REF = "other_ref"
PINNED = "pinned"
PATH_EXCLUDED = "path_excluded"
DELETED_REF = "deleted_ref"
NO_RESOURCES = "no_resources"

REASONS = frozenset(
    {
        RECONCILED,
        NOT_FOUND,
        MATCH_LABELS,
        FILTER_FALSE,
        SHARD,
        CROSS_NAMESPACE,
        INVALID_RESOURCE,
        NO_SOURCE,
        OTHER_REF,
        PINNED,
        PATH_EXCLUDED,
        DELETED_REF,
        NO_RESOURCES,
    }
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One object (``Kind/namespace/name``), or one Receiver entry, and what became of it."""

    target: str
    reason: str
    detail: str = ""

    @property
    def reconciled(self) -> bool:
        return self.reason == RECONCILED

    def as_data(self) -> dict[str, str]:
        out = {"target": self.target, "reason": self.reason}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(slots=True)
class Decisions:
    """The bounded record of one delivery's targeting."""

    kept: list[Decision] = field(default_factory=list)
    omitted: int = 0

    def __len__(self) -> int:
        """Decisions made, kept or not."""
        return len(self.kept) + self.omitted

    def add(self, target: str, reason: str, detail: str = "") -> None:
        if len(self.kept) < MAX_DECISIONS:
            if len(detail) > MAX_DETAIL:
                detail = detail[: MAX_DETAIL - 1] + "…"
            self.kept.append(Decision(target, reason, detail))
        else:
            self.omitted += 1

    def extend(self, other: Decisions) -> None:
        for decision in other.kept:
            self.add(decision.target, decision.reason, decision.detail)
        self.omitted += other.omitted

    @property
    def why_not(self) -> str:
        """The first reason nothing was reconciled (a metric label), ``no_resources`` when
        nothing was even considered."""
        for decision in self.kept:
            if not decision.reconciled:
                return decision.reason
        return NO_RESOURCES

    def as_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decisions": [d.as_data() for d in self.kept]}
        if self.omitted:
            out["omitted"] = self.omitted
        return out

"""The short soak: every single fault under steady signed load, books reconciled per delivery.

The CI version of ``bench/soak`` (same harness, same books): for each fault alone, real
nats-server (or a real 3-node cluster for the node loss), real kube-apiserver behind the fault
proxy, the receiver and two reconciler replicas as processes, the Flux stand-in and an HTTP
CDEvents sink; 50 deliveries/s for a few seconds before, during and after the fault. Asserts
the promises, never a timing:

1. every delivery answered 202 got a reconcile request on every object it targets (lost = 0);
2. sending every accepted delivery again (same delivery id) brings no new reconcile request;
3. no process crashed, every junk request got a 4xx, every good one a 202 in the end.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.soak.faulting import FAULTS
from bench.soak.run import SoakOptions, run_segment
from bench.soak.system import SoakSettings
from tests.support.kubeapi import KubeAPI

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

OPTIONS = SoakOptions(
    rate=50.0,
    pre=4.0,
    post=4.0,
    scale=0.15,  # fault lengths: NATS kill 1.5 s, node 4.5 s, API down 9 s, storm 4.5 s ...
    settle_timeout=60.0,
    quiet=3.0,
    retry_deadline=60.0,
    junk_fraction=0.05,
    settings=SoakSettings(receivers=6, objects=6, targets=2, ack_wait=5.0),
)

SINGLE_FAULTS = [name for name in FAULTS if name != "all-together"]


@pytest.mark.parametrize("fault", [pytest.param(f, id=f) for f in SINGLE_FAULTS])
async def test_no_accepted_delivery_is_lost_and_redelivery_is_deduplicated(
    kube: KubeAPI, fault: str, tmp_path: Path
) -> None:
    result = await run_segment(kube, FAULTS[fault], replace(OPTIONS, workdir=tmp_path))
    books = result["books"]

    assert books["accepted"] > 0
    assert books["gave_up"] == 0, books["answers"]
    assert books["refused"] == 0, books["answers"]
    # Promise 1: every (202, object) pair was reconciled; most attributed by their own event.
    assert books["lost"] == 0, books["lost_ids"]
    assert books["confirmed"] + books["covered"] == books["targets"]
    assert books["confirmed"] > 0
    # Promise 2: a redelivery of every accepted delivery id is a duplicate, and patches nothing.
    redelivery = result["redelivery"]
    assert redelivery["new_patches"] == 0
    assert redelivery["answers"] == {"202:duplicate:same-id": redelivery["sent"]}
    # Promise 3: no crash, junk refused with a 4xx.
    assert result["crashes"] == {}
    assert result["junk"], "junk was sent"
    assert all(key.split(":")[1].startswith("4") for key in result["junk"]), result["junk"]

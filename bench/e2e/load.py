"""The end-to-end load generator: signed GitHub pushes on a fixed schedule, in its own process.

The harness writes a plan (JSON) and runs ``python -m bench.e2e.load PLAN OUT``. Delivery
``i`` is due at ``start + i / rate`` and targets ``targets[i % len(targets)]`` (open loop:
a slow server does not slow the schedule down, it only fills the in-flight cap). At most
``max_in_flight`` requests are open at once, like wrk's connection count; this bounds what a
server that works per request (webhook starting one kubectl per hook) has to run at once.
Deliveries still waiting for a slot ``slack`` seconds after the schedule ended are not sent
and are reported as such.

For every delivery the output records when it was due, sent and answered, the status, and
its attribution: the ``fluxrelay.io/delivery`` value the target should end up with (the
envelope id from fluxrelay's 202 body, or the ``X-GitHub-Delivery`` id for webhook+kubectl).
Times are ``time.monotonic()``, comparable with the harness's watch events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


async def send_one(
    session: aiohttp.ClientSession,
    plan: dict[str, Any],
    body: bytes,
    index: int,
    due: float,
    record: dict[str, Any],
) -> None:
    target = plan["targets"][index % len(plan["targets"])]
    delivery_id = f"{plan['prefix']}-{index:06d}"
    headers = {**plan["headers"], "X-GitHub-Delivery": delivery_id}
    record.update(index=index, object=target["object"], due=due, sent=time.monotonic())
    try:
        async with session.post(target["url"], data=body, headers=headers) as resp:
            text = await resp.read()
            record["done"] = time.monotonic()
            record["status"] = resp.status
    except (aiohttp.ClientError, TimeoutError) as e:
        record["done"] = time.monotonic()
        record["error"] = type(e).__name__
        return
    if 200 <= resp.status < 300:
        if plan["attribution"] == "envelope-id":
            record["attribution"] = json.loads(text)["id"]
        else:
            record["attribution"] = delivery_id


async def run(plan: dict[str, Any], body: bytes) -> dict[str, Any]:
    count, rate = int(plan["count"]), float(plan["rate"])
    slots = asyncio.Semaphore(int(plan["max_in_flight"]))
    records: list[dict[str, Any]] = []
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=int(plan["max_in_flight"]), force_close=False)
    timeout = aiohttp.ClientTimeout(total=float(plan.get("timeout", 120)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic() + 0.2
        give_up = start + count / rate + float(plan.get("slack", 1.0))
        not_sent = 0
        for index in range(count):
            due = start + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            acquired = False
            remaining = give_up - time.monotonic()
            if remaining > 0:
                try:
                    await asyncio.wait_for(slots.acquire(), remaining)
                    acquired = True
                except TimeoutError:
                    pass
            if not acquired:
                not_sent = count - index
                for rest in range(index, count):
                    target = plan["targets"][rest % len(plan["targets"])]
                    records.append(
                        {"index": rest, "object": target["object"], "due": start + rest / rate}
                    )
                break
            record: dict[str, Any] = {}
            records.append(record)

            async def one(i: int = index, d: float = due, r: dict[str, Any] = record) -> None:
                try:
                    await send_one(session, plan, body, i, d, r)
                finally:
                    slots.release()

            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return {"start": start, "not_sent": not_sent, "deliveries": records}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.e2e.load PLAN.json OUT.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(args[0]).read_text())
    body = Path(plan["body_file"]).read_bytes()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(plan, body))
    else:
        result = uvloop.run(run(plan, body))
    Path(args[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

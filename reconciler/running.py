"""Running the reconciler process: Kubernetes client, Receivers, NATS, consumer, probes, drain.

:class:`Reconciler` wires the pieces once (no module-level state) so the CLI and in-process
tests run the same thing. Start order: Kubernetes client (kubeconfig or the in-cluster
service account), Receivers (a bad file refuses to start), reporting (outcome watching and
the CDEvents sinks), the patch pipeline, metrics site, then NATS in the background
(reconnecting forever) and the consumer loop. SIGTERM stops fetching, lets the messages in
flight finish for ``drain_timeout`` (naks the rest so another replica takes them at once)
and closes.

The pipeline is wired in the order a delivery goes through it: the consumer hands each
delivery to the targeter, each target to the coalescer (which admits a batch at the API gate
and has the patcher spend the ticket), and each result to the reporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from reconciler.app import Probes, create_metrics_app
from reconciler.backpressure import Backpressure, Limits
from reconciler.coalescing import Coalescer
from reconciler.consuming import Consumer, Reporter, Unreported
from reconciler.emitting import Emitter
from reconciler.kinds import shard_selector
from reconciler.metadata import MetadataCache
from reconciler.metrics import ReconcilerMetrics
from reconciler.outcome_metrics import OutcomeMetrics
from reconciler.outcomes import OutcomeWatcher
from reconciler.patching import Patcher
from reconciler.receivers import FileReceivers, KubeReceivers, ReceiverBook
from reconciler.reporting import ChainReporter
from reconciler.settings import ReconcilerSettings
from reconciler.sinks import build_sinks
from reconciler.targeting import IndexFactory, SourceMatcher, Targeter
from reconciler.throttling import ApiGate
from runtime import memory, natsconn
from schemas import subjects
from schemas.receivers import ConfigError

log = logging.getLogger(__name__)


def pull_limits(settings: ReconcilerSettings) -> Limits:
    """The bounds one replica pulls within (``reconciler.backpressure``), from the settings:
    the memory limit is ``--memory-limit``, else the container's cgroup limit (0: none)."""
    limit = settings.memory_limit
    if limit is None:
        limit = memory.cgroup_limit()
    return Limits(
        max_in_flight=settings.consumer.max_in_flight,
        max_in_flight_bytes=settings.consumer.max_in_flight_bytes,
        max_objects_waiting=settings.objects_waiting_limit,
        memory_limit=limit or None,
    )


async def kube_client(settings: ReconcilerSettings) -> k8s.ApiClient:
    """An ApiClient from ``--kubeconfig``, else the pod's service account."""
    configuration = k8s.Configuration()
    if settings.kubeconfig is not None:
        await k8s_config.load_kube_config(
            config_file=str(settings.kubeconfig), client_configuration=configuration
        )
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException as e:
            raise ConfigError(f"no --kubeconfig and not running in a pod: {e}") from e
    return k8s.ApiClient(configuration=configuration)


def default_index_factory(api: k8s.ApiClient, settings: ReconcilerSettings) -> IndexFactory:
    """Build the source index (``reconciler.indexing``) on first use of automatic targeting."""

    def factory() -> SourceMatcher:
        from reconciler.indexing import SourceIndex

        return SourceIndex(api, namespace=settings.namespace, shard=settings.shard)

    return factory


class Reconciler:
    """One reconciler process (or one in-process instance in a test)."""

    def __init__(
        self,
        settings: ReconcilerSettings,
        *,
        reporter: Reporter | None = None,
        index_factory: IndexFactory | None = None,
    ) -> None:
        """``reporter``: where deliveries are reported instead of the CDEvents chain with
        outcome following that the settings describe (a test's recorder)."""
        self.settings = settings
        self.metrics = ReconcilerMetrics()
        self.book = ReceiverBook()
        self.reporter = reporter
        self._index_factory = index_factory
        self.api: k8s.ApiClient | None = None
        self.nc: Client | None = None
        self.consumer: Consumer | None = None
        self.targeter: Targeter | None = None
        self.coalescer: Coalescer | None = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._advisories: Subscription | None = None
        self.outcome_metrics = OutcomeMetrics(self.metrics.registry)
        self.watcher: OutcomeWatcher | None = None
        self.emitter: Emitter | None = None
        self._watch_api: k8s.ApiClient | None = None

    # ------------------------------------------------------------------------------ probes

    def checks(self) -> dict[str, bool]:
        connected = self.nc is not None and self.nc.is_connected
        self.metrics.nats_connected.set(1 if connected else 0)
        self.metrics.receivers.set(len(self.book))
        return {
            "nats": connected,
            "consumer": self.consumer is not None and self.consumer.ready.is_set(),
            "receivers": self.book.loaded.is_set(),
        }

    @property
    def ready(self) -> bool:
        return all(self.checks().values())

    # ----------------------------------------------------------------------------- running

    async def start(self) -> None:
        """Start everything; raise ConfigError when the configuration cannot work."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        if s.config is None and not s.kubernetes:
            raise ConfigError("either --config FILE or --kubernetes is required")
        self.api = await kube_client(s)
        gate = ApiGate(s.patch, self.metrics)
        if s.kubernetes:
            source = KubeReceivers(
                self.api,
                self.book,
                namespace=s.namespace,
                label_selector=s.label_selector,
                watch_timeout=s.watch_timeout,
            )
            self._spawn(source.run(), "receivers")
        else:
            assert s.config is not None
            files = FileReceivers(s.config, s.reload_interval, self.book)
            await files.load()
            self._spawn(files.run(), "receivers")
        if self.reporter is None:
            self.reporter = await self._start_reporting()
        metadata = MetadataCache(self.api, self.metrics, namespace=s.namespace, shard=s.shard)
        patcher = Patcher(self.api, gate, self.metrics, seen=metadata.saw)
        self.coalescer = Coalescer(
            patcher.patch,
            s.coalesce_window,
            self.metrics,
            admit=gate.admit,
            last_request=metadata.last_request,
        )
        self.targeter = Targeter(
            self.api,
            gate,
            self.book,
            self.metrics,
            shard=s.shard,
            allow_cross_namespace=s.allow_cross_namespace,
            cache_ttl=s.patch.object_cache_ttl,
            index_factory=self._index_factory or default_index_factory(self.api, s),
            metadata=metadata,
        )
        self._runner = web.AppRunner(
            create_metrics_app(Probes(self.metrics, self.checks)), access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.metrics_host, s.metrics_port)
        await site.start()
        self.metrics_port = int(self._runner.addresses[0][1])
        self._spawn(self._consume(), "consume")
        log.info(
            "reconciler started (durable %s, shard %s, metrics :%d)",
            s.durable,
            s.shard or "-",
            self.metrics_port,
        )

    async def _start_reporting(self) -> Reporter:
        """Outcome watching and CDEvents out (``reconciler.reporting``), as configured."""
        s = self.settings
        if s.outcome_timeout > 0:
            self._watch_api = await kube_client(s)  # watches never take the patches' pool slots
            self.watcher = OutcomeWatcher(
                self._watch_api,
                self.outcome_metrics,
                timeout=s.outcome_timeout,
                max_followed=s.max_followed,
                label_selector=shard_selector(s.shard),
                per_namespace=s.namespace is not None,
            )
        if s.cdevents.enabled:
            sinks = build_sinks(s.nats_url, s.cdevents, self.outcome_metrics, self._nats_options())
            self.emitter = Emitter(sinks, self.outcome_metrics)
            await self.emitter.start()
        if self.watcher is None and self.emitter is None:
            return Unreported()
        return ChainReporter(
            self.emitter.emit if self.emitter is not None else None,
            self.watcher,
            self.outcome_metrics,
            source=s.cdevents.source,
            shard=s.shard,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _nats_options(self) -> dict[str, Any]:
        """Credentials and TLS for every NATS connection of this process (the consumer's and
        the CDEvents sink's), with replies under the reconciler's own inbox prefix: NATS
        permissions let it subscribe there only (schemas.subjects, deploy/nats/)."""
        return {
            **self.settings.nats_auth.connect_options(),
            "inbox_prefix": subjects.RECONCILER_INBOX_PREFIX,
        }

    async def _connect(self) -> Client:
        return await natsconn.connect(
            natsconn.servers(self.settings.nats_url), self._nats_options()
        )

    async def _consume(self) -> None:
        assert self.targeter is not None and self.coalescer is not None
        assert self.reporter is not None
        self.nc = await self._connect()
        consumer: Consumer | None = None
        backpressure = Backpressure(
            pull_limits(self.settings),
            self.metrics,
            lambda: consumer.objects_waiting if consumer is not None else 0,
        )
        self._spawn(backpressure.watch_memory(), "memory")
        consumer = Consumer(
            self.nc,
            self.settings.consumer,
            self.settings.durable,
            self.targeter,
            self.coalescer,
            self.metrics,
            reporter=self.reporter,
            backpressure=backpressure,
        )
        self.consumer = consumer

        dead_letters = consumer.dead_letters
        self._advisories = await self.nc.subscribe(
            dead_letters.advisory_subject(), cb=dead_letters.on_max_deliveries
        )
        lag = asyncio.create_task(consumer.poll_lag(), name="consumer-lag")
        try:
            await consumer.run(self._stop)
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag

    async def stop(self) -> None:
        """Stop fetching, drain messages in flight, close every connection."""
        self._stop.set()
        consume = next((t for t in self._tasks if t.get_name() == "consume"), None)
        if consume is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(consume), self.settings.consumer.fetch_timeout + 5
                )
        if self.consumer is not None:
            await self.consumer.drain(self.settings.drain_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.coalescer is not None:
            await self.coalescer.close()
        if self.targeter is not None:
            await self.targeter.close()
        if self.watcher is not None:
            await self.watcher.close()
        if self.emitter is not None:
            await self.emitter.close(self.settings.cdevents.drain_timeout)
        if self._watch_api is not None:
            await self._watch_api.close()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (NatsError, TimeoutError):
                await self.nc.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.api is not None:
            await self.api.close()
        log.info("reconciler stopped")


async def serve(settings: ReconcilerSettings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    reconciler = Reconciler(settings)
    await reconciler.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping: draining messages in flight")
        await reconciler.stop()

"""fluxrelay reconciler: consumes stored events and triggers exactly-targeted Flux reconciliations.

Operational contract (details in ``settings.py``; every value is a flag and a variable):

- Streams are the receiver's (``FLUXRELAY_EVENTS`` on ``fluxrelay.events.>``, dead letters on
  ``FLUXRELAY_DEAD``); the reconciler never creates or edits a stream, and waits (not ready)
  until the events stream exists.
- Consumer: a durable pull consumer per shard, ``fluxrelay-reconciler`` or
  ``fluxrelay-reconciler-<shard>``; explicit ack, deliver all, filter ``<prefix>.>``,
  ``ack_wait`` 30 s (kept alive with in-progress acks while work is slow), ``max_deliver`` 10,
  ``max_ack_pending`` 16384 (shared by the replicas of a shard, each working on at most
  ``--max-in-flight`` 4096 at once).
- Outcomes: ack after every target's patch; temporary failures ``nak`` with the longer of the
  error's own delay (``Retry-After``) and the backoff list (1, 2, 5, 10, 30, 60 s by delivery);
  permanent failures and the last allowed delivery go to ``fluxrelay.dead.reconciler.<reason>``
  with ``Fluxrelay-Dead-Reason``/``-Error``/``-Stream-Seq``/``-Deliveries`` headers, then
  ``term``. Messages abandoned on their last delivery are dead-lettered from the server's
  MAX_DELIVERIES advisory.
- Kubernetes events: none are created. The ``reconcile.fluxcd.io/requestedAt`` annotation and
  ``fluxrelay.io/delivery`` (the envelope id) on the object are the record, Flux's controllers
  emit their own events when they reconcile, and the RBAC stays free of ``events: create``.
"""

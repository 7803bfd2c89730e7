"""fluxrelay runtime: the plumbing both services run on, written once.

Not the wire contract (that is ``schemas``) and not either service's logic: the NATS
connection (auth and TLS, the acked publisher, header encoding), logging, backoff. The
receiver and the reconciler import it; it imports only ``schemas`` (import-linter contracts
in ``pyproject.toml``).
"""

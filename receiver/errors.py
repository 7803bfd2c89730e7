"""The receiver's error tree: every refusal carries its HTTP status and a short reason.

Handlers and providers raise these; one renderer turns them into JSON responses, so the
status code for each kind of failure is decided once (Flux-compatible where Flux decides).
"""

from __future__ import annotations

from schemas.receivers import ConfigError

__all__ = ["ConfigError"]


class Rejected(Exception):
    """A delivery refused with ``status``; ``code`` is a stable machine-readable reason.

    Each kind of refusal is a subclass that states its status and code in its ``class``
    line (``class HookNotFound(Rejected, status=404, code="not_found")``), so the whole
    mapping reads as one table; a subclass that gives neither keeps its parent's.
    """

    status: int = 400
    code: str = "bad_request"

    def __init_subclass__(cls, *, status: int | None = None, code: str | None = None) -> None:
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(
        self,
        reason: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}
        self.details = details or {}
        """Extra JSON fields of the answer (e.g. the JSON Pointer of an invalid CDEvent)."""


class SignatureInvalid(Rejected, code="signature_invalid"):
    """Authenticity could not be proven (bad or missing signature, token or credentials)."""


class PayloadInvalid(Rejected, code="payload_invalid"):
    """The body is not what the provider sends (bad JSON, wrong shape, missing fields)."""


class DeadLetter(PayloadInvalid, code="payload_unparseable"):
    """A body that cannot be understood at all, kept rather than dropped: the ingress stores
    the raw body on the dead-letter stream (subject ``<prefix>.ingress.<dead_reason>``) and
    only then answers 400; if that store fails the answer is 503, so nothing is lost silently.
    """

    def __init__(self, reason: str, *, dead_reason: str) -> None:
        super().__init__(reason)
        self.dead_reason = dead_reason


class EventNotAllowed(Rejected, code="event_not_allowed"):
    """The event type is not in the Receiver's ``spec.events`` (Flux answers 400 too)."""


class HookNotFound(Rejected, status=404, code="not_found"): ...


class SourceNotAllowed(Rejected, status=403, code="source_not_allowed"):
    """The source address is not in the Receiver's ``fluxrelay.io/allowed-sources``."""


class RequestTimeout(Rejected, status=408, code="request_timeout"):
    """The body did not arrive within ``--read-timeout`` (a slow or stalled sender)."""


class MethodNotAllowed(Rejected, status=405, code="method_not_allowed"): ...


class ExpectationFailed(Rejected, status=417, code="expectation_failed"): ...


class BodyTooLarge(Rejected, status=413, code="body_too_large"): ...


class DeliveryTooLarge(Rejected, status=413, code="delivery_too_large"):
    """A delivery that would store more than one delivery may (items or bytes): the body
    passed the body cap, what it fans out into did not."""


class UnsupportedMediaType(Rejected, status=415, code="unsupported_media_type"): ...


class EncodingRefused(UnsupportedMediaType, code="content_encoding_refused"):
    """A ``Content-Encoding`` other than identity: bodies are never decompressed (no webhook
    sender served here compresses, and inflating would bypass the body cap)."""


class RateLimited(Rejected, status=429, code="rate_limited"): ...


class Suspended(Rejected, status=503, code="suspended"): ...


class NotStored(Rejected, status=503, code="not_stored"):
    """JetStream did not acknowledge the event: nothing was accepted, the sender should retry."""

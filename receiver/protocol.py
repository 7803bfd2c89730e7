"""The ingress's HTTP connections: aiohttp's protocol, with what its parser refuses answered
and logged the way the rest of the ingress answers and logs.

aiohttp renders a request its parser refuses (a NUL byte in a header, a line too long, bad
framing) as ``text/plain`` quoting the offending line, and logs it at ERROR with a traceback
whose message holds that line: a header carrying a token (``X-Gitlab-Token: <token>\\x00``)
put the token in the log, and any client could flood the log with such records. Here the
refusal is the project's short JSON answer, the log line names the kind of error and the
peer only (no header bytes), at most one line per :data:`LOG_EVERY` seconds with a count of
those not logged, and every refusal is counted as a delivery outcome.

This overrides :meth:`aiohttp.web_protocol.RequestHandler.handle_error` and the factory that
creates the protocol (``web.Server.__call__``): aiohttp has no option for either. The tests
in ``tests/security/test_parser_refusals.py`` fail if a new aiohttp changes them.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from receiver.state import IngressState
from runtime.ratelog import Spaced, since_last

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
"""Seconds between two log lines about malformed requests (the rest are counted)."""

REASONS: dict[type[BaseException], str] = {
    http_exceptions.LineTooLong: "request line or header field too long",
    http_exceptions.InvalidHeader: "invalid header field",
    http_exceptions.BadHttpMethod: "invalid method",
    http_exceptions.BadStatusLine: "invalid request line",
    http_exceptions.InvalidURLError: "invalid request target",
    http_exceptions.TransferEncodingError: "invalid chunked framing",
    http_exceptions.ContentLengthError: "invalid Content-Length",
}
"""What the answer says for each refusal of aiohttp's parser (never the request's bytes)."""

OUTCOME = "malformed_request"


def reason_of(exc: BaseException | None) -> str:
    for kind in type(exc).__mro__:
        if kind in REASONS:
            return REASONS[kind]
    return "malformed HTTP request"


class IngressServer(web.Server):
    """``web.Server`` whose connections are :class:`IngressProtocol`."""

    def __init__(self, handler: Any, state: IngressState, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.state = state
        self.malformed = Spaced(LOG_EVERY)

    def __call__(self) -> RequestHandler:
        return IngressProtocol(self, loop=self._loop, **self._kwargs)


class IngressProtocol(RequestHandler):
    """One connection of the ingress (see the module docstring)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        server = self._manager
        if status >= 500:
            # A bug of ours, not the client's: the traceback is needed (and holds no header
            # bytes: the handler never puts request text into exception messages).
            self.logger.error("internal error handling a request", exc_info=exc)
            code, reason = "internal", "internal error"
        else:
            code, reason = OUTCOME, reason_of(exc)
            if isinstance(server, IngressServer):
                server.state.metrics.delivery("", "", "", OUTCOME).inc()
                note(server, request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: no error answer possible")
        response = web.json_response(
            {"status": "rejected" if status < 500 else "error", "code": code, "reason": reason},
            status=status,
        )
        response.force_close()
        return response


def note(server: IngressServer, remote: str | None, exc: BaseException | None) -> None:
    """One short line now and then: the error's kind and the peer, never request bytes."""
    skipped = server.malformed.due()
    if skipped is None:
        return
    log.warning(
        "refused a malformed HTTP request from %s (%s)%s",
        remote,
        type(exc).__name__,
        since_last(skipped, "refused"),
    )

"""Checks every provider shares, written once: constant-time comparisons, HMAC signature
headers, Secret keys, delivery ids, JSON decoding with bounded nesting, and typed field
access that turns any shape mismatch into a 400 instead of a crash.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import itertools
import json
import operator
import re
from collections.abc import Mapping
from typing import Any

import orjson

from receiver.errors import (
    ConfigError,
    DeliveryTooLarge,
    PayloadInvalid,
    SignatureInvalid,
    UnsupportedMediaType,
)
from receiver.providers.base import Credentials, Item, Request

MAX_JSON_DEPTH = 64
"""Deeper JSON is refused before parsing: no provider nests this deep, attackers do."""
MAX_JSON_CONTAINERS = 100_000
"""More arrays and objects than this is refused before parsing: each costs the decoders
about a hundred bytes, so a 3 MiB body of empty ones held 48 times its size. A GitHub push of
2,048 commits has about 10,000."""

HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


def wire_bytes(value: str) -> bytes:
    """The bytes a header value arrived as.

    aiohttp decodes header values as UTF-8 with ``surrogateescape``, so a non-UTF-8 byte
    becomes a lone surrogate that plain ``str.encode()`` refuses (a crash, i.e. a 500, on
    attacker-chosen input). Reverse that decoding; any other lone surrogate (only possible
    from in-process callers) is kept with ``surrogatepass`` so encoding never fails.
    """
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def equal(a: bytes | str, b: bytes | str) -> bool:
    """Constant-time equality of two secrets (str is turned back into its wire bytes)."""
    left = wire_bytes(a) if isinstance(a, str) else a
    right = wire_bytes(b) if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def header_text(request: Request, name: str) -> str:
    """A header's value, stripped ('' when absent), for values copied into the envelope
    (event names, delivery ids): bytes that are not UTF-8 are a 400, since the envelope is
    UTF-8 JSON and aiohttp hands such bytes over as lone surrogates that cannot be encoded."""
    value = request.headers.get(name, "")
    if value.isascii():  # the usual case: no surrogate can be in it, nothing to round-trip
        return value.strip()
    try:
        wire_bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadInvalid(f"{name} header: not UTF-8") from e
    return value.strip()


def require_json(request: Request, allowed: tuple[str, ...] = ("application/json",)) -> None:
    """415 unless the media type is one of ``allowed`` (an absent Content-Type is tolerated)."""
    if request.content_type and request.content_type not in allowed:
        raise UnsupportedMediaType(
            f"content type {request.content_type!r} not supported; use {' or '.join(allowed)}"
        )


def is_zero_id(object_id: str | None) -> bool:
    """True for the all-zeros object id Git providers use for "no commit" (SHA-1 or SHA-256
    length alike): a ``before`` of zeros means the ref was created, an ``after`` deleted."""
    return object_id is not None and object_id != "" and object_id.strip("0") == ""


def secret_where(spec: Credentials) -> str:
    """How a load-time refusal names the Receiver's Secret (never a value of it)."""
    return f"Receiver {spec.key} ({spec.type}): Secret {spec.namespace}/{spec.secret_name}"


def require_secret(spec: Credentials, *keys: str) -> None:
    """Fail at load when the Receiver's Secret lacks a key the provider needs."""
    for key in keys:
        if not spec.secret.get(key):
            raise ConfigError(f"{secret_where(spec)}: key {key!r} required")


def secret_text(spec: Credentials, key: str) -> str | None:
    """A Secret key holding text (a header name, an e-mail address, URLs), as stored;
    None when absent, ConfigError when it is not UTF-8."""
    raw = spec.secret.get(key)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{secret_where(spec)}: key {key!r} is not UTF-8") from e


def delivery_id(request: Request, headers: tuple[str, ...]) -> str:
    """The first of ``headers`` the sender filled in, else the body digest (identical bodies
    are then the same delivery, as a retry resends the same bytes)."""
    for header in headers:
        value = header_text(request, header)
        if value:
            return value
    return body_digest(request.body)


def hmac_hex_matches(key: bytes, body: bytes, algorithm: str, given_hex: str) -> bool:
    """True if ``given_hex`` (either case) is the HMAC of ``body``; compared as bytes.

    Hex is read strictly (``binascii``): ``bytes.fromhex`` skips white space inside the
    digits, which no provider sends and a signature check has no reason to forgive.
    """
    try:
        given = binascii.a2b_hex(given_hex)
    except ValueError:
        return False
    expected = hmac.new(key, body, HASHES[algorithm]).digest()
    return hmac.compare_digest(expected, given)


def verify_prefixed_hmac(
    header_value: str | None, key: bytes, body: bytes, allowed: tuple[str, ...], header: str
) -> None:
    """Verify ``<algo>=<hex>`` (algorithm prefix case-sensitive, hex either case)."""
    if not header_value:
        raise SignatureInvalid(f"missing {header} header")
    algorithm, sep, hex_digest = header_value.strip().partition("=")
    if not sep or algorithm not in allowed:
        raise SignatureInvalid(f"{header}: unsupported signature format")
    if not hmac_hex_matches(key, body, algorithm, hex_digest):
        raise SignatureInvalid(f"{header}: signature does not match")


_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_WINDOW = 64 * 1024
"""Bytes split at a time when taking strings out: bounds the pieces alive at once."""


def _shape_problem(
    body: bytes, limit: int = MAX_JSON_DEPTH, containers: int = MAX_JSON_CONTAINERS
) -> str | None:
    """Why ``body`` is refused before parsing (too deep, too many arrays and objects), or
    None. Linear in the body, memory bounded, at C speed.

    Only brackets outside strings count. Escapes are removed first (escaped backslashes,
    then escaped quotes: what is left has no escaped quote), so every quote then opens or
    closes a string; :func:`_brackets_outside_strings` keeps the brackets between them. What
    is left is mapped to 2 per opening and 0 per closing bracket, so the depth after the
    i-th bracket is the running sum minus i. Every step is a left-to-right pass over bytes
    an attacker chooses: no backtracking pattern runs over the body (a regex for whole
    strings backtracked quadratically on an unterminated one, 9 s for 64 KiB). Bodies with
    few brackets skip all of it.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return None
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    steps = _brackets_outside_strings(body).translate(_BRACKET_STEPS)
    depths = map(operator.sub, itertools.accumulate(steps), itertools.count(1))
    if max(depths, default=0) > limit:
        return f"JSON nested deeper than {limit}"
    if steps.count(2) > containers:
        return f"more than {containers} arrays and objects"
    return None


def _brackets_outside_strings(text: bytes) -> bytes:
    """The brackets of ``text`` (no escaped quote left in it) that stand outside strings.

    Split at quotes a window at a time: a whole 3 MiB body of quotes split at once made
    three million pieces (130 MiB) to keep every second one of.
    """
    kept: list[bytes] = []
    inside = False
    for start in range(0, len(text), _WINDOW):
        pieces = text[start : start + _WINDOW].split(b'"')
        kept.append(b"".join(pieces[inside::2]).translate(None, _NOT_BRACKETS))
        inside ^= len(pieces) % 2 == 0
    return b"".join(kept)


def load_json(body: bytes | str, what: str = "body") -> Any:
    """Decode JSON, refusing empty, non-UTF-8, too deeply nested or malformed input.

    orjson reads the common case (strict UTF-8, no BOM, integers within 64 bits) about three
    times faster than the standard library, and refuses lone surrogates itself. Whatever it
    refuses, and any body with a run of 19 or more digits (orjson turns integers past 64 bits
    into floats), goes through the standard library, so what is accepted and how it reads
    does not depend on which decoder ran.
    """
    raw = body.encode() if isinstance(body, str) else body
    if not raw or raw.isspace():  # (strip() would copy the body to find out)
        raise PayloadInvalid(f"{what}: empty, JSON expected")
    problem = _shape_problem(raw)
    if problem is not None:
        raise PayloadInvalid(f"{what}: {problem}")
    if _LONG_DIGIT_RUN not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library decides (and words the refusal)
    try:
        # Strict decoding first: json.loads(bytes) would let encoded lone surrogates through
        # ("surrogatepass"), which no UTF-8 envelope can carry (found by the atheris run).
        doc = json.loads(raw.decode(json.detect_encoding(raw)))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PayloadInvalid(f"{what}: invalid JSON") from e
    if _SURROGATE_ESCAPE.search(raw) and not _encodable(doc):
        raise PayloadInvalid(f"{what}: JSON string with an unpaired surrogate escape")
    return doc


_DIGITS_ONLY = bytes(0x39 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_LONG_DIGIT_RUN = b"9" * 19
"""A run of 19 digits: with every digit mapped to 9 and everything else to a space, a
substring test finds it at C speed (a regex takes ten times longer than the parse)."""
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(doc: Any) -> bool:
    """False when ``doc`` holds a lone surrogate (``"\\ud800"`` parses, but no UTF-8 text can
    carry it, so the envelope could not be encoded: a 500 instead of a 400). Only bodies with
    such an escape pay for this check; paired escapes (emoji) decode to one character."""
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def verbatim(body: bytes | None) -> bytes | None:
    """``body`` if it can be embedded as-is in the envelope (strict UTF-8 JSON text), else None.

    ``json.loads`` also accepts UTF-16/32 and UTF-8 with surrogates; such bodies are
    re-encoded instead, so the stored envelope is always valid UTF-8 JSON.
    """
    if body is None:
        return None
    if body.isascii() and 0 not in body[:4]:
        return body  # the common case, decided at C speed without decoding a copy
    if json.detect_encoding(body) != "utf-8":
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return body


def load_object(body: bytes | str, what: str = "body") -> dict[str, Any]:
    doc = load_json(body, what)
    if not isinstance(doc, dict):
        raise PayloadInvalid(f"{what}: JSON object expected")
    return doc


def load_struct(body: bytes | str, what: str = "body") -> tuple[dict[str, Any], Any]:
    """A body Flux decodes into a Go struct: an object, or ``null`` (which Go decodes to the
    empty struct without complaint). Returns the object to read fields from (empty for
    ``null``) and the payload to store (the body as parsed). Anything else is a 400, as it
    is in Flux."""
    doc = load_json(body, what)
    if doc is None:
        return {}, None
    if not isinstance(doc, dict):
        raise PayloadInvalid(f"{what}: JSON object expected")
    return doc, doc


def load_unread(body: bytes) -> tuple[dict[str, Any], Any]:
    """A body Flux never reads (GitLab, Harbor, Bitbucket: it verifies the sender and
    reconciles the Receiver's resources): empty, or any JSON value. Returns the object to
    read routing fields from (empty unless the body is an object) and the payload to store
    (None when empty). Bytes that are not JSON stay a 400: the stored envelope carries the
    payload as JSON for CEL filters."""
    doc = optional_json(body)
    return (doc if isinstance(doc, dict) else {}), doc


def optional_json(body: bytes) -> Any:
    """None for an empty (or blank) body, else any JSON value; 400 for anything else."""
    if not body.strip():
        return None
    return load_json(body)


def field_path(doc: Any, path: str) -> Any:
    """Walk dotted ``path``; None when absent; 400 when an intermediate is not an object.

    Decoded JSON objects are plain dicts, so the common case avoids the (slow) ABC check;
    this runs a dozen times per delivery on the hot path, hence the split cached in a plain
    dict and no enumerate: the position is worked out only for the error message.
    """
    parts = _PARTS.get(path)
    if parts is None:
        parts = _PARTS[path] = tuple(path.split("."))
    node = doc
    for part in parts:
        if node is None:
            return None
        if type(node) is not dict and not isinstance(node, Mapping):
            raise PayloadInvalid(f"{_parent(doc, parts)}: object expected")
        node = node.get(part)
    return node


_PARTS: dict[str, tuple[str, ...]] = {}
"""Split paths; the paths are the providers' own constants, so this stays small."""


def _parent(doc: Any, parts: tuple[str, ...]) -> str:
    """The dotted path of the first non-object on the way down ``parts`` (for the 400)."""
    node = doc
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return ".".join(parts[:depth]) or "body"
        node = node.get(part)
    return ".".join(parts)


def opt_str(doc: Any, path: str) -> str | None:
    value = field_path(doc, path)
    if value is None or type(value) is str:
        return value
    if not isinstance(value, str):
        raise PayloadInvalid(f"{path}: string expected")
    return value


def top_level(doc: dict[str, Any], keys: tuple[tuple[str, type], ...]) -> list[Any]:
    """Optional members of a decoded object, each None or of its type (else a 400), in one
    call: the push fields are read on every delivery, and a call per field cost as much as
    decoding the body (measured with callgrind)."""
    get = doc.get
    values: list[Any] = []
    for key, kind in keys:
        value = get(key)
        if (
            value is not None
            and type(value) is not kind
            and (kind is bool or type(value) is bool or not isinstance(value, kind))
        ):
            raise PayloadInvalid(f"{key}: {_EXPECTED[kind]} expected")
        values.append(value)
    return values


_EXPECTED = {str: "string", bool: "boolean", list: "array", int: "integer", dict: "object"}


def opt_strs(doc: Any, path: str, keys: tuple[str, ...]) -> list[str | None]:
    """Several optional strings of the object at ``path`` (None each when it is absent),
    in one walk: a repository block is four of them, read on every delivery."""
    obj = field_path(doc, path)
    if obj is None:
        return [None] * len(keys)
    if type(obj) is not dict and not isinstance(obj, Mapping):
        raise PayloadInvalid(f"{path}: object expected")
    values: list[str | None] = []
    for key in keys:
        value = obj.get(key)
        if value is not None and type(value) is not str and not isinstance(value, str):
            raise PayloadInvalid(f"{path}.{key}: string expected")
        values.append(value)
    return values


def req_str(doc: Any, path: str) -> str:
    value = opt_str(doc, path)
    if not value:
        raise PayloadInvalid(f"{path}: required")
    return value


def opt_bool(doc: Any, path: str) -> bool:
    value = field_path(doc, path)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PayloadInvalid(f"{path}: boolean expected")
    return value


def opt_list(doc: Any, path: str) -> list[Any]:
    value = field_path(doc, path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadInvalid(f"{path}: array expected")
    return value


MAX_ITEMS = 100
"""Entries of a list that each become their own stored message (registry events, pushed
tags and resources, ref changes), at most, per delivery. Every message carries the whole
payload, so without a cap one 200 KB body naming 8,000 tags stored 1.5 GiB. No registry or
Git provider sends that many in one delivery: Distribution batches a handful of events,
Bitbucket truncates a push at 5 changes."""


def opt_items(doc: Any, path: str) -> list[Any]:
    """:func:`opt_list` for a list whose entries each become a stored message: more than
    :data:`MAX_ITEMS` is a 413, decided on the count before any entry is looked at."""
    entries = opt_list(doc, path)
    if len(entries) > MAX_ITEMS:
        raise DeliveryTooLarge(
            f"{path}: {len(entries)} entries would each be stored as a message; "
            f"at most {MAX_ITEMS} per delivery"
        )
    return entries


def opt_int(doc: Any, path: str) -> int | None:
    value = field_path(doc, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadInvalid(f"{path}: integer expected")
    return value


def body_digest(body: bytes) -> str:
    """Delivery id for providers that give none: identical bodies are the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def repository(
    http: str | None, ssh: str | None, web: str | None, full_name: str | None = None
) -> dict[str, Any] | None:
    """The envelope's repository block: every URL form given, deduplicated, in order."""
    urls: list[str] = []
    for url in (http, ssh, web):
        if url and url not in urls:
            urls.append(url)
    if not urls:
        return None
    return {"urls": urls, "http": http, "ssh": ssh, "web": web, "full_name": full_name}


def commit_paths(commits: list[Any], what: str = "commits") -> list[str]:
    """Union of added/modified/removed over a GitHub-shaped commit list, order kept.

    Written as plain loops with exact-type checks first: it runs for every push, and the
    generator-per-list form cost more than the rest of the field extraction.
    """
    seen: dict[str, None] = {}
    for i, commit in enumerate(commits):
        if type(commit) is not dict and not isinstance(commit, Mapping):
            raise PayloadInvalid(f"{what}[{i}]: object expected")
        for key in _CHANGE_KEYS:
            paths = commit.get(key)
            if not paths:
                continue
            if type(paths) is not list:
                raise PayloadInvalid(f"{what}[{i}].{key}: array of strings expected")
            for path in paths:
                if type(path) is not str and not isinstance(path, str):
                    raise PayloadInvalid(f"{what}[{i}].{key}: array of strings expected")
                seen[path] = None
    return list(seen)


_CHANGE_KEYS = ("added", "modified", "removed")


def items_per_change(delivery: str, changes: list[dict[str, Any]]) -> tuple[Item, ...]:
    """One item per change a delivery reports: a ref change of a push (a source follows one
    ref, so each is its own event), a registry's pushed resource or tag. With several,
    ``#<index>`` suffixes keep their delivery ids, hence their dedup keys, apart while
    staying stable across redeliveries."""
    if len(changes) == 1:
        return (Item(delivery, changes[0]),)
    return tuple(Item(f"{delivery}#{i}", fields) for i, fields in enumerate(changes))

"""Header lines written by the project: what nats-py would send, or a clear refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import natsheaders
from runtime.natsheaders import HeaderError

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
keys = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20)
values = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    max_size=40,
)


def test_lines_and_block() -> None:
    lines = natsheaders.lines({"ce-id": "abc", "Nats-Msg-Id": " abc "})
    assert lines == b"ce-id: abc\r\nNats-Msg-Id: abc\r\n"
    assert natsheaders.block(lines) == b"NATS/1.0\r\nce-id: abc\r\nNats-Msg-Id: abc\r\n\r\n"


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("bad key", "v", "invalid header name"),
        ("colon:", "v", "invalid header name"),
        ("", "v", "invalid header name"),
        ("k", "a\r\nPUB x 1", "spans lines"),
        ("k", "a\nb", "spans lines"),
        ("k", "\ud800", "not valid Unicode"),
    ],
)
def test_what_would_break_the_block_is_refused(key: str, value: str, error: str) -> None:
    with pytest.raises(HeaderError, match=error):
        natsheaders.line(key, value)


@given(st.dictionaries(keys, values, max_size=8))
def test_parse_inverts_lines(headers: dict[str, str]) -> None:
    assert natsheaders.parse(natsheaders.lines(headers)) == {
        k: v.strip() for k, v in headers.items()
    }


def test_parse_refuses_a_line_without_colon() -> None:
    with pytest.raises(HeaderError, match="malformed"):
        natsheaders.parse(b"no colon here\r\n")

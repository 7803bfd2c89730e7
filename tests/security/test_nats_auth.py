"""The NATS connection options of both processes (``runtime.natsauth``), each against a real
nats-server configured for it: mutual TLS with a CA made here, token (value and file), NKey
seed, and a user credentials file (operator mode, JWTs made offline). For each, the
receiver's Publisher stores an event with a PubAck, and connecting without the credential,
or with a wrong one, is refused by the server."""

from __future__ import annotations

import asyncio
import gc
import importlib
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import Error as NatsError

from receiver.cli import serve_parser, settings_from
from receiver.errors import ConfigError
from receiver.publishing import Publisher
from receiver.settings import StreamSettings
from runtime.natsauth import NatsAuth, TokenFile
from tests.support.certs import issue, make_ca
from tests.support.natsd import NatsServer
from tests.support.natsjwt import Operator, keypair

nkeys: Any = importlib.import_module("nkeys")  # untyped package, used as Any

NATS_TOKEN = "nats-tok-9c41e7d2a8"
OTHER_TOKEN = "nats-tok-wrong-55aa"


def stream() -> StreamSettings:
    suffix = uuid.uuid4().hex[:10].upper()
    return StreamSettings(
        name=f"AUTH_{suffix}",
        subject_prefix=f"auth{suffix.lower()}.events",
        dead_name=f"AUTHDEAD_{suffix}",
        dead_subject_prefix=f"auth{suffix.lower()}.dead",
        storage="memory",
    )


async def publisher_stores(url: str, auth: NatsAuth) -> None:
    """The receiver's own Publisher connects with ``auth`` and gets a PubAck."""
    settings = stream()
    publisher = Publisher(url, settings, 2.0, auth)
    await publisher.start()
    try:
        for _ in range(500):
            if publisher.ready:
                break
            await asyncio.sleep(0.02)
        assert publisher.ready, "publisher never became ready"
        stored = await publisher.publish(f"{settings.subject_prefix}.x.y.z", b"{}", {})
        assert stored.stream == settings.name
        assert stored.seq == 1
    finally:
        await publisher.close()


async def refused(url: str, auth: NatsAuth) -> None:
    """A single connection attempt with ``auth`` fails."""

    async def quiet(e: Exception) -> None:
        return None

    with pytest.raises((NatsError, OSError, TimeoutError)):
        nc = await nats.connect(
            servers=[url],
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
            error_cb=quiet,
            **auth.connect_options(),
        )
        await nc.close()
    # nats-py leaves the socket of a connection the server refused open: collect it here,
    # so its ResourceWarning does not surface in a later test (warnings are errors).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def started(tmp: Path, config: str) -> Iterator[NatsServer]:
    server = NatsServer(config=config, name="auth").start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    ca = make_ca()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    server_cert, server_key = issue(ca, "nats").write(tmp_path, "server")
    client_cert, client_key = issue(ca, "fluxrelay", client=True).write(tmp_path, "client")
    other_ca = make_ca("someone else's CA")
    (tmp_path / "other-ca.crt").write_bytes(other_ca.cert_pem)
    return {
        "ca": tmp_path / "ca.crt",
        "other_ca": tmp_path / "other-ca.crt",
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


@pytest.fixture
def mtls_server(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[NatsServer]:
    f = tls_files
    yield from started(
        tmp_path,
        "tls {\n"
        f'  cert_file: "{f["server_cert"]}"\n'
        f'  key_file: "{f["server_key"]}"\n'
        f'  ca_file: "{f["ca"]}"\n'
        "  verify: true\n"
        "}\n",
    )


async def test_mutual_tls_with_the_ca_and_a_client_certificate_stores(
    mtls_server: NatsServer, tls_files: dict[str, Path]
) -> None:
    f = tls_files
    auth = NatsAuth(tls_ca=f["ca"], tls_cert=f["client_cert"], tls_key=f["client_key"])
    await publisher_stores(mtls_server.url, auth)


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("plain", id="no-tls"),
        pytest.param("no-client-cert", id="ca-only-no-client-certificate"),
        pytest.param("wrong-ca", id="server-not-signed-by-our-ca"),
    ],
)
async def test_tls_without_the_right_material_is_refused(
    mtls_server: NatsServer, tls_files: dict[str, Path], which: str
) -> None:
    f = tls_files
    auth = {
        "plain": NatsAuth(),
        "no-client-cert": NatsAuth(tls_ca=f["ca"]),
        "wrong-ca": NatsAuth(
            tls_ca=f["other_ca"], tls_cert=f["client_cert"], tls_key=f["client_key"]
        ),
    }[which]
    await refused(mtls_server.url, auth)


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from started(tmp_path, f'authorization {{ token: "{NATS_TOKEN}" }}\n')


async def test_token_as_a_value_and_from_a_file_stores(
    token_server: NatsServer, tmp_path: Path
) -> None:
    await publisher_stores(token_server.url, NatsAuth(token=NATS_TOKEN))
    token_file = tmp_path / "nats-token"
    token_file.write_text(NATS_TOKEN + "\n")  # as a mounted Secret often ends
    await publisher_stores(token_server.url, NatsAuth(token_file=token_file))


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param(NatsAuth(), id="no-token"),
        pytest.param(NatsAuth(token=OTHER_TOKEN), id="wrong-token"),
    ],
)
async def test_a_missing_or_wrong_token_is_refused(
    token_server: NatsServer, auth: NatsAuth
) -> None:
    await refused(token_server.url, auth)


def test_a_token_file_is_reread_and_keeps_its_last_good_value(tmp_path: Path) -> None:
    path = tmp_path / "nats-token"
    path.write_text(NATS_TOKEN)
    token = TokenFile(path)
    assert token() == NATS_TOKEN
    path.write_text(OTHER_TOKEN + "\n")
    assert token() == OTHER_TOKEN
    path.unlink()
    assert token() == OTHER_TOKEN
    assert OTHER_TOKEN not in repr(token)
    assert NATS_TOKEN not in repr(NatsAuth(token=NATS_TOKEN))


@pytest.fixture
def nkey_user(tmp_path: Path) -> tuple[Path, str]:
    user = keypair(nkeys.PREFIX_BYTE_USER)
    seed = tmp_path / "user.nk"
    seed.write_bytes(user.seed + b"\n")
    return seed, user.public_key.decode()


async def test_an_nkey_seed_stores_and_another_seed_is_refused(
    tmp_path: Path, nkey_user: tuple[Path, str]
) -> None:
    seed, public = nkey_user
    other = keypair(nkeys.PREFIX_BYTE_USER)
    other_seed = tmp_path / "other.nk"
    other_seed.write_bytes(other.seed)
    for server in started(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n'):
        await publisher_stores(server.url, NatsAuth(nkey=seed))
        await refused(server.url, NatsAuth(nkey=other_seed))
        await refused(server.url, NatsAuth())


async def test_a_user_credentials_file_stores_and_a_foreign_one_is_refused(
    tmp_path: Path,
) -> None:
    operator = Operator(tmp_path)
    creds = operator.user_creds()
    foreign = Operator(tmp_path / "foreign")
    (tmp_path / "foreign").mkdir()
    foreign_creds = foreign.user_creds("intruder")
    for server in started(tmp_path, operator.server_config()):
        await publisher_stores(server.url, NatsAuth(creds=creds))
        await refused(server.url, NatsAuth(creds=foreign_creds))
        await refused(server.url, NatsAuth())


def parse(argv: list[str], env: dict[str, str] | None = None) -> NatsAuth:
    return settings_from(serve_parser().parse_args(argv), env or {}).nats_auth


def test_flags_and_variables_reach_the_settings(tmp_path: Path) -> None:
    auth = parse(["--nats-tls-ca", "ca.pem", "--nats-nkey", "u.nk"])
    assert auth == NatsAuth(tls_ca=Path("ca.pem"), nkey=Path("u.nk"))
    from_env = parse([], {"FLUXRELAY_NATS_TOKEN": NATS_TOKEN, "FLUXRELAY_NATS_TLS_CA": "c"})
    assert from_env.token == NATS_TOKEN
    assert from_env.tls_ca == Path("c")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--nats-tls-cert", "c.pem"], "go together", id="cert-without-key"),
        pytest.param(
            ["--nats-creds", "u.creds", "--nats-nkey", "u.nk"], "choose one", id="creds-and-nkey"
        ),
        pytest.param(
            ["--nats-token-file", "t", "--nats-nkey", "u.nk"], "choose one", id="token-and-nkey"
        ),
    ],
)
def test_unusable_combinations_are_refused_at_start(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param(NatsAuth(creds=Path("/nonexistent/u.creds")), id="creds"),
        pytest.param(NatsAuth(nkey=Path("/nonexistent/u.nk")), id="nkey"),
        pytest.param(NatsAuth(token_file=Path("/nonexistent/token")), id="token-file"),
        pytest.param(NatsAuth(tls_ca=Path("/nonexistent/ca.pem")), id="tls-ca"),
    ],
)
async def test_missing_files_fail_the_publisher_start(auth: NatsAuth) -> None:
    publisher = Publisher("nats://127.0.0.1:1", stream(), 1.0, auth)
    with pytest.raises(ConfigError):
        await publisher.start()
    await publisher.close()


async def test_the_reconciler_connects_with_the_same_options(
    token_server: NatsServer, tmp_path: Path
) -> None:
    """The reconciler reads the same flags (runtime.natsauth) and its connection (and its
    CDEvents sink's) carries them: with the token file it is connected, JetStream answers."""
    from reconciler.cli import parser as reconciler_parser
    from reconciler.cli import settings_from as reconciler_settings
    from reconciler.running import Reconciler

    token_file = tmp_path / "nats-token"
    token_file.write_text(NATS_TOKEN + "\n")
    config = tmp_path / "receivers.yaml"
    config.write_text("")
    args = reconciler_parser().parse_args(
        [
            "--nats-url",
            token_server.url,
            "--nats-token-file",
            str(token_file),
            "--config",
            str(config),
        ]
    )
    settings = reconciler_settings(args, {})
    assert settings.nats_auth.token_file == token_file
    nc = await Reconciler(settings)._connect()
    try:
        assert nc.is_connected
        info = await nc.jetstream().account_info()
        assert info.streams >= 0
    finally:
        await nc.close()

"""CURVE keys on disk and CURVE-secured ZeroMQ links: who may deliver, and what the wire shows."""

from __future__ import annotations

import os
import selectors
import socket
import stat
import threading
from pathlib import Path

import pytest
import torch

from paretopipe.errors import ConfigError, UsageError
from paretopipe_backends import Endpoint, TransportOptions, TransportTimeout
from paretopipe_backends.security import (
    CurveConfig,
    generate_keypair,
    generate_keypairs,
    key_paths,
    load_keypair,
    load_public_key,
    load_public_keys,
)
from paretopipe_backends.zeromq import ZmqTransport

pytestmark = pytest.mark.integration  # every test opens CURVE-secured ZeroMQ sockets on loopback

HOST = "127.0.0.1"
MARKER = b"PARETOPIPE-PLAINTEXT-MARKER-0123456789"


# -- key files ----------------------------------------------------------------------------------


def test_generate_keypair_writes_zmq_certificates(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "keys", "dev0")
    assert pair.public_file == tmp_path / "keys" / "dev0.key"
    assert pair.secret_file == tmp_path / "keys" / "dev0.key_secret"
    assert stat.S_IMODE(os.stat(pair.secret_file).st_mode) == 0o600
    public, secret = load_keypair(pair.secret_file)
    assert public == load_public_key(pair.public_file) == pair.public_key.encode()
    assert len(public) == len(secret) == 40 and public != secret
    assert b"secret-key" not in pair.public_file.read_bytes()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["dev0.key", "dev0.key_secret"]


def test_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path, "dev0")
    with pytest.raises(UsageError, match="refusing to overwrite existing key file.*dev0.key.*--force"):
        generate_keypairs(tmp_path, ["new", "dev0"])
    assert not (tmp_path / "new.key").exists()
    assert load_public_key(first.public_file) == first.public_key.encode()


def test_force_replaces_keys(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path, "dev0")
    second = generate_keypair(tmp_path, "dev0", force=True)
    assert second.public_key != first.public_key
    assert load_keypair(second.secret_file)[0] == second.public_key.encode()


@pytest.mark.parametrize(
    "names, reason",
    [
        (["../escape"], "not usable as a file name"),
        ([".hidden"], "not usable as a file name"),
        (["a b"], "not usable as a file name"),
        (["dev0", "dev0"], r"given twice: \['dev0'\]"),
        ([], "no key names given"),
    ],
)
def test_bad_names_are_refused(tmp_path: Path, names: list[str], reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        generate_keypairs(tmp_path, names)
    assert list(tmp_path.iterdir()) == []


def test_keys_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot create keys directory"):
        generate_keypair(tmp_path / "file", "dev0")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path, "dev0")
    with pytest.raises(ConfigError, match="nope.key_secret: key file not found"):
        load_keypair(tmp_path / "nope.key_secret")
    with pytest.raises(ConfigError, match="dev0.key: secret-key: no secret key"):
        load_keypair(pair.public_file)
    (tmp_path / "junk.key").write_text("hello\n")
    with pytest.raises(ConfigError, match="junk.key: public-key: no public key"):
        load_public_key(tmp_path / "junk.key")
    (tmp_path / "short.key").write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(ConfigError, match="not a 40-character Z85 CURVE key"):
        load_public_key(tmp_path / "short.key")
    with pytest.raises(ConfigError, match="keys directory not found"):
        load_public_keys(tmp_path / "missing")


def test_curve_config_from_dir(tmp_path: Path) -> None:
    pairs = {p.name: p for p in generate_keypairs(tmp_path, ["driver", "dev0", "dev1"])}
    cfg = CurveConfig.from_dir(tmp_path, "dev0")
    assert cfg.public_key == pairs["dev0"].public_key.encode()
    assert cfg.server_key("dev1") == pairs["dev1"].public_key.encode()
    assert cfg.allowed_clients == {p.public_key.encode(): n for n, p in pairs.items()}
    with pytest.raises(ConfigError, match="no CURVE public key for peer 'dev9'"):
        cfg.server_key("dev9")
    with pytest.raises(ConfigError, match="ghost.key_secret: key file not found"):
        CurveConfig.from_dir(tmp_path, "ghost")
    assert key_paths(tmp_path, "dev0") == (pairs["dev0"].public_file, pairs["dev0"].secret_file)


def test_curve_config_from_testbed_key_prefixes(tmp_path: Path) -> None:
    pairs = {p.name: p for p in generate_keypairs(tmp_path / "keys", ["driver", "pi1"])}
    prefixes = {"driver": f"{tmp_path}/keys/driver", "pi1": tmp_path / "keys" / "pi1"}
    cfg = CurveConfig.from_key_prefixes("pi1", prefixes)
    assert cfg.secret_key == load_keypair(pairs["pi1"].secret_file)[1]
    assert cfg.server_key("driver") == pairs["driver"].public_key.encode()
    assert set(cfg.allowed_clients.values()) == {"driver", "pi1"}
    with pytest.raises(ConfigError, match="pi2: has no CURVE key.*paretopipe keys pi2"):
        CurveConfig.from_key_prefixes("pi2", prefixes)
    with pytest.raises(ConfigError, match="nope.key: key file not found"):
        CurveConfig.from_key_prefixes("pi1", {**prefixes, "x": tmp_path / "nope"})


# -- CURVE links ----------------------------------------------------------------------------------


class Relay:
    """A TCP relay that forwards one port to another and records what the client sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, tuple[socket.socket, bool]] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    server = socket.create_connection((HOST, self.target_port))
                    peers[client], peers[server] = (server, True), (client, False)
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(server, selectors.EVENT_READ)
                    continue
                other, from_client = peers[sock]
                data = sock.recv(1 << 16)
                if not data:
                    for s in (sock, other):
                        sel.unregister(s)
                        s.close()
                        peers.pop(s)
                    continue
                if from_client:
                    self.seen += data
                other.sendall(data)
        for s in peers:
            s.close()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keypairs(tmp_path / "keys", ["server", "client"])
    return tmp_path / "keys"


def _server(keys: Path | None) -> ZmqTransport:
    curve = CurveConfig.from_dir(keys, "server") if keys else None
    return ZmqTransport(Endpoint("server", HOST, 0), {}, options=TransportOptions(curve=curve))


def _client(name: str, server_port: int, curve: CurveConfig | None, timeout_s: float = 5.0) -> ZmqTransport:
    peers = {"server": Endpoint("server", HOST, server_port)}
    return ZmqTransport(Endpoint(name, HOST, 0), peers, options=TransportOptions(curve=curve, send_timeout_s=timeout_s))


def _marker_tensor() -> torch.Tensor:
    return torch.frombuffer(bytearray(MARKER * 4), dtype=torch.uint8)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "curve"])
def test_allow_listed_client_delivers_and_curve_encrypts(keys: Path, secure: bool) -> None:
    with _server(keys if secure else None) as server, Relay(server.me.port) as relay:
        curve = CurveConfig.from_dir(keys, "client") if secure else None
        with _client("client", relay.port, curve) as client:
            client.send("server", {"note": MARKER.decode()}, [_marker_tensor()])
            msg = server.recv(timeout_s=5)
    assert msg.src == "client" and msg.header == {"note": MARKER.decode()}
    assert bytes(msg.tensors[0].numpy()) == MARKER * 4
    assert len(relay.seen) > len(MARKER) * 5
    # The plain run is the control: the relay does see what travels in clear text.
    assert (MARKER in relay.seen) is (not secure)


def test_plain_client_cannot_deliver_to_curve_server(keys: Path) -> None:
    with _server(keys) as server:
        with _client("client", server.me.port, None, timeout_s=0.5) as client:
            with pytest.raises(TransportTimeout, match="did not accept"):
                client.send("server", {"x": 1})
        with pytest.raises(TransportTimeout):
            server.recv(timeout_s=0.3)
        assert server.stats["messages_received"] == 0


def test_client_with_unknown_key_cannot_deliver(keys: Path, tmp_path: Path) -> None:
    stranger = generate_keypair(tmp_path / "elsewhere", "client")  # same name, key not allow-listed
    public, secret = load_keypair(stranger.secret_file)
    curve = CurveConfig(public, secret, peer_keys={"server": load_public_key(keys / "server.key")})
    with _server(keys) as server:
        with _client("client", server.me.port, curve, timeout_s=0.5) as client:
            with pytest.raises(TransportTimeout):
                client.send("server", {"x": 1})
        with pytest.raises(TransportTimeout):
            server.recv(timeout_s=0.3)
        stats = server.stats
    assert stats["messages_received"] == 0 and stats["auth_denied"] >= 1


def test_client_with_wrong_server_key_cannot_deliver(keys: Path) -> None:
    wrong = CurveConfig.from_dir(keys, "client")
    wrong = CurveConfig(wrong.public_key, wrong.secret_key, peer_keys={"server": wrong.public_key})
    with _server(keys) as server:
        with _client("client", server.me.port, wrong, timeout_s=0.5) as client:
            with pytest.raises(TransportTimeout):
                client.send("server", {"x": 1})
        assert server.stats["messages_received"] == 0


def test_sender_name_must_match_its_key(keys: Path) -> None:
    with _server(keys) as server:
        # Holds the allow-listed key of "client" but claims to be "server-admin".
        with _client("server-admin", server.me.port, CurveConfig.from_dir(keys, "client")) as spoof:
            spoof.send("server", {"x": 1})
            with pytest.raises(TransportTimeout):
                server.recv(timeout_s=1.0)
        with _client("client", server.me.port, CurveConfig.from_dir(keys, "client")) as honest:
            honest.send("server", {"x": 2})
            assert server.recv(timeout_s=5).header == {"x": 2}
        stats = server.stats
    assert stats["messages_rejected"] == 1
    assert "claims to be 'server-admin' but its CURVE key belongs to 'client'" in stats["last_reject_reasons"][0]


def test_missing_peer_key_fails_at_start(keys: Path) -> None:
    curve = CurveConfig.from_dir(keys, "client")
    t = ZmqTransport(
        Endpoint("client", HOST, 0), {"dev9": Endpoint("dev9", HOST, 1)}, options=TransportOptions(curve=curve)
    )
    with pytest.raises(ConfigError, match="no CURVE public key for peer 'dev9'"):
        t.start()
    t.close()

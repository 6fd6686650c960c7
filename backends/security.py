"""CURVE keys for ZeroMQ links: generate and load key files, configure sockets, authenticate peers.

A keys directory holds, per endpoint name, the zmq-style certificate pair ``NAME.key`` (public)
and ``NAME.key_secret`` (public + secret, mode 0600); a testbed file names a pair by its path
without suffix (``key = "keys/pi1"``). Every device gets every ``*.key`` file and
only its own ``NAME.key_secret``. The public keys in the directory are the allow-list: a peer
whose key is not there cannot connect to a CURVE server, so it cannot deliver anything. An
accepted connection carries the key owner's name as its ZAP User-Id, which the ZeroMQ backend
checks against the sender name a message claims.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from paretopipe.errors import ConfigError, UsageError

log = logging.getLogger("paretopipe.transport")

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_Z85_KEY_RE = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


@dataclass(frozen=True)
class KeyPairFiles:
    """Where one endpoint's key pair was written, and its public key (Z85 text)."""

    name: str
    public_file: Path
    secret_file: Path
    public_key: str


def key_paths(keys_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``(public_file, secret_file)`` of endpoint ``name`` in ``keys_dir``. Raises UsageError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"key name {name!r} is not usable as a file name",
            "use letters, digits, '_', '.', '-' (starting with a letter or digit), at most 64 characters",
        )
    base = Path(keys_dir)
    return base / f"{name}{PUBLIC_SUFFIX}", base / f"{name}{SECRET_SUFFIX}"


def generate_keypairs(keys_dir: str | Path, names: Iterable[str], *, force: bool = False) -> list[KeyPairFiles]:
    """Write a CURVE key pair per name into ``keys_dir`` (created if missing).

    Checks every name first and writes nothing if one is invalid, repeated, or already has key
    files (unless ``force``). Each pair is written atomically; secret files are mode 0600.
    Returns the written pairs in order. Raises UsageError.
    """
    names = list(names)
    if not names:
        raise UsageError("no key names given", "name one key pair per endpoint, e.g. driver dev0 dev1")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"key name(s) given twice: {repeated}")
    paths = {name: key_paths(keys_dir, name) for name in names}
    if not force:
        existing = [str(p) for pair in paths.values() for p in pair if p.exists()]
        if existing:
            raise UsageError(
                f"refusing to overwrite existing key file(s): {', '.join(existing)}",
                "replace them with --force (force=True); peers holding the old public keys need the new ones",
            )
    base = Path(keys_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create keys directory {base}: {exc.strerror}", "choose another -o directory"
        ) from None
    return [_write_pair(base, name, *paths[name]) for name in names]


def generate_keypair(keys_dir: str | Path, name: str, *, force: bool = False) -> KeyPairFiles:
    """Write one CURVE key pair ``NAME.key`` / ``NAME.key_secret``; see :func:`generate_keypairs`."""
    return generate_keypairs(keys_dir, [name], force=force)[0]


def _write_pair(base: Path, name: str, public_file: Path, secret_file: Path) -> KeyPairFiles:
    # Written in a private (0700) scratch directory next to the target, then moved into place,
    # so a secret file is never readable by others and never half-written.
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
    try:
        tmp_public, tmp_secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        os.chmod(tmp_secret, 0o600)
        os.replace(tmp_secret, secret_file)
        os.replace(tmp_public, public_file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    public_key, _ = load_keypair(secret_file)
    return KeyPairFiles(name, public_file, secret_file, public_key.decode("ascii"))


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError:
        raise ConfigError(path, None, "key file not found", "create keys with: paretopipe keys NAME -o DIR") from None
    except ValueError:
        raise ConfigError(path, "public-key", "no public key in this file", "is it a zmq certificate?") from None
    if not _Z85_KEY_RE.fullmatch(public):
        raise ConfigError(path, "public-key", "not a 40-character Z85 CURVE key")
    if need_secret:
        if secret is None:
            raise ConfigError(path, "secret-key", "no secret key in this file", f"use NAME{SECRET_SUFFIX}")
        if not _Z85_KEY_RE.fullmatch(secret):
            raise ConfigError(path, "secret-key", "not a 40-character Z85 CURVE key")
    return public, secret


def load_keypair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """``(public_key, secret_key)`` (Z85 bytes) from a ``NAME.key_secret`` file. Raises ConfigError."""
    public, secret = _load(Path(secret_file), need_secret=True)
    assert secret is not None
    return public, secret


def load_public_key(public_file: str | Path) -> bytes:
    """The public key (Z85 bytes) in a ``NAME.key`` file. Raises ConfigError."""
    return _load(Path(public_file), need_secret=False)[0]


def load_public_keys(keys_dir: str | Path) -> dict[str, bytes]:
    """Every ``NAME.key`` in ``keys_dir`` as ``{NAME: public_key}``. Raises ConfigError."""
    base = Path(keys_dir)
    if not base.is_dir():
        raise ConfigError(base, None, "keys directory not found", "create keys with: paretopipe keys NAME -o DIR")
    return {p.name[: -len(PUBLIC_SUFFIX)]: load_public_key(p) for p in sorted(base.glob(f"*{PUBLIC_SUFFIX}"))}


@dataclass(frozen=True, eq=False)
class CurveConfig:
    """CURVE settings of one endpoint: its own key pair, its peers' keys, who may connect.

    ``peer_keys`` maps a peer endpoint name to that peer's (server) public key; ``allowed_clients``
    maps each public key allowed to connect to this endpoint to the name of its owner.
    """

    public_key: bytes
    secret_key: bytes
    peer_keys: Mapping[str, bytes] = field(default_factory=dict)
    allowed_clients: Mapping[bytes, str] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, keys_dir: str | Path, me: str) -> CurveConfig:
        """Use ``keys_dir/ME.key_secret`` as our pair; every ``*.key`` there is a peer and allowed.

        Raises ConfigError if a file is missing or malformed.
        """
        public_keys = load_public_keys(keys_dir)
        _, secret_file = key_paths(keys_dir, me)
        public, secret = load_keypair(secret_file)
        return cls(public, secret, peer_keys=public_keys, allowed_clients={k: n for n, k in public_keys.items()})

    @classmethod
    def from_key_prefixes(cls, me: str, keys: Mapping[str, str | Path]) -> CurveConfig:
        """Keys as a testbed names them: ``{endpoint: "keys/NAME"}`` (file names without suffix).

        Our pair is ``keys[me] + ".key_secret"``; every endpoint's ``.key`` is a peer key and is
        allowed to connect. Raises ConfigError if ``me`` has no key or a file is missing.
        """
        if me not in keys:
            raise ConfigError(
                "testbed", me, "has no CURVE key", f'add key = "keys/{me}" (create it with: paretopipe keys {me})'
            )
        public_keys = {name: load_public_key(f"{prefix}{PUBLIC_SUFFIX}") for name, prefix in keys.items()}
        public, secret = load_keypair(f"{keys[me]}{SECRET_SUFFIX}")
        return cls(public, secret, peer_keys=public_keys, allowed_clients={k: n for n, k in public_keys.items()})

    def server_key(self, peer: str) -> bytes:
        """The public key ``peer``'s server socket uses. Raises ConfigError if unknown."""
        try:
            return self.peer_keys[peer]
        except KeyError:
            raise ConfigError(
                f"{peer}{PUBLIC_SUFFIX}",
                None,
                f"no CURVE public key for peer {peer!r}",
                f"copy {peer}{PUBLIC_SUFFIX} into the keys directory",
            ) from None


def configure_server(socket: zmq.Socket, config: CurveConfig) -> None:
    """Make ``socket`` a CURVE server with our key pair (ZAP decides who may connect)."""
    socket.curve_secretkey = config.secret_key
    socket.curve_publickey = config.public_key
    socket.curve_server = True


def configure_client(socket: zmq.Socket, config: CurveConfig, peer: str) -> None:
    """Make ``socket`` a CURVE client with our key pair, talking to ``peer``'s server key."""
    socket.curve_secretkey = config.secret_key
    socket.curve_publickey = config.public_key
    socket.curve_serverkey = config.server_key(peer)


class _AllowList:
    """ZAP credentials provider: accepts only the listed client keys, counts the others."""

    def __init__(self, allowed: Mapping[bytes, str]) -> None:
        self.allowed = dict(allowed)
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        self.denied += 1
        log.warning("CURVE: refused a connection with unknown client key %s", key.decode("ascii", "replace"))
        return False


class _NamedAuthenticator(ThreadAuthenticator):
    """A thread authenticator whose ZAP User-Id is the key owner's endpoint name."""

    def __init__(self, context: zmq.Context, allow_list: _AllowList) -> None:
        super().__init__(context, log=logging.getLogger("paretopipe.transport.zap"))
        self._allow_list = allow_list

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        return self._allow_list.allowed.get(key, key.decode("ascii"))


class CurveAuthenticator:
    """Accept CURVE clients on ``context``'s sockets only if their key is allow-listed.

    A context manager around pyzmq's thread authenticator (one per zmq.Context). ``denied``
    counts refused connection attempts.
    """

    def __init__(self, context: zmq.Context, allowed_clients: Mapping[bytes, str]) -> None:
        self._allow_list = _AllowList(allowed_clients)
        self._auth = _NamedAuthenticator(context, self._allow_list)
        self._started = False

    @property
    def denied(self) -> int:
        """How many connection attempts were refused for an unknown key."""
        return self._allow_list.denied

    def start(self) -> None:
        """Start the ZAP thread; must run before the server socket binds."""
        self._auth.start()
        self._started = True
        self._auth.configure_curve_callback(domain="*", credentials_provider=self._allow_list)

    def stop(self) -> None:
        """Stop the ZAP thread (idempotent)."""
        if self._started:
            self._started = False
            self._auth.stop()

    def __enter__(self) -> CurveAuthenticator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

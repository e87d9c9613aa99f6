"""CURVE authentication of tcp links, through pyzmq's zmq.auth (the "Ironhouse" pattern).

Key files are zmq.auth's: `NAME.key` (public) and `NAME.key_secret` (both keys), made by
`depthstream keys DIR --name NAME` (zmq.auth.create_certificates). A binding socket is the CURVE
server: its secret key, and a directory of the public keys it allows. A connecting socket is the
client: its own secret key and the server's public key. A peer whose key is not allowed completes
no handshake, so it can neither send nor receive a single message; it is logged once per address.

One ZAP handler (a ThreadAuthenticator) runs per ZeroMQ context, started on first use; each
server socket gets a ZAP domain of its own, so sockets of one context can allow different keys.
Binding or connecting a non-loopback address without keys is refused unless the config says
`insecure: true`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveConfig:
    secret: str = ""  # this process's key pair file (NAME.key_secret); "" = no CURVE
    allow: str = ""  # binding side: directory of the public keys (*.key) allowed to connect
    server: str = ""  # connecting side: the server's public key file (NAME.key)
    insecure: bool = False  # allow a non-loopback endpoint without keys (anyone may connect)

    @property
    def enabled(self) -> bool:
        return bool(self.secret)


@dataclass(frozen=True)
class Keys:
    """Raw key material (z85 bytes), for links whose keys are not files (per-run keys)."""

    public: bytes
    secret: bytes = field(repr=False)  # never in a log line or a traceback
    allow: tuple[bytes, ...] = ()  # server side: allowed client public keys (z85)
    server: bytes = b""  # client side: the server's public key (z85)


class CurveError(ConfigError):
    """A key file is missing or unreadable, or an endpoint would be open to the network."""


def generate(directory: str, name: str) -> tuple[str, str]:
    """Write DIR/NAME.key and DIR/NAME.key_secret (mode 0600); returns their paths."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name.startswith("."):
        raise ConfigError(f"keys: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    os.makedirs(directory, exist_ok=True)
    public, secret = (os.path.join(directory, name + ext) for ext in (".key", ".key_secret"))
    for path in (public, secret):
        if os.path.exists(path):
            raise CurveError(f"keys: {path} exists; not overwriting a key")
    old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644 & ~old)
    return public, secret


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of a NAME.key_secret file; CurveError naming the file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CurveError(f"cannot read CURVE secret key {path}: {_reason(e)}") from None
    if not secret:
        raise CurveError(f"{path} holds no secret key (pass NAME.key_secret, not NAME.key)")
    return public, secret


def load_public(path: str) -> bytes:
    """The z85 public key of a NAME.key (or NAME.key_secret) file; CurveError naming it."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CurveError(f"cannot read CURVE public key {path}: {_reason(e)}") from None
    return public


def load_allowed(directory: str) -> tuple[bytes, ...]:
    """Public keys of every *.key file in `directory`; CurveError if it has none."""
    if not os.path.isdir(directory):
        raise CurveError(f"CURVE allow directory {directory} does not exist")
    try:
        keys = zmq.auth.load_certificates(directory)
    except (OSError, ValueError) as e:
        raise CurveError(f"cannot read the public keys in {directory}: {_reason(e)}") from None
    if not keys:
        raise CurveError(f"CURVE allow directory {directory} has no public keys (*.key)")
    return tuple(k for k, ok in keys.items() if ok)


def _reason(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def file_keys(curve: CurveConfig, *, server: bool) -> Keys | None:
    """The Keys a CurveConfig names (None: no CURVE); CurveError for a missing piece."""
    if not curve.enabled:
        if curve.allow or curve.server:
            raise CurveError("CURVE: --curve-allow / --curve-server need --curve-secret")
        return None
    public, secret = load_secret(curve.secret)
    if server:
        if not curve.allow:
            raise CurveError("CURVE: a binding endpoint needs --curve-allow DIR (allowed keys)")
        return Keys(public, secret, allow=load_allowed(curve.allow))
    if not curve.server:
        raise CurveError("CURVE: a connecting endpoint needs --curve-server FILE")
    return Keys(public, secret, server=load_public(curve.server))


def is_loopback(endpoint: str) -> bool:
    """True for inproc/ipc and tcp on a loopback address or localhost."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    host = host.split(";")[-1]  # tcp://src;dst:port: the destination
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, an interface name or *: reachable from the network


def check_exposure(endpoint: str, keys: Keys | None, insecure: bool, what: str) -> None:
    """CurveError when a non-loopback tcp endpoint would have no keys and insecure is not set."""
    if keys is None and not insecure and not is_loopback(endpoint):
        raise CurveError(
            f"{what}: {endpoint} is reachable from the network but has no CURVE keys; pass "
            "--curve-secret and --curve-allow/--curve-server (see `depthstream keys`), or "
            "--insecure (insecure: true in the config) to allow anyone"
        )


# ---- the ZAP handler, one per context ---------------------------------------------------------


MAX_LOGGED = 1000  # refused peer addresses remembered (and logged once each); then no more lines


class _Authenticator(ThreadAuthenticator):
    """zmq.auth's thread authenticator, with the allowed keys per ZAP domain and one log line per
    refused peer address."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context, log=logging.getLogger("pipeline.curve.zap"))
        self._domains: dict[str, frozenset[bytes]] = {}
        self._address = ""
        self._refused: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def allow_keys(self, domain: str, keys: Iterable[bytes]) -> None:
        with self._lock:
            self._domains[domain] = frozenset(keys)
        self.configure_curve_callback(domain, credentials_provider=self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 4:
            self._address = msg[3].decode("utf-8", "replace")
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:  # the credentials provider
        with self._lock:
            ok = key in self._domains.get(domain, ())
            seen = (domain, self._address) in self._refused or len(self._refused) >= MAX_LOGGED
            if not ok and not seen:
                self._refused.add((domain, self._address))
        if not ok and not seen:
            log.warning(
                "%s: refused a peer at %s: its CURVE key %s is not allowed",
                domain, self._address or "?", key.decode(errors="replace")[:12] + "…",
            )  # fmt: skip
        return ok


_authenticators: weakref.WeakKeyDictionary[zmq.Context, _Authenticator] = (
    weakref.WeakKeyDictionary()
)
_auth_lock = threading.Lock()


def authenticator(context: zmq.Context) -> _Authenticator:
    """The context's ZAP handler, started on first use (stop it with stop_authenticator)."""
    with _auth_lock:
        auth = _authenticators.get(context)
        if auth is None:
            auth = _Authenticator(context)
            auth.start()
            _authenticators[context] = auth
        return auth


def stop_authenticator(context: zmq.Context) -> None:
    """Stop the context's ZAP handler, if one runs (before context.term())."""
    with _auth_lock:
        auth = _authenticators.pop(context, None)
    if auth is not None:
        auth.stop()


def server(sock: zmq.Socket, keys: Keys | None, domain: str) -> None:
    """Make `sock` (before bind) a CURVE server allowing only `keys.allow`; no-op for None."""
    if keys is None:
        return
    authenticator(sock.context).allow_keys(domain, keys.allow)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def client(sock: zmq.Socket, keys: Keys | None) -> None:
    """Make `sock` (before connect) a CURVE client of `keys.server`; no-op for None."""
    if keys is None:
        return
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server


def ephemeral_pair() -> tuple[Keys, Keys]:
    """Per-run keys for internal links: (server keys allowing the client, client keys)."""
    s_pub, s_sec = zmq.curve_keypair()
    c_pub, c_sec = zmq.curve_keypair()
    return Keys(s_pub, s_sec, allow=(c_pub,)), Keys(c_pub, c_sec, server=s_pub)

"""TLS, mutual TLS and basic auth for perfwatch's HTTP servers, from exporter-toolkit's `web-config.yml`.

The file format is the one node_exporter and Prometheus read (`--web.config.file`), so people reuse
what they already wrote, and `promtool check web-config` checks it. Everything is validated at
start-up: an unknown key, an unreadable file, a certificate that does not match its key or a value
that is not a bcrypt hash is a `ConfigError` naming the dotted key, and the program exits 2.

Where Python's `ssl` module cannot do what Go's crypto/tls does, the option is refused with a
message rather than silently ignored: `RequireAnyClientCert` (accept a client certificate without
verifying it) and `curve_preferences`. TLS 1.0/1.1 are refused as insecure.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import ssl
import threading
from pathlib import Path
from typing import Literal

import bcrypt

from perfwatch.common.config import ConfigError, from_mapping, join_key, load_yaml

log = logging.getLogger(__name__)

ClientAuthType = Literal["", "NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
                         "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

# Go's cipher suite names (what the file holds) → OpenSSL's. These are the suites Go's
# tls.CipherSuites() listed when Prometheus 2.42 was built. TLS 1.3 suites are not configurable
# in Go or in OpenSSL's cipher string, so naming them is accepted and changes nothing (as in Go).
_TLS12_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_TLS13_CIPHERS = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

# The headers exporter-toolkit lets a web config set, with the values it allows (None: any value).
_ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

# Keys newer exporter-toolkit releases know but Prometheus 2.42's promtool and perfwatch do not.
_NEWER_KEYS = {"tls_server_config": ("cert", "key", "client_ca", "client_allowed_sans"), "": ("rate_limit",)}

_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
# bcrypt only ever reads the first 72 bytes of a password; bcrypt 5 refuses longer ones.
_BCRYPT_MAX_PASSWORD = 72


@dataclasses.dataclass
class TLSServerConfig:
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: ClientAuthType = ""
    client_ca_file: str = ""
    cipher_suites: list[str] = dataclasses.field(default_factory=list)
    curve_preferences: list[str] = dataclasses.field(default_factory=list)
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    prefer_server_cipher_suites: bool = True

    @property
    def enabled(self) -> bool:
        # exporter-toolkit turns TLS on when any of these is set, then requires cert and key.
        return bool(self.cert_file or self.key_file or self.client_ca_file or self.client_auth_type)

    def validate(self, key: str) -> None:
        for name in ("min_version", "max_version"):
            if getattr(self, name) not in _TLS_VERSIONS:
                raise ConfigError(join_key(key, name), f"{getattr(self, name)} is insecure and not supported; "
                                  "use TLS12 or TLS13")
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
            raise ConfigError(join_key(key, "max_version"), f"{self.max_version} is below min_version "
                              f"{self.min_version}")
        for i, name in enumerate(self.cipher_suites):
            if name not in _TLS12_CIPHERS and name not in _TLS13_CIPHERS:
                known = ", ".join([*_TLS12_CIPHERS, *sorted(_TLS13_CIPHERS)])
                raise ConfigError(join_key(join_key(key, "cipher_suites"), i),
                                  f"unknown cipher suite {name!r}; known: {known}")
        if self.curve_preferences:
            raise ConfigError(join_key(key, "curve_preferences"),
                              "not supported: Python's ssl module cannot set a list of curves; remove it to use "
                              "OpenSSL's defaults (X25519, P-256, P-384, P-521)")
        if self.client_auth_type in ("RequireAnyClientCert", "RequireClientCert"):
            raise ConfigError(join_key(key, "client_auth_type"),
                              f"{self.client_auth_type} (accept any client certificate without verifying it) "
                              "is not supported: Python's ssl module verifies every certificate it asks for; "
                              "use RequireAndVerifyClientCert with client_ca_file")
        if not self.enabled:
            return
        if not self.cert_file:
            raise ConfigError(join_key(key, "cert_file"), "missing: TLS needs cert_file and key_file")
        if not self.key_file:
            raise ConfigError(join_key(key, "key_file"), "missing: TLS needs cert_file and key_file")
        verifies = self.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
        if self.client_ca_file and not verifies and self.client_auth_type != "RequestClientCert":
            raise ConfigError(join_key(key, "client_ca_file"), "set, but client_auth_type does not ask for "
                              "client certificates (use RequireAndVerifyClientCert or VerifyClientCertIfGiven)")
        if verifies and not self.client_ca_file:
            # Go would fall back to the system's CAs: any certificate from a public CA would pass.
            raise ConfigError(join_key(key, "client_ca_file"),
                              f"required with client_auth_type {self.client_auth_type}")


@dataclasses.dataclass
class HTTPServerConfig:
    # perfwatch speaks HTTP/1.1 only, which every Prometheus client falls back to; the key is
    # accepted so files written for node_exporter load unchanged.
    http2: bool = True
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def validate(self, key: str) -> None:
        for name, value in self.headers.items():
            header_key = join_key(join_key(key, "headers"), name)
            if name not in _ALLOWED_HEADERS:
                raise ConfigError(header_key, f"this header can not be configured; allowed: "
                                  f"{', '.join(_ALLOWED_HEADERS)}")
            allowed = _ALLOWED_HEADERS[name]
            if allowed is not None and value not in allowed:
                raise ConfigError(header_key, f"must be one of {', '.join(allowed)}, not {value!r}")


@dataclasses.dataclass
class WebConfig:
    """A validated web config; `ssl_context` and `auth` are built from it by `load_web_config`."""

    tls_server_config: TLSServerConfig = dataclasses.field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = dataclasses.field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = dataclasses.field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = dataclasses.field(default=None, init=False)
    auth: BasicAuth | None = dataclasses.field(default=None, init=False)

    @property
    def headers(self) -> dict[str, str]:
        return self.http_server_config.headers

    def validate(self, key: str) -> None:
        for user, hashed in self.basic_auth_users.items():
            user_key = join_key(join_key(key, "basic_auth_users"), user)
            if ":" in user:
                raise ConfigError(user_key, "a user name cannot contain ':' (basic auth splits user and "
                                  "password at the first colon)")
            if not _BCRYPT_RE.match(hashed):
                raise ConfigError(user_key, "not a bcrypt hash (expected $2y$, $2b$ or $2a$, a cost and 53 "
                                  "characters; make one with `htpasswd -nBC 10 USER`)")
            if not 4 <= int(hashed[4:6]) <= 31:
                raise ConfigError(user_key, f"bcrypt cost {int(hashed[4:6])} is outside 4..31")

    def describe(self) -> str:
        tls = self.tls_server_config
        parts = [f"TLS {'on' if self.ssl_context else 'off'}"]
        if self.ssl_context is not None and tls.client_auth_type not in ("", "NoClientCert"):
            parts.append(f"client certificates: {tls.client_auth_type}")
        parts.append(f"basic auth: {len(self.basic_auth_users)} users" if self.auth else "basic auth off")
        return ", ".join(parts)


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config; load its certificates and keys. Raises ConfigError naming the key."""
    path = Path(path)
    try:
        data = load_yaml(path)
        for section, names in _NEWER_KEYS.items():
            mapping = data.get(section) if section else data
            for name in names:
                if isinstance(mapping, dict) and name in mapping:
                    raise ConfigError(join_key(section, name), "not supported by perfwatch (a newer "
                                      "exporter-toolkit option that Prometheus 2.42 does not know either)")
        config = from_mapping(WebConfig, data)
        tls = config.tls_server_config
        # Relative paths are relative to the web config's directory, as in exporter-toolkit.
        for name in ("cert_file", "key_file", "client_ca_file"):
            if getattr(tls, name):
                setattr(tls, name, str(path.parent / getattr(tls, name)))
        if tls.enabled:
            config.ssl_context = _ssl_context(tls)
        if config.basic_auth_users:
            config.auth = BasicAuth(config.basic_auth_users)
    except ConfigError as err:
        if not err.key:  # load_yaml's messages already name the file
            raise
        raise ConfigError(err.key, f"{err.message} (in web config {path})") from None
    return config


def _read(key: str, file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as err:
        raise ConfigError(key, f"cannot read {file}: {err.strerror}") from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key and hang start-up.
    raise ValueError("the key is encrypted; perfwatch needs an unencrypted key file (readable by it only)")


def _ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    key = "tls_server_config"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    cert_pem = _read(f"{key}.cert_file", tls.cert_file)
    _read(f"{key}.key_file", tls.key_file)
    try:
        # Parse the certificate on its own first so a broken one is blamed on cert_file.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError(f"{key}.cert_file", f"{tls.cert_file} holds no PEM certificate: {err}") from None
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError(f"{key}.key_file", f"{tls.key_file} is not the private key of {tls.cert_file}: "
                          f"{err}") from None
    suites = [_TLS12_CIPHERS[name] for name in tls.cipher_suites if name in _TLS12_CIPHERS]
    if suites:
        ctx.set_ciphers(":".join(suites))
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.client_ca_file:
        _read(f"{key}.client_ca_file", tls.client_ca_file)
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as err:
            raise ConfigError(f"{key}.client_ca_file", f"{tls.client_ca_file} holds no PEM certificate: "
                              f"{err}") from None
    # RequestClientCert asks for a certificate Go never verifies; perfwatch never reads an
    # unverified certificate, so not asking gives the client the same outcome.
    ctx.verify_mode = {
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }.get(tls.client_auth_type, ssl.CERT_NONE)
    return ctx


@dataclasses.dataclass
class AuthResult:
    ok: bool
    user: str = ""
    reason: str = ""  # for the log, never for the client


class BasicAuth:
    """Checks `Authorization: Basic …` against bcrypt hashes, fast for credentials seen before.

    bcrypt costs 50-250 ms per check by design, far more than a scrape. Credentials that passed
    are remembered as HMAC-SHA256(per-process random key, user:password): the plain password is
    never kept, and the key makes the digests useless outside this process. Only successes are
    remembered, so the cache holds at most one entry per configured user (a bcrypt hash accepts one
    password), whatever a client sends; `max_entries` bounds it anyway. Wrong passwords and unknown
    users always pay a full bcrypt check: an unknown user is checked against a dummy hash of the
    highest configured cost, so response times do not tell which users exist. bcrypt checks run one
    at a time, so a flood of bad passwords burns one core, not all, and cached users are not slowed.
    """

    def __init__(self, users: dict[str, str], max_entries: int = 1024) -> None:
        self._users = {name: hashed.encode() for name, hashed in users.items()}
        cost = max(int(h[4:6]) for h in self._users.values())
        # A well-formed hash of the highest cost that matches no password: take a cheap real one
        # and raise its cost field (computing it at cost 12 would add 250 ms to start-up).
        cheap = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=4))
        self._dummy = cheap[:4] + b"%02d" % cost + cheap[6:]
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()
        self.max_entries = max_entries
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def check(self, authorization: str) -> AuthResult:
        """Check an Authorization header value."""
        if not authorization:
            return AuthResult(False, reason="no credentials")
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return AuthResult(False, reason=f"unsupported authorization scheme {scheme[:20]!r}")
        try:
            user_bytes, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
            user = user_bytes.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(False, reason="malformed basic credentials")
        if not colon:
            return AuthResult(False, user, "malformed basic credentials (no ':')")
        digest = hmac.new(self._key, user_bytes + b":" + password, hashlib.sha256).digest()
        if self._cached(digest):
            return AuthResult(True, user)
        stored = self._users.get(user)
        with self._bcrypt_lock:
            # Another thread may have verified the same credentials while this one waited.
            if self._cached(digest):
                return AuthResult(True, user)
            ok = self._bcrypt_ok(password, stored or self._dummy) and stored is not None
        if not ok:
            return AuthResult(False, user, "wrong password" if stored is not None else "unknown user")
        with self._cache_lock:
            if len(self._verified) < self.max_entries:
                self._verified.add(digest)
        return AuthResult(True, user)

    def _cached(self, digest: bytes) -> bool:
        with self._cache_lock:
            return digest in self._verified

    def _bcrypt_ok(self, password: bytes, hashed: bytes) -> bool:
        if len(password) > _BCRYPT_MAX_PASSWORD:
            # Refused, but only after the same work as any other attempt.
            bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], self._dummy)
            return False
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError:
            return False

    @property
    def cache_size(self) -> int:
        return len(self._verified)

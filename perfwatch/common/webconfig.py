"""exporter-toolkit's `web-config.yml`: TLS, mutual TLS and basic auth for perfwatch's HTTP servers.

The file format is the one node_exporter and Prometheus read (`--web.config.file`), so people reuse
what they already wrote, and `promtool check web-config` checks it. Everything is validated at
start-up: an unknown key, an unreadable file, a certificate that does not match its key or a value
that is not a bcrypt hash is a `ConfigError` naming the dotted key, and the program exits 2.

Where Python's `ssl` module cannot do what Go's crypto/tls does, the option is refused with a
message rather than silently ignored: `RequireAnyClientCert` (accept a client certificate without
verifying it) and `curve_preferences`. TLS 1.0/1.1 are refused as insecure.

This module reads and checks the file; `load_web_config` then builds what the server uses from
it: the SSL context (tls.py) and the credential check (basicauth.py).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from perfwatch.common.basicauth import BasicAuth
from perfwatch.common.config import ConfigError, from_mapping, join_key, load_yaml
from perfwatch.common.tls import TLS12_CIPHERS, TLS13_CIPHERS, TLS_VERSIONS, ssl_context

if TYPE_CHECKING:
    from ssl import SSLContext
else:  # ssl loads OpenSSL: imported only for a TLS config (tls.py); from_mapping reads this type
    SSLContext = object

ClientAuthType = Literal["", "NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
                         "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

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
            if getattr(self, name) not in TLS_VERSIONS:
                raise ConfigError(join_key(key, name), f"{getattr(self, name)} is insecure and not supported; "
                                  "use TLS12 or TLS13")
        versions = list(TLS_VERSIONS)  # oldest first
        if versions.index(self.min_version) > versions.index(self.max_version):
            raise ConfigError(join_key(key, "max_version"), f"{self.max_version} is below min_version "
                              f"{self.min_version}")
        for i, name in enumerate(self.cipher_suites):
            if name not in TLS12_CIPHERS and name not in TLS13_CIPHERS:
                known = ", ".join([*TLS12_CIPHERS, *sorted(TLS13_CIPHERS)])
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
    ssl_context: SSLContext | None = dataclasses.field(default=None, init=False)
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
            config.ssl_context = ssl_context(tls)
        if config.basic_auth_users:
            config.auth = BasicAuth(config.basic_auth_users)
    except ConfigError as err:
        if not err.key:  # load_yaml's messages already name the file
            raise
        raise ConfigError(err.key, f"{err.message} (in web config {path})") from None
    return config

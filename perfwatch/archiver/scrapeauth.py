"""How the archiver authenticates to a target: keys shaped like Prometheus' scrape_config.

    targets:
      - url: https://exporter:10280/metrics
        basic_auth: {username: prometheus, password_file: /run/secrets/exporter_password}
        # or: authorization: {type: Bearer, credentials_file: /run/secrets/token}
        tls_config:
          ca_file: /etc/perfwatch/ca.pem
          cert_file: /etc/perfwatch/archiver.pem     # client certificate, for mutual TLS
          key_file: /etc/perfwatch/archiver-key.pem
          server_name: exporter                      # name to verify (and SNI) if the URL's differs
          insecure_skip_verify: false

Everything is checked at start-up (files readable, certificate and key a pair, a CA that parses),
and errors name the dotted key. Secret files are read again at every scrape, as Prometheus does,
so a rotated password needs no restart; their content is never logged or put in an error.
`apply_client_auth` configures the `requests.Session` a `TargetScraper` scrapes with.
"""

from __future__ import annotations

import base64
import dataclasses
import ssl
from pathlib import Path
from typing import Any, Literal

import requests
from requests.adapters import HTTPAdapter

from perfwatch.common.config import ConfigError, join_key


def read_secret(path: str) -> str:
    """A secret file's content without surrounding whitespace (Prometheus trims it too)."""
    return Path(path).read_text(encoding="utf-8").strip()


def _check_secret(key: str, path: str) -> None:
    try:
        read_secret(path)
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(key, f"cannot read {path}: {reason}") from None


def _one_of(key: str, inline: str | None, file: str | None, name: str) -> None:
    if inline is not None and file is not None:
        raise ConfigError(join_key(key, f"{name}_file"), f"set {name} or {name}_file, not both")
    if file is not None:
        _check_secret(join_key(key, f"{name}_file"), file)


@dataclasses.dataclass
class BasicAuthConfig:
    username: str = ""
    password: str | None = dataclasses.field(default=None, repr=False)
    password_file: str | None = None

    def validate(self, key: str) -> None:
        if not self.username:
            raise ConfigError(join_key(key, "username"), "required")
        if ":" in self.username:
            raise ConfigError(join_key(key, "username"), "cannot contain ':'")
        _one_of(key, self.password, self.password_file, "password")

    def header(self) -> str:
        password = read_secret(self.password_file) if self.password_file else (self.password or "")
        # UTF-8, as Prometheus and browsers send it (requests' own basic auth uses latin-1).
        return "Basic " + base64.b64encode(f"{self.username}:{password}".encode()).decode()


@dataclasses.dataclass
class AuthorizationConfig:
    type: str = "Bearer"
    credentials: str | None = dataclasses.field(default=None, repr=False)
    credentials_file: str | None = None

    def validate(self, key: str) -> None:
        if not self.type or any(c.isspace() for c in self.type):
            raise ConfigError(join_key(key, "type"), "must be one word, such as Bearer")
        if self.type.lower() == "basic":
            raise ConfigError(join_key(key, "type"), "use basic_auth for Basic credentials")
        _one_of(key, self.credentials, self.credentials_file, "credentials")
        if self.credentials is None and self.credentials_file is None:
            raise ConfigError(join_key(key, "credentials_file"), "set credentials or credentials_file")

    def header(self) -> str:
        credentials = read_secret(self.credentials_file) if self.credentials_file else (self.credentials or "")
        return f"{self.type} {credentials}"


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key and hang.
    raise ValueError("the key is encrypted; give an unencrypted key file (readable by the archiver only)")


@dataclasses.dataclass
class TLSClientConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: Literal["TLS12", "TLS13"] | None = None

    def validate(self, key: str) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise ConfigError(join_key(key, missing), "cert_file and key_file go together (a client certificate)")
        self.context(key)  # loads every file: errors surface at start-up, naming the key

    def context(self, key: str = "tls_config") -> ssl.SSLContext:
        """The SSLContext for this target (CA, client certificate, minimum version)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # only this CA, not the system's too
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except OSError as err:  # ssl.SSLError is an OSError too
                reason = err.strerror or str(err)
                raise ConfigError(join_key(key, "ca_file"), f"cannot load {self.ca_file}: {reason}") from None
        if self.cert_file is not None and self.key_file is not None:
            for name in ("cert_file", "key_file"):
                _check_secret(join_key(key, name), getattr(self, name))
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
            except (ssl.SSLError, ValueError) as err:
                raise ConfigError(join_key(key, "key_file"), f"{self.cert_file} and {self.key_file} are not a "
                                  f"certificate and its key: {err}") from None
        if self.min_version is not None:
            ctx.minimum_version = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}[self.min_version]
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class _TLSAdapter(HTTPAdapter):
    """An adapter whose connections use the target's SSLContext and, if set, its server_name."""

    def __init__(self, ctx: ssl.SSLContext, server_name: str | None, verify: bool | str) -> None:
        self._ctx = ctx
        self._server_name = server_name
        self._verify = verify
        super().__init__()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override the session's `verify`, which
        # would add the system's CAs to ca_file or undo insecure_skip_verify: the target's
        # tls_config decides, nothing else.
        kwargs["verify"] = self._verify
        return super().send(request, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._ctx
        if self._server_name:
            kwargs["server_hostname"] = self._server_name  # SNI
            if self._ctx.check_hostname:
                kwargs["assert_hostname"] = self._server_name  # and the name the certificate must carry
        super().init_poolmanager(*args, **kwargs)


class _HeaderAuth(requests.auth.AuthBase):
    """Sets Authorization at every request, reading the secret file each time."""

    def __init__(self, config: BasicAuthConfig | AuthorizationConfig) -> None:
        self.config = config

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        try:
            # UTF-8 on the wire, as Go sends it (a str would go out as latin-1)
            request.headers["Authorization"] = self.config.header().encode()  # type: ignore[assignment]
        except (OSError, UnicodeDecodeError) as err:
            # A RequestException, so the scraper counts a failed scrape instead of crashing.
            path = getattr(self.config, "password_file", None) or getattr(self.config, "credentials_file", None)
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise requests.RequestException(f"cannot read the secret file {path}: {reason}") from None
        return request


def validate_client_auth(key: str, basic_auth: BasicAuthConfig | None,
                         authorization: AuthorizationConfig | None) -> None:
    """Prometheus allows one way of authenticating per target."""
    if basic_auth is not None and authorization is not None:
        raise ConfigError(join_key(key, "authorization"), "set basic_auth or authorization, not both")


def apply_client_auth(session: requests.Session, *, basic_auth: BasicAuthConfig | None = None,
                      authorization: AuthorizationConfig | None = None,
                      tls_config: TLSClientConfig | None = None) -> None:
    """Configure `session` (a TargetScraper's) to authenticate and verify TLS like Prometheus."""
    auth = basic_auth or authorization
    if auth is not None:
        session.auth = _HeaderAuth(auth)
    if tls_config is not None:
        # With ca_file, requests loads that same file (not its own CA bundle) into the context.
        verify = False if tls_config.insecure_skip_verify else (tls_config.ca_file or True)
        session.mount("https://", _TLSAdapter(tls_config.context(), tls_config.server_name, verify))

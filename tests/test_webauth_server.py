"""Basic auth, TLS and mutual TLS on the exporter as a real process, scraped by a real Prometheus and by the
archiver's scraper with Prometheus-shaped client settings (archiver/scrapeauth.py)."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives import serialization
from requests.auth import HTTPBasicAuth
from support.pki import PKI
from support.procs import Service, free_port, python_module
from support.prometheus import Prometheus, promtool
from test_exporter_process import run_cli

from perfwatch.archiver import db
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.policy import Policy, mirror_policy
from perfwatch.archiver.scrape import HTTP_STATUS, UNREACHABLE, ScrapeError, Target, TargetScraper
from perfwatch.archiver.scrapeauth import (
    AuthorizationConfig,
    BasicAuthConfig,
    TLSClientConfig,
    apply_client_auth,
    validate_client_auth,
)
from perfwatch.archiver.store import Store
from perfwatch.common.config import ConfigError, from_mapping
from perfwatch.common.httpserver import METRICS_CONTENT_TYPE, Request, Response, WebServer

PASSWORD = "s3cret \"quoted\" \\ ünïcødé '; DROP TABLE metric; --"
ODD_USER = "grafana ✓"
ODD_PASSWORD = "p@ss:word with colon"
# As bytes: requests encodes str credentials as latin-1; Prometheus, curl and browsers send UTF-8.
GOOD = (b"prometheus", PASSWORD.encode())


def bcrypt_hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


USERS = {"prometheus": bcrypt_hash(PASSWORD),
         # htpasswd -B writes $2y$ at cost 10: one user like that, as people will have.
         ODD_USER: "$2y$" + bcrypt_hash(ODD_PASSWORD, cost=10)[4:]}


class SecureExporter:
    """An exporter started with --web-config; ready once /-/healthy answers over its scheme."""

    def __init__(self, workdir: Path, name: str, web_config: dict[str, object], scheme: str,
                 verify: bool | str = True, cert: tuple[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.web_config_path = workdir / f"{name}-web.yml"
        self.web_config_path.write_text(yaml.safe_dump(web_config, allow_unicode=True))
        self.verify, self.cert = verify, cert
        self.service = Service(python_module("perfwatch.exporter", "--listen", f"127.0.0.1:{self.port}",
                                             "--web-config", str(self.web_config_path), *args),
                               workdir / f"{name}.log")

    def start(self) -> SecureExporter:
        self.service.start()
        deadline = time.monotonic() + 30
        last = "no answer"
        while self.service.running and time.monotonic() < deadline:
            try:
                status = self.get("/-/healthy").status_code
                if status == 200:
                    return self
                last = f"HTTP {status}"  # e.g. 401: answered, but never healthy; do not wait for ever
            except requests.RequestException as err:
                last = str(err)
            time.sleep(0.1)
        running = self.service.running
        if running:
            self.service.stop()  # a failed module fixture never reaches its teardown
        raise RuntimeError(f"exporter {'not healthy after 30 s' if running else 'exited'} ({last}):\n"
                           f"{self.service.log()}")

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("cert", self.cert)
        return requests.get(self.url + path, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webauth")


@pytest.fixture(scope="module")
def auth_exporter(workdir: Path) -> Iterator[SecureExporter]:
    """Plain HTTP with basic auth and the extra headers a web config may set."""
    exporter = SecureExporter(workdir, "auth", {
        "basic_auth_users": USERS,
        "http_server_config": {"headers": {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}},
    }, "http").start()
    yield exporter
    assert exporter.service.stop() == 0


@pytest.fixture(scope="module")
def mtls_exporter(workdir: Path, pki: PKI) -> Iterator[SecureExporter]:
    """TLS 1.3 only, client certificates from the client CA required, and basic auth."""
    exporter = SecureExporter(workdir, "mtls", {
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                              "client_auth_type": "RequireAndVerifyClientCert",
                              "client_ca_file": str(pki.client_ca), "min_version": "TLS13"},
        "basic_auth_users": USERS,
    }, "https", verify=str(pki.ca), cert=pki.client_pair).start()
    yield exporter
    assert exporter.service.stop() == 0


def assert_401(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="perfwatch"')
    assert "perfwatch_" not in response.text


@pytest.mark.parametrize("path", ["/metrics", "/", "/-/ready", "/no-such-page"])
def test_wrong_or_missing_credentials_get_401(auth_exporter: SecureExporter, path: str) -> None:
    assert_401(auth_exporter.get(path))
    assert_401(auth_exporter.get(path, auth=(b"prometheus", PASSWORD.encode() + b"x")))
    assert_401(auth_exporter.get(path, auth=(b"nobody", PASSWORD.encode())))
    assert_401(auth_exporter.get(path, auth=(b"Prometheus", PASSWORD.encode())))  # user names are case-sensitive
    assert_401(auth_exporter.get(path, headers={"Authorization": "Bearer " + PASSWORD}))


def test_right_credentials_get_200(auth_exporter: SecureExporter) -> None:
    for _ in range(3):  # the second and third are answered from the cache of verified credentials
        metrics = auth_exporter.get("/metrics", auth=GOOD)
        assert metrics.status_code == 200 and "node_scrape_collector_success" in metrics.text
    # requests encodes basic credentials as latin-1; send the UTF-8 bytes browsers send.
    raw = f"{ODD_USER}:{ODD_PASSWORD}".encode()
    odd = auth_exporter.get("/-/ready", headers={"Authorization": "Basic " + base64.b64encode(raw).decode()})
    assert odd.status_code == 200
    assert auth_exporter.get("/", auth=GOOD).status_code == 200
    assert auth_exporter.get("/no-such-page", auth=GOOD).status_code == 404


def test_healthy_stays_open_and_headers_are_set(auth_exporter: SecureExporter) -> None:
    healthy = auth_exporter.get("/-/healthy")
    assert healthy.status_code == 200 and healthy.text == "Healthy.\n"
    denied = auth_exporter.get("/metrics")
    for response in (healthy, denied):
        assert response.headers["X-Frame-Options"] == "deny"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_post_needs_credentials_too(auth_exporter: SecureExporter) -> None:
    assert_401(requests.post(auth_exporter.url + "/metrics", timeout=10))
    allowed = requests.post(auth_exporter.url + "/metrics", auth=HTTPBasicAuth(*GOOD), timeout=10)
    assert allowed.status_code == 405


def test_failures_are_logged_without_the_password(workdir: Path) -> None:
    # At debug: after the first failure from an address, the next ones within a minute are debug lines.
    exporter = SecureExporter(workdir, "auth-log", {"basic_auth_users": USERS}, "http",
                              args=("--log-level", "debug")).start()
    exporter.get("/metrics", auth=("prometheus", "wrong-one"))
    exporter.get("/metrics", auth=("evil\nlevel=error", "x"))
    assert exporter.service.stop() == 0
    log = exporter.service.log()
    assert "authentication failed for user 'prometheus' from 127.0.0.1: wrong password" in log
    assert "unknown user" in log
    assert "wrong-one" not in log and PASSWORD not in log
    # A newline in a user name cannot forge a log line.
    assert not any(line.startswith("level=error") for line in log.splitlines())


def test_tls_with_a_test_ca(workdir: Path, pki: PKI) -> None:
    exporter = SecureExporter(workdir, "tls", {
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        "basic_auth_users": USERS,
    }, "https", verify=str(pki.ca)).start()
    try:
        assert exporter.get("/metrics", auth=GOOD).status_code == 200
        assert_401(exporter.get("/metrics"))
        # localhost is in the certificate as well as 127.0.0.1.
        by_name = requests.get(f"https://localhost:{exporter.port}/-/healthy", verify=str(pki.ca), timeout=10)
        assert by_name.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(exporter.url + "/-/healthy", timeout=10)  # the system's CAs do not know the test CA
        # Plain HTTP to the TLS port: Go's 400 answer, and the server goes on serving.
        plain = requests.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10)
        assert (plain.status_code, plain.text) == (400, "Client sent an HTTP request to an HTTPS server.\n")
        assert exporter.get("/metrics", auth=GOOD).status_code == 200
        # A client that connects and says nothing does not block other clients.
        with socket.create_connection(("127.0.0.1", exporter.port)):
            assert exporter.get("/-/healthy").status_code == 200
    finally:
        assert exporter.service.stop() == 0
    assert "listening on https://127.0.0.1" in exporter.service.log()
    assert "TLS handshake with 127.0.0.1 failed" in exporter.service.log()


def test_mutual_tls_refuses_clients_without_a_trusted_cert(mtls_exporter: SecureExporter, pki: PKI) -> None:
    ok = mtls_exporter.get("/metrics", auth=GOOD)
    assert ok.status_code == 200 and "perfwatch_" in ok.text
    assert_401(mtls_exporter.get("/metrics"))  # a good certificate does not replace the password
    for cert in (None, (str(pki.rogue_cert), str(pki.rogue_key))):
        with pytest.raises(requests.exceptions.ConnectionError):
            mtls_exporter.get("/-/healthy", cert=cert)
    assert "TLS handshake with 127.0.0.1 failed" in mtls_exporter.service.log()


def test_min_version_refuses_older_tls(mtls_exporter: SecureExporter, pki: PKI) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(*pki.client_pair)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", mtls_exporter.port), timeout=10) as raw, \
            pytest.raises(ssl.SSLError, match=r"(?i)version|alert"):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", mtls_exporter.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3"


def test_promtool_accepts_the_same_web_config(mtls_exporter: SecureExporter,
                                              auth_exporter: SecureExporter) -> None:
    for exporter in (mtls_exporter, auth_exporter):
        result = promtool("check", "web-config", str(exporter.web_config_path))
        assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.slow
def test_prometheus_scrapes_the_authenticated_tls_exporter(mtls_exporter: SecureExporter, pki: PKI,
                                                           tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not it")
    target = {"static_configs": [{"targets": [f"127.0.0.1:{mtls_exporter.port}"]}], "scheme": "https"}
    client_tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "secure", **target, "tls_config": client_tls,
             "basic_auth": {"username": "prometheus", "password_file": str(password_file)}},
            {"job_name": "wrong_password", **target, "tls_config": client_tls,
             "basic_auth": {"username": "prometheus", "password_file": str(wrong_file)}},
            {"job_name": "no_client_cert", **target, "tls_config": {"ca_file": str(pki.ca)},
             "basic_auth": {"username": "prometheus", "password_file": str(password_file)}},
        ],
    }
    checked = promtool("check", "config", "--syntax-only", str(_write(tmp_path / "check.yml", config)))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with Prometheus(tmp_path, config) as prom:
        prom.wait_for('up{job="secure"} == 1')
        prom.wait_for('node_scrape_collector_success{job="secure",collector="cpu"} == 1')
        prom.wait_for('up{job="wrong_password"} == 0')
        prom.wait_for('up{job="no_client_cert"} == 0')
        errors = {t["labels"]["job"]: t["lastError"] for t in prom.targets()}
    assert errors["secure"] == ""
    assert "401" in errors["wrong_password"], errors
    assert errors["no_client_cert"], errors


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_web_config_exits_2_naming_the_key(tmp_path: Path, pki: PKI) -> None:
    missing = _write(tmp_path / "missing.yml", {"tls_server_config": {"cert_file": "absent.pem",
                                                                      "key_file": str(pki.server_key)}})
    result = run_cli("--web-config", str(missing))
    assert result.returncode == 2, result.stderr
    assert "tls_server_config.cert_file: cannot read" in result.stderr
    assert str(tmp_path / "absent.pem") in result.stderr  # resolved next to the web config
    bad_hash = _write(tmp_path / "hash.yml", {"basic_auth_users": {"alice": "hunter2"}})
    result = run_cli("--web.config.file", str(bad_hash))  # node_exporter's spelling works too
    assert result.returncode == 2 and "basic_auth_users.alice: not a bcrypt hash" in result.stderr
    assert "hunter2" not in result.stderr
    result = run_cli("--web-config", str(tmp_path / "nowhere.yml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


# -- the archiver as a client: Prometheus-shaped basic_auth / authorization / tls_config ----------

def archiver_scraper(exporter: SecureExporter, pki: PKI, tmp_path: Path, *, password: str = PASSWORD,
                     client_cert: bool = True, **tls: object) -> TargetScraper:
    password_file = tmp_path / "exporter-password"
    password_file.write_text(password + "\n")  # a trailing newline, as `echo` leaves it
    tls_config = {"ca_file": str(pki.ca), **tls}
    if client_cert:
        tls_config |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    scraper = TargetScraper(Target(url=f"https://127.0.0.1:{exporter.port}/metrics", job="perfwatch",
                                   instance=f"127.0.0.1:{exporter.port}", timeout=10))
    apply_client_auth(scraper.session,
                      basic_auth=from_mapping(BasicAuthConfig, {"username": "prometheus",
                                                                "password_file": str(password_file)}),
                      tls_config=from_mapping(TLSClientConfig, tls_config))
    return scraper


def test_archiver_scrapes_the_authenticated_tls_exporter_and_stores(mtls_exporter: SecureExporter, pki: PKI,
                                                                    tmp_path: Path, pg_dsn: str) -> None:
    scraper = archiver_scraper(mtls_exporter, pki, tmp_path)
    try:
        batch = scraper.scrape()
    finally:
        scraper.close()
    names = {s.name for s in batch.samples}
    assert "node_scrape_collector_success" in names and batch.instance == f"127.0.0.1:{mtls_exporter.port}"
    engine = db.make_engine(pg_dsn)
    try:
        apply_migrations(engine)
        mirror_policy(engine, Policy())
        stored = Store(engine).write(batch)
        with engine.connect() as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample")).scalar()
    finally:
        engine.dispose()
    assert stored == count == len(batch.samples) > 50


def test_archiver_scrape_failures_have_reasons(mtls_exporter: SecureExporter, pki: PKI, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets this variable override a session's CA choice; a target's ca_file must win.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"password": "wrong"}, HTTP_STATUS, "401"),
        ({"client_cert": False}, UNREACHABLE, ""),  # the server ends the handshake
        ({"server_name": "db.elsewhere.example"}, UNREACHABLE, "db.elsewhere.example"),
        ({"ca_file": str(pki.client_ca)}, UNREACHABLE, "CERTIFICATE_VERIFY_FAILED"),
    ]
    for kwargs, reason, words in cases:
        scraper = archiver_scraper(mtls_exporter, pki, tmp_path, **kwargs)
        try:
            with pytest.raises(ScrapeError) as caught:
                scraper.scrape()
        finally:
            scraper.close()
        assert caught.value.reason == reason and words in caught.value.message, (kwargs, caught.value.message)
        assert PASSWORD not in caught.value.message
    # server_name that the certificate carries, and insecure_skip_verify with a CA that does not sign it.
    for tls in ({"server_name": "localhost"}, {"ca_file": str(pki.client_ca), "insecure_skip_verify": True}):
        scraper = archiver_scraper(mtls_exporter, pki, tmp_path, **tls)
        try:
            assert scraper.scrape().samples
        finally:
            scraper.close()


def test_archiver_rereads_the_password_file(auth_exporter: SecureExporter, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("old and wrong")
    scraper = TargetScraper(Target(url=f"{auth_exporter.url}/metrics", job="perfwatch", instance="x", timeout=10))
    apply_client_auth(scraper.session, basic_auth=BasicAuthConfig("prometheus", password_file=str(password_file)))
    try:
        with pytest.raises(ScrapeError, match="401"):
            scraper.scrape()
        password_file.write_text(PASSWORD)  # rotated: no restart needed
        assert scraper.scrape().samples
        password_file.unlink()
        with pytest.raises(ScrapeError, match="cannot read the secret file"):
            scraper.scrape()
    finally:
        scraper.close()


def test_archiver_sends_bearer_tokens(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-ünï\n")
    seen: list[str] = []

    def echo(request: Request) -> Response:
        seen.append(request.header("authorization"))
        return Response(200, b"# TYPE up gauge\nup 1\n", METRICS_CONTENT_TYPE)

    server = WebServer("127.0.0.1", 0, {"/metrics": echo}, server_name="test")
    server.start()
    try:
        scraper = TargetScraper(Target(url=f"http://127.0.0.1:{server.port}/metrics", job="j", instance="i"))
        apply_client_auth(scraper.session, authorization=from_mapping(
            AuthorizationConfig, {"type": "Bearer", "credentials_file": str(token_file)}))
        assert scraper.scrape().samples
        scraper.close()
    finally:
        server.stop()
    assert seen == ["Bearer t0ken-ünï".encode().decode("latin-1")]  # UTF-8 bytes on the wire


@pytest.mark.parametrize(("cls", "data", "key", "words"), [
    (BasicAuthConfig, {"username": "u", "password_file": "/nonexistent"}, "t.password_file", "No such file"),
    (BasicAuthConfig, {"username": "u", "password": "p", "password_file": "/etc/hostname"}, "t.password_file",
     "not both"),
    (BasicAuthConfig, {"password": "p"}, "t.username", "required"),
    (BasicAuthConfig, {"username": "u", "pasword": "p"}, "t.pasword", "did you mean 'password'"),
    (AuthorizationConfig, {"type": "Basic", "credentials": "x"}, "t.type", "basic_auth"),
    (AuthorizationConfig, {"type": "Bearer"}, "t.credentials_file", "set credentials"),
    (TLSClientConfig, {"cert_file": "/etc/hostname"}, "t.key_file", "go together"),
    (TLSClientConfig, {"ca_file": "/etc/hostname"}, "t.ca_file", "cannot load"),
    (TLSClientConfig, {"min_version": "TLS11"}, "t.min_version", "must be one of"),
])
def test_archiver_client_config_errors_name_the_key(cls: type, data: dict[str, object], key: str,
                                                    words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(cls, data, "t")
    assert caught.value.key == key and words in str(caught.value), caught.value


def test_archiver_client_key_errors(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"t.key_file.*not a certificate and its key"):
        from_mapping(TLSClientConfig, {"cert_file": str(pki.client_cert), "key_file": str(pki.server_key)}, "t")
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pass")))
    with pytest.raises(ConfigError, match="encrypted"):
        from_mapping(TLSClientConfig, {"cert_file": str(pki.client_cert), "key_file": str(encrypted)}, "t")
    with pytest.raises(ConfigError, match="not both"):
        validate_client_auth("t", BasicAuthConfig("u", "p"), AuthorizationConfig(credentials="x"))
    assert "s3cr3t" not in repr(BasicAuthConfig("u", password="s3cr3t"))
    assert "s3cr3t" not in repr(AuthorizationConfig(credentials="s3cr3t"))

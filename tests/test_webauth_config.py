"""The web config (exporter-toolkit's web-config.yml): validation next to promtool's, and the bcrypt cache."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from support.pki import PKI
from support.prometheus import promtool

from perfwatch.common.basicauth import BasicAuth
from perfwatch.common.config import ConfigError
from perfwatch.common.webconfig import load_web_config


def fast_hash(password: str | bytes, cost: int = 4) -> str:
    data = password.encode() if isinstance(password, str) else password
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds=cost)).decode()


def basic(user: str | bytes, password: str | bytes) -> str:
    raw = (user.encode() if isinstance(user, str) else user) + b":" + (
        password.encode() if isinstance(password, str) else password)
    return "Basic " + base64.b64encode(raw).decode()


def write(directory: Path, data: object, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True))
    return path


def tls(pki: PKI, **extra: object) -> dict[str, object]:
    return {"tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **extra}}


def test_full_config_loads_and_promtool_agrees(pki: PKI, tmp_path: Path) -> None:
    # Relative paths are relative to the file's directory (exporter-toolkit does the same).
    for src in (pki.server_cert, pki.server_key, pki.client_ca):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    path = write(tmp_path, {
        "tls_server_config": {
            "cert_file": pki.server_cert.name, "key_file": pki.server_key.name,
            "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": pki.client_ca.name,
            "min_version": "TLS12", "max_version": "TLS13", "prefer_server_cipher_suites": False,
            "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
        },
        "http_server_config": {"http2": False, "headers": {"X-Frame-Options": "deny",
                                                            "Strict-Transport-Security": "max-age=31536000"}},
        "basic_auth_users": {"prometheus": fast_hash("s3cret"), "ünïcødé": fast_hash("pässwörd")},
    })
    config = load_web_config(path)
    assert config.ssl_context is not None and config.auth is not None
    assert config.tls_server_config.cert_file == str(tmp_path / pki.server_cert.name)
    assert config.headers["X-Frame-Options"] == "deny"
    assert "client certificates: RequireAndVerifyClientCert" in config.describe()
    result = promtool("check", "web-config", str(path))
    assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr


def test_auth_only_config_has_no_tls(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, {"basic_auth_users": {"a": fast_hash("b")}}))
    assert config.ssl_context is None and config.auth is not None
    assert config.describe() == "TLS off, basic auth: 1 users"


def encrypted_key(pki: PKI, tmp_path: Path) -> str:
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    path = tmp_path / "encrypted-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"passphrase")))
    return str(path)


# (case, config maker, the key the error must name, a word of the message, does promtool 2.42 reject it too)
Maker = Callable[[PKI, Path], object]
BAD_CASES: list[tuple[str, Maker, str, str, bool]] = [
    ("typo-top", lambda p, d: {"basic_auth_user": {}}, "basic_auth_user", "did you mean 'basic_auth_users'", True),
    ("typo-tls", lambda p, d: {"tls_server_config": {"certfile": "x"}}, "tls_server_config.certfile",
     "unknown key", True),
    ("cert-missing", lambda p, d: tls(p) | {"tls_server_config": {"cert_file": str(d / "nope.pem"),
                                                                   "key_file": str(p.server_key)}},
     "tls_server_config.cert_file", "No such file", True),
    ("cert-garbage", lambda p, d: {"tls_server_config": {"cert_file": str(write(d, "not a cert\n", "c.pem")),
                                                         "key_file": str(p.server_key)}},
     "tls_server_config.cert_file", "no PEM certificate", True),
    ("key-mismatch", lambda p, d: {"tls_server_config": {"cert_file": str(p.server_cert),
                                                         "key_file": str(p.client_key)}},
     "tls_server_config.key_file", "not the private key", True),
    ("key-encrypted", lambda p, d: {"tls_server_config": {"cert_file": str(p.server_cert),
                                                          "key_file": encrypted_key(p, d)}},
     "tls_server_config.key_file", "encrypted", True),
    ("key-absent", lambda p, d: {"tls_server_config": {"cert_file": str(p.server_cert)}},
     "tls_server_config.key_file", "missing", True),
    ("auth-type-only", lambda p, d: {"tls_server_config": {"client_auth_type": "RequireAndVerifyClientCert"}},
     "tls_server_config.cert_file", "missing", True),
    ("auth-type-bogus", lambda p, d: tls(p, client_auth_type="Sometimes"), "tls_server_config.client_auth_type",
     "must be one of", True),
    ("ca-without-auth", lambda p, d: tls(p, client_ca_file=str(p.client_ca)), "tls_server_config.client_ca_file",
     "does not ask", True),
    ("ca-garbage", lambda p, d: tls(p, client_auth_type="RequireAndVerifyClientCert",
                                    client_ca_file=str(write(d, "junk\n", "ca.pem"))),
     "tls_server_config.client_ca_file", "no PEM certificate", False),
    ("cipher-bogus", lambda p, d: tls(p, cipher_suites=["TLS_RSA_WITH_RC4_128_SHA"]),
     "tls_server_config.cipher_suites[0]", "unknown cipher suite", True),
    ("header-extra", lambda p, d: {"http_server_config": {"headers": {"X-Foo": "a"}}},
     "http_server_config.headers.X-Foo", "can not be configured", True),
    ("header-value", lambda p, d: {"http_server_config": {"headers": {"X-Frame-Options": "DENY"}}},
     "http_server_config.headers.X-Frame-Options", "deny, sameorigin", True),
    ("hash-bogus", lambda p, d: {"basic_auth_users": {"alice": "plaintext-password"}}, "basic_auth_users.alice",
     "not a bcrypt hash", True),
    ("hash-not-string", lambda p, d: {"basic_auth_users": {"alice": 12}}, "basic_auth_users.alice",
     "must be a string", True),
    ("newer-key", lambda p, d: tls(p, client_allowed_sans=["x"]), "tls_server_config.client_allowed_sans",
     "not supported", True),
    # Stricter than promtool, each for a stated reason:
    ("verify-without-ca", lambda p, d: tls(p, client_auth_type="RequireAndVerifyClientCert"),
     "tls_server_config.client_ca_file", "required", False),
    ("any-client-cert", lambda p, d: tls(p, client_auth_type="RequireAnyClientCert"),
     "tls_server_config.client_auth_type", "not supported", False),
    ("curves", lambda p, d: tls(p, curve_preferences=["X25519"]), "tls_server_config.curve_preferences",
     "not supported", False),
    ("tls11", lambda p, d: tls(p, min_version="TLS11"), "tls_server_config.min_version", "insecure", False),
    ("min-above-max", lambda p, d: tls(p, min_version="TLS13", max_version="TLS12"),
     "tls_server_config.max_version", "below min_version", False),
    ("user-colon", lambda p, d: {"basic_auth_users": {"a:b": fast_hash("x")}}, "basic_auth_users.a:b",
     "cannot contain ':'", False),
]


@pytest.mark.parametrize(("maker", "key", "words", "promtool_rejects"),
                         [case[1:] for case in BAD_CASES], ids=[case[0] for case in BAD_CASES])
def test_bad_config_is_refused_naming_the_key(pki: PKI, tmp_path: Path, maker: Maker, key: str, words: str,
                                              promtool_rejects: bool) -> None:
    path = write(tmp_path, maker(pki, tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert caught.value.key == key, caught.value
    assert words in str(caught.value) and str(path) in str(caught.value), caught.value
    result = promtool("check", "web-config", str(path))
    assert (result.returncode != 0) == promtool_rejects, result.stdout + result.stderr


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_web_config(tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_web_config(write(tmp_path, "basic_auth_users: [\n"))
    with pytest.raises(ConfigError, match="basic_auth_users: must be a mapping"):
        load_web_config(write(tmp_path, "basic_auth_users: [a, b]\n"))


def test_cache_keeps_only_successes_as_keyed_digests() -> None:
    auth = BasicAuth({"prometheus": fast_hash("s3cret")})
    for attempt in range(20):
        assert not auth.check(basic("prometheus", f"guess-{attempt}")).ok
        assert not auth.check(basic(f"nobody-{attempt}", "s3cret")).ok
    assert auth.cache_size == 0
    for _ in range(3):
        result = auth.check(basic("prometheus", "s3cret"))
        assert result.ok and result.user == "prometheus"
    assert auth.cache_size == 1
    (entry,) = auth._verified
    assert len(entry) == 32 and b"s3cret" not in entry
    # Another process (another random key) never produces the same digest.
    other = BasicAuth({"prometheus": fast_hash("s3cret")})
    assert other.check(basic("prometheus", "s3cret")).ok
    assert other._verified != auth._verified


def test_cache_is_bounded() -> None:
    users = {f"user{i}": fast_hash(f"pw{i}") for i in range(5)}
    auth = BasicAuth(users, max_entries=3)
    for i in range(5):
        assert auth.check(basic(f"user{i}", f"pw{i}")).ok
    assert auth.cache_size == 3
    assert auth.check(basic("user4", "pw4")).ok  # past the bound it still answers right, uncached


def test_unknown_users_pay_a_dummy_check_at_the_highest_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth({"cheap": fast_hash("a", cost=4), "dear": fast_hash("b", cost=6)})
    checked: list[bytes] = []
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)  # the module basicauth calls
    result = auth.check(basic("intruder", "a"))
    assert not result.ok and result.reason == "unknown user"
    assert len(checked) == 1 and checked[0].startswith(b"$2b$06$")  # really ran, at the highest cost


def test_concurrent_first_logins_run_bcrypt_once(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth({"prometheus": fast_hash("s3cret", cost=8)})
    calls: list[int] = []
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(1)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)  # the module basicauth calls
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def login() -> None:
        barrier.wait()
        results.append(auth.check(basic("prometheus", "s3cret")).ok)

    threads = [threading.Thread(target=login) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    assert len(calls) == 1


@pytest.mark.parametrize(("header", "reason"), [
    ("", "no credentials"),
    ("Bearer abc", "unsupported authorization scheme"),
    ("Basic !!!not-base64!!!", "malformed"),
    ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed"),
    ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "malformed"),
    ("Basic", "malformed"),
])
def test_malformed_headers_are_refused(header: str, reason: str) -> None:
    auth = BasicAuth({"prometheus": fast_hash("s3cret")})
    result = auth.check(header)
    assert not result.ok and reason in result.reason


def test_odd_credentials() -> None:
    odd_user, odd_password = "ünï \"cødé\"\\", "'; DROP TABLE metric; --\n\"\\ ✓"
    exactly_72 = "x" * 72
    auth = BasicAuth({odd_user: fast_hash(odd_password), "long": fast_hash(exactly_72),
                      "y2": "$2y$" + fast_hash("htpasswd")[4:]})
    assert auth.check(basic(odd_user, odd_password)).ok
    assert auth.check("basic " + basic(odd_user, odd_password)[6:]).ok  # scheme is case-insensitive
    assert not auth.check(basic(odd_user, odd_password[:-1])).ok
    assert auth.check(basic("long", exactly_72)).ok
    # bcrypt reads 72 bytes; a longer password must not pass because its first 72 bytes match.
    assert not auth.check(basic("long", exactly_72 + "tail")).ok
    assert auth.check(basic("y2", "htpasswd")).ok  # htpasswd -B writes $2y$

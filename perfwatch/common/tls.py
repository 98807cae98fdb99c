"""The `ssl.SSLContext` a web config's `tls_server_config` asks for, in Go's names translated to OpenSSL's.

The config is validated first (webconfig.TLSServerConfig.validate: versions, cipher names, what
Python's ssl module cannot do); here the files are read and loaded. A certificate that does not
parse, a key that does not match it or is encrypted, or a client CA that holds no certificate is
a `ConfigError` naming the key, so start-up fails before the server binds.

`ssl` is imported by `ssl_context()` only: it loads OpenSSL's libssl, 4.4 MiB of a process' RSS
that an exporter without TLS has no use for (issue 13).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from perfwatch.common.config import ConfigError

if TYPE_CHECKING:
    import ssl

    from perfwatch.common.webconfig import TLSServerConfig

# The config's names of TLS versions, oldest first → ssl.TLSVersion's. TLS 1.0 and 1.1 are missing
# on purpose: refused as insecure.
TLS_VERSIONS = {"TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}

# Go's cipher suite names (what the file holds) → OpenSSL's. These are the suites Go's
# tls.CipherSuites() listed when Prometheus 2.42 was built. TLS 1.3 suites are not configurable
# in Go or in OpenSSL's cipher string, so naming them is accepted and changes nothing (as in Go).
TLS12_CIPHERS = {
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
TLS13_CIPHERS = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def _read(key: str, file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as err:
        raise ConfigError(key, f"cannot read {file}: {err.strerror}") from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key and hang start-up.
    raise ValueError("the key is encrypted; perfwatch needs an unencrypted key file (readable by it only)")


def ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """A server context for a validated, enabled `tls` (paths already resolved). Raises ConfigError."""
    import ssl

    key = "tls_server_config"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion[TLS_VERSIONS[tls.min_version]]
    ctx.maximum_version = ssl.TLSVersion[TLS_VERSIONS[tls.max_version]]
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
    suites = [TLS12_CIPHERS[name] for name in tls.cipher_suites if name in TLS12_CIPHERS]
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

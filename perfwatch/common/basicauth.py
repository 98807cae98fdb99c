"""HTTP basic auth against the bcrypt hashes of a web config's `basic_auth_users`, with a cache.

Only the checking lives here; which users exist and whether their hashes are well formed is
validated when the web config loads (webconfig.WebConfig.validate).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import os
import threading

# bcrypt only ever reads the first 72 bytes of a password; bcrypt 5 refuses longer ones.
_BCRYPT_MAX_PASSWORD = 72


@dataclasses.dataclass
class AuthResult:
    ok: bool
    user: str = ""
    reason: str = ""  # for the log, never for the client
    # For the metric (httpserver.AUTH_FAILURE_REASONS): no_credentials, unsupported_scheme,
    # malformed, unknown_user, wrong_password; "" on success.
    kind: str = ""


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
        # Here, not at the top: only a web config with basic_auth_users needs them (RSS; hashlib
        # loads OpenSSL's libcrypto).
        import hashlib
        import hmac

        import bcrypt

        # A well-formed hash of the highest cost that matches no password: take a cheap real one
        # and raise its cost field (computing it at cost 12 would add 250 ms to start-up).
        cheap = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=4))
        self._dummy = cheap[:4] + b"%02d" % cost + cheap[6:]
        self._hmac = functools.partial(hmac.new, os.urandom(32), digestmod=hashlib.sha256)
        self._verified: set[bytes] = set()
        self.max_entries = max_entries
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def check(self, authorization: str) -> AuthResult:
        """Check an Authorization header value."""
        if not authorization:
            return AuthResult(False, reason="no credentials", kind="no_credentials")
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return AuthResult(False, reason=f"unsupported authorization scheme {scheme[:20]!r}",
                              kind="unsupported_scheme")
        try:
            user_bytes, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
            user = user_bytes.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(False, reason="malformed basic credentials", kind="malformed")
        if not colon:
            return AuthResult(False, user, "malformed basic credentials (no ':')", "malformed")
        digest = self._hmac(user_bytes + b":" + password).digest()
        if self._cached(digest):
            return AuthResult(True, user)
        stored = self._users.get(user)
        with self._bcrypt_lock:
            # Another thread may have verified the same credentials while this one waited.
            if self._cached(digest):
                return AuthResult(True, user)
            ok = self._bcrypt_ok(password, stored or self._dummy) and stored is not None
        if not ok:
            if stored is None:
                return AuthResult(False, user, "unknown user", "unknown_user")
            return AuthResult(False, user, "wrong password", "wrong_password")
        with self._cache_lock:
            if len(self._verified) < self.max_entries:
                self._verified.add(digest)
        return AuthResult(True, user)

    def _cached(self, digest: bytes) -> bool:
        with self._cache_lock:
            return digest in self._verified

    def _bcrypt_ok(self, password: bytes, hashed: bytes) -> bool:
        import bcrypt  # loaded by __init__ already: a dictionary look-up

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

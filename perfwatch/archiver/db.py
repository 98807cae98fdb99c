"""The archive database: engine and pool, the SQL files under `sql/`, and what "unreachable" means.

SQLAlchemy Core owns the engine and the pool; the SQL is in `sql/` (`schema/` the tables,
`functions/` every function, `queries/` the statements the Python side runs by name), and the
tables are declared only there. Samples go through psycopg 3's COPY on the pooled connection.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

SQL_DIR = Path(__file__).resolve().parent / "sql"
SCHEMA = "perfwatch"
WRITER_ROLE = "perfwatch_writer"
GRAFANA_ROLE = "perfwatch_grafana"
T = TypeVar("T")
log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):  # noqa: N818 - the name other modules know it by
    """PostgreSQL cannot be reached (down, restarting, network, out of connections): retry later."""


MAX_PARALLEL_PIECES = 8  # policy.catchup_workers' upper bound


def make_engine(dsn: str, *, application_name: str = "perfwatch-archiver", pool_size: int = 4,
                connect_timeout: int = 5) -> sa.Engine:
    """A SQLAlchemy Core engine over psycopg 3 for a libpq DSN (URL or `key=value` form).

    pool_pre_ping checks a pooled connection before use, so one the server closed (restart) is
    replaced instead of failing the next write; the connect timeout and TCP keepalives make an
    outage show up in seconds rather than at the kernel's TCP timeout.
    """
    try:
        params: dict[str, Any] = dict(conninfo_to_dict(_libpq_dsn(dsn)))
    except psycopg.ProgrammingError as err:
        raise ValueError(f"invalid PostgreSQL DSN: {err}") from None
    params.setdefault("connect_timeout", connect_timeout)
    params.setdefault("application_name", application_name)
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 10)
    params.setdefault("keepalives_interval", 5)
    params.setdefault("keepalives_count", 3)
    # Overflow for the pieces of a parallel rollup or compaction (policy.catchup_workers, at most
    # MAX_CATCHUP_WORKERS), which need connections while writers may hold theirs waiting on its locks.
    return sa.create_engine("postgresql+psycopg://", connect_args=params, pool_pre_ping=True,
                            pool_size=pool_size, max_overflow=2 + MAX_PARALLEL_PIECES,
                            pool_timeout=connect_timeout * 2)


def _libpq_dsn(dsn: str) -> str:
    for scheme in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres+psycopg://"):
        if dsn.startswith(scheme):
            return "postgresql://" + dsn[len(scheme):]
    return dsn


def _dbapi_error(err: BaseException) -> BaseException:
    """The psycopg error under SQLAlchemy's wrapper, or `err` itself."""
    if isinstance(err, sa.exc.DBAPIError) and err.orig is not None:
        return err.orig
    return err


def is_conflict(err: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction lost a race and can simply run again."""
    return isinstance(_dbapi_error(err), psycopg.errors.TransactionRollback)


def retry_conflicts(what: str, work: Callable[..., T], *args: Any, attempts: int = 5) -> T:
    """Run `work(*args)` (one whole transaction) again when it loses a deadlock or serialization race.

    psycopg files these under OperationalError, but they say nothing about the database being
    reachable: retrying at once is right, reporting an outage (and spooling) is not.
    """
    for attempt in range(1, attempts + 1):
        try:
            return work(*args)
        except (sa.exc.SQLAlchemyError, psycopg.Error) as err:
            if not is_conflict(err) or attempt == attempts:
                raise
            log.info("%s lost a lock race (%s); running it again", what, type(_dbapi_error(err)).__name__)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


# SQLSTATE classes that mean "not now" rather than "not this": the connection failed (08), the
# server lacks resources (53: disk full, out of memory, too many connections), the server is
# shutting down or starting (57P01-57P05), or a system error (58). Waiting fixes them.
_UNAVAILABLE_STATES = ("08", "53", "57P", "58")


def is_unavailable(err: BaseException, connection: psycopg.Connection[Any] | None = None) -> bool:
    """Whether `err` means the database cannot be reached (as opposed to a bug or bad data).

    By the error's SQLSTATE where the server sent one; an error without one is a connection-level
    failure only if the connection is gone: libpq also refuses a statement client-side (more than
    65,535 bind parameters) with an OperationalError on a connection that is fine, and that is not
    an outage to spool and wait for, but a statement to change. `connection`: the psycopg
    connection the error came from, when the caller has it."""
    if is_conflict(err):
        return False
    if isinstance(err, sa.exc.DBAPIError):
        if err.connection_invalidated:
            return True
        err = err.orig if err.orig is not None else err
    if isinstance(err, sa.exc.TimeoutError | sa.exc.DisconnectionError):  # pool exhausted / ping failed
        return True
    if not isinstance(err, psycopg.Error):
        return False
    if err.sqlstate:
        return err.sqlstate.startswith(_UNAVAILABLE_STATES)
    if not isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    return connection is None or connection.closed or connection.broken


def is_lock_timeout(err: BaseException) -> bool:
    """lock_timeout ran out (55P03): someone holds a lock the statement needs; try again later."""
    return isinstance(_dbapi_error(err), psycopg.errors.LockNotAvailable)


@contextmanager
def unavailable_as(what: str) -> Iterator[None]:
    """Raise DatabaseUnavailable (naming `what` was being done) for errors that mean the DB is gone."""
    try:
        yield
    except (sa.exc.SQLAlchemyError, psycopg.Error) as err:
        if is_unavailable(err):
            reason = getattr(err, "orig", None) or err
            raise DatabaseUnavailable(f"{what}: {str(reason).strip().splitlines()[0]}") from err
        raise


@functools.cache
def sql_text(name: str) -> str:
    """The statement in `sql/queries/<name>.sql`."""
    return (SQL_DIR / "queries" / f"{name}.sql").read_text(encoding="utf-8")


def run_script(conn: sa.Connection, script: str) -> None:
    """Run a multi-statement SQL script inside `conn`'s current transaction.

    Through the DBAPI connection without parameters: psycopg then leaves `%` alone, which
    plpgsql's format('%I') needs; SQLAlchemy's text() would also read `:name` as a parameter.
    """
    psycopg_connection(conn).execute(script)


def psycopg_connection(conn: sa.Connection) -> psycopg.Connection[Any]:
    dbapi = conn.connection.dbapi_connection
    assert isinstance(dbapi, psycopg.Connection)
    return dbapi


def become_writer(conn: psycopg.Connection[Any]) -> None:
    """Act as perfwatch_writer for the rest of the session (DDL on the archive's tables needs their
    owner): a no-op for the writer itself; a superuser or a member of the writer may."""
    row = conn.execute("SELECT current_user").fetchone()
    if row is None or row[0] != WRITER_ROLE:
        conn.execute(f"SET ROLE {WRITER_ROLE}")


def fn(name: str, *args: Any) -> sa.FunctionElement[Any]:
    """perfwatch.<name>(*args) as a Core function call."""
    function: sa.FunctionElement[Any] = getattr(getattr(sa.func, SCHEMA), name)(*args)
    return function


def call_table(conn: sa.Connection, name: str, *args: Any) -> list[sa.Row[Any]]:
    """Rows of the set-returning (or OUT-parameter) function perfwatch.<name>(*args)."""
    return list(conn.execute(sa.select(sa.literal_column("*")).select_from(fn(name, *args).alias("f"))))

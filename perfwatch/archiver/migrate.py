"""The archive's schema: numbered migrations, then every function, at every start.

`sql/schema/NNNN_name.sql` hold tables, indexes and roles: each runs once, in order, in a
transaction of its own, and is recorded in perfwatch.schema_migration with its checksum.
`sql/functions/*.sql` hold every function (CREATE OR REPLACE, one file per topic) and are
re-applied after the migrations, so the text of a function that runs today lives in exactly one
file and an upgrade needs no migration to change one (history lives in git). A function whose
signature changes, or that goes away, is dropped by a numbered migration.

Every transaction here first locks perfwatch.schema_migration and looks again at what is applied,
so two archivers starting at once never apply the same file twice. A table lock, not an advisory
lock: any role that can connect (the read-only Grafana role too) can hold any advisory lock and
so could keep every archiver from starting, while locking schema_migration in a mode that
conflicts with ours takes privileges only its owner (the writer) and superusers have. Files run as
perfwatch_writer (so the writer owns what they create), except those whose first line is
`-- perfwatch: run-as session` (0001: roles and grants).

An archive made by perfwatch 0.1 recorded migrations 0001-0006, which also defined the functions;
they are recorded again as today's 0001-0003 (the same tables), and the functions replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from perfwatch.archiver import db

log = logging.getLogger(__name__)

SCHEMA_DIR = db.SQL_DIR / "schema"
FUNCTIONS_DIR = db.SQL_DIR / "functions"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_RUN_AS_SESSION = "-- perfwatch: run-as session"
_LOCK = "LOCK TABLE perfwatch.schema_migration IN EXCLUSIVE MODE"
_APPLIED = sa.text("SELECT version, name, checksum, applied_at FROM perfwatch.schema_migration ORDER BY version")
_RECORD = sa.text("INSERT INTO perfwatch.schema_migration (version, name, checksum) VALUES (:v, :n, :c)")

# perfwatch 0.1's migrations as an archive records them: version → (file, sha256). 0004-0006
# only defined functions and lock tables, which today's 0003 and sql/functions/ hold.
LEGACY_0_1 = {
    1: ("0001_roles.sql", "1ca6efd362c12a5d581a6119dad7471579b84edfd9f6c65895c232cd39c78486"),
    2: ("0002_catalog.sql", "8c58417eb72dcc5d99ce4a04b96a002f1e9e90621fec964f6f51dc283969eb34"),
    3: ("0003_archive.sql", "27567ab1f29ab54219667bee5daaafb21fce84b582a46ab52bda01146a26444c"),
    4: ("0004_read.sql", "6c9b5b260b685e60ba3b60da790e90621ca91f52041806147de89ecd8c23b573"),
    5: ("0005_retention_waits_for_late_samples.sql",
        "75a586c621bd9f76841c8c603fb43a3c30a1eb02d4cf8ca9bebeb5485b161ce1"),
    6: ("0006_lock_tables.sql", "73f6816cd6ed111fabe3616e764f840b4ad16821f7098c8e574302b04272882b"),
}
LEGACY_0_1_AS = (1, 2, 3)  # today's migrations that stand for all of 0.1's


class MigrationError(Exception):
    """The migrations cannot be applied (a changed file, a missing privilege, a failing statement)."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. 0002_catalog.sql
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def run_as_session(self) -> bool:
        return self.text.startswith(_RUN_AS_SESSION)


def discover(directory: Path = SCHEMA_DIR) -> list[Migration]:
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE_RE.match(path.name)
        if not match:
            if path.suffix == ".sql":
                raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
            continue
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path}: version {version} is also {migrations[version].name}")
        migrations[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


def function_files(directory: Path = FUNCTIONS_DIR) -> list[Path]:
    """The function files in the order they are applied. A function with an SQL-standard body
    (`RETURN …`, `BEGIN ATOMIC`) is checked against what it calls when it is created: those call
    only functions of buckets.sql, which sorts first, and of their own file, above them."""
    return sorted(directory.glob("*.sql"))


def apply_migrations(engine: sa.Engine, schema_dir: Path = SCHEMA_DIR,
                     functions_dir: Path = FUNCTIONS_DIR) -> list[str]:
    """Apply the migrations not applied yet, then every function file; return the migrations'
    file names (empty: the schema was up to date).

    Raises db.DatabaseUnavailable when PostgreSQL cannot be reached, MigrationError otherwise.
    """
    migrations = discover(schema_dir)
    applied: list[str] = []
    with db.unavailable_as("applying migrations"), engine.connect() as conn:
        try:
            # A migration says what it could not do (a role it may not change) with a WARNING.
            db.psycopg_connection(conn).add_notice_handler(_log_warning)
            with conn.begin():
                db.run_script(conn, db.sql_text("migrate_bootstrap"))
            _adopt_legacy(conn, migrations)
            for migration in migrations:
                if _apply(conn, migration):
                    applied.append(migration.name)
                    log.info("applied migration %s", migration.name)
            _apply_functions(conn, function_files(functions_dir))
        finally:
            # A migration may have changed the session (a SET without LOCAL): never hand it back to the pool.
            conn.invalidate()
    # Connections pooled before the roles existed would keep creating things as the login user.
    engine.dispose()
    return applied


def _log_warning(diagnostic: psycopg.errors.Diagnostic) -> None:
    if diagnostic.severity_nonlocalized == "WARNING":
        log.warning("%s", diagnostic.message_primary)


def _applied(conn: sa.Connection) -> dict[int, sa.Row[Any]]:
    return {row.version: row for row in conn.execute(_APPLIED)}


def _adopt_legacy(conn: sa.Connection, migrations: list[Migration]) -> None:
    """Record an archive made by perfwatch 0.1 (its last migration, 0006, is recorded) as today's
    0001-0003; see the module docstring."""
    with conn.begin():
        if not _is_legacy(_applied(conn)):
            return
    with conn.begin():  # a new transaction: the lock is taken before reading (see _apply)
        _become_writer(conn, "adopting perfwatch 0.1's migrations")
        db.run_script(conn, _LOCK)
        done = _applied(conn)  # after the lock: another archiver may have adopted them meanwhile
        if not _is_legacy(done):
            return
        found = {v: (row.name, row.checksum) for v, row in done.items()}
        if found != LEGACY_0_1:
            raise MigrationError("the archive records perfwatch 0.1's last migration next to migrations that 0.1 "
                                 f"did not ship ({', '.join(n for n, _ in found.values())}); it was changed by "
                                 "hand: restore it from a backup")
        current = {m.version: m for m in migrations}
        conn.execute(sa.text("DELETE FROM perfwatch.schema_migration WHERE version <> ALL (:keep)"),
                     {"keep": list(LEGACY_0_1_AS)})
        for version in LEGACY_0_1_AS:
            conn.execute(sa.text("UPDATE perfwatch.schema_migration SET name = :n, checksum = :c WHERE version = :v"),
                         {"v": version, "n": current[version].name, "c": current[version].checksum})
    log.info("the archive was made by perfwatch 0.1: its migrations 0001-0006 are recorded as %s, which create "
             "the same tables; its functions are replaced", ", ".join(current[v].name for v in LEGACY_0_1_AS))


def _is_legacy(done: dict[int, sa.Row[Any]]) -> bool:
    last = done.get(6)
    return last is not None and (last.name, last.checksum) == LEGACY_0_1[6]


def _check_unchanged(migration: Migration, done: sa.Row[Any]) -> None:
    if done.checksum != migration.checksum:
        raise MigrationError(f"migration {migration.name} was changed after it was applied "
                             f"(on {done.applied_at:%Y-%m-%d}); add a new numbered file instead of editing an "
                             "applied one")


def _apply(conn: sa.Connection, migration: Migration) -> bool:
    """Apply `migration` in a transaction of its own; False if it was applied already."""
    # A first look in a transaction of its own: the one that applies must take its lock before it
    # reads the table (0001 alters it, which waits for every reader's ACCESS SHARE: a reader waiting
    # for our lock would deadlock with us).
    with conn.begin():
        done = _applied(conn).get(migration.version)
    if done is not None:
        _check_unchanged(migration, done)
        return False
    try:
        with conn.begin():
            if not migration.run_as_session:
                _become_writer(conn, f"migration {migration.name}")
            # EXCLUSIVE: one migrating transaction at a time; plain reads of the table go on.
            db.run_script(conn, _LOCK)
            # Read after the lock is granted (a new snapshot): a file applied meanwhile shows here.
            done = _applied(conn).get(migration.version)
            if done is not None:
                _check_unchanged(migration, done)
                return False
            db.run_script(conn, migration.text)
            conn.execute(_RECORD, {"v": migration.version, "n": migration.name, "c": migration.checksum})
        return True
    except MigrationError:
        raise
    except Exception as err:  # SQLAlchemy's and psycopg's errors from the script itself
        if db.is_unavailable(err):
            raise
        raise MigrationError(f"migration {migration.name} failed: {_reason(err)}") from err


def _apply_functions(conn: sa.Connection, files: list[Path]) -> None:
    """Every function file, in one transaction: a function is never seen half-replaced."""
    try:
        with conn.begin():
            _become_writer(conn, "the archive's functions")
            db.run_script(conn, _LOCK)
            for path in files:
                log.debug("applying %s", path.name)
                db.run_script(conn, path.read_text(encoding="utf-8"))
    except MigrationError:
        raise
    except Exception as err:
        if db.is_unavailable(err):
            raise
        raise MigrationError(f"applying the archive's functions failed: {_reason(err)}") from err


def _become_writer(conn: sa.Connection, what: str) -> None:
    current = conn.execute(sa.select(sa.func.current_user())).scalar_one()
    if current == db.WRITER_ROLE:
        return
    member = conn.execute(sa.select(sa.func.pg_has_role(sa.func.session_user(), db.WRITER_ROLE, "MEMBER"))).scalar()
    if not member:
        raise MigrationError(f"{what} must run as {db.WRITER_ROLE}: connect as it, as a superuser, or as a member "
                             f"of it ({current} is none of these)")
    db.run_script(conn, f"SET LOCAL ROLE {db.WRITER_ROLE}")


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    return str(orig).strip()

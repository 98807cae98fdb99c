"""Numbered schema migrations: `sql/migrations/NNNN_name.sql`, applied in order, each once.

Each file runs in a transaction of its own and is recorded in perfwatch.schema_migration with
its checksum. That transaction first locks perfwatch.schema_migration and looks again whether the
file is applied, so two archivers starting at once never apply the same file twice. A table lock,
not an advisory lock: any role that can connect (the read-only Grafana role too) can hold any
advisory lock and so could keep every archiver from starting, while locking schema_migration in a
mode that conflicts with ours takes privileges only its owner (the writer) and superusers have.
Files run as perfwatch_writer (so the writer owns what they create), except those whose first
line is `-- perfwatch: run-as session` (0001: roles and grants).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from perfwatch.archiver import db

log = logging.getLogger(__name__)

MIGRATIONS_DIR = db.SQL_DIR / "migrations"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_RUN_AS_SESSION = "-- perfwatch: run-as session"


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


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
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


def apply_migrations(engine: sa.Engine, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not applied yet; return their file names (empty: already up to date).

    Raises db.DatabaseUnavailable when PostgreSQL cannot be reached, MigrationError otherwise.
    """
    migrations = discover(directory)
    applied: list[str] = []
    with db.unavailable_as("applying migrations"), engine.connect() as conn:
        try:
            with conn.begin():
                db.run_script(conn, db.sql_text("migrate_bootstrap"))
            done = {row.version: row for row in conn.execute(sa.select(db.schema_migration))}
            conn.commit()
            for migration in migrations:
                if migration.version in done:
                    _check_unchanged(migration, done[migration.version])
                    continue
                if _apply(conn, migration):
                    applied.append(migration.name)
                    log.info("applied migration %s", migration.name)
        finally:
            # A migration may have changed the session (a SET without LOCAL): never hand it back to the pool.
            conn.invalidate()
    # Connections pooled before the roles existed would keep creating things as the login user.
    engine.dispose()
    return applied


def _check_unchanged(migration: Migration, done: sa.Row[Any]) -> None:
    if done.checksum != migration.checksum:
        raise MigrationError(f"migration {migration.name} was changed after it was applied "
                             f"(on {done.applied_at:%Y-%m-%d}); add a new numbered file instead of editing an "
                             "applied one")


def _apply(conn: sa.Connection, migration: Migration) -> bool:
    """Apply `migration` in a transaction of its own; False if another archiver applied it first."""
    try:
        with conn.begin():
            if not migration.run_as_session:
                _become_writer(conn, migration)
            # EXCLUSIVE: one migrating transaction at a time; plain reads of the table go on.
            db.run_script(conn, "LOCK TABLE perfwatch.schema_migration IN EXCLUSIVE MODE")
            # Read after the lock is granted (a new snapshot): a file applied meanwhile shows here.
            done = conn.execute(sa.select(db.schema_migration)
                                .where(db.schema_migration.c.version == migration.version)).first()
            if done is not None:
                _check_unchanged(migration, done)
                return False
            db.run_script(conn, migration.text)
            conn.execute(sa.insert(db.schema_migration).values(
                version=migration.version, name=migration.name, checksum=migration.checksum))
        return True
    except MigrationError:
        raise
    except sa.exc.SQLAlchemyError as err:
        if db.is_unavailable(err):
            raise
        raise MigrationError(f"migration {migration.name} failed: {_reason(err)}") from err
    except Exception as err:  # psycopg errors from the script itself
        if db.is_unavailable(err):
            raise
        raise MigrationError(f"migration {migration.name} failed: {_reason(err)}") from err


def _become_writer(conn: sa.Connection, migration: Migration) -> None:
    current = conn.execute(sa.select(sa.func.current_user())).scalar_one()
    if current == db.WRITER_ROLE:
        return
    member = conn.execute(sa.select(sa.func.pg_has_role(sa.func.session_user(), db.WRITER_ROLE, "MEMBER"))).scalar()
    if not member:
        raise MigrationError(f"migration {migration.name} must run as {db.WRITER_ROLE}: connect as it, as a "
                             f"superuser, or as a member of it ({current} is none of these)")
    db.run_script(conn, f"SET LOCAL ROLE {db.WRITER_ROLE}")


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    return str(orig).strip()

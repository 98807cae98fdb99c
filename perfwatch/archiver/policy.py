"""The downsampling and retention policy, and its mirror in the database (perfwatch.archive_policy).

YAML (every key optional; these are the defaults):

    policy:
      raw_retention: 7d
      rollup_delay: 1m
      tiers:
        - {resolution: 5m, retention: 90d}
        - {resolution: 1h, retention: 2y}

Tier k is rolled up from tier k-1 (the first from raw samples), so each resolution must be a
whole multiple of the one below, and each retention at least the one below (a coarser tier is
what remains of a period once the finer one dropped it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.common.config import ConfigError, Duration, format_duration, join_key

RAW = "raw"


@dataclasses.dataclass
class Tier:
    resolution: Duration
    retention: Duration

    @property
    def name(self) -> str:
        """The tier's name and table suffix: 5m → rollup_5m (the only place the rule is written)."""
        return format_duration(self.resolution)


def _default_tiers() -> list[Tier]:
    return [Tier(Duration(300), Duration(90 * 86400)), Tier(Duration(3600), Duration(2 * 365 * 86400))]


MAX_CATCHUP_WORKERS = db.MAX_PARALLEL_PIECES  # the engine's pool has room for them


@dataclasses.dataclass
class Policy:
    raw_retention: Duration = dataclasses.field(default=Duration(7 * 86400))
    # How long after a raw bucket ends before the first tier rolls it up, so that the scrapes of
    # that period have been written; samples arriving later still get rolled (late-sample ranges).
    rollup_delay: Duration = dataclasses.field(default=Duration(60))
    tiers: list[Tier] = dataclasses.field(default_factory=_default_tiers)
    # Connections the first tier's catch-up rolls up on at once (rollup.py): its per-sample work is
    # PostgreSQL's, one core per connection. 1: one chunk per transaction, in order.
    catchup_workers: int = 2

    def validate(self, key: str = "") -> None:
        """Raise ConfigError naming the offending key (e.g. `policy.tiers[1].resolution`)."""
        if self.raw_retention < 3600:
            raise ConfigError(join_key(key, "raw_retention"), "must be at least 1h")
        # Positive, like every duration in the config files (exporter.config rejects 0s): 1ms
        # already rolls a bucket up as soon as it has closed.
        if not 0 < self.rollup_delay <= 86400:
            raise ConfigError(join_key(key, "rollup_delay"), "must be between 1ms and 1d")
        if not 1 <= self.catchup_workers <= MAX_CATCHUP_WORKERS:
            raise ConfigError(join_key(key, "catchup_workers"),
                              f"must be 1 to {MAX_CATCHUP_WORKERS}, not {self.catchup_workers}")
        below_resolution, below_retention, below_key = 0.0, float(self.raw_retention), join_key(key, "raw_retention")
        for i, tier in enumerate(self.tiers):
            tier_key = join_key(join_key(key, "tiers"), i)
            res, ret = float(tier.resolution), float(tier.retention)
            if res < 1 or res != int(res):
                raise ConfigError(join_key(tier_key, "resolution"), "must be a whole number of seconds, at least 1s")
            if below_resolution and (res <= below_resolution or res % below_resolution):
                raise ConfigError(join_key(tier_key, "resolution"),
                                  f"must be a whole multiple (2x or more) of the tier below "
                                  f"({_show(below_resolution)}), since it is rolled up from it")
            if ret < res:
                raise ConfigError(join_key(tier_key, "retention"), "must be at least the tier's resolution")
            if ret < below_retention:
                raise ConfigError(join_key(tier_key, "retention"),
                                  f"must be at least {below_key} ({_show(below_retention)}): a coarser "
                                  "tier keeps a period after the finer one has dropped it")
            below_resolution, below_retention, below_key = res, ret, join_key(tier_key, "retention")

    def levels(self) -> list[tuple[int, str, float, float]]:
        """(level, tier name, resolution seconds, retention seconds), raw first."""
        return [(0, RAW, 0.0, float(self.raw_retention))] + [
            (i, t.name, float(t.resolution), float(t.retention)) for i, t in enumerate(self.tiers, 1)]


def _show(seconds: float) -> str:
    # 90d rather than format_duration's 12w6d
    return f"{int(seconds // 86400)}d" if seconds >= 86400 and seconds % 86400 == 0 else format_duration(seconds)


def mirror_policy(engine: sa.Engine, policy: Policy) -> None:
    """Create the tier tables the policy needs and make perfwatch.archive_policy mirror it
    (perfwatch.set_policy, sql/functions/policy.sql)."""
    policy.validate("policy")
    levels = policy.levels()
    with db.unavailable_as("mirroring the policy"), engine.begin() as conn:
        conn.execute(sa.select(db.fn(
            "set_policy", [name for _, name, _, _ in levels],
            [dt.timedelta(seconds=res) for _, _, res, _ in levels],
            [dt.timedelta(seconds=ret) for _, _, _, ret in levels])))

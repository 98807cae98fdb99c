"""The policy: YAML validated with errors naming the key, and its mirror in the database."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from perfwatch.archiver import db
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.policy import Policy, Tier, mirror_policy
from perfwatch.archiver.rollup import run_rollups
from perfwatch.common.config import ConfigError, Duration, from_mapping


def load(text: str) -> Policy:
    return from_mapping(Policy, yaml.safe_load(text)["policy"], "policy")


def test_defaults_and_yaml() -> None:
    default = load("policy: {}")
    assert (default.raw_retention, default.rollup_delay) == (7 * 86400.0, 60.0)
    assert [(t.resolution, t.retention, t.name) for t in default.tiers] == [(300.0, 90 * 86400.0, "5m"),
                                                                          (3600.0, 730 * 86400.0, "1h")]
    custom = load("""
policy:
  raw_retention: 3d
  rollup_delay: 30s
  tiers:
    - {resolution: 1m, retention: 14d}
    - {resolution: 15m, retention: 180d}
    - {resolution: 1d, retention: 5y}
""")
    assert [t.name for t in custom.tiers] == ["1m", "15m", "1d"]
    assert custom.levels() == [(0, "raw", 0.0, 3 * 86400.0), (1, "1m", 60.0, 14 * 86400.0),
                               (2, "15m", 900.0, 180 * 86400.0), (3, "1d", 86400.0, 5 * 365 * 86400.0)]


@pytest.mark.parametrize(("policy", "key", "message"), [
    ({"tiers": [{"resolution": "5m", "retention": "90d"}, {"resolution": "7m", "retention": "1y"}]},
     "policy.tiers[1].resolution", "whole multiple"),
    ({"tiers": [{"resolution": "1h", "retention": "90d"}, {"resolution": "5m", "retention": "1y"}]},
     "policy.tiers[1].resolution", "whole multiple"),
    ({"tiers": [{"resolution": "5m", "retention": "90d"}, {"resolution": "5m", "retention": "1y"}]},
     "policy.tiers[1].resolution", "2x or more"),
    ({"tiers": [{"resolution": "1500ms", "retention": "1d"}]}, "policy.tiers[0].resolution", "whole number"),
    ({"raw_retention": "30d", "tiers": [{"resolution": "5m", "retention": "7d"}]},
     "policy.tiers[0].retention", "at least policy.raw_retention"),
    ({"tiers": [{"resolution": "5m", "retention": "90d"}, {"resolution": "1h", "retention": "30d"}]},
     "policy.tiers[1].retention", "at least policy.tiers[0].retention (90d)"),
    ({"raw_retention": "10m"}, "policy.raw_retention", "at least 1h"),
    ({"raw_retention": "seven days"}, "policy.raw_retention", "is not a duration"),
    ({"rollup_delay": "2d"}, "policy.rollup_delay", "between"),
    ({"rollup_delay": "0s"}, "policy.rollup_delay", "positive"),  # 1ms is the shortest, as for every duration
    ({"catchup_workers": 0}, "policy.catchup_workers", "must be 1 to 8, not 0"),
    ({"catchup_workers": 9}, "policy.catchup_workers", "must be 1 to 8, not 9"),
    ({"catchup_workers": "two"}, "policy.catchup_workers", "integer"),
    ({"tiers": [{"resolution": "5m", "retention": "90d", "aggregate": "avg"}]}, "policy.tiers[0].aggregate",
     "unknown key"),
    ({"tiers": [{"resolutoin": "5m", "retention": "90d"}]}, "policy.tiers[0].resolutoin", "did you mean 'resolution'"),
    ({"tiers": [{"resolution": "5m"}]}, "policy.tiers[0]", "retention"),
    ({"tiers": "5m"}, "policy.tiers", "must be a list"),
])
def test_errors_name_the_key(policy: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        from_mapping(Policy, policy, "policy")
    assert info.value.key == key


def mirrored(engine: sa.Engine) -> list[tuple[int, str, float, float]]:
    with engine.connect() as conn:
        return [(level, tier, res.total_seconds(), ret.total_seconds())
                for level, tier, res, ret in conn.execute(sa.text(
                    "SELECT level, tier, resolution, retention FROM perfwatch.archive_policy ORDER BY level"))]


def test_the_database_mirrors_the_active_policy(pg_dsn: str) -> None:
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    policy = Policy()
    mirror_policy(engine, policy)
    assert mirrored(engine) == policy.levels()
    run_rollups(engine, policy, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    # 5m kept (retention changed), 1h dropped, tiers with odd resolutions added: their names are
    # spelt the same by SQL and Python (mirror_policy checks).
    changed = Policy(raw_retention=Duration(3 * 86400), tiers=[
        Tier(Duration(300), Duration(10 * 86400)), Tier(Duration(5400), Duration(400 * 86400)),
        Tier(Duration(7 * 86400), Duration(800 * 86400))])
    mirror_policy(engine, changed)
    assert mirrored(engine) == changed.levels()
    assert [t.name for t in changed.tiers] == ["5m", "1h30m", "1w"]
    with engine.connect() as conn:
        # the 5m tier's last run survives the change
        assert conn.execute(sa.text("SELECT last_rollup_at FROM perfwatch.archive_policy WHERE tier = '5m'")
                            ).scalar() == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    mirror_policy(engine, Policy(tiers=[Tier(Duration(90), Duration(30 * 86400))]))
    with engine.connect() as conn:
        # the tables of tiers no longer in the policy stay (with their data)
        assert set(conn.execute(sa.text("SELECT table_name FROM perfwatch.tier")).scalars()) == {
            "sample", "sample_chunk", "rollup_5m", "rollup_1h", "rollup_1h30m", "rollup_1w", "rollup_1m30s",
            "rollup_5m_chunk", "rollup_1h_chunk", "rollup_1h30m_chunk", "rollup_1w_chunk", "rollup_1m30s_chunk"}
    mirror_policy(engine, policy)
    with pytest.raises(ConfigError, match="whole multiple"):
        mirror_policy(engine, Policy(tiers=[Tier(Duration(300), Duration(86400 * 90)),
                                            Tier(Duration(420), Duration(86400 * 90))]))
    assert mirrored(engine) == policy.levels()
    engine.dispose()

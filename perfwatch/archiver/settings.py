"""The archiver's config file (YAML), validated like the exporter's: errors name the dotted key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict

from perfwatch.archiver.policy import Policy
from perfwatch.archiver.scrape import LABEL_NAME_RE, ScrapeLimits, Target, default_instance
from perfwatch.archiver.scrapeauth import AuthorizationConfig, BasicAuthConfig, TLSClientConfig, validate_client_auth
from perfwatch.archiver.spool import DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BYTES
from perfwatch.common.config import ConfigError, Duration, Size, from_mapping, load_yaml, parse_listen
from perfwatch.common.httpserver import MAX_CONNECTIONS, check_max_connections

DEFAULT_PORT = 10281  # the exporter's 10280 + 1
DEFAULT_JOB = "perfwatch"
DEFAULT_TIMEOUT = 10.0  # Prometheus' default scrape_timeout (capped at the interval)
# Defaults of the scrape limits (Prometheus has none: 0). A large node_exporter serves 2-5 MB and
# 10-30k samples; a 50 MB body is 40 to 100 times that, and what it costs the archiver to parse and
# hold 200k samples (a few hundred MB at worst) still fits a 2 GB host.
DEFAULT_LIMITS = ScrapeLimits(body_size_limit=50 << 20, sample_limit=200_000, label_limit=64,
                              label_name_length_limit=1024, label_value_length_limit=16 << 10)
LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(ScrapeLimits))
LogLevel = Literal["debug", "info", "warning", "error"]
MAX_WORKERS = 64  # scrape worker processes; more is a typo (each takes ~35 MB of memory, measured)


@dataclasses.dataclass
class TargetSettings:
    url: str = dataclasses.field(default="", metadata={
        "help": "URL to scrape; a URL without a path gets /metrics."})
    job: str = dataclasses.field(default=DEFAULT_JOB, metadata={"help": "The `job` label."})
    instance: str | None = dataclasses.field(default=None, metadata={
        "help": "The `instance` label (default: host:port of the URL)."})
    labels: dict[str, str] = dataclasses.field(default_factory=dict, metadata={
        "help": "Extra labels for every sample of this target."})
    scrape_interval: Duration | None = dataclasses.field(default=None, metadata={
        "help": "How often to scrape (default: the top-level scrape_interval)."})
    scrape_timeout: Duration | None = dataclasses.field(default=None, metadata={
        "help": "Give up on a scrape after this long; at most scrape_interval."})
    basic_auth: BasicAuthConfig | None = dataclasses.field(default=None, metadata={
        "help": "username and password or password_file, as in Prometheus' scrape_config."})
    authorization: AuthorizationConfig | None = dataclasses.field(default=None, metadata={
        "help": "type (Bearer) and credentials or credentials_file."})
    tls_config: TLSClientConfig | None = dataclasses.field(default=None, metadata={
        "help": "ca_file, cert_file, key_file, server_name, insecure_skip_verify, min_version."})
    body_size_limit: Size | None = dataclasses.field(default=None, metadata={
        "help": "This target's body_size_limit (default: the top-level one)."})
    sample_limit: int | None = dataclasses.field(default=None, metadata={
        "help": "This target's sample_limit (default: the top-level one)."})
    label_limit: int | None = dataclasses.field(default=None, metadata={
        "help": "This target's label_limit (default: the top-level one)."})
    label_name_length_limit: int | None = dataclasses.field(default=None, metadata={
        "help": "This target's label_name_length_limit (default: the top-level one)."})
    label_value_length_limit: int | None = dataclasses.field(default=None, metadata={
        "help": "This target's label_value_length_limit (default: the top-level one)."})

    def validate(self, key: str) -> None:
        validate_limits(key, self)
        validate_client_auth(key, self.basic_auth, self.authorization)
        if not self.url:
            raise ConfigError(f"{key}.url", "required: the URL to scrape")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{key}.url", f"{self.url!r} is not an http(s) URL")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as err:
            raise ConfigError(f"{key}.url", f"{self.url!r}: {err}") from None
        if not self.job:
            raise ConfigError(f"{key}.job", "must not be empty")
        for name in self.labels:
            if not LABEL_NAME_RE.match(name) or name.startswith("__"):
                raise ConfigError(f"{key}.labels.{name}", "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, no __)")
            if name in ("job", "instance"):
                raise ConfigError(f"{key}.labels.{name}", f"set `{name}` with the target's own `{name}` key")


@dataclasses.dataclass
class DatabaseSettings:
    dsn: str | None = dataclasses.field(default=None, metadata={
        "help": "PostgreSQL connection string (URI or key=value). Absent: the embedded server under "
                "data_dir/postgres."})
    dsn_file: str | None = dataclasses.field(default=None, metadata={
        "help": "Read the DSN from this file instead (keeps the password out of the config)."})
    retry_interval: Duration = dataclasses.field(default=Duration(2), metadata={
        "help": "While the database is unreachable, try again this often (batches wait in the spool)."})

    def validate(self, key: str) -> None:
        if self.dsn is not None and self.dsn_file is not None:
            raise ConfigError(f"{key}.dsn_file", "set dsn or dsn_file, not both")
        if self.dsn is not None:
            check_dsn(self.dsn, f"{key}.dsn")

    def resolve_dsn(self, key: str = "database") -> str | None:
        """The DSN to use, reading dsn_file; None means the embedded server."""
        if self.dsn_file is None:
            return self.dsn
        try:
            dsn = Path(self.dsn_file).read_text().strip()
        except OSError as err:
            raise ConfigError(f"{key}.dsn_file", f"cannot read {self.dsn_file}: {err.strerror}") from None
        check_dsn(dsn, f"{key}.dsn_file")
        return dsn


def validate_limits(key: str, section: object) -> None:
    for name in LIMIT_KEYS:
        value = getattr(section, name)
        if value is not None and value < 0:
            raise ConfigError(f"{key}.{name}" if key else name, "must be 0 (no limit) or more")


def check_dsn(dsn: str, key: str) -> None:
    try:
        conninfo_to_dict(dsn)
    except Exception as err:  # psycopg raises ProgrammingError with libpq's words
        raise ConfigError(key, f"not a PostgreSQL connection string: {err}") from None


@dataclasses.dataclass
class SpoolSettings:
    max_bytes: Size = dataclasses.field(default=Size(DEFAULT_MAX_BYTES), metadata={
        "help": "Most disk the spool may use; when full, the oldest batches are dropped (logged, counted)."})
    memory_bytes: Size = dataclasses.field(default=Size(DEFAULT_MEMORY_BYTES), metadata={
        "help": "Spooled batches up to this size (on disk) are kept in memory too, so the writer need not read "
                "them back (1.5 to 5 times as much RAM); past it they wait on disk only. 0: always read back."})

    def validate(self, key: str) -> None:
        if self.max_bytes < 1 << 16:
            raise ConfigError(f"{key}.max_bytes", "must be at least 65536")


@dataclasses.dataclass
class ScrapeSettings:
    workers: int = dataclasses.field(default=0, metadata={
        "help": "Worker processes that scrape and parse (spawned; each target always in the same one). 0: in the "
                "archiver's own process. More than one core's worth of parsing needs more than 0."})

    def validate(self, key: str) -> None:
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"{key}.workers", f"must be 0 (scrape in the archiver's process) to {MAX_WORKERS}, "
                              f"not {self.workers}")


@dataclasses.dataclass
class ScheduleSettings:
    rollup_interval: Duration = dataclasses.field(default=Duration(60), metadata={
        "help": "How often to pack closed hours and windows (compaction) and roll raw samples up into the tiers."})
    retention_interval: Duration = dataclasses.field(default=Duration(3600), metadata={
        "help": "How often to create partitions ahead and drop expired ones."})


@dataclasses.dataclass
class ArchiverSettings:
    listen: str = dataclasses.field(default=f":{DEFAULT_PORT}", metadata={
        "help": "HOST:PORT for the archiver's own /metrics; `:PORT` means every interface."})
    max_connections: int = dataclasses.field(default=MAX_CONNECTIONS, metadata={
        "help": "Most connections to the archiver's own endpoints at once; more wait in the listen backlog."})
    log_level: LogLevel = dataclasses.field(default="info", metadata={"help": "debug, info, warning or error."})
    data_dir: str = dataclasses.field(default="data", metadata={
        "help": "Spool and embedded PostgreSQL live here (relative to the working directory)."})
    scrape_interval: Duration = dataclasses.field(default=Duration(15), metadata={
        "help": "Default scrape interval of the targets."})
    scrape_timeout: Duration | None = dataclasses.field(default=None, metadata={
        "help": "Default scrape timeout (default: 10s, or the interval if shorter)."})
    targets: list[TargetSettings] = dataclasses.field(default_factory=list, metadata={
        "help": "What to scrape."})
    body_size_limit: Size = dataclasses.field(default=Size(DEFAULT_LIMITS.body_size_limit), metadata={
        "help": "Largest body (uncompressed) a scrape reads; a larger one fails the scrape. 0: no limit."})
    sample_limit: int = dataclasses.field(default=DEFAULT_LIMITS.sample_limit, metadata={
        "help": "Most samples a scrape may have; more fail the scrape (nothing of it is stored). 0: no limit."})
    label_limit: int = dataclasses.field(default=DEFAULT_LIMITS.label_limit, metadata={
        "help": "Most labels a sample may have (job and instance included); more fail the scrape. 0: no limit."})
    label_name_length_limit: int = dataclasses.field(default=DEFAULT_LIMITS.label_name_length_limit, metadata={
        "help": "Longest label name; a longer one fails the scrape. 0: no limit."})
    label_value_length_limit: int = dataclasses.field(default=DEFAULT_LIMITS.label_value_length_limit, metadata={
        "help": "Longest label value (characters); a longer one fails the scrape. 0: no limit."})
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    policy: Policy = dataclasses.field(default_factory=Policy)
    spool: SpoolSettings = dataclasses.field(default_factory=SpoolSettings)
    scrape: ScrapeSettings = dataclasses.field(default_factory=ScrapeSettings)
    schedule: ScheduleSettings = dataclasses.field(default_factory=ScheduleSettings)

    def validate(self, key: str) -> None:
        validate_limits(key, self)
        try:
            parse_listen(self.listen)
        except ValueError as err:
            raise ConfigError("listen", str(err)) from None
        check_max_connections(self.max_connections, "max_connections")
        if not self.data_dir:
            raise ConfigError("data_dir", "must not be empty")
        if self.scrape_timeout is not None and self.scrape_timeout > self.scrape_interval:
            raise ConfigError("scrape_timeout", f"{self.scrape_timeout:g}s is longer than scrape_interval "
                              f"{self.scrape_interval:g}s")
        seen: dict[tuple[str, str], int] = {}
        for i, target in enumerate(self.targets):
            interval = target.scrape_interval or self.scrape_interval
            timeout = self.timeout_for(target)
            if timeout > interval:
                raise ConfigError(f"targets[{i}].scrape_timeout",
                                  f"{timeout:g}s is longer than the target's scrape interval {interval:g}s")
            identity = (target.job, self.instance_for(target))
            if identity in seen:
                raise ConfigError(f"targets[{i}]", f"same job and instance as targets[{seen[identity]}] "
                                  f"({identity[0]}, {identity[1]}); set a different `instance`")
            seen[identity] = i

    def timeout_for(self, target: TargetSettings) -> float:
        interval = target.scrape_interval or self.scrape_interval
        return target.scrape_timeout or self.scrape_timeout or min(DEFAULT_TIMEOUT, interval)

    def limits_for(self, target: TargetSettings) -> ScrapeLimits:
        return ScrapeLimits(**{name: int(getattr(target, name) if getattr(target, name) is not None
                                         else getattr(self, name)) for name in LIMIT_KEYS})

    @staticmethod
    def instance_for(target: TargetSettings) -> str:
        return target.instance or default_instance(target.url)

    def scrape_targets(self) -> list[Target]:
        return [
            Target(url=metrics_url(t.url), job=t.job, instance=self.instance_for(t),
                   labels=tuple(sorted(t.labels.items())),
                   interval=float(t.scrape_interval or self.scrape_interval), timeout=float(self.timeout_for(t)),
                   limits=self.limits_for(t),
                   basic_auth=t.basic_auth, authorization=t.authorization, tls_config=t.tls_config)
            for t in self.targets
        ]


def metrics_url(url: str) -> str:
    """Prometheus' default metrics_path: a URL without a path scrapes /metrics."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/metrics"))
    return url


# Command-line options and the config keys they set, so an error names what the user typed.
CLI_KEYS = {"listen": "--listen", "data_dir": "--data-dir", "scrape_interval": "--scrape-interval",
            "database.dsn": "--dsn", "log_level": "--log-level", "targets": "--target",
            "max_connections": "--web.max-connections"}


def load_settings(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ArchiverSettings:
    """Read and validate the config file (None: defaults), with command-line `overrides` applied:
    top-level keys, `database.dsn`, and `targets` as a list of URLs (replacing the file's)."""
    data = load_yaml(path) if path else {}
    overrides = overrides or {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "targets":
            data["targets"] = [{"url": url} for url in value]
        elif key == "database.dsn":
            database = data.get("database")
            database = dict(database) if isinstance(database, dict) else {}
            database.pop("dsn_file", None)
            database["dsn"] = value
            data["database"] = database
        else:
            data[key] = value
    try:
        return from_mapping(ArchiverSettings, data)
    except ConfigError as err:
        for key, flag in CLI_KEYS.items():
            if overrides.get(key) is not None and (err.key == key or err.key.startswith(key + "[")):
                raise ConfigError(flag, err.message) from None
        raise

"""The archiver's config file (YAML), validated like the exporter's: errors name the dotted key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict

from perfwatch.archiver.policy import Policy
from perfwatch.archiver.scrape import LABEL_NAME_RE, ScrapeLimits, Target, default_instance
from perfwatch.archiver.scrapeauth import AuthorizationConfig, BasicAuthConfig, TLSClientConfig, validate_client_auth
from perfwatch.archiver.spool import DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BYTES
from perfwatch.common.config import ConfigError, Duration, Size, from_mapping, join_key, load_yaml, parse_listen
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
# A remote read's answer is built in memory (~100 bytes a sample with its protobuf): 5 million
# samples are ~0.5 GB at worst, and a year of one series at 15 s is 2.1 million.
DEFAULT_READ_SAMPLE_LIMIT = 5_000_000
DEFAULT_READ_CONCURRENCY = 4  # each holds a database connection and an answer in memory
MAX_WORKERS = 64  # scrape worker processes; more is a typo (each takes ~35 MB of memory, measured)
# What Prometheus accepts in a file_sd_config's `files` (discovery/file/file.go): a `*` only in the file
# name, and the extension that says how to read the file. Refusing what Prometheus refuses keeps one
# file_sd_configs section valid for both.
FILE_SD_PATTERN = re.compile(r"^[^*]*(\*[^/]*)?\.(json|yml|yaml|JSON|YML|YAML)$")
DEFAULT_REFRESH = Duration(300)  # Prometheus' refresh_interval of file_sd_configs
PERIODS = ("hour", "day", "week", "month")  # of the utilisation summaries (UTC)


@dataclasses.dataclass
class TargetOptions:
    """How to scrape: the keys a static target and a file_sd_config share (a Prometheus scrape_config's)."""

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


@dataclasses.dataclass
class TargetSettings(TargetOptions):
    url: str = dataclasses.field(default="", metadata={
        "help": "URL to scrape; a URL without a path gets /metrics."})
    job: str = dataclasses.field(default=DEFAULT_JOB, metadata={"help": "The `job` label."})
    instance: str | None = dataclasses.field(default=None, metadata={
        "help": "The `instance` label (default: host:port of the URL)."})
    labels: dict[str, str] = dataclasses.field(default_factory=dict, metadata={
        "help": "Extra labels for every sample of this target."})

    def validate(self, key: str) -> None:
        super().validate(key)
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
class FileSDSettings(TargetOptions):
    """Targets read from files in Prometheus' file_sd format, re-read when they change
    (archiver.discovery), and how to scrape them."""

    files: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "Files of target groups ([{targets: [host:port, ...], labels: {...}}]), JSON (*.json) or YAML "
                "(*.yml, *.yaml); a `*` in the file name matches many. Relative to the working directory."})
    refresh_interval: Duration = dataclasses.field(default=DEFAULT_REFRESH, metadata={
        "help": "Read the files again this often even when they look unchanged; a change is seen within a second."})
    job: str = dataclasses.field(default=DEFAULT_JOB, metadata={
        "help": "The `job` label, unless a group's labels set `job`."})
    scheme: Literal["http", "https"] = dataclasses.field(default="http", metadata={
        "help": "http or https, unless a group's labels set `__scheme__`."})
    metrics_path: str = dataclasses.field(default="/metrics", metadata={
        "help": "The path to scrape, unless a group's labels set `__metrics_path__`."})

    def validate(self, key: str) -> None:
        super().validate(key)
        if not self.files:
            raise ConfigError(f"{key}.files", "required: a list of files of target groups (*.json, *.yml, *.yaml)")
        for i, pattern in enumerate(self.files):
            if not FILE_SD_PATTERN.match(pattern):
                raise ConfigError(f"{key}.files[{i}]", f"{pattern!r} must end in .json, .yml or .yaml and have "
                                  "one `*` at most, in the file name (as Prometheus requires)")
        if not self.job:
            raise ConfigError(f"{key}.job", "must not be empty")
        if not self.metrics_path.startswith("/"):
            raise ConfigError(f"{key}.metrics_path", f"{self.metrics_path!r} must start with /")


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
class ReceiveSettings:
    """Prometheus' remote protocols on the archiver's listen address; each is closed until opened here
    (like Prometheus' --web.enable-remote-write-receiver)."""

    remote_write: bool = dataclasses.field(default=False, metadata={
        "help": "Accept Prometheus' remote_write at POST /api/v1/write (Remote-Write 1.0)."})
    remote_read: bool = dataclasses.field(default=False, metadata={
        "help": "Answer Prometheus' remote_read at POST /api/v1/read (sampled responses)."})
    body_size_limit: Size = dataclasses.field(default=Size(DEFAULT_LIMITS.body_size_limit), metadata={
        "help": "Largest remote_write or remote_read request, after snappy decompression; a larger one gets 413."})
    remote_read_sample_limit: int = dataclasses.field(default=DEFAULT_READ_SAMPLE_LIMIT, metadata={
        "help": "Most samples one remote_read answers (its queries together); more get 400, as Prometheus' "
                "--storage.remote.read-sample-limit. 0: no limit."})
    remote_read_concurrent_limit: int = dataclasses.field(default=DEFAULT_READ_CONCURRENCY, metadata={
        "help": "Remote reads served at once; more wait. As Prometheus' --storage.remote.read-concurrent-limit."})
    alertmanager_webhook: bool = dataclasses.field(default=False, metadata={
        "help": "Accept Alertmanager's webhook at POST /alertmanager/webhook and keep the alert history."})
    alertmanager_body_size_limit: Size = dataclasses.field(default=Size(8 << 20), metadata={
        "help": "Largest Alertmanager notification (JSON); a larger one gets 413."})

    def validate(self, key: str) -> None:
        if self.body_size_limit < 1 << 10:
            raise ConfigError(f"{key}.body_size_limit", "must be at least 1KiB")
        if self.remote_read_sample_limit < 0:
            raise ConfigError(f"{key}.remote_read_sample_limit", "must be 0 (no limit) or more")
        if self.remote_read_concurrent_limit < 1:
            raise ConfigError(f"{key}.remote_read_concurrent_limit", "must be at least 1")
        if self.alertmanager_body_size_limit < 1 << 10:
            raise ConfigError(f"{key}.alertmanager_body_size_limit", "must be at least 1KiB")


@dataclasses.dataclass
class ScheduleSettings:
    rollup_interval: Duration = dataclasses.field(default=Duration(60), metadata={
        "help": "How often to pack closed hours and windows (compaction) and roll raw samples up into the tiers."})
    retention_interval: Duration = dataclasses.field(default=Duration(3600), metadata={
        "help": "How often to create partitions ahead and drop expired ones."})
    summary_interval: Duration = dataclasses.field(default=Duration(300), metadata={
        "help": "How often to store the utilisation summaries of the periods the first tier has closed "
                "(and to mirror the rightsizing thresholds)."})


@dataclasses.dataclass
class RightsizingSettings:
    """Thresholds of the right-sizing recommendations, ratios 0-1 compared with a period's p95 of the
    first tier's bucket values (`perfwatch-archiver report`, the capacity dashboard)."""

    cpu_under: float = dataclasses.field(default=0.2, metadata={
        "help": "Under-utilised when CPU p95 stays below this (and memory p95 below memory_under)."})
    memory_under: float = dataclasses.field(default=0.3, metadata={
        "help": "Under-utilised when memory p95 stays below this (and CPU p95 below cpu_under)."})
    cpu_over: float = dataclasses.field(default=0.8, metadata={
        "help": "Over-utilised, CPU the bottleneck, when CPU p95 reaches this."})
    memory_over: float = dataclasses.field(default=0.9, metadata={
        "help": "Over-utilised, memory the bottleneck, when memory p95 reaches this."})
    disk_over: float = dataclasses.field(default=0.8, metadata={
        "help": "Over-utilised, disk I/O the bottleneck, when the busiest disk's p95 busy share reaches this."})
    network_over: float = dataclasses.field(default=0.8, metadata={
        "help": "Over-utilised, network the bottleneck, when the busiest interface's p95 share of its speed "
                "reaches this (only interfaces with node_network_speed_bytes)."})
    min_coverage: float = dataclasses.field(default=0.5, metadata={
        "help": "A period counts only when at least this share of its buckets has data."})

    def validate(self, key: str) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not 0 < value <= 1:
                raise ConfigError(join_key(key, f.name), f"must be a ratio above 0 and at most 1, not {value!r}")
        for resource in ("cpu", "memory"):
            under, over = getattr(self, f"{resource}_under"), getattr(self, f"{resource}_over")
            if under >= over:
                raise ConfigError(join_key(key, f"{resource}_under"),
                                  f"{under:g} must be below {resource}_over ({over:g})")

    def thresholds(self) -> dict[str, float]:
        """As mirrored into perfwatch.rightsizing_threshold."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}


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
    file_sd_configs: list[FileSDSettings] = dataclasses.field(default_factory=list, metadata={
        "help": "More targets, from files in Prometheus' file_sd format (re-read when they change)."})
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
    receive: ReceiveSettings = dataclasses.field(default_factory=ReceiveSettings)
    schedule: ScheduleSettings = dataclasses.field(default_factory=ScheduleSettings)
    rightsizing: RightsizingSettings = dataclasses.field(default_factory=RightsizingSettings)

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
        for section, entries in (("targets", self.targets), ("file_sd_configs", self.file_sd_configs)):
            for i, options in enumerate(entries):
                interval = options.scrape_interval or self.scrape_interval
                timeout = self.timeout_for(options)
                if timeout > interval:
                    raise ConfigError(f"{section}[{i}].scrape_timeout",
                                      f"{timeout:g}s is longer than the target's scrape interval {interval:g}s")
        seen: dict[tuple[str, str], int] = {}
        for i, target in enumerate(self.targets):
            identity = (target.job, self.instance_for(target))
            if identity in seen:
                raise ConfigError(f"targets[{i}]", f"same job and instance as targets[{seen[identity]}] "
                                  f"({identity[0]}, {identity[1]}); set a different `instance`")
            seen[identity] = i

    def has_sources(self) -> bool:
        """Whether there is anything to do: targets (static, or files that may list some), or a remote door open."""
        return bool(self.targets or self.file_sd_configs or self.receive.remote_write or self.receive.remote_read
                    or self.receive.alertmanager_webhook)

    def receive_limits(self) -> ScrapeLimits:
        """The label limits remote_write series meet: the top-level ones, as a target without its own."""
        return self.limits_for(TargetOptions())

    def timeout_for(self, target: TargetOptions) -> float:
        interval = target.scrape_interval or self.scrape_interval
        return target.scrape_timeout or self.scrape_timeout or min(DEFAULT_TIMEOUT, interval)

    def limits_for(self, target: TargetOptions) -> ScrapeLimits:
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
            "max_connections": "--web.max-connections", "receive.remote_write": "--enable-remote-write",
            "receive.remote_read": "--enable-remote-read",
            "receive.alertmanager_webhook": "--enable-alertmanager-webhook"}


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
        elif key in ("receive.remote_write", "receive.remote_read", "receive.alertmanager_webhook"):
            receive = data.get("receive")
            receive = dict(receive) if isinstance(receive, dict) else {}
            receive[key.split(".", 1)[1]] = value
            data["receive"] = receive
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

"""`perfwatch-archiver`: scrape exporters into PostgreSQL; operator commands beside it."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.exposition import generate_latest

from perfwatch import __version__
from perfwatch.archiver.scrape import LABEL_NAME_RE
from perfwatch.archiver.settings import DEFAULT_PORT, PERIODS, ArchiverSettings, load_settings
from perfwatch.common.config import ConfigError, parse_duration, parse_listen
from perfwatch.common.httpmetrics import HTTPMetrics
from perfwatch.common.httpserver import Handler, Request, Response, WebServer, metrics_handler, service_routes
from perfwatch.common.lifecycle import add_web_arguments, serve
from perfwatch.common.logs import LEVELS, setup_logging
from perfwatch.common.webconfig import WebConfig, load_web_config

if TYPE_CHECKING:
    from perfwatch.archiver.alerthistory import AlertWebhook
    from perfwatch.archiver.backfill import ImportJob
    from perfwatch.archiver.receive import RemoteWriteReceiver
    from perfwatch.archiver.remoteread import RemoteReader
    from perfwatch.archiver.service import Archiver
    from perfwatch.archiver.summarise import ReportRequest

log = logging.getLogger("perfwatch.archiver")

COMMANDS = {
    "run": "scrape the targets into the database (the default)",
    "migrate": "apply the schema migrations and mirror the policy, then exit",
    "rollup": "run one rollup pass over every tier, then exit",
    "retention": "run one retention pass (create partitions ahead, drop expired ones), then exit",
    "status": "show the policy and each tier's state, then exit",
    "backup": "write the archive's database to FILE (pg_dump's custom format, for pg_restore), then exit",
    "import": "write the samples of an OpenMetrics FILE with timestamps (what promtool's backfill reads) into "
              "the archive, roll them up, then exit",
    "report": "print the right-sizing recommendations per host (under- or over-utilised, the bottleneck) with "
              "the utilisation behind each, then exit",
}
REPORT_EPILOG = (
    "Each host's figures are the highest p95 (of the first tier's bucket values, 5-minute averages by "
    "default) among the periods overlapping the range that have rightsizing.min_coverage of their buckets; "
    "the thresholds are the config's `rightsizing` section. TIME is RFC 3339 (2024-03-04T12:00:00Z), a date "
    "(2024-03-04, UTC midnight) or Unix seconds. Exit status: 0 done, 1 failure (database unreachable, no "
    "archive), 2 usage or config error."
)
DEFAULT_REPORT_RANGE = {"hour": "1d", "day": "7d", "week": "28d", "month": "90d"}
IMPORT_EPILOG = (
    "FILE is OpenMetrics text with a timestamp on every sample and `# EOF` at the end, the input of "
    "`promtool tsdb create-blocks-from openmetrics`; - reads standard input. It is read as a stream and written "
    "in batches; samples already in the archive are skipped, so importing a file again is harmless. A malformed "
    "line stops the import (exit 1) naming the line: nothing after it is written. Exit status: 0 done, 1 "
    "failure (unreadable or malformed input, database unreachable), 2 usage or config error."
)


def build_parser() -> argparse.ArgumentParser:
    # The options are accepted before and after the command; SUPPRESS keeps a subcommand from
    # overwriting what was given before it with its own default.
    common = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS  # noqa: N806
    common.add_argument("--config", metavar="FILE", default=S, help="YAML config file (every key in README.md)")
    common.add_argument("--target", metavar="URL", action="append", default=S,
                        help="scrape this URL (repeatable; a URL without a path gets /metrics); "
                        "replaces the config file's targets")
    common.add_argument("--dsn", metavar="DSN", default=S,
                        help="PostgreSQL connection string (default: an embedded server under the data dir)")
    common.add_argument("--data-dir", metavar="DIR", default=S,
                        help="spool and embedded database directory (default ./data)")
    common.add_argument("--scrape-interval", metavar="DURATION", default=S,
                        help="default scrape interval, e.g. 15s, 500ms (default 15s)")
    common.add_argument("--listen", metavar="HOST:PORT", default=S,
                        help=f"address for the archiver's own /metrics (default :{DEFAULT_PORT})")
    common.add_argument("--log-level", choices=LEVELS, default=S, help="log verbosity (default info)")
    common.add_argument("--enable-remote-write", action="store_true", default=S,
                        help="accept Prometheus' remote_write at POST /api/v1/write (receive.remote_write)")
    common.add_argument("--enable-remote-read", action="store_true", default=S,
                        help="answer Prometheus' remote_read at POST /api/v1/read (receive.remote_read)")
    common.add_argument("--enable-alertmanager-webhook", action="store_true", default=S,
                        help="keep the alert history Alertmanager's webhook posts to POST /alertmanager/webhook "
                        "(receive.alertmanager_webhook)")
    add_web_arguments(common, "the archiver", default=S)
    parser = argparse.ArgumentParser(
        prog="perfwatch-archiver", parents=[common],
        description="Scrape Prometheus exporters into PostgreSQL, downsample into tiers, apply retention. "
        "Batches wait in a local spool while the database is unreachable.",
        epilog="Command-line options override the config file. Config errors exit 2, other failures 1.",
    )
    parser.add_argument("--version", action="version", version=f"perfwatch-archiver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name == "backup":
            command.add_argument("file", metavar="FILE", help="where to write it; - for standard output")
        if name == "import":
            command.epilog = IMPORT_EPILOG
            command.add_argument("file", metavar="FILE", help="the OpenMetrics file; - for standard input")
            command.add_argument("--label", metavar="NAME=VALUE", action="append", default=[],
                                 help="add this label to every sample, e.g. job=node or instance=host:9100 "
                                 "(repeatable); a label the file has too moves to exported_NAME, as a target's "
                                 "labels do")
            command.add_argument("--no-rollup", action="store_true",
                                 help="do not run a rollup pass after writing (the archiver's next one does it)")
        if name == "report":
            command.epilog = REPORT_EPILOG
            command.add_argument("--period", choices=PERIODS, default="day",
                                 help="summarise by hour, day, week or month (UTC; default day)")
            command.add_argument("--from", dest="t_from", metavar="TIME",
                                 help="start of the range (default: --to minus --last)")
            command.add_argument("--to", dest="t_to", metavar="TIME", help="end of the range (default: now)")
            command.add_argument("--last", metavar="DURATION",
                                 help="the range's length when --from is not given (default: 1d by hour, 7d by "
                                 "day, 28d by week, 90d by month)")
            command.add_argument("--job", help="only the hosts of this job")
            command.add_argument("--instance", help="only this instance")
            command.add_argument("--format", choices=("text", "json"), default="text",
                                 help="a table (default) or JSON with the evidence of each recommendation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"

    def opt(name: str) -> object:
        return getattr(args, name, None)

    overrides = {"listen": opt("listen"), "data_dir": opt("data_dir"), "scrape_interval": opt("scrape_interval"),
                 "log_level": opt("log_level"), "database.dsn": opt("dsn"), "targets": opt("target"),
                 "max_connections": opt("max_connections"),
                 "receive.remote_write": opt("enable_remote_write"), "receive.remote_read": opt("enable_remote_read"),
                 "receive.alertmanager_webhook": opt("enable_alertmanager_webhook")}
    try:
        settings = load_settings(opt("config"), overrides)  # type: ignore[arg-type]
        dsn = settings.database.resolve_dsn()
        if command == "run" and not settings.has_sources():
            raise ConfigError("targets", "nothing to do: give --target URL, or `targets` or `file_sd_configs` "
                              "in the config file, or open remote_write, remote_read or the Alertmanager webhook "
                              "(--enable-remote-write, `receive` in the config file)")
        web_config = load_web_config(str(opt("web_config"))) if opt("web_config") else None
        import_job = _import_job(args) if command == "import" else None
        report_request = _report_request(args) if command == "report" else None
    except ConfigError as err:
        print(f"perfwatch-archiver: config error: {err}", file=sys.stderr)
        return 2
    # An operator command prints what it did; its log says only what went wrong, unless asked (an
    # import, which may take hours, logs its progress).
    setup_logging(settings.log_level if command in ("run", "import") or opt("log_level") else "warning")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every job run at info
    if command == "run":
        config_path = str(opt("config")) if opt("config") else None

        def load_again() -> ArchiverSettings:
            """The config file as it is now, with the same command-line options over it."""
            new = load_settings(config_path, overrides)
            new.database.resolve_dsn()
            if not new.has_sources():
                raise ConfigError("targets", "nothing to do: no targets, file_sd_configs or remote door")
            return new

        return run(settings, dsn, web_config, web_config_path=str(opt("web_config") or "") or None,
                   enable_lifecycle=bool(opt("enable_lifecycle")), load_again=load_again)
    from perfwatch.archiver.operate import operate

    return operate(command, settings, dsn, backup_file=str(opt("file")) if command == "backup" else None,
                   import_job=import_job, report=report_request)


def _import_job(args: argparse.Namespace) -> ImportJob:
    """`import`'s arguments; ConfigError names --label where one is not a valid NAME=VALUE."""
    from perfwatch.archiver.backfill import ImportJob

    labels: dict[str, str] = {}
    for text in args.label:
        name, equals, value = text.partition("=")
        if not equals:
            raise ConfigError("--label", f"{text!r} is not NAME=VALUE")
        if not LABEL_NAME_RE.match(name) or name.startswith("__"):
            raise ConfigError("--label", f"{name!r} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, no __)")
        if not value:
            raise ConfigError("--label", f"{name}: the value is empty (an empty label is no label)")
        if name in labels:
            raise ConfigError("--label", f"{name} is given twice")
        labels[name] = value
    return ImportJob(args.file, labels, rollup=not args.no_rollup)


def parse_time(text: str, flag: str) -> dt.datetime:
    """RFC 3339, a date (UTC midnight) or Unix seconds; ConfigError names the flag otherwise."""
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(flag, f"{text!r} is not a time: give RFC 3339 (2024-03-04T12:00:00Z), a date "
                          "(2024-03-04) or Unix seconds") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _report_request(args: argparse.Namespace) -> ReportRequest:
    from perfwatch.archiver.summarise import ReportRequest

    t_to = parse_time(args.t_to, "--to") if args.t_to else dt.datetime.now(dt.UTC)
    if args.t_from and args.last:
        raise ConfigError("--last", "give --from or --last, not both")
    if args.t_from:
        t_from = parse_time(args.t_from, "--from")
    else:
        try:
            last = parse_duration(args.last or DEFAULT_REPORT_RANGE[args.period])
        except ValueError as err:
            raise ConfigError("--last", str(err)) from None
        t_from = t_to - dt.timedelta(seconds=float(last))
    if t_from >= t_to:
        raise ConfigError("--from", f"{t_from.isoformat()} is not before --to {t_to.isoformat()}")
    return ReportRequest(args.period, t_from, t_to, args.job, args.instance, args.format)


def run(settings: ArchiverSettings, dsn: str | None, web_config: WebConfig | None = None, *,
        web_config_path: str | None = None, enable_lifecycle: bool = False,
        load_again: Callable[[], ArchiverSettings] | None = None) -> int:
    from perfwatch.archiver.datadir import DataDirLockedError, lock_data_dir
    from perfwatch.archiver.service import Archiver

    host, port = parse_listen(settings.listen)
    try:
        lock = lock_data_dir(Path(settings.data_dir))
    except DataDirLockedError as err:
        log.error("%s", err)
        return 1
    archiver = Archiver(settings, dsn)
    started = threading.Event()

    def ready(_request: Request) -> Response:
        return Response(200, b"Ready.\n") if started.is_set() else Response(503, b"Starting.\n")

    http_metrics = HTTPMetrics()
    # Its families are perfwatch's (common.families), with every attribute prometheus_client reads.
    archiver.metrics.registry.register(http_metrics)  # type: ignore[arg-type]
    routes = service_routes("perfwatch archiver", __version__,
                            metrics_handler(archiver.metrics.registry, generate_latest), ready)
    remote = RemoteDoors(settings, archiver)

    def start(server: WebServer) -> bool:
        log.info("perfwatch-archiver %s listening on %s://%s:%d, data in %s", __version__, server.scheme, host,
                 server.port, Path(settings.data_dir).resolve())
        if web_config is not None:
            log.info("web config: %s", web_config.describe())
        try:
            archiver.start()
        except Exception as err:
            log.error("cannot start: %s", err, exc_info=log.isEnabledFor(logging.DEBUG))
            return False
        started.set()
        return True

    def reload() -> None:
        """SIGHUP, POST /-/reload: the config file again; a ConfigError refuses it, all of it."""
        if load_again is not None:
            new = load_again()
            log.info("reload: %s", archiver.reload(new))
            remote.reload(new)

    # SIGHUP and POST /-/reload re-read the web config and, through `reload`, the archiver's own.
    def stopping() -> None:
        archiver.stop()
        remote.close()

    return serve(host, port, routes, listen=settings.listen, server_name=f"perfwatch-archiver/{__version__}",
                 web_config=web_config, log=log, started=start, stopping=stopping, cleanup=lock.close,
                 web_config_path=web_config_path, reload=reload, enable_lifecycle=enable_lifecycle,
                 max_connections=settings.max_connections, http_metrics=http_metrics,
                 post_routes=remote.routes, body_limits=remote.body_limits)


class RemoteDoors:
    """Prometheus' remote_write and remote_read on the archiver's server, each open only where the
    config says (`receive`), as Prometheus' --web.enable-remote-write-receiver."""

    def __init__(self, settings: ArchiverSettings, archiver: Archiver) -> None:
        from perfwatch.archiver.alerthistory import WEBHOOK_PATH, AlertWebhook
        from perfwatch.archiver.receive import WRITE_PATH, RemoteWriteReceiver
        from perfwatch.archiver.remoteread import READ_PATH, RemoteReader

        receive = settings.receive
        self.settings = settings
        self.routes: dict[str, Handler] = {}
        self.body_limits: dict[str, int] = {}
        self.receiver: RemoteWriteReceiver | None = None
        self.reader: RemoteReader | None = None
        self.alerts: AlertWebhook | None = None
        if receive.remote_write:
            self.receiver = RemoteWriteReceiver(archiver.spool, archiver.metrics, settings.receive_limits(),
                                                int(receive.body_size_limit))
            self.routes[WRITE_PATH] = self.receiver.handle
            log.info("remote_write receiver open at %s", WRITE_PATH)
        if receive.remote_read:
            self.reader = RemoteReader(lambda: archiver.db, archiver.metrics,
                                       body_size_limit=int(receive.body_size_limit),
                                       sample_limit=receive.remote_read_sample_limit,
                                       concurrency=receive.remote_read_concurrent_limit)
            self.routes[READ_PATH] = self.reader.handle
            log.info("remote_read open at %s", READ_PATH)
        if receive.alertmanager_webhook:
            self.alerts = AlertWebhook(lambda: archiver.db, archiver.metrics)
            self.routes[WEBHOOK_PATH] = self.alerts.handle
            log.info("Alertmanager webhook open at %s", WEBHOOK_PATH)
        # The compressed body is at most the decompressed limit (snappy grows incompressible input by
        # a few bytes per 64 KiB): what passes here is checked again once decompressed.
        self.body_limits = {path: int(receive.body_size_limit) + (int(receive.body_size_limit) >> 10) + 64
                            for path in self.routes if path != WEBHOOK_PATH}
        if self.alerts is not None:  # JSON, read as it comes: the limit is the body's
            self.body_limits[WEBHOOK_PATH] = int(receive.alertmanager_body_size_limit)

    def reload(self, new: ArchiverSettings) -> None:
        """New limits in force; opening or closing a door needs a restart (said in the log)."""
        old, receive = self.settings.receive, new.receive
        if (receive.remote_write, receive.remote_read, receive.alertmanager_webhook) != (
                old.remote_write, old.remote_read, old.alertmanager_webhook):
            log.warning("reload: receive.remote_write / remote_read / alertmanager_webhook changed; it takes effect "
                        "when the archiver restarts")
        if self.receiver is not None:
            self.receiver.configure(new.receive_limits(), int(receive.body_size_limit))
        if self.reader is not None:
            self.reader.configure(int(receive.body_size_limit), receive.remote_read_sample_limit)
        self.settings = new

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

"""`perfwatch-exporter`: serve host and perf-event metrics for Prometheus."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from perfwatch import __version__
from perfwatch.common.config import ConfigError, parse_listen
from perfwatch.common.httpmetrics import HTTPMetrics
from perfwatch.common.httpserver import WebServer, metrics_handler, service_routes
from perfwatch.common.lifecycle import add_web_arguments, serve
from perfwatch.common.logs import LEVELS, setup_logging
from perfwatch.common.webconfig import load_web_config
from perfwatch.exporter.collect import CollectorSet, build_registry, tune_garbage_collector
from perfwatch.exporter.collectors import REGISTRY, Collector
from perfwatch.exporter.exposition import render
from perfwatch.exporter.settings import DEFAULT_PORT, load_settings

log = logging.getLogger("perfwatch.exporter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfwatch-exporter",
        description="Expose host metrics (/proc, /sys) and Linux perf-event counters "
        "on /metrics for Prometheus.",
        epilog="Command-line options override the config file. Every config key is documented "
        "in README.md (Configuration).",
    )
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help=f"address to serve on (default: the config's listen, else :{DEFAULT_PORT}, "
                        "every IPv4 interface; [::]:PORT for IPv6 too)")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (collectors and their options)")
    parser.add_argument("--log-level", choices=LEVELS,
                        help="log verbosity (default: the config's log_level, else info)")
    add_web_arguments(parser, "the exporter")
    parser.add_argument("--collector.textfile.directory", dest="textfile_directory", metavar="DIR",
                        help="read *.prom files there at every scrape, as node_exporter's flag of that name "
                        "(default: the config's collectors.textfile.directory, else none)")
    parser.add_argument("--list-collectors", action="store_true",
                        help="print every collector, whether it is enabled, and exit")
    parser.add_argument("--version", action="version", version=f"perfwatch-exporter {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, collector_settings = load_settings(args.config, textfile_directory=args.textfile_directory)
        listen = args.listen or settings.listen
        try:
            host, port = parse_listen(listen)
        except ValueError as err:
            raise ConfigError("--listen" if args.listen else "listen", str(err)) from None
        web_config = load_web_config(args.web_config) if args.web_config else None
    except ConfigError as err:
        print(f"perfwatch-exporter: config error: {err}", file=sys.stderr)
        return 2

    if args.list_collectors:
        for name, entry in collector_settings.items():
            state = "enabled " if entry.enabled else "disabled"
            print(f"{name:<12} {state}  {REGISTRY[name].description}")
        return 0

    setup_logging(args.log_level or settings.log_level)
    paths = settings.paths

    collectors: list[Collector[Any]] = [
        REGISTRY[name](entry.options, paths) for name, entry in collector_settings.items() if entry.enabled
    ]
    collector_set = CollectorSet(collectors)
    registry = build_registry(collector_set, version=__version__)
    http_metrics = HTTPMetrics()
    registry.register(http_metrics)
    routes = service_routes("perfwatch exporter", __version__, metrics_handler(registry, render))

    def started(server: WebServer) -> bool:
        enabled = [c.name for c in collectors]
        disabled = [n for n, e in collector_settings.items() if not e.enabled]
        log.info("perfwatch-exporter %s listening on %s://%s:%d", __version__, server.scheme, host, server.port)
        if web_config is not None:
            log.info("web config %s: %s", args.web_config, web_config.describe())
        log.info("collectors enabled: %s; disabled: %s", ", ".join(enabled) or "none", ", ".join(disabled) or "none")
        tune_garbage_collector()  # start-up is done: what it made stays
        return True

    level = settings.log_level
    from_cli = {"listen": args.listen, "max_connections": args.max_connections, "log_level": args.log_level}

    def reload() -> None:
        """SIGHUP, POST /-/reload: the config's log_level takes effect; other changes wait for a restart."""
        nonlocal level
        if not args.config:
            return
        try:
            new, new_collectors = load_settings(args.config, textfile_directory=args.textfile_directory)
        except ConfigError as err:  # refused: nothing changes
            if not err.key:  # load_yaml's messages name the file already
                raise
            raise ConfigError(err.key, f"{err.message} (in config {args.config})") from None
        if not from_cli["log_level"] and new.log_level != level:
            logging.getLogger().setLevel(new.log_level.upper())
            log.info("log level %s (was %s)", new.log_level, level)
            level = new.log_level
        restart = [name for name in ("listen", "max_connections", "procfs", "sysfs", "rootfs")
                   if getattr(new, name) != getattr(settings, name) and not from_cli.get(name)]
        if new_collectors != collector_settings:
            restart.append("collectors")
        if restart:
            log.warning("config %s: changes to %s take effect at the next start", args.config, ", ".join(restart))

    # The collectors close after the server stops: a scrape may still be running until then.
    return serve(host, port, routes, listen=listen, server_name=f"perfwatch-exporter/{__version__}",
                 web_config=web_config, log=log, started=started, cleanup=collector_set.close,
                 web_config_path=args.web_config, reload=reload, enable_lifecycle=args.enable_lifecycle,
                 max_connections=args.max_connections or settings.max_connections, http_metrics=http_metrics)

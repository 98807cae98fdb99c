"""The exporter's config file: top-level keys and one section per collector."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from perfwatch.common.config import ConfigError, convert, from_mapping, load_yaml, parse_listen, unknown_key_error
from perfwatch.common.httpserver import MAX_CONNECTIONS, check_max_connections
from perfwatch.exporter.collectors import load_all
from perfwatch.exporter.collectors.base import HostPaths

DEFAULT_PORT = 10280
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclasses.dataclass
class CollectorSettings:
    enabled: bool
    options: Any


@dataclasses.dataclass
class ExporterSettings:
    listen: str = dataclasses.field(default=f":{DEFAULT_PORT}", metadata={
        "help": "HOST:PORT to serve on; `:PORT` means every IPv4 interface, `[::]:PORT` IPv6 and IPv4."})
    log_level: LogLevel = dataclasses.field(default="info", metadata={
        "help": "debug, info, warning or error."})
    max_connections: int = dataclasses.field(default=MAX_CONNECTIONS, metadata={
        "help": "Most HTTP connections served at once; more wait in the listen backlog."})
    procfs: str = dataclasses.field(default="/proc", metadata={
        "help": "Where the host's /proc is mounted (a container: /host/proc)."})
    sysfs: str = dataclasses.field(default="/sys", metadata={
        "help": "Where the host's /sys is mounted (a container: /host/sys)."})
    rootfs: str = dataclasses.field(default="/", metadata={
        "help": "Where the host's root filesystem is mounted, for filesystem paths."})
    collectors: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "Per collector: `enabled` and its options (see the collector reference)."})

    def validate(self, key: str) -> None:
        try:
            parse_listen(self.listen)
        except ValueError as err:
            raise ConfigError(f"{key}.listen" if key else "listen", str(err)) from None
        check_max_connections(self.max_connections, f"{key}.max_connections" if key else "max_connections")

    @property
    def paths(self) -> HostPaths:
        return HostPaths(procfs=self.procfs, sysfs=self.sysfs, rootfs=self.rootfs)

    def collector_settings(self) -> dict[str, CollectorSettings]:
        """Every known collector with its enabled flag and validated options."""
        registry = load_all()
        for name in self.collectors:
            if name not in registry:
                raise unknown_key_error(f"collectors.{name}", name, registry)
        out = {}
        for name, cls in sorted(registry.items()):
            section = self.collectors.get(name)
            key = f"collectors.{name}"
            if section is None:
                section = {}
            if not isinstance(section, dict):
                raise ConfigError(key, f"must be a mapping, not {type(section).__name__}")
            section = dict(section)
            enabled = convert(bool, section.pop("enabled", cls.default_enabled), f"{key}.enabled")
            out[name] = CollectorSettings(enabled, from_mapping(cls.Options, section, key))
        return out


def load_settings(path: str | Path | None, *, textfile_directory: str | None = None,
                  ) -> tuple[ExporterSettings, dict[str, CollectorSettings]]:
    """Read and validate the config file (None: all defaults); `textfile_directory` (the command
    line's --collector.textfile.directory) overrides the config's collectors.textfile.directory."""
    data = load_yaml(path) if path else {}
    settings = from_mapping(ExporterSettings, data)
    collectors = settings.collector_settings()
    if textfile_directory and "textfile" in collectors:
        collectors["textfile"].options.directory = textfile_directory
    return settings, collectors

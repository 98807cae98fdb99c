"""Targets from files, read as Prometheus' file_sd_configs reads them, so one file can feed both.

A file holds a list of target groups, `[{targets: ["host:port", ...], labels: {name: value}}]`, in
JSON (*.json) or YAML (*.yml, *.yaml). A group's `job` and `instance` labels set the target's;
`__scheme__` and `__metrics_path__` how to reach it; other labels starting with `__` (Prometheus'
`__meta_*`) are dropped; the rest are target labels.

A watcher thread looks at the files every second (stat, the globs expanded again so a new file is
seen) and reads those that changed, and reads them all every refresh_interval anyway. Prometheus
watches with inotify and reads again at refresh_interval for what inotify misses (NFS, a watch
limit reached); a stat a second costs about as little and misses nothing but a rewrite of the same
size within the same mtime tick, which the refresh catches.

Bad input loses nothing: a file that does not parse, is not a list of groups, or has a bad target
or label is logged (once per change) and keeps its last good targets, as Prometheus keeps them; a
file that is gone takes its targets with it.
"""

from __future__ import annotations

import dataclasses
import glob
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from perfwatch.archiver.scrape import LABEL_NAME_RE, Target
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.settings import ArchiverSettings, FileSDSettings

log = logging.getLogger("perfwatch.archiver")

POLL_INTERVAL = 1.0  # seconds between two looks at the files
GROUP_KEYS = ("labels", "targets")
STOP_WAIT = 5.0  # how long stop() waits for a pass in progress (a file on a hung NFS mount: no longer)

Identity = tuple[str, str]
Clash = tuple[Identity, str, str]  # (job and instance, URL, file) of a target left out


class GroupError(ValueError):
    """What makes a file unusable, and where in it (`[0].targets[2]`)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One target of a file: its address and its group's labels, before a file_sd_config makes it a Target."""

    address: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Found:
    """A discovered target and the file that lists it (for the logs)."""

    target: Target
    source: str


# -- reading a file ------------------------------------------------------------------------------

def read_file(path: str) -> list[Entry]:
    """The targets of one file, JSON or YAML by its extension as in Prometheus; GroupError or
    OSError says why it cannot be used."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GroupError(f"not UTF-8 text: {err}") from None
    return parse_groups(text, json_format=path.lower().endswith(".json"))


def parse_groups(text: str, *, json_format: bool) -> list[Entry]:
    """The targets of a file's text, each with its group's labels, in the file's order."""
    data: Any
    if json_format:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GroupError(f"not valid JSON: {err}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise GroupError(f"not valid YAML: {' '.join(str(err).split())}") from None
        if data is None:
            return []  # an empty YAML file: no groups
    if not isinstance(data, list):
        raise GroupError(f"must be a list of target groups, not {_kind(data)}")
    entries: list[Entry] = []
    for i, group in enumerate(data):
        where = f"[{i}]"
        if not isinstance(group, dict):
            raise GroupError(f"{where}: a target group is a mapping with targets and labels, not {_kind(group)}")
        if not json_format:  # Prometheus reads YAML strictly, and JSON without a word on unknown keys
            for key in group:
                if key not in GROUP_KEYS:
                    raise GroupError(f"{where}.{key}: unknown key; known keys: {', '.join(GROUP_KEYS)}")
        labels = _labels(group.get("labels"), f"{where}.labels", json_format)
        targets = group.get("targets")
        if targets is None:
            targets = []
        if not isinstance(targets, list):
            raise GroupError(f"{where}.targets: must be a list of host:port, not {_kind(targets)}")
        for j, address in enumerate(targets):
            if not isinstance(address, str) or not is_host_port(address):
                raise GroupError(f"{where}.targets[{j}]: {address!r} is not host:port")
            entries.append(Entry(address, labels))
    return entries


def _labels(raw: Any, where: str, json_format: bool) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise GroupError(f"{where}: must be a mapping of label names to values, not {_kind(raw)}")
    labels: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not LABEL_NAME_RE.fullmatch(name):
            raise GroupError(f"{where}: {name!r} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if not json_format and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # `rack: 12`: Prometheus' YAML reader takes a number as the string it is
        if not isinstance(value, str):
            raise GroupError(f"{where}.{name}: a label value is a string, not {value!r}")
        if name == "__scheme__" and value not in ("http", "https"):
            raise GroupError(f"{where}.{name}: {value!r} is neither http nor https")
        if name == "__metrics_path__" and not value.startswith("/"):
            raise GroupError(f"{where}.{name}: {value!r} does not start with /")
        labels[name] = value
    return tuple(sorted(labels.items()))


def is_host_port(address: str) -> bool:
    """`host:port` or `[v6]:port`, as a target's address is written for Prometheus: no scheme, path
    or credentials, a port from 1 to 65535."""
    host, colon, port = address.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return False
    if any(c.isspace() or c in "/?#@\\" for c in host):
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return bool(host) and not any(c in host for c in ":[]")


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "null"}.get(type(value),
                                                                                      type(value).__name__)


# -- what a file_sd_config makes of it ------------------------------------------------------------

def target_of(settings: ArchiverSettings, sd: FileSDSettings, entry: Entry) -> Target:
    """The target an entry of one of `sd`'s files is, scraped as `sd` and the top level say."""
    labels = {name: value for name, value in entry.labels if value}  # an empty label is no label
    scheme = labels.get("__scheme__", sd.scheme)
    path = labels.get("__metrics_path__", sd.metrics_path)
    job = labels.pop("job", sd.job)
    instance = labels.pop("instance", entry.address)
    return Target(url=f"{scheme}://{entry.address}{path}", job=job, instance=instance,
                  labels=tuple(sorted((n, v) for n, v in labels.items() if not n.startswith("__"))),
                  interval=float(sd.scrape_interval or settings.scrape_interval),
                  timeout=float(settings.timeout_for(sd)), limits=settings.limits_for(sd),
                  basic_auth=sd.basic_auth, authorization=sd.authorization, tls_config=sd.tls_config)


def merge(static: Iterable[Target], found: Iterable[Found],
          warned: set[Clash]) -> tuple[dict[Identity, Target], set[Clash]]:
    """What to scrape: the static targets, then the discovered ones in order. Of targets with the
    same job and instance the first is scraped and the others left out, each logged once while
    it lasts (`warned`: the clashes logged before; the clashes now come back). The same target
    twice (a file matched by two patterns) is one target, said nothing of."""
    wanted = {t.identity: t for t in static}
    static_ids = set(wanted)
    clashes: set[Clash] = set()
    for f in found:
        t = f.target
        kept = wanted.setdefault(t.identity, t)
        if kept is t or kept.same_as(t):
            continue
        clash = (t.identity, t.url, f.source)
        clashes.add(clash)
        if clash not in warned:
            first = "the static target" if t.identity in static_ids else "the target found before it,"
            log.warning("file_sd: %s in %s is left out: it has the job and instance of %s %s (give it an "
                        "`instance` label of its own)", t.name, f.source, first, kept.name)
    return wanted, clashes


# -- watching the files --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _File:
    signature: tuple[int, ...] | None  # what stat said when it was last read
    entries: tuple[Entry, ...] | None  # its last good targets; None: never read well
    error: str | None = None  # why its last read failed


class FileDiscovery:
    """The targets of every file_sd_config's files, and a watcher thread that hands each change to
    `on_change(generation, found)`. `generation` grows with every list handed out, there or by
    `reconfigure`, so the receiver can tell which of two lists is the newer."""

    def __init__(self, on_change: Callable[[int, list[Found]], object], metrics: ArchiverMetrics | None = None,
                 *, poll_interval: float = POLL_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_change = on_change
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.clock = clock
        self.settings: ArchiverSettings | None = None
        self._files: dict[str, _File] = {}  # by path, whichever config matched it
        self._matched: list[list[str]] = []  # per config, its files now
        self._refresh_at: list[float] = []  # per config, when to read all its files again
        self._found: list[Found] = []
        self._generation = 0
        self._gauged = 0  # configs with a perfwatch_archiver_sd_discovered_targets series
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconfigure(self, settings: ArchiverSettings) -> tuple[int, list[Found]]:
        """Put `settings`' file_sd_configs in force (at start, at a reload): read every file again
        and return the targets, with their generation; on_change is not called for these."""
        with self._lock:
            self.settings = settings
            now = self.clock()
            self._refresh_at = [now + sd.refresh_interval for sd in settings.file_sd_configs]
            self._scan(range(len(settings.file_sd_configs)))
            self._found = self._build()
            self._generation += 1
            return self._generation, list(self._found)

    def poll(self) -> bool:
        """One look at the files (the watcher's, every poll_interval): read those changed, and every
        file of a config whose refresh_interval is up; hand on what that changed. True if it did."""
        with self._lock:
            if self.settings is None:
                return False
            now = self.clock()
            due = [i for i, at in enumerate(self._refresh_at) if now >= at]
            for i in due:
                self._refresh_at[i] = now + self.settings.file_sd_configs[i].refresh_interval
            if not self._scan(due):
                return False
            found = self._build()
            if found == self._found:
                return False
            self._found = found
            self._generation += 1
            # Under the lock, so that lists reach on_change in the order they were made.
            self.on_change(self._generation, list(found))
            return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="file_sd", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception as err:  # the watcher must outlive any one surprise: it is the only one
                log.error("file_sd: a look at the files failed: %s", err, exc_info=True)

    def _scan(self, forced: Iterable[int]) -> bool:
        """Expand the globs, forget the files gone, read the new and the changed ones (all of the
        configs in `forced`); True if the targets of any file changed."""
        assert self.settings is not None
        configs = self.settings.file_sd_configs
        self._matched = [list(dict.fromkeys(sorted(p for pattern in sd.files for p in glob.glob(pattern))))
                         for sd in configs]
        present = {path for paths in self._matched for path in paths}
        reread = {path for i in forced for path in self._matched[i]}
        changed = False
        for path in sorted(set(self._files) - present):
            gone = self._files.pop(path)
            if gone.entries:
                log.info("file_sd: %s is gone (or no longer matched), and its %d targets with it", path,
                         len(gone.entries))
                changed = True
        for path in sorted(present):
            signature = _signature(path)
            known = self._files.get(path)
            if known is None or known.signature != signature or path in reread:
                changed |= self._read(path, signature, known)
        return changed

    def _read(self, path: str, signature: tuple[int, ...] | None, known: _File | None) -> bool:
        last = known.entries if known is not None else None
        try:
            entries = tuple(read_file(path))
        except (OSError, GroupError) as err:
            reason = str(err) if isinstance(err, GroupError) else err.strerror or str(err)
            if self.metrics is not None:
                self.metrics.sd_file_read_errors.inc()
            # Once per change of the file or of what is wrong with it, not at every refresh.
            if known is None or known.signature != signature or known.error != reason:
                kept = f"its last {len(last)} targets are kept" if last is not None else "no targets from it"
                log.warning("file_sd: cannot use %s: %s; %s until it is fixed", path, reason, kept)
            self._files[path] = _File(signature, last, reason)
            return False
        self._files[path] = _File(signature, entries)
        if entries == last:
            if known is not None and known.error is not None:
                log.info("file_sd: %s can be used again: %d targets, as before", path, len(entries))
            return False
        before, now = set(last or ()), set(entries)
        log.info("file_sd: %d target%s from %s (+%d -%d)", len(entries), "" if len(entries) == 1 else "s", path,
                 len(now - before), len(before - now))
        return True

    def _build(self) -> list[Found]:
        assert self.settings is not None
        found: list[Found] = []
        for i, (sd, paths) in enumerate(zip(self.settings.file_sd_configs, self._matched, strict=True)):
            count = 0
            for path in paths:
                known = self._files.get(path)
                for entry in (known.entries or ()) if known is not None else ():
                    found.append(Found(target_of(self.settings, sd, entry), path))
                    count += 1
            if self.metrics is not None:
                self.metrics.sd_discovered_targets.labels(str(i)).set(count)
        if self.metrics is not None:
            for i in range(len(self.settings.file_sd_configs), self._gauged):
                self.metrics.sd_discovered_targets.remove(str(i))
        self._gauged = len(self.settings.file_sd_configs)
        return found


def _signature(path: str) -> tuple[int, ...] | None:
    """What changes when a file is written or replaced (a rename onto it: another inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

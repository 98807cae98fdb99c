"""Typed, validated YAML configuration shared by the exporter and the archiver.

A config section is a dataclass; `from_mapping` checks a YAML mapping against it and raises
`ConfigError` naming the dotted key (`collectors.filesystem.mount_points_exclude`) on an
unknown key, a wrong type or a bad value, so start-up can stop with a message users can act on.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import threading
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
# The longest wait the scheduler and the OS can take (threading's TIMEOUT_MAX: 2**63 ns on Linux),
# which is also the longest duration Prometheus writes (Go's int64 nanoseconds): 292 years.
MAX_DURATION = min(threading.TIMEOUT_MAX, 2**63 / 1e9)
_SIZE_RE = re.compile(r"^(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1 << 10, "KiB": 1 << 10, "MB": 1 << 20, "MiB": 1 << 20,
               "GB": 1 << 30, "GiB": 1 << 30, "TB": 1 << 40, "TiB": 1 << 40}
MAX_SIZE = 2**63 - 1  # what an off_t (file sizes, the OS) can hold


class ConfigError(ValueError):
    """A configuration problem, tied to the dotted key it concerns."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class Duration(float):
    """Seconds, written in config as a Prometheus duration: `15s`, `5m`, `1h30m`, `7d`, `2y`."""

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"


class Size(int):
    """Bytes, written in config as Prometheus writes sizes: `512`, `64KB`, `50MB`, `1GiB` (KB = 1024 B)."""


class Regex(str):
    """A regular expression, anchored at both ends like Prometheus' relabel regexes."""

    @property
    def compiled(self) -> re.Pattern[str]:
        return re.compile(f"^(?:{self})$")


def parse_duration(text: str) -> Duration:
    """Parse a Prometheus-style duration (`1h30m`, `90s`, `7d`) into seconds."""
    match = _DURATION_RE.match(text.strip()) if text else None
    if not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration (examples: 15s, 5m, 1h30m, 7d, 2y)")
    seconds = sum(int(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if g)
    return Duration(seconds)


def parse_size(text: str) -> Size:
    """Parse a size (`50MB`, `1GiB`, `4096`) into bytes; units are powers of 1024, as in Prometheus."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 4096, 64KB, 50MB, 1GB)")
    return Size(int(match[1]) * _SIZE_UNITS[match[2]])


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for a whole number of seconds (`300` → `5m`)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    parts = []
    for unit, suffix in ((365 * 86400, "y"), (7 * 86400, "w"), (86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if whole >= unit:
            count, whole = divmod(whole, unit)
            parts.append(f"{count}{suffix}")
    return "".join(parts)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[v6]:PORT` → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (example: 127.0.0.1:10280 or :10280)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; an empty file is an empty mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError("", f"cannot read config file {path}: {err.strerror}") from err
    import yaml  # here, not at the top: a program started without a config file never needs it (RSS)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def unknown_key_error(key: str, name: str, known: typing.Iterable[str]) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(key, f"unknown key; {hint}known keys: {', '.join(known) or '(none)'}")


def join_key(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def from_mapping(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass `cls` from a YAML mapping, validating every key against its fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(key, f"must be a mapping, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, raw in data.items():
        field_key = join_key(key, str(name))
        if name not in fields:
            raise unknown_key_error(field_key, str(name), fields)
        values[name] = convert(hints[name], raw, field_key)
    try:
        obj = cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(key, str(err)) from err
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(key)
    return obj


def convert(hint: Any, raw: Any, key: str) -> Any:
    """Check `raw` against the type `hint` and convert it."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return convert(inner[0], raw, key)
        raise TypeError(f"unsupported union {hint}")
    if origin is typing.Literal:
        if raw not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(str, args))}, not {raw!r}")
        return raw
    if origin is list:
        if not isinstance(raw, list):
            raise ConfigError(key, f"must be a list, not {type(raw).__name__}")
        return [convert(args[0], item, join_key(key, i)) for i, item in enumerate(raw)]
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(key, f"must be a mapping, not {type(raw).__name__}")
        return {str(k): convert(args[1], v, join_key(key, str(k))) for k, v in raw.items()}
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, raw, key)  # type: ignore[arg-type]
    if hint is Duration:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ConfigError(key, f"must be a duration such as 15s or 5m, not {raw!r}")
        try:
            value = parse_duration(raw) if isinstance(raw, str) else Duration(raw)
        except ValueError as err:
            raise ConfigError(key, str(err)) from None
        if not value > 0:  # NaN too
            raise ConfigError(key, "must be a positive duration")
        if value > MAX_DURATION:
            raise ConfigError(key, f"{raw!r} is longer than the longest duration that can be waited for (292y)")
        return value
    if hint is Size:
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise ConfigError(key, f"must be a size such as 4096 or 50MB, not {raw!r}")
        try:
            size = parse_size(raw) if isinstance(raw, str) else Size(raw)
        except ValueError as err:
            raise ConfigError(key, str(err)) from None
        if not 0 <= size <= MAX_SIZE:
            raise ConfigError(key, f"must be between 0 and {MAX_SIZE} bytes, not {raw!r}")
        return size
    if hint is Regex:
        if not isinstance(raw, str):
            raise ConfigError(key, f"must be a regular expression string, not {type(raw).__name__}")
        try:
            re.compile(raw)
        except re.error as err:
            raise ConfigError(key, f"invalid regular expression {raw!r}: {err}") from None
        return Regex(raw)
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(key, f"must be true or false, not {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(key, f"must be an integer, not {raw!r}")
        if not -(2**63) <= raw < 2**63:  # what every count and limit here is compared with
            raise ConfigError(key, f"{raw} is out of range")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(key, f"must be a number, not {raw!r}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(key, f"must be a string, not {raw!r}")
        return raw
    if hint is Any:
        return raw
    raise TypeError(f"config field {key} has unsupported type {hint}")


"""perfwatch: a Prometheus exporter for host and perf-event metrics, and an archive beside it.

`perfwatch.exporter` runs on every host; `perfwatch.archiver` is a sidecar (the `archiver`
extra); both build on `perfwatch.common` and never import each other.
"""

__version__ = "0.2.0"

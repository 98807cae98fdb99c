"""perfwatch exporter: host (psutil, /proc, /sys) and perf-event metrics for Prometheus."""

__version__ = "0.1.0"

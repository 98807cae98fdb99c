"""perfwatch exporter: host (psutil, /proc, /sys) and perf-event metrics for Prometheus."""

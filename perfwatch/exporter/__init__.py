"""perfwatch exporter: host (/proc, /sys) and perf-event metrics for Prometheus."""

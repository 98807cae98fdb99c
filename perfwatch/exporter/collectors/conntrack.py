"""Connection tracking, from /proc/sys/net/netfilter/nf_conntrack_{count,max} and
/proc/net/stat/nf_conntrack (node_exporter 1.5's conntrack collector).

Without the nf_conntrack module the files are absent: no series and no error (node_exporter
returns "no data" then, which marks its collector's success 0; perfwatch's stays 1). The
statistics are summed over the per-CPU lines at procfs' fixed columns and exposed as gauges, as
node_exporter does (they are counters in the kernel).
"""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, parsing, read_text, register

# Column of /proc/net/stat/nf_conntrack → (metric, help). The header names changed over kernels
# (searched → clashres, delete_list → chainlength), these columns did not.
STATS = (
    (2, "nf_conntrack_stat_found", "Number of searched entries which were successful."),
    (4, "nf_conntrack_stat_invalid", "Number of packets seen which can not be tracked."),
    (5, "nf_conntrack_stat_ignore", "Number of packets seen which are already connected to a conntrack entry."),
    (8, "nf_conntrack_stat_insert", "Number of entries inserted into the list."),
    (9, "nf_conntrack_stat_insert_failed", "Number of entries for which list insertion was attempted but failed."),
    (10, "nf_conntrack_stat_drop", "Number of packets dropped due to conntrack failure."),
    (11, "nf_conntrack_stat_early_drop",
     "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached."),
    (16, "nf_conntrack_stat_search_restart",
     "Number of conntrack table lookups which had to be restarted due to hashtable resizes."),
)


@register
class ConntrackCollector(Collector[NoOptions]):
    name = "conntrack"
    description = "Connection-tracking entries, limit and statistics (nf_conntrack), where the module is loaded."
    node_collectors = ("conntrack",)

    def collect(self) -> Iterator[Metric]:
        for filename, metric, doc in (
            ("nf_conntrack_count", "nf_conntrack_entries",
             "Number of currently allocated flow entries for connection tracking."),
            ("nf_conntrack_max", "nf_conntrack_entries_limit", "Maximum size of connection tracking table."),
        ):
            path = self.paths.proc("sys", "net", "netfilter", filename)
            try:
                text = read_text(path)
            except FileNotFoundError:
                return
            with parsing(path):
                yield gauge(metric, doc, float(int(text.strip())), namespace=NODE)
        path = self.paths.proc("net", "stat", "nf_conntrack")
        try:
            lines = read_text(path).splitlines()[1:]  # a header line
        except FileNotFoundError:
            return
        totals = [0] * len(STATS)
        with parsing(path):
            for line in lines:
                columns = [int(v, 16) for v in line.split()]
                if not 16 <= len(columns) <= 17:
                    raise ValueError(f"{len(columns)} columns, 16 or 17 expected")
                for i, (column, _, _) in enumerate(STATS):
                    if column < len(columns):  # search_restart: not before Linux 2.6.35
                        totals[i] += columns[column]
        for (_, metric, doc), total in zip(STATS, totals, strict=True):
            yield gauge(metric, doc, float(total), namespace=NODE)

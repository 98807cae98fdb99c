"""TCP connections per state, IPv4 and IPv6 together (node_exporter's tcpstat, off by default there too).

Why off by default: counting connections by state makes the kernel walk its whole established-
connection hash table, whose size is set at boot from the memory size (262,144 buckets on a
24 GiB VM: "TCP established hash table entries" in dmesg), empty buckets included. No kernel
interface keeps per-state counters: /proc/net/sockstat has in use, orphaned, TIME_WAIT and
allocated (the sockstat collector, on by default, about 20 µs), /proc/net/snmp `CurrEstab`
(established plus close-wait); every per-state source — /proc/net/tcp*, the sock_diag netlink
dump that `ss` and node_exporter use — walks the table. Only listening sockets live in a small
table of their own.

When enabled, the cheapest walk the kernel offers is used: one sock_diag dump in the old
`TCPDIAG_GETSOCK` form, which the kernel runs with the family left open (AF_UNSPEC), so one walk
of the table (shared by IPv4 and IPv6) counts both families. node_exporter sends one
`SOCK_DIAG_BY_FAMILY` dump per family, two walks: measured here 0.6 ms for the one walk against
0.63 + 0.47 ms for the two, with a few hundred sockets. A kernel that refuses the old form gets
the per-family dumps; a sandbox without sock_diag netlink (gVisor, seccomp) gets /proc/net/tcp
and tcp6 (about 3.4 ms per file here: the seq_file interface restarts its walk at every read).
`netlink: false` forces the files. Nothing builds an object per connection.

The series are node_exporter's: `node_tcp_connection_states{state}` with its state names, plus
`rx_queued_bytes` and `tx_queued_bytes`, the receive and send queues summed over the sockets (as
node_exporter, the netlink sum takes a listening socket's backlog limit as its send queue; the
/proc/net/tcp* fallback has 0 there). One difference: every state is always present, 0
included (node_exporter omits states with no connection), so a state that empties reads as 0
rather than as a series that vanished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import struct
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, gauge, read_bytes, register

log = logging.getLogger(__name__)

# include/net/tcp_states.h. Request sockets (SYN received, not yet accepted) are reported as
# syn_recv by both sources, so the kernel-internal NEW_SYN_RECV (12) never shows.
STATES = {
    1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
    7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing",
}
RX, TX = 256, 257  # where the queue sums go in a count array (after the 256 possible state bytes)

# "   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 ...": the state is the only two-digit
# field after a ":port" (every other ':' is followed by 8 or 32 hex digits), then tx_queue:rx_queue.
# One regex over the whole file counts a busy host's 100k sockets in C without an object per line.
PROC_LINE = re.compile(rb":[0-9A-F]{4} ([0-9A-F]{2}) ([0-9A-F]{8}):([0-9A-F]{8}) ")

NETLINK_SOCK_DIAG = 4  # NETLINK_INET_DIAG
TCPDIAG_GETSOCK = 18  # the old request: struct inet_diag_req, the kernel dumps every family
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
TCPF_ALL = 0xFFF  # every state bit, as node_exporter asks
# struct inet_diag_req (old form): family, src_len, dst_len, ext, a zeroed inet_diag_sockid (48
# bytes), states bitmask, dbs.
INET_DIAG_REQ_OLD = struct.Struct("=BBBB48xII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states bitmask, a zeroed inet_diag_sockid.
INET_DIAG_REQ_V2 = struct.Struct("=BBBBI48x")
# struct inet_diag_msg: family, state, timer, retrans, id (48 bytes), expires, rqueue, wqueue, ...
DIAG_QUEUES = struct.Struct("=II")
DIAG_QUEUES_OFFSET = 4 + 48 + 4


def count_proc(data: bytes, counts: list[int]) -> None:
    """Add the connections of a /proc/net/tcp or tcp6 text to `counts` (per state byte, RX, TX)."""
    for state, tx, rx in PROC_LINE.findall(data):
        counts[int(state, 16)] += 1
        counts[TX] += int(tx, 16)
        counts[RX] += int(rx, 16)


def new_counts() -> list[int]:
    return [0] * (TX + 1)


def dump_netlink(counts: list[int], family: int | None) -> None:
    """Add every TCP socket of this network namespace to `counts` by one sock_diag dump: of
    `family` (SOCK_DIAG_BY_FAMILY), or of every family at once (None: the old TCPDIAG_GETSOCK)."""
    if family is None:
        kind, request = TCPDIAG_GETSOCK, INET_DIAG_REQ_OLD.pack(socket.AF_INET, 0, 0, 0, TCPF_ALL, 0)
    else:
        kind, request = SOCK_DIAG_BY_FAMILY, INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 0, TCPF_ALL)
    header, queues, queues_at = NLMSG_HEADER.size, DIAG_QUEUES.unpack_from, NLMSG_HEADER.size + DIAG_QUEUES_OFFSET
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as sock:
        sock.send(NLMSG_HEADER.pack(header + len(request), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
        while True:
            data = sock.recv(1 << 17)
            if not data:
                raise OSError("sock_diag dump ended without NLMSG_DONE")
            offset = 0
            while offset < len(data):
                length, message = NLMSG_HEADER.unpack_from(data, offset)[:2]
                if length < header:
                    raise OSError(f"sock_diag: malformed netlink message (length {length})")
                if message == NLMSG_DONE:
                    return
                if message == NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", data, offset + header)[0]
                    raise OSError(errno, f"sock_diag dump failed: {os.strerror(errno)}")
                counts[data[offset + header + 1]] += 1
                rqueue, wqueue = queues(data, offset + queues_at)
                counts[RX] += rqueue
                counts[TX] += wqueue
                offset += (length + 3) & ~3


@dataclasses.dataclass
class TCPStatOptions:
    netlink: bool = dataclasses.field(default=True, metadata={
        "help": "Count connections with a sock_diag netlink dump (one walk of the kernel's connection "
                "table for IPv4 and IPv6, about 6x cheaper than the files); false reads procfs/net/tcp and "
                "tcp6 instead."})


@register
class TCPStatCollector(Collector[TCPStatOptions]):
    name = "tcpstat"
    description = "TCP connections per state, IPv4 and IPv6 (walks the kernel's whole connection table)."
    default_enabled = False  # as node_exporter: its cost grows with the kernel's hash table (see above)
    node_collectors = ("tcpstat",)

    def setup(self) -> None:
        # "old": one TCPDIAG_GETSOCK dump for both families; "v2": one dump per family; "files".
        self.source = "old" if self.options.netlink else "files"

    def connection_counts(self) -> list[int]:
        counts = new_counts()
        if self.source == "old":
            try:
                dump_netlink(counts, None)
                return counts
            except OSError as err:
                log.info("tcpstat: the all-families sock_diag dump failed (%s); one dump per family from now on", err)
                self.source = "v2"
                counts = new_counts()
        if self.source == "v2":
            try:
                dump_netlink(counts, socket.AF_INET)
                if os.path.exists(self.paths.proc("net", "tcp6")):  # IPv6 in this kernel
                    dump_netlink(counts, socket.AF_INET6)
                return counts
            except OSError as err:
                # A sandbox without netlink (gVisor, seccomp): /proc/net/tcp still works.
                log.warning("tcpstat: sock_diag netlink dump failed (%s); reading %s/net/tcp from now on",
                            err, self.paths.procfs)
                self.source = "files"
                counts = new_counts()
        for name in ("tcp", "tcp6"):
            try:
                count_proc(read_bytes(self.paths.proc("net", name)), counts)
            except FileNotFoundError:  # no IPv6 in this kernel
                continue
        return counts

    def collect(self) -> Iterator[Metric]:
        counts = self.connection_counts()
        family = gauge("tcp_connection_states", "Number of connection states.", labels=["state"], namespace=NODE)
        for code, state in STATES.items():
            family.add_metric([state], float(counts[code]))
        family.add_metric(["rx_queued_bytes"], float(counts[RX]))
        family.add_metric(["tx_queued_bytes"], float(counts[TX]))
        yield family

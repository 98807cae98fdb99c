"""exporter/web.py in process: what happens to connections the exporter's and archiver's servers hold."""

from __future__ import annotations

import gzip
import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import psutil
import pytest
from support.waiting import wait_until

from perfwatch.common.httpserver import Request, Response, WebServer, accepts_gzip


@pytest.fixture
def slow_server() -> Iterator[tuple[WebServer, threading.Event, threading.Event]]:
    """A server whose /slow sets `entered` once it has the request, then answers only once the test
    sets `release`."""
    entered, release = threading.Event(), threading.Event()

    def slow(_request: Request) -> Response:
        entered.set()
        release.wait(10)
        return Response(200, b"x" * 100_000)

    server = WebServer("127.0.0.1", 0, {"/slow": slow, "/fast": lambda _r: Response(200, b"ok\n")},
                       server_name="test")
    server.start()
    yield server, entered, release
    release.set()
    server.stop()


def server_end_open(server_port: int, client_port: int) -> bool:
    """Whether this process's server still holds its end of the client's connection (a reset removes it)."""
    return any(c.laddr and c.laddr.port == server_port and c.raddr and c.raddr.port == client_port
               for c in psutil.Process().net_connections("tcp4"))


def test_a_client_that_leaves_mid_scrape_is_a_debug_line_not_a_traceback(
        slow_server: tuple[WebServer, threading.Event, threading.Event], caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    server, entered, release = slow_server
    caplog.set_level(logging.DEBUG, logger="perfwatch.common.httpserver")
    # Prometheus giving up at its scrape timeout: the request is sent, the connection reset.
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client_port = client.getsockname()[1]
    assert entered.wait(10), "the handler never got the request"  # it has read it and waits
    client.close()
    # The handler writes only once the reset has reached the server, so that its write fails.
    wait_until(lambda: not server_end_open(server.port, client_port), "the reset to reach the server")
    release.set()
    wait_until(lambda: "ended early" in caplog.text, "the 'ended early' log line")
    assert "connection from 127.0.0.1 ended early" in caplog.text
    assert "Traceback" not in capfd.readouterr().err  # socketserver's default: a bare traceback on stderr
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as again:  # still serving
        again.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert again.recv(100).startswith(b"HTTP/1.1 200")


def server_threads() -> int:
    # The request threads socketserver starts (Thread-N (process_request_thread)).
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_idle_connections_are_closed_and_their_threads_end() -> None:
    # The used connection is closed by the idle timeout, the silent one by the header timeout.
    server = WebServer("127.0.0.1", 0, {"/fast": lambda _r: Response(200, b"ok\n")}, server_name="test",
                       idle_timeout=0.5, header_timeout=0.5)
    server.start()
    try:
        before = server_threads()
        used = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        used.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ok\n"):
            answer += used.recv(1000)
        assert answer.startswith(b"HTTP/1.1 200")  # keep-alive: the server holds it open
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # never says a word
        wait_until(lambda: server_threads() == before + 2, "a thread for each connection")
        start = time.monotonic()
        assert used.recv(1000) == b"" and silent.recv(1000) == b""  # closed by the server
        assert time.monotonic() - start < 5
        wait_until(lambda: server_threads() == before, "the connections' threads to end")
        used.close()
        silent.close()
    finally:
        server.stop()


@pytest.mark.parametrize(("header", "gzip"), [
    ("gzip", True), ("GZIP, deflate", True), ("deflate, gzip;q=0.5", True), ("*", True), ("gzip;q=1.0", True),
    ("", False), ("identity", False), ("gzip;q=0", False), ("gzip;q=0.000", False), ("deflate, *;q=0", False),
    ("gzip;q=", False), ("gzip;q=abc", False),
])
def test_accept_encoding(header: str, gzip: bool) -> None:
    assert accepts_gzip(header) is gzip


def test_a_malformed_accept_encoding_gets_plain_text() -> None:
    server = WebServer("127.0.0.1", 0, {"/m": lambda _r: Response(200, b"body\n", compressible=True)},
                       server_name="test")
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"GET /m HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip;q=abc\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(1000):
                answer += chunk
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nbody\n")
    assert b"Content-Encoding" not in answer


def test_a_gzip_answer_is_one_gzip_member_of_the_body_in_one_send() -> None:
    body = b"".join(b"perfwatch_x{i=\"%d\"} %d\n" % (i, i) for i in range(2000))
    server = WebServer("127.0.0.1", 0, {"/m": lambda _r: Response(200, body, compressible=True)}, server_name="test")
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"GET /m HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(1 << 20):
                answer += chunk
    finally:
        server.stop()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head and f"Content-Length: {len(payload)}".encode() in head
    assert payload[:2] == b"\x1f\x8b" and gzip.decompress(payload) == body
    assert zlib.decompress(payload, wbits=31) == body  # one member: what Go's reader and Prometheus read

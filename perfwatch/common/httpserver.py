"""A small threaded HTTP server for `/metrics`, health endpoints and a landing page.

Shared by the exporter and the archiver. Routes are plain functions from a `Request` to a
`Response`; the server adds gzip where the client asks for it, 404/405 and quiet access logs.
With a web config (common/webconfig.py) it also serves TLS and asks for basic auth. Running it
until a signal, with the program's start and stop around it, is lifecycle.py's job.

Nothing a client does may stop it serving others (issue 10), so, as Go's net/http does:
- accept() failing for want of file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is
  retried after a pause (5 ms doubling up to 1 s), logged and counted; socketserver would go
  straight back to select(), which is readable at once, and spin a core;
- at most `max_connections` connections are open; at the cap the server stops accepting, so new
  ones wait in the kernel's listen backlog instead of being accepted and dropped;
- a new connection has `header_timeout` (10 s, like Go's ReadHeaderTimeout) from accept to the
  end of its first request's headers, TLS handshake included: a silent client cannot hold a
  slot for the long keep-alive `idle_timeout`, which applies only between requests;
- a request body is read when framed by Content-Length and within the route's limit (`body_limits`,
  for the remote-write and remote-read routes, after their credentials are checked), else read
  and thrown away when small; any other body (too large, chunked, framed twice or malformed) is
  refused and the connection closed, so a body is never read as the next request (smuggling);
- plain HTTP sent to the TLS port gets Go's 400 answer instead of a silently closed connection.
Failed TLS handshakes and failed logins are counted (httpmetrics.py) and logged at info at most
once a minute per client address, the rest at debug.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import html
import io
import logging
import os
import re
import resource
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from perfwatch.common.config import ConfigError, format_duration
from perfwatch.common.httpmetrics import ACCEPT_RESOURCE_ERRORS, LOG_INTERVAL, HTTPMetrics, LogLimiter
from perfwatch.common.webconfig import WebConfig

if TYPE_CHECKING:  # ssl itself is imported where a web config turns TLS on (tls.py)
    import ssl

log = logging.getLogger(__name__)

# The classic text format every Prometheus version reads.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Answered without credentials when basic auth is on: container healthchecks need no secret, and
# "the process serves HTTP" tells nobody anything. Everything else (/metrics, /, /-/ready) needs them.
OPEN_PATHS = frozenset({"/-/healthy"})
AUTH_REALM = "perfwatch"
# A connection that sends nothing for this long is closed. Without it, a keep-alive client that
# vanished without a FIN (a partitioned or killed host) would hold a thread and an fd for the
# life of the process (Go's servers find such peers through TCP keep-alive; Python's do not).
# Longer than any usual scrape interval, so Prometheus keeps reusing its connection.
IDLE_TIMEOUT = 300.0
# From accept to the end of the first request's headers (TLS handshake included), and from the
# first byte of each later request to the end of its headers: Go's ReadHeaderTimeout, in the
# value people give it. A scrape's headers are a few hundred bytes, sent at once.
HEADER_TIMEOUT = 10.0
# Connections open at once. Each holds a file descriptor and a thread. The default fits the usual
# open-files limit of 1024 even where it cannot be raised (lifecycle.fit_open_files raises the
# soft limit when the hard one allows): it leaves 768 for the rest, which the exporter's perf
# collector needs (one per event per CPU: 20 events on 32 CPUs are 640) and the archiver's
# database connections, spool and scrapes; a Prometheus server or two, the archiver and a few
# people use a handful of connections. Prometheus' --web.max-connections is 512, with Go raising
# the soft limit to the hard one at start.
MAX_CONNECTIONS = 256
# The largest request body read (and thrown away) where the route sets no limit of its own.
MAX_BODY_BYTES = 64 * 1024
# Time to read a body the route wants (its limit may be tens of MB), from the end of the headers.
BODY_TIMEOUT = 60.0
# accept() out of file descriptors or memory: wait this long, doubling up to the most (Go's values).
ACCEPT_RETRY_FIRST = 0.005
ACCEPT_RETRY_MAX = 1.0
# After an answer that closes the connection, what the client still sends is read (and dropped)
# for this long, up to this much: closing a socket with unread data sends a reset, and a reset
# makes the client's kernel discard the answer it has not yet read (Go does the same).
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
# Go's answer to plain HTTP on a TLS port, byte for byte.
PLAIN_HTTP_ON_TLS = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
_TLS_HANDSHAKE_RECORD = 0x16


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""  # read only for the routes with a body limit (WebServer.body_limits)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    compressible: bool = False


Handler = Callable[[Request], Response]
R = TypeVar("R")


def accepts_gzip(accept_encoding: str) -> bool:
    """True if `Accept-Encoding` lists gzip with a non-zero quality."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip()
            if not q.startswith("q="):
                return True
            try:
                return float(q[2:]) > 0
            except ValueError:  # a malformed quality: plain text, which every client reads
                return False
    return False


def metrics_handler(registry: R, render: Callable[[R], bytes]) -> Handler:
    """`/metrics`: `registry` in the text format, as `render` writes it (the archiver passes
    prometheus_client's generate_latest, the exporter its own exporter.exposition.render)."""

    def handle(_request: Request) -> Response:
        return Response(200, render(registry), METRICS_CONTENT_TYPE, compressible=True)

    return handle


def text_handler(body: str, status: int = 200) -> Handler:
    data = body.encode()

    def handle(_request: Request) -> Response:
        return Response(status, data)

    return handle


def landing_page(title: str, version: str, links: dict[str, str]) -> Handler:
    items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>'
                    for href, text in links.items())
    page = (
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>Version {html.escape(version)}</p><ul>{items}</ul>"
        "</body></html>"
    ).encode()

    def handle(_request: Request) -> Response:
        return Response(200, page, "text/html; charset=utf-8")

    return handle


def service_routes(title: str, version: str, metrics: Handler, ready: Handler | None = None) -> dict[str, Handler]:
    """The endpoints every perfwatch process serves: /metrics, health, readiness, a landing page."""
    return {
        "/metrics": metrics,
        "/-/healthy": text_handler("Healthy.\n"),
        "/-/ready": ready or text_handler("Ready.\n"),
        "/": landing_page(title, version, {"/metrics": "Metrics", "/-/healthy": "Health", "/-/ready": "Readiness"}),
    }


class _DeadlineReader(io.RawIOBase):
    """A socket's input with a deadline: each read may wait only for what is left of it.

    A socket timeout is per read: a client sending a byte every few seconds would never trip it.
    With no deadline, reads wait for the socket's own timeout."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


def _close_gently(sock: socket.socket) -> None:
    """Half-close `sock` after an answer that ends the connection, and read what the client still
    sends until it closes too (LINGER_SECONDS, LINGER_BYTES), so that the close is a FIN, not a
    reset that would make the client's kernel drop the answer."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        read = 0
        while read < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                break
            read += len(data)
    except (OSError, ValueError):
        pass


def _peer(client_address: object) -> str:
    return str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)


_DIGITS = re.compile(r"[0-9]+")


def body_problem(headers: dict[str, list[str]], limit: int = MAX_BODY_BYTES) -> tuple[int, str] | None:
    """Why a request's body cannot be read safely (status, message), or None.

    `headers`: each lower-case name with all its values. RFC 9112 section 6: Transfer-Encoding and
    Content-Length together are a smuggling attempt; only Content-Length bodies are read."""
    transfer = headers.get("transfer-encoding", [])
    lengths = [v.strip() for v in headers.get("content-length", [])]
    if transfer and lengths:
        return 400, "both Transfer-Encoding and Content-Length"
    if transfer:
        codings = ",".join(transfer).lower()
        if codings.rsplit(",", 1)[-1].strip() == "chunked":
            return 411, f"chunked request bodies are not accepted; send Content-Length (at most {limit} bytes)"
        return 501, f"transfer coding {codings[:40]!r} not supported"
    if lengths:
        if len(set(lengths)) > 1:
            return 400, "more than one Content-Length"
        if not _DIGITS.fullmatch(lengths[0]):
            return 400, f"malformed Content-Length {lengths[0][:40]!r}"
        if int(lengths[0]) > limit:
            return 413, f"request body over {limit} bytes"
    return None


class _HTTPServer(ThreadingHTTPServer):
    """socketserver's threaded server with its own accept loop: the connection cap, the pause
    after accept() errors, and TLS started in the connection's thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    ssl_context: ssl.SSLContext | None = None
    header_timeout = HEADER_TIMEOUT
    max_connections = MAX_CONNECTIONS
    metrics: HTTPMetrics

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.Condition()
        self._open = 0
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()  # not serving
        self._accept_delay = 0.0
        self._accept_logged = -LOG_INTERVAL
        self._limit_logged = -LOG_INTERVAL
        self._tls_log = LogLimiter()
        self._connection = threading.local()  # per connection thread: its header deadline

    # -- the accept loop ------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            with selectors.PollSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                while not self._closing.is_set():
                    if selector.select(poll_interval) and not self._closing.is_set():
                        if not self._wait_for_a_slot():  # a connection is waiting to be accepted
                            break
                        self._accept_one()
                    self.service_actions()
        finally:
            self._stopped.set()

    def _accept_one(self) -> None:
        """Accept one connection and start its thread (socketserver's _handle_request_noblock)."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except Exception:  # no thread could be started: the connection is closed
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def shutdown(self) -> None:
        self._closing.set()
        with self._slots:
            self._slots.notify_all()
        self._stopped.wait()

    def _wait_for_a_slot(self) -> bool:
        """With a connection waiting to be accepted, wait while max_connections are open: it stays in
        the kernel's backlog until one closes. False: the server is stopping."""
        with self._slots:
            if self._open < self.max_connections:
                return True
            self.metrics.count("limit_reached")
            now = time.monotonic()
            level = logging.WARNING if now - self._limit_logged >= LOG_INTERVAL else logging.DEBUG
            if level == logging.WARNING:
                self._limit_logged = now
            log.log(level, "%d connections open, the most max_connections allows: new connections wait in the "
                    "listen backlog until one closes", self._open)
            while self._open >= self.max_connections and not self._closing.is_set():
                self._slots.wait()
            log.debug("below max_connections again: accepting")
            return not self._closing.is_set()

    def get_request(self) -> tuple[socket.socket, object]:
        try:
            sock, address = self.socket.accept()
        except OSError as err:
            self._accept_failed(err)
            raise  # socketserver drops it and goes back to select()
        self._accept_delay = 0.0
        with self._slots:
            self._open += 1
            self.metrics.connections = self._open
        return sock, address

    def _accept_failed(self, err: OSError) -> None:
        name = ACCEPT_RESOURCE_ERRORS.get(err.errno or 0)
        self.metrics.count("accept_errors", name or "other")
        if name is None:  # the client gave up before accept (ECONNABORTED), a firewall (EPERM): one socket
            log.debug("accept: %s", err)
            return
        # The listening socket stays readable: without a pause the loop would spin a core.
        self._accept_delay = min(max(2 * self._accept_delay, ACCEPT_RETRY_FIRST), ACCEPT_RETRY_MAX)
        now = time.monotonic()
        level = logging.WARNING if now - self._accept_logged >= LOG_INTERVAL else logging.DEBUG
        if level == logging.WARNING:
            self._accept_logged = now
        hint = ""
        if err.errno == errno.EMFILE:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            hint = (f" (open-files limit {soft}, {self._open} connections open: raise the limit, e.g. systemd's "
                    "LimitNOFILE=, or lower max_connections)")
        strerror = (err.strerror or str(err)).lower()
        log.log(level, "accept: %s; retrying in %s%s", strerror, format_duration(self._accept_delay), hint)
        self._closing.wait(self._accept_delay)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        try:
            super().shutdown_request(request)
        finally:
            with self._slots:
                self._open -= 1
                self.metrics.connections = self._open
                self._slots.notify()

    # -- one connection, in its own thread ------------------------------------------------------

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self._connection.header_deadline = time.monotonic() + self.header_timeout
        context = self.ssl_context  # read once: a reload may replace it
        if context is None:
            super().finish_request(request, client_address)
            return
        tls = self._start_tls(context, request, client_address)
        if tls is None:
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError, ValueError):
                tls.shutdown(socket.SHUT_WR)
            tls.close()

    def _start_tls(self, context: ssl.SSLContext, sock: socket.socket,
                   client_address: object) -> ssl.SSLSocket | None:
        """The connection with its TLS handshake done, or None (answered, logged and counted)."""
        peer = _peer(client_address)
        deadline = self._connection.header_deadline
        try:
            # Peek, in this thread and under the deadline: a handshake starts with a handshake record.
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            first = sock.recv(5, socket.MSG_PEEK)
        except OSError as err:
            self._tls_failed(peer, f"no handshake: {err}")
            return None
        if not first:
            log.debug("connection from %s closed before a TLS handshake", peer)  # a TCP probe
            return None
        if first[0] != _TLS_HANDSHAKE_RECORD:
            if 0x41 <= first[0] <= 0x5A:  # an upper-case letter: an HTTP method
                self._tls_failed(peer, "plain HTTP sent to the TLS port; answered 400", "plain HTTP request from")
                with contextlib.suppress(OSError, ValueError):
                    sock.sendall(PLAIN_HTTP_ON_TLS)
                _close_gently(sock)
            else:
                self._tls_failed(peer, f"not a TLS handshake (first byte 0x{first[0]:02x})")
            return None
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            tls.settimeout(max(deadline - time.monotonic(), 0.001))
            tls.do_handshake()
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            self._tls_failed(peer, str(err))
            tls.close()
            return None
        return tls

    def _tls_failed(self, peer: str, reason: str, prefix: str = "") -> None:
        self.metrics.count("tls_handshake_failures")
        if self._tls_log.news(peer):
            later = f" (more from {peer} within {format_duration(LOG_INTERVAL)} are logged at debug)"
            level = logging.INFO
        else:
            later, level = "", logging.DEBUG
        if prefix:
            log.log(level, "%s %s: %s%s", prefix, peer, reason, later)
        else:
            log.log(level, "TLS handshake with %s failed: %s%s", peer, reason, later)

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver's default prints a bare traceback to stderr, outside the logfmt log. A client
        # that leaves mid-response (Prometheus giving up on a scrape at its timeout) is routine.
        err = sys.exc_info()[1]
        peer = _peer(client_address)
        if isinstance(err, ConnectionError | TimeoutError):
            log.debug("connection from %s ended early: %s", peer, err)
        else:
            log.error("request from %s failed", peer, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def method_not_allowed(allow: str, body: bytes) -> Handler:
    def handle(_request: Request) -> Response:
        return Response(405, body, headers={"Allow": allow})

    return handle


class WebServer:
    """Serves `routes` (path → handler, for GET and HEAD) and `post_routes` (POST and PUT) on
    `host:port` from a background thread. A path in `body_limits` gets its request body (up to that
    many bytes) in `Request.body`."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler], *, server_name: str,
                 web_config: WebConfig | None = None, idle_timeout: float = IDLE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 post_routes: dict[str, Handler] | None = None, metrics: HTTPMetrics | None = None,
                 body_limits: dict[str, int] | None = None) -> None:
        self.routes = routes
        self.post_routes = post_routes or {}
        self.body_limits = body_limits or {}
        self.server_name = server_name
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.web_config = web_config or WebConfig()
        self.metrics = metrics or HTTPMetrics()
        self.metrics.max_connections = max_connections
        self._auth_log = LogLimiter()
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server_cls((host, port), self._handler_class(), bind_and_activate=False)
        self.httpd.metrics = self.metrics
        self.httpd.max_connections = max_connections
        self.httpd.header_timeout = header_timeout
        self.httpd.ssl_context = self.web_config.ssl_context
        try:
            self.httpd.server_bind()
            self.httpd.server_activate()
        except BaseException:
            self.httpd.server_close()
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self.web_config.ssl_context is not None else "http"

    def check_web_config(self, web_config: WebConfig | None) -> None:
        """Raise ConfigError if `web_config` cannot replace the one in force without a restart."""
        new_tls = web_config is not None and web_config.ssl_context is not None
        if new_tls != (self.web_config.ssl_context is not None):
            raise ConfigError("tls_server_config", f"TLS is {'on' if self.scheme == 'https' else 'off'} and the new "
                              f"web config turns it {'on' if new_tls else 'off'}: that needs a restart")

    def set_web_config(self, web_config: WebConfig | None) -> None:
        """Put a checked web config in force: the next connections and requests use it."""
        self.check_web_config(web_config)
        new = web_config or WebConfig()
        self.httpd.ssl_context = new.ssl_context
        self.web_config = new

    def check_auth(self, path: str, authorization: str, client: str) -> Response | None:
        """None when the request may proceed, else the 401 to send."""
        auth = self.web_config.auth
        if auth is None or urlsplit(path).path in OPEN_PATHS:
            return None
        result = auth.check(authorization)
        if result.ok:
            return None
        self.metrics.count("auth_failures", result.kind)
        if authorization:  # a client without credentials is a browser's first try, not news
            if self._auth_log.news(client):
                later = f" (more from {client} within {format_duration(LOG_INTERVAL)} are logged at debug)"
                level = logging.INFO
            else:
                later, level = "", logging.DEBUG
            log.log(level, "authentication failed for user %r from %s: %s%s", result.user[:64], client,
                    result.reason, later)
        return Response(401, b"401 Unauthorized\n",
                        headers={"WWW-Authenticate": f'Basic realm="{AUTH_REALM}", charset="UTF-8"'})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = server.server_name
            # Error pages (send_error) write headers and body in two writes; with Nagle on, a
            # keep-alive client waits for its delayed ACK: +40 ms. TCP_NODELAY sends both at once.
            disable_nagle_algorithm = True
            _headers_buffer: list[bytes]  # http.server's, written by flush_headers()
            timeout = server.header_timeout
            _reader: _DeadlineReader
            _input: io.BufferedReader
            _requests = 0
            _linger = False  # answered with an error that closes the connection: read what is left first
            _body = b""

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # socketserver's file: replaced by one that keeps deadlines
                self._reader = _DeadlineReader(self.connection)
                deadline = getattr(server.httpd._connection, "header_deadline", None)
                self._reader.deadline = deadline or time.monotonic() + server.header_timeout
                self._input = io.BufferedReader(self._reader)
                self.rfile = self._input

            def handle_one_request(self) -> None:
                if self._requests:
                    # Between requests: wait up to the idle timeout for the next one to start, then
                    # give its headers the header timeout.
                    self._reader.deadline = time.monotonic() + server.idle_timeout
                    try:
                        if not self._input.peek(1):
                            self.close_connection = True
                            return
                    except (OSError, ValueError) as err:
                        log.debug("%s: idle connection closed: %s", self.address_string(), err)
                        self.close_connection = True
                        return
                    self._reader.deadline = time.monotonic() + server.header_timeout
                self._requests += 1
                super().handle_one_request()

            def handle_expect_100(self) -> bool:
                if self._body_problem() is not None:
                    return True  # no "100 Continue": parse_request goes on and the body is refused
                return super().handle_expect_100()

            def _body_limit(self) -> int | None:
                """The limit of a route that reads its body, None for the others."""
                return server.body_limits.get(urlsplit(self.path).path) if self.command in ("POST", "PUT") else None

            def _body_problem(self) -> tuple[int, str] | None:
                return body_problem({name: self.headers.get_all(name) or []
                                     for name in ("transfer-encoding", "content-length")},
                                    self._body_limit() or MAX_BODY_BYTES)

            def _refuse(self, response: Response) -> bool:
                """Answer before the body is read, and close the connection (False for parse_request)."""
                response.headers["Connection"] = "close"
                self._send(response, self.command == "HEAD")
                self._linger = True
                return False

            def parse_request(self) -> bool:
                if not super().parse_request():
                    return False
                # The headers are in; a body, if any, comes next, and then the next request.
                problem = self._body_problem()
                if problem is not None:
                    status, message = problem
                    log.debug("%s: %s %s refused with %d: %s", self.address_string(), self.command,
                              self.path[:100], status, message)
                    return self._refuse(Response(status, f"{message}\n".encode()))
                length = int(self.headers.get("content-length", "0").strip() or 0)
                keep = self._body_limit() is not None
                if keep:
                    # Credentials before a body of up to tens of MB is read from whoever sent it.
                    denied = server.check_auth(urlsplit(self.path).path, self.headers.get("Authorization", ""),
                                               self.client_address[0])
                    if denied is not None:
                        return self._refuse(denied)
                self._reader.deadline = time.monotonic() + (BODY_TIMEOUT if keep else server.header_timeout)
                parts = []
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 16))
                    if not chunk:  # the client closed mid-body
                        self.close_connection = True
                        return False
                    length -= len(chunk)
                    if keep:
                        parts.append(chunk)
                self._body = b"".join(parts)
                self._reader.deadline = None
                self.connection.settimeout(server.idle_timeout)  # for writing the answer
                return True

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                self._linger = True  # http.server's own errors (400, 414, 431, 501) close the connection
                super().send_error(code, message, explain)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    if self._linger:
                        _close_gently(self.connection)

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                denied = server.check_auth(url.path, self.headers.get("Authorization", ""), self.client_address[0])
                handler = server.post_routes.get(url.path) if self.command in ("POST", "PUT") else None
                if denied is not None or handler is None:
                    self._send(denied or Response(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"}),
                               False)
                    return
                self._respond(handler, url.path, url.query, head=False)

            do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815 - http.server dispatch names

            def _serve(self, head: bool) -> None:
                url = urlsplit(self.path)
                denied = server.check_auth(url.path, self.headers.get("Authorization", ""), self.client_address[0])
                if denied is not None:
                    self._send(denied, head)
                    return
                handler = server.routes.get(url.path)
                if handler is None:
                    self._send(Response(404, b"404 page not found\n"), head)
                    return
                self._respond(handler, url.path, url.query, head)

            def _respond(self, handler: Handler, path: str, query: str, head: bool) -> None:
                request = Request(self.command, path, query, {k.lower(): v for k, v in self.headers.items()},
                                  self._body)
                self._body = b""
                try:
                    response = handler(request)
                except Exception:
                    log.exception("handler for %s failed", path)
                    response = Response(500, b"internal server error\n")
                if response.compressible and accepts_gzip(request.header("accept-encoding")):
                    # mtime 0 ("none", as Go's gzip writes): zlib makes the header and the CRC in
                    # its one pass; with a time, gzip adds a second pass for the CRC (417 -> 294 µs
                    # for a 61 kB scrape).
                    response.body = gzip.compress(response.body, compresslevel=1, mtime=0)
                    response.headers["Content-Encoding"] = "gzip"
                self._send(response, head)

            def _send(self, response: Response, head: bool) -> None:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                for name, value in (server.web_config.headers | response.headers).items():
                    self.send_header(name, value)
                if response.compressible:
                    self.send_header("Vary", "Accept-Encoding")
                # Headers and body in one send: end_headers() then a write of the body made two
                # sends, and woke the client twice, ~0.15 ms a request on this VM. http.server
                # keeps the header lines in _headers_buffer (none for HTTP/0.9: no headers).
                lines = getattr(self, "_headers_buffer", None) or []
                if self.request_version != "HTTP/0.9":
                    lines.append(b"\r\n")
                if not head:
                    lines.append(response.body)
                self._headers_buffer = []
                self.wfile.write(b"".join(lines))

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return RequestHandler

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def check_max_connections(value: int, key: str) -> None:
    """The check of a `max_connections` config key (ConfigError naming `key`)."""
    if value < 1:
        raise ConfigError(key, f"must be at least 1, not {value}")


def open_files_headroom() -> tuple[int, int] | None:
    """(file descriptors open now, the soft open-files limit), or None where that cannot be told."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        return len(os.listdir("/proc/self/fd")), soft
    except OSError:
        return None

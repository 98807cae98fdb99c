"""A small threaded HTTP server for `/metrics`, health endpoints and a landing page.

Shared by the exporter and the archiver. Routes are plain functions from a `Request` to a
`Response`; the server adds gzip where the client asks for it, 404/405 and quiet access logs.
With a web config (common/webconfig.py) it also serves TLS and asks for basic auth. Running it
until a signal, with the program's start and stop around it, is lifecycle.py's job.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from perfwatch.common.webconfig import WebConfig

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


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names

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


def metrics_handler(registry: CollectorRegistry,
                    render: Callable[[CollectorRegistry], bytes] = generate_latest) -> Handler:
    """`/metrics` for `registry`; the exporter passes its leaner renderer (exporter.exposition.render)."""

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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout = 10.0

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # No I/O here: the handshake happens in the request's thread (finish_request), so a
            # slow or silent client cannot stall accept() for everyone else.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if isinstance(request, ssl.SSLSocket):
            previous = request.gettimeout()
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(previous)
            except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
                peer = client_address[0] if isinstance(client_address, tuple) else client_address
                log.info("TLS handshake with %s failed: %s", peer, err)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver's default prints a bare traceback to stderr, outside the logfmt log. A client
        # that leaves mid-response (Prometheus giving up on a scrape at its timeout) is routine.
        err = sys.exc_info()[1]
        peer = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(err, ConnectionError | TimeoutError):
            log.debug("connection from %s ended early: %s", peer, err)
        else:
            log.error("request from %s failed", peer, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class WebServer:
    """Serves `routes` (path → handler) on `host:port` from a background thread."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler], *, server_name: str,
                 web_config: WebConfig | None = None, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.routes = routes
        self.server_name = server_name
        self.idle_timeout = idle_timeout
        self.web_config = web_config or WebConfig()
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server_cls((host, port), self._handler_class())
        self.httpd.ssl_context = self.web_config.ssl_context
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self.web_config.ssl_context is not None else "http"

    def check_auth(self, path: str, authorization: str, client: str) -> Response | None:
        """None when the request may proceed, else the 401 to send."""
        auth = self.web_config.auth
        if auth is None or urlsplit(path).path in OPEN_PATHS:
            return None
        result = auth.check(authorization)
        if result.ok:
            return None
        if authorization:  # a client without credentials is a browser's first try, not news
            log.info("authentication failed for user %r from %s: %s", result.user[:64], client, result.reason)
        return Response(401, b"401 Unauthorized\n",
                        headers={"WWW-Authenticate": f'Basic realm="{AUTH_REALM}", charset="UTF-8"'})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = server.server_name
            # Headers and body go out in two writes; with Nagle on, a keep-alive client (Prometheus)
            # waits for its delayed ACK: +40 ms per scrape. TCP_NODELAY sends both at once.
            disable_nagle_algorithm = True
            timeout = server.idle_timeout

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_POST(self) -> None:
                denied = server.check_auth(self.path, self.headers.get("Authorization", ""), self.client_address[0])
                self._send(denied or Response(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"}), False)

            do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815 - http.server dispatch names

            def _serve(self, head: bool) -> None:
                url = urlsplit(self.path)
                request = Request(self.command, url.path, url.query,
                                  {k.lower(): v for k, v in self.headers.items()})
                denied = server.check_auth(url.path, request.header("authorization"), self.client_address[0])
                if denied is not None:
                    self._send(denied, head)
                    return
                handler = server.routes.get(url.path)
                if handler is None:
                    response = Response(404, b"404 page not found\n")
                else:
                    try:
                        response = handler(request)
                    except Exception:
                        log.exception("handler for %s failed", url.path)
                        response = Response(500, b"internal server error\n")
                if response.compressible and accepts_gzip(request.header("accept-encoding")):
                    response.body = gzip.compress(response.body, compresslevel=1)
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
                self.end_headers()
                if not head:
                    self.wfile.write(response.body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return RequestHandler

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

"""A small threaded HTTP server for `/metrics`, health endpoints and a landing page.

Shared by the exporter and the archiver. Routes are plain functions from a `Request` to a
`Response`; the server adds gzip where the client asks for it, 404/405 and quiet access logs.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

# The classic text format every Prometheus version reads.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
            return not (q.startswith("q=") and float(q[2:] or 0) == 0)
    return False


def metrics_handler(registry: CollectorRegistry) -> Handler:
    def handle(_request: Request) -> Response:
        return Response(200, generate_latest(registry), METRICS_CONTENT_TYPE, compressible=True)

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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class WebServer:
    """Serves `routes` (path → handler) on `host:port` from a background thread."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler], *, server_name: str) -> None:
        self.routes = routes
        self.server_name = server_name
        server_cls = _HTTPServer
        if ":" in host:
            server_cls = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        self.httpd = server_cls((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = server.server_name

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_POST(self) -> None:
                self._send(Response(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"}), False)

            do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815 - http.server dispatch names

            def _serve(self, head: bool) -> None:
                url = urlsplit(self.path)
                request = Request(self.command, url.path, url.query,
                                  {k.lower(): v for k, v in self.headers.items()})
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
                for name, value in response.headers.items():
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

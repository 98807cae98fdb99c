"""The exporter runs alone on every host and the archiver is a sidecar: neither imports the other,
and what both need lives in perfwatch.common, which imports neither. Checked on the source (every
import statement, top-level or not), so a late `from perfwatch.exporter import …` inside a
function of the archiver is caught too.

A running exporter loads none of the archiver's prometheus_client, and YAML, bcrypt and OpenSSL
(ssl, hashlib) only when its config asks for them (its RSS, issue 13): checked on a real exporter,
started by the entry point its console script runs, after a scrape."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.httpproc import bcrypt_hash
from support.pki import PKI
from support.procs import REPO, free_port

import perfwatch

PACKAGE = Path(perfwatch.__file__).parent
# package → the perfwatch packages it must not import
FORBIDDEN = {
    "perfwatch.exporter": ("perfwatch.archiver",),
    "perfwatch.archiver": ("perfwatch.exporter",),
    "perfwatch.common": ("perfwatch.exporter", "perfwatch.archiver"),
}


def imports(path: Path, package: str) -> list[tuple[int, list[str]]]:
    """Each import statement in the file at `path` (a module of `package`): its line and the absolute
    names it may bring in (`from perfwatch import exporter` may be the package perfwatch.exporter)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, [module, *(f"{module}.{alias.name}" for alias in node.names)]))
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for package, forbidden in FORBIDDEN.items():
        directory = root.joinpath(*package.split(".")[1:])
        for path in sorted(directory.rglob("*.py")):
            module_package = ".".join([package, *path.relative_to(directory).parent.parts])
            for line, names in imports(path, module_package):
                bad = [name for name in names if name.startswith(forbidden)]
                if bad:
                    found.append(f"{path.relative_to(root.parent)}:{line} imports {bad[0]}")
    return found


def test_exporter_archiver_and_common_do_not_import_each_other() -> None:
    assert violations() == []


@pytest.mark.parametrize(("where", "statement"), [
    ("archiver/store.py", "from perfwatch.exporter import collectors\n"),
    ("archiver/cli.py", "def late() -> None:\n    import perfwatch.exporter.cli\n"),
    ("exporter/collectors/loadavg.py", "from perfwatch.archiver.model import Batch\n"),
    ("common/config.py", "from ..archiver import db\n"),
])
def test_the_check_catches_an_import_across_the_boundary(tmp_path: Path, where: str, statement: str) -> None:
    """The same check on a copy of the package with one forbidden import added."""
    import shutil

    copy = tmp_path / "perfwatch"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "sql"))
    target = copy / where
    target.write_text(target.read_text() + "\n" + statement)
    [found] = violations(copy)
    assert found.startswith(f"perfwatch/{where}:")


# Loaded by a running exporter only when its options need them (OPTIONAL), or never: the archiver's
# and the tests' modules, and subprocess (ctypes.util.find_library's ldconfig would load it).
NEVER_LOADED = ("prometheus_client", "psutil", "wsgiref", "urllib.request", "subprocess")
OPTIONAL = ("yaml", "bcrypt", "hashlib", "ssl")
# Runs the exporter's main() with `argv`; a thread scrapes /metrics once, writes which of the
# modules named on stdin are loaded, then stops the exporter as a signal would.
EXPORTER_PROBE = """
import gc, json, os, signal, socket, sys, threading, time
from perfwatch.exporter.__main__ import main
argv, watched = json.loads(sys.stdin.read())
port = int(argv[argv.index("--listen") + 1].rpartition(":")[2])

def scrape():
    for _ in range(200):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            break
        except OSError:
            time.sleep(0.05)
    sock.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Basic cDpw\\r\\n"  # p:p
                 b"Connection: close\\r\\n\\r\\n")
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    status = answer.split(b" ", 2)[1].decode()
    gc_state = [gc.get_threshold()[0], gc.get_freeze_count()]
    print(json.dumps([status, [m for m in watched if m in sys.modules], gc_state]), file=sys.stderr)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=scrape, daemon=True).start()
sys.exit(main(argv))
"""


def probe(*args: str) -> tuple[str, list[str], list[int]]:
    """The status of a scrape of an exporter started with `args`, which watched modules it loaded,
    and its gc's first threshold and frozen object count."""
    argv = ["--listen", f"127.0.0.1:{free_port()}", "--log-level", "warning", *args]
    result = subprocess.run([sys.executable, "-c", EXPORTER_PROBE], input=json.dumps([argv, NEVER_LOADED + OPTIONAL]),
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    status, loaded, gc_state = json.loads(result.stderr.strip().splitlines()[-1])
    return status, loaded, gc_state


def loaded_by_a_scraped_exporter(*args: str) -> tuple[str, list[str]]:
    status, loaded, _ = probe(*args)
    return status, loaded


def test_a_started_exporter_freezes_what_start_up_made_and_raises_the_gc_threshold() -> None:
    from perfwatch.exporter.collect import GC_FIRST_GENERATION

    status, _, (threshold, frozen) = probe()
    assert (status, threshold) == ("200", GC_FIRST_GENERATION)
    assert frozen > 10_000  # the modules' functions, classes and dicts, and the collectors


def test_an_exporter_without_config_loads_no_module_it_does_not_need() -> None:
    assert loaded_by_a_scraped_exporter() == ("200", [])


def test_an_exporter_loads_yaml_for_its_config_and_bcrypt_for_basic_auth(tmp_path: Path) -> None:
    config, web = tmp_path / "exporter.yml", tmp_path / "web.yml"
    config.write_text("collectors:\n  perf:\n    enabled: false\n")
    assert loaded_by_a_scraped_exporter("--config", str(config)) == ("200", ["yaml"])
    web.write_text(f"basic_auth_users:\n  p: '{bcrypt_hash('p')}'\n")
    assert loaded_by_a_scraped_exporter("--web.config.file", str(web)) == ("200", ["yaml", "bcrypt", "hashlib"])


def test_an_exporter_loads_ssl_for_tls_and_serves_it(tmp_path: Path) -> None:
    """ssl hidden from http.client at start is imported for real once a web config turns TLS on: the
    probe's plain-HTTP request gets the TLS port's 400 answer, so the handshake path is serving."""
    pki = PKI(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n")
    assert loaded_by_a_scraped_exporter("--web.config.file", str(web)) == ("400", ["yaml", "ssl"])

"""The exporter runs alone on every host and the archiver is a sidecar: neither imports the other,
and what both need lives in perfwatch.common, which imports neither. Checked on the source (every
import statement, top-level or not), so a late `from perfwatch.exporter import …` inside a
function of the archiver is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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

"""A fake host's /proc and /sys for the collectors' tests: files written under a temporary root."""

from __future__ import annotations

from pathlib import Path


def write(root: Path, files: dict[str, str]) -> Path:
    """Write each relative path's text under `root` (directories made as needed); `root`."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root

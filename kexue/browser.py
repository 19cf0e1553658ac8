"""Headless Chromium, to look at a report as a person would: its DOM after load, a screenshot."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=5000"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="kexue-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=True)


def dump_dom(page: str | Path) -> str:
    """The page's DOM after load (scripts run), as HTML."""
    return _run(["--dump-dom", Path(page).resolve().as_uri()]).stdout


def screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int = 3200) -> Path:
    png = Path(png).resolve()
    _run([f"--screenshot={png}", f"--window-size={width},{height}", Path(page).resolve().as_uri()])
    return png

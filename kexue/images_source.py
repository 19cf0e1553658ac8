"""Content fingerprint of an image source, for cache keys (nothing is decoded here)."""
from __future__ import annotations

import os
from pathlib import Path

from kexue.artifacts import sha256_file, sha256_text


def image_source_fingerprint(source: str, base_dir: str | Path) -> str:
    """Hash of the bytes an image source would read; built-ins by their package version."""
    if source.startswith("builtin:"):
        import sklearn

        return sha256_text(source, sklearn.__version__)
    path = Path(source) if Path(source).is_absolute() else Path(base_dir) / source
    if path.is_dir():
        parts = [source]
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                try:
                    parts.append(f"{p.relative_to(path).as_posix()}:{sha256_file(p)}")
                except OSError as e:
                    parts.append(f"{p.relative_to(path).as_posix()}:error:{e.errno}")
        return sha256_text(*parts)
    if not path.exists():
        raise FileNotFoundError(f"image source {source!r}: {path} does not exist")
    return sha256_text(source, sha256_file(path))

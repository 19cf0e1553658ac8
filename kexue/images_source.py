"""Content fingerprint of an image source, for cache keys (nothing is decoded here)."""
from __future__ import annotations

from pathlib import Path

from kexue.artifacts import sha256_text, tree_hashes


def image_source_fingerprint(source: str, base_dir: str | Path) -> str:
    """Hash of the bytes an image source would read; built-ins by their package version."""
    if source.startswith("builtin:"):
        import sklearn

        return sha256_text(source, sklearn.__version__)
    path = Path(source) if Path(source).is_absolute() else Path(base_dir) / source
    if not path.exists():
        raise FileNotFoundError(f"image source {source!r}: {path} does not exist")
    return sha256_text(source, *tree_hashes(path))

"""Image sources for the GAN branch: built-in digits, a ``.npz`` file, or a folder of images.

Why one module: every source ends in the same artifact — an ``(N, H, W, C)`` float32 array
in [-1, 1] (the range of the generator's ``tanh``) plus optional integer labels — so the
GAN and its evaluation never care where the pixels came from. Like text ingest, nothing is
silently dropped: an unreadable file or a row with non-finite pixels becomes a
``Quarantined`` record with the reason, and the caller decides what to report.

Sources (the ``source`` string of ``load_images``):

- ``builtin:digits`` — scikit-learn's 1,797 8×8 handwritten digits (pixel values 0..16,
  shipped inside scikit-learn, nothing downloaded), labels 0..9.
- ``path/to/file.npz`` — an ``x`` array ``(N, H, W)`` or ``(N, H, W, C)`` with C in {1, 3};
  uint8 / values above 1 are read as 0..255, floats in [0, 1] as such, floats with
  negatives as already in [-1, 1]. An optional ``y`` array gives labels.
- ``path/to/folder`` — PNG / JPEG files (recursively, sorted by path). Files directly in
  sub-folders get the sub-folder as their class (labels index the sorted class names);
  files at the top level make an unlabelled set. Grayscale if every image is, else RGB.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kexue.core.artifacts import save_npy_atomic, sha256_text, tree_hashes, write_json_atomic
from kexue.text.corpora import BUILTIN_PREFIX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BUILTIN_SOURCES = ("digits",)


@dataclass(frozen=True)
class Quarantined:
    """An input that could not become training pixels, and why."""

    source: str
    location: str  # file path, or "file.npz:x[i]" for a row of an array
    reason: str


@dataclass
class ImageSet:
    """Pixels ready for a GAN: ``x`` (N, H, W, C) float32 in [-1, 1], labels when known."""

    x: np.ndarray
    y: np.ndarray | None
    class_names: list[str] | None
    quarantined: list[Quarantined]


def load_images(source: str, size: int | None = None) -> ImageSet:
    """Read ``source`` (see module doc) and optionally resize every image to ``size``×``size``.

    Why ``size``: the 8×8 digits are tiny; 16×16 or 32×32 lets the same data exercise a
    deeper DCGAN. Resizing is bilinear on the [-1, 1] floats.
    """
    if size is not None and size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name != "digits":
            raise ValueError(f"unknown built-in image source {source!r}; known: {BUILTIN_SOURCES}")
        images = _digits()
    elif source.endswith(".npz"):
        images = _npz(source)
    elif os.path.isdir(source):
        images = _folder(source)
    else:
        raise ValueError(f"{source!r} is neither builtin:<name>, a .npz file nor a folder")
    if len(images.x) == 0:
        raise ValueError(f"{source!r} gave no usable images ({len(images.quarantined)} quarantined)")
    if size is not None and images.x.shape[1:3] != (size, size):
        images.x = resize(images.x, size)
    return images


def write_images(source: str, out_dir: str | os.PathLike, size: int | None = None) -> dict:
    """Load ``source`` and write ``images.npy`` (+ ``labels.npy``) and ``quarantine.json``.

    Returns ``{"files": {name: path}, "metrics": {...}}`` for the task wrapper's Manifest.
    """
    images = load_images(source, size)
    out = Path(out_dir)
    files = {"images": str(save_npy_atomic(out / "images.npy", images.x))}
    if images.y is not None:
        files["labels"] = str(save_npy_atomic(out / "labels.npy", images.y))
    quarantine = [asdict(q) for q in images.quarantined]
    files["quarantine"] = str(write_json_atomic(
        out / "quarantine.json", {"class_names": images.class_names, "quarantined": quarantine}))
    n, h, w, c = images.x.shape
    return {"files": files, "metrics": {
        "source": source, "images": n, "height": h, "width": w, "channels": c,
        "labelled": images.y is not None,
        "classes": None if images.y is None else int(len(np.unique(images.y))),
        "quarantined": len(quarantine),
    }}


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile images (N, H, W, C) in [-1, 1] into one (rows·H, cols·W, C) array in [0, 1], 1-px white gaps."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), dtype=np.float32)
    for i, image in enumerate(np.clip((images + 1.0) / 2.0, 0.0, 1.0)):
        r, col = divmod(i, columns)
        grid[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = image
    return grid


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an (N, H, W, C) float array to (N, size, size, C)."""
    from PIL import Image

    out = np.empty((len(x), size, size, x.shape[-1]), np.float32)
    for i, img in enumerate(x):
        for c in range(x.shape[-1]):
            plane = Image.fromarray(np.ascontiguousarray(img[..., c], np.float32), mode="F")
            out[i, ..., c] = np.asarray(plane.resize((size, size), Image.BILINEAR))
    return np.clip(out, -1.0, 1.0)


def _digits() -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]  # 0..16 -> [-1, 1]
    return ImageSet(x, d.target.astype(np.int64), [str(t) for t in d.target_names], [])


def _to_unit_range(x: np.ndarray) -> np.ndarray:
    """Map pixel values to [-1, 1] from 0..255, [0, 1] or [-1, 1] (judged on finite values)."""
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    integer = x.dtype.kind in "ui"
    x = x.astype(np.float32)
    if integer or hi > 1.0:
        return x / 127.5 - 1.0
    if lo >= 0.0:
        return x * 2.0 - 1.0
    return x


def _npz(path: str) -> ImageSet:
    with np.load(path, allow_pickle=False) as f:
        if "x" not in f:
            raise ValueError(f"{path}: no 'x' array (has {sorted(f.files)})")
        raw = f["x"]
        y = f["y"] if "y" in f else None
    if raw.ndim == 3:
        raw = raw[..., None]
    if raw.ndim != 4 or raw.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: x must be (N, H, W) or (N, H, W, C) with C in 1/3, got {raw.shape}")
    if y is not None and len(y) != len(raw):
        raise ValueError(f"{path}: y has {len(y)} rows, x has {len(raw)}")
    x = _to_unit_range(raw)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    quarantined = [Quarantined(path, f"{path}:x[{i}]", "non-finite pixel values")
                   for i in np.flatnonzero(bad)]
    x = x[~bad]
    if y is not None:
        y = y[~bad].astype(np.int64)
    return ImageSet(x, y, None, quarantined)


def _folder(root: str) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    rootp = Path(root)
    paths = sorted(p for p in rootp.rglob("*") if p.is_file())
    quarantined: list[Quarantined] = []
    decoded: list[tuple[Path, Image.Image]] = []
    for p in paths:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            quarantined.append(Quarantined(root, str(p), f"not a PNG/JPEG file ({p.suffix or 'no suffix'})"))
            continue
        try:
            with Image.open(p) as im:
                im.load()  # decodes all pixel data: truncated files fail here, not later
                decoded.append((p, im.copy()))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            quarantined.append(Quarantined(root, str(p), f"unreadable image: {type(e).__name__}: {e}"))
    grey = all(im.mode in ("1", "L", "I", "I;16", "F", "LA") for _, im in decoded)
    mode = "L" if grey else "RGB"
    # One output size: the first good image's (resize to a fixed size via load_images(size=)).
    target = decoded[0][1].size if decoded else None
    class_of = {p: p.parent.relative_to(rootp).as_posix() for p, _ in decoded}
    labelled = bool(decoded) and all(c != "." and "/" not in c for c in class_of.values())
    class_names = sorted(set(class_of.values())) if labelled else None
    xs, ys = [], []
    for p, im in decoded:
        im = im.convert(mode)
        if im.size != target:
            im = im.resize(target, Image.BILINEAR)
        a = np.asarray(im, np.float32)
        xs.append(a[..., None] if a.ndim == 2 else a)
        if labelled:
            ys.append(class_names.index(class_of[p]))
    channels = 1 if grey else 3
    x = (np.stack(xs) / 127.5 - 1.0).astype(np.float32) if xs else np.zeros((0, 1, 1, channels), np.float32)
    y = np.asarray(ys, np.int64) if labelled else None
    return ImageSet(x, y, class_names, quarantined)


def image_source_fingerprint(source: str, base_dir: str | Path) -> str:
    """Hash of the bytes an image source would read; built-ins by their package version."""
    if source.startswith("builtin:"):
        import sklearn

        return sha256_text(source, sklearn.__version__)
    path = Path(source) if Path(source).is_absolute() else Path(base_dir) / source
    if not path.exists():
        raise FileNotFoundError(f"image source {source!r}: {path} does not exist")
    return sha256_text(source, *tree_hashes(path))


def as_images(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 (N, H, W, C) images; (N, H, W) gets one channel."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {x.shape}")
    return x

"""word2vec text format: the interchange format of the reference JoSE (and word2vec) code.

Why this module: embeddings leave the pipeline as word2vec text so that gensim
(``KeyedVectors.load_word2vec_format``), the reference's own evaluation scripts and people
with a text editor can read them. The format is a header line ``<rows> <dim>`` followed by
one line per row: the key, a space, and ``dim`` space-separated numbers. Keys therefore
must not contain whitespace; the writer refuses them instead of producing a file that
readers would mis-split.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kexue.core.artifacts import atomic_path


def write_word2vec(path: str | os.PathLike, keys: Sequence[str], vectors: np.ndarray, precision: int = 6) -> Path:
    """Write ``vectors`` (rows aligned with ``keys``) in word2vec text format, atomically."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(keys):
        raise ValueError(f"vectors of shape {vectors.shape} do not match {len(keys)} keys")
    for key in keys:
        if not key or any(ch.isspace() for ch in key):
            raise ValueError(f"word2vec keys must be non-empty and free of whitespace, got {key!r}")
    row_format = " ".join([f"%.{precision}f"] * vectors.shape[1])
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for key, row in zip(keys, vectors):
            f.write(key + " " + row_format % tuple(row) + "\n")
    return Path(path)


def read_word2vec(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a word2vec text file (ours, the reference's — it leaves a trailing space — or gensim's)."""
    with open(path, encoding="utf-8") as f:
        rows, dim = (int(x) for x in f.readline().split())
        keys: list[str] = []
        vectors = np.empty((rows, dim), dtype=np.float32)
        for i in range(rows):
            parts = f.readline().rstrip().split(" ")
            if len(parts) != dim + 1:
                raise ValueError(f"{path}: line {i + 2} has {len(parts) - 1} numbers, expected {dim}")
            keys.append(parts[0])
            vectors[i] = np.asarray(parts[1:], dtype=np.float32)
    return keys, vectors

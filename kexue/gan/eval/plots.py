"""PNG plots of the GAN evaluation: FID over training, and sample grids side by side."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from kexue.core.artifacts import atomic_path
from kexue.gan.data import as_images, image_grid


def plot_fid_curves(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """PNG of FID over training steps: per variant the mean over seeds with a ±1 std band.

    Seeds are aligned by step; at each step the mean/std use the seeds evaluated there.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    variants = list(dict.fromkeys(str(r["variant"]) for r in records))
    for variant in variants:
        by_step: dict[int, list[float]] = {}
        for record in records:
            if str(record["variant"]) == variant:
                for row in record["history"]:
                    by_step.setdefault(int(row["step"]), []).append(float(row["fid"]))
        steps = np.array(sorted(by_step))
        mean = np.array([np.mean(by_step[s]) for s in steps])
        std = np.array([np.std(by_step[s]) for s in steps])
        n_seeds = max(len(v) for v in by_step.values())
        line, = ax.plot(steps, mean, label=f"{variant} (n={n_seeds})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (classifier features)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("FID over training: mean ± std over seeds")
    return _save_png(fig, path)


def plot_sample_grids(samples: Mapping[str, np.ndarray], path: str | Path, n: int = 64) -> Path:
    """PNG with one grid of the first ``n`` samples per variant, side by side."""
    fig = Figure(figsize=(3.2 * len(samples), 3.6))
    for i, (variant, images) in enumerate(samples.items()):
        ax = fig.add_subplot(1, len(samples), i + 1)
        grid = image_grid(as_images(np.asarray(images)[:n]))
        if grid.shape[-1] == 1:
            ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_title(variant)
        ax.axis("off")
    fig.tight_layout()
    return _save_png(fig, path)


def _save_png(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)

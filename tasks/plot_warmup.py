"""Importing this draws one small figure, so a worker's first real plot does not pay for the first draw.

Why a module that acts on import: a LocalCluster's workers are forked from a fork server,
and the only thing a fork server can be told to do before it forks is import modules
(``tasks.warmup.MODULES``). The first figure a process draws sets up text layout and the
PNG writer; done once in the fork server, a forked worker's first rank-frequency plot took
0.41 s instead of 0.59 (its second 0.39), time the count stage paid on its critical path.
(Fonts themselves are reopened after a fork: matplotlib clears its font cache in the child.)
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure


def draw_once() -> None:
    fig = Figure(figsize=(1, 1))
    ax = fig.add_subplot()
    ax.loglog([1, 10], [10, 1], label="warm-up")
    ax.set_title("warm-up")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")


draw_once()

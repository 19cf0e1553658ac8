"""Is a ``tf.train.Checkpoint`` on disk whole? Checked before any variable is assigned.

Why a separate step: ``restore`` assigns variables one by one, so a checkpoint whose bytes
were truncated or overwritten would fail half-way and leave the model half-loaded. Reading
every tensor first checks each one's stored CRC-32C. Shared by the GAN and score-model runs.
"""
from __future__ import annotations

import tensorflow as tf


def checkpoint_damage(path: str) -> str | None:
    """Why the checkpoint at ``path`` (a prefix such as ``…/ckpt-28``) cannot be trusted; None if every tensor reads back."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, OSError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None

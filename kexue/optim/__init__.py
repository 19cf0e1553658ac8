"""Derived optimizers composable with any Keras 3 optimizer.

Weight decay, gradient accumulation and EMA are Keras constructor arguments of
every optimizer; this package adds the piecewise-linear schedule and the
LayerAdaptation, Lazy and Lookahead wrappers, and ``build_optimizer`` to build
any combination from a validated spec (``kexue.optim.spec.OptimizerSpec``).
"""

import importlib

_EXPORTS = {
    "build_optimizer": "kexue.optim.factory",
    "LayerAdaptation": "kexue.optim.layer_adaptation",
    "Lazy": "kexue.optim.lazy",
    "Lookahead": "kexue.optim.lookahead",
    "PiecewiseLinear": "kexue.optim.schedule",
    "OptimizerWrapper": "kexue.optim.wrapper",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import on first use: ``kexue.optim.spec`` (config checking) must not start TensorFlow."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

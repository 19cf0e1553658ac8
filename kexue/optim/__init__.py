"""Derived optimizers composable with any Keras 3 optimizer.

Weight decay, gradient accumulation and EMA are Keras constructor arguments of
every optimizer; this package adds the piecewise-linear schedule and the
LayerAdaptation, Lazy and Lookahead wrappers, and ``build_optimizer`` to build
any combination from a config dict.
"""

from kexue.optim.factory import build_optimizer
from kexue.optim.layer_adaptation import LayerAdaptation
from kexue.optim.lazy import Lazy
from kexue.optim.lookahead import Lookahead
from kexue.optim.schedule import PiecewiseLinear
from kexue.optim.wrapper import OptimizerWrapper

__all__ = ["LayerAdaptation", "Lazy", "Lookahead", "OptimizerWrapper", "PiecewiseLinear", "build_optimizer"]

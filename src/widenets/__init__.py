"""widenets: what randomly initialised neural networks compute, at infinite and finite width.

One description, two networks::

    import widenets as wn
    net = wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(), wn.Dense(1))
    k = net.kernel(x1, x2)          # infinite width: k.nngp, k.ntk (float64)
    model = net.build((784,), seed=0)  # finite width: a torch.nn.Module
"""

from widenets import architectures, data, empirical, init, predict, priors, prune, study, theory
from widenets._version import __version__
from widenets.errors import NonFiniteKernelError, ReducedPrecisionWarning
from widenets.kernel import Kernel
from widenets.layers import *  # noqa: F403
from widenets.layers import __all__ as _layer_names
from widenets.linearize import Taylor, linearize, taylor

__all__ = [
    "Kernel",
    "NonFiniteKernelError",
    "ReducedPrecisionWarning",
    "__version__",
    "architectures",
    "data",
    "empirical",
    "init",
    "linearize",
    "predict",
    "priors",
    "prune",
    "study",
    "Taylor",
    "taylor",
    "theory",
    *_layer_names,
]

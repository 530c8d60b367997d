"""slsam: Sparse Layer Sharpness-Aware Minimization for PyTorch.

>>> opt = slsam.SLSAM(model.parameters(), lr=1e-4, rho=0.01, sparsity=0.2)
>>> loss = opt.step(closure)  # closure: zero_grad, forward, backward, return loss
"""

from slsam import ops, reference
from slsam.batchnorm import disable_running_stats, enable_running_stats, running_stats_frozen
from slsam.optim import SAM, SLSAM

__version__ = "0.1.0"
__all__ = [
    "SAM",
    "SLSAM",
    "__version__",
    "disable_running_stats",
    "enable_running_stats",
    "ops",
    "reference",
    "running_stats_frozen",
]

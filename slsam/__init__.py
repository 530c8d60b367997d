"""slsam: Sparse Layer Sharpness-Aware Minimization for PyTorch.

>>> opt = slsam.SLSAM(model.parameters(), lr=1e-4, rho=0.01, sparsity=0.2)
>>> loss = opt.step(closure)  # closure: zero_grad, forward, backward, return loss
"""

from slsam._torch_check import check_torch_version
from slsam._version import __version__

check_torch_version()

from slsam import arms, ops, reference  # noqa: E402  (after the check: this loads slsam._C)
from slsam.batchnorm import disable_running_stats, enable_running_stats, running_stats_frozen  # noqa: E402
from slsam.optim import SAM, SLSAM  # noqa: E402

__all__ = [
    "SAM",
    "SLSAM",
    "__version__",
    "arms",
    "disable_running_stats",
    "enable_running_stats",
    "ops",
    "reference",
    "running_stats_frozen",
]

"""slsam: Sparse Layer Sharpness-Aware Minimization for PyTorch.

>>> opt = slsam.SLSAM(model.parameters(), lr=1e-4, rho=0.01, sparsity=0.2)
>>> loss = opt.step(closure)  # closure: zero_grad, forward, backward, return loss
"""

from slsam import ops, reference
from slsam.optim import SAM, SLSAM

__version__ = "0.1.0"
__all__ = ["SAM", "SLSAM", "ops", "reference", "__version__"]

// The slsam operator schemas: the one place they are defined. Kernels live in
// cpu/*.cpp and cuda/*.cu (TORCH_LIBRARY_IMPL per device), fake (meta)
// implementations in slsam/ops.py. To add an operator, see csrc/README.md.
#include <torch/library.h>

TORCH_LIBRARY(slsam, m) {
  // Per-tensor L2 norms (fp32, shape [n]) and the global norm (shape [], fp64
  // when every grad is fp64, else fp32) of `grads`; with `weights`, the norms
  // of weights.abs() * grads (ASAM).
  m.def("grad_norms(Tensor[] grads, Tensor[]? weights=None) -> (Tensor, Tensor)");
  // backups[i] = params[i]; params[i] += rho / (total_norm + 1e-12) * grads[i]
  // (* params[i]^2 when adaptive). A non-finite total_norm (or rho = 0) leaves
  // params bit for bit, also where grads are not finite.
  m.def(
      "perturb_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] backups, "
      "Tensor total_norm, float rho, bool adaptive=False) -> ()");
  // params[i] = backups[i], bit for bit.
  m.def("restore_(Tensor(a!)[] params, Tensor[] backups) -> ()");
  // params[i] = AdamW step from backups[i] with grads[i] (optionally divided by
  // grad_scale); when found_inf is non-zero, only the restore happens.
  m.def(
      "restore_adamw_(Tensor(a!)[] params, Tensor[] backups, Tensor[] grads, "
      "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, "
      "float lr, float beta1, float beta2, float weight_decay, float eps, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // EXP3 update of `probs` (fp64 [n]) from the norms (fp32, one per true entry
  // of `mask`, in order), then the capped projection onto sum = k. Skipped
  // when found_inf is non-zero.
  m.def(
      "bandit_update_(Tensor(a!) probs, Tensor mask, Tensor norms, Tensor? found_inf, "
      "float alpha, float k, bool normalize=False) -> ()");
  // Bernoulli(probs) mask, resampled until not empty.
  m.def("sample_mask(Tensor probs, Generator? generator=None) -> Tensor");
}

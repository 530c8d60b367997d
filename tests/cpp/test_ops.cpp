// C++ use of the operators: load the library (registers slsam::*), find an
// operator in the dispatcher and call it on libtorch tensors.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

int main() {
  if (!dlopen(SLSAM_OPS_LIB, RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return EXIT_FAILURE;
  }
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("slsam::grad_norms", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList,
                                                          const std::optional<at::TensorList>&)>();
  std::vector<at::Tensor> grads = {torch::full({4}, 1.0), torch::full({9}, 2.0)};
  auto [norms, total] = op.call(grads, std::nullopt);
  const bool ok = std::abs(norms[0].item<double>() - 2.0) < 1e-6 &&
                  std::abs(norms[1].item<double>() - 6.0) < 1e-6 &&
                  std::abs(total.item<double>() - std::sqrt(40.0)) < 1e-5;
  std::printf("norms %s total %f: %s\n", ok ? "ok" : "WRONG", total.item<double>(),
              ok ? "passed" : "failed");
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}

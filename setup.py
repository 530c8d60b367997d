"""Build slsam's C++/CUDA extension with torch.utils.cpp_extension.

    pip install --no-build-isolation -e .     # torch must already be installed

SLSAM_BUILD_CUDA=auto|0|1 (default auto): the CUDA kernels are built when torch
is a CUDA build and a toolkit is found (CUDA_HOME); 1 makes a missing toolkit
an error, 0 builds the CPU kernels only. TORCH_CUDA_ARCH_LIST defaults to
"9.0" (Hopper) when unset, since a machine without a GPU cannot guess it.

Everything else about the package (metadata, version, dependencies) is in
pyproject.toml. The build also writes slsam/_build_info.py beside slsam._C: the
torch it was compiled against, which `import slsam` compares with the running one.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ModuleNotFoundError as e:
    if e.name != "torch":
        raise
    # An isolated build (pip's default, python -m build's default) has no
    # torch; say what to do instead of a bare ModuleNotFoundError.
    raise SystemExit(
        "slsam is compiled against the installed torch, and this build environment has none: "
        "install torch first, then build in that environment without isolation "
        "(pip install --no-build-isolation ..., python -m build --no-isolation)"
    ) from None

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    mode = os.environ.get("SLSAM_BUILD_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        raise RuntimeError(f"SLSAM_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if mode == "1" and not available:
        raise RuntimeError(
            "SLSAM_BUILD_CUDA=1 but "
            + ("torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit was found")
            + f" (torch {torch.__version__}, CUDA_HOME={CUDA_HOME}); "
            "install a CUDA torch and set CUDA_HOME, or use SLSAM_BUILD_CUDA=0"
        )
    return mode == "1" or (mode == "auto" and available)


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    use_cuda = want_cuda()
    srcs = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    # No -std flag: torch.utils.cpp_extension adds the standard the installed
    # torch needs (C++20 for torch >= 2.13; a hard-coded c++17 breaks 2.14).
    # -fno-math-errno lets the compiler vectorise sqrt (same results, no errno).
    # Py_LIMITED_API itself is defined by cpp_extension (py_limited_api=True below),
    # at torch's own minimum CPython; a second definition here would clash.
    # -ffp-contract=off: no fused multiply-adds, so the baseline and AVX2 loops
    # (csrc/cpu/span_loops.h) and every machine round alike.
    cxx = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]
    args: dict[str, list[str]] = {"cxx": cxx}
    kind = CppExtension
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        srcs += sources("csrc/cuda/*.cu")
        # No --use_fast_math: it flushes denormals and makes fp32 sqrt and
        # division approximate, so the CUDA kernels would round differently
        # from the CPU kernels and torch.optim.AdamW; these kernels are
        # memory-bound and gain nothing from it.
        # -fmad=false: no contraction of a * b + c into a fused multiply-add
        # (nvcc's default), for the same reason as -ffp-contract=off above:
        # the kernels shared with the CPU (slsam/elementwise.h, slsam/bandit.h)
        # then round as the CPU kernels do, and a kernel's vector and scalar
        # paths (csrc/cuda/launch.cuh) alike.
        args["nvcc"] = ["-O3", "-lineinfo", "-fmad=false"]
        kind = CUDAExtension
    return kind(
        "slsam._C",
        srcs,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_compile_args=args,
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


class BuildExt(BuildExtension):
    """build_ext that records the torch slsam._C is compiled against."""

    def run(self) -> None:
        super().run()
        path = self._build_info_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                '"""Written by setup.py when slsam._C was built: the torch it was built against."""\n\n'
                f"TORCH_VERSION = {str(torch.__version__)!r}\n"
            )

    def _build_info_path(self) -> str:
        # Beside the extension wherever it lands: the package in the source
        # tree for --inplace and editable installs, the build folder for wheels.
        return os.path.join(os.path.dirname(self.get_ext_fullpath("slsam._C")), "_build_info.py")

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), self._build_info_path()]


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)

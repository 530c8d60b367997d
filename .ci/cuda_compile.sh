#!/usr/bin/env bash
# CUDA compile check (no GPU needed): builds slsam's sdist, installs it into a
# venv with a CUDA build of torch (so the CUDA kernels are compiled from what
# the sdist carries), imports the installed package, checks that the CUDA
# kernels are registered, and runs the test suite against it (the CUDA tests
# skip without a GPU).
#
# The install goes to its own venv (.venv-cuda) and the tests run from a copy
# outside the source tree, so the CPU build in the tree and .venv is never
# touched or imported. Suitable for CI: a clean clone, 2 cores, no GPU,
# registries reachable.
#
# Environment: CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST
# (default 9.0), MAX_JOBS (default 2), SLSAM_CUDA_VENV (default .venv-cuda),
# SLSAM_CUDA_TORCH (default torch==2.14.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SLSAM_CUDA_VENV:-$ROOT/.venv-cuda}"
WORK="$ROOT/build/cuda-sdist"
TORCH_SPEC="${SLSAM_CUDA_TORCH:-torch==2.14.1}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export SLSAM_BUILD_CUDA=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[cuda_compile] $*"; }

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  log "no nvcc under CUDA_HOME=$CUDA_HOME: install the CUDA toolkit or set CUDA_HOME" >&2
  exit 1
fi
log "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1)"

# 1. A venv with a CUDA build of torch (~5 GB, from the local wheel cache).
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" - "$TORCH_SPEC" <<'EOF' 2>/dev/null; then
import sys
import torch
want = sys.argv[1].split("==")[-1]
sys.exit(0 if torch.__version__.split("+")[0] == want and torch.version.cuda else 1)
EOF
  log "installing $TORCH_SPEC (CUDA build) into $VENV"
  "$VENV/bin/pip" install -q "$TORCH_SPEC" numpy pytest hypothesis ninja "setuptools>=77" build
fi
(cd / && "$VENV/bin/python" -c "import pytest, hypothesis, ninja, numpy, build") 2>/dev/null \
  || "$VENV/bin/pip" install -q "$TORCH_SPEC" numpy pytest hypothesis ninja "setuptools>=77" build
log "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"

# 2. The sdist, from the checkout as it is (MANIFEST.in keeps the CPU build's
#    outputs out of it).
rm -rf "$WORK"
mkdir -p "$WORK/dist" "$WORK/run"
# NOTE: from $WORK: in the checkout, the CMake folder build/ would shadow the build package.
(cd "$WORK" && "$VENV/bin/python" -m build --sdist --no-isolation --outdir "$WORK/dist" "$ROOT") \
  > "$WORK/sdist.log" 2>&1 || {
  tail -n 40 "$WORK/sdist.log" >&2
  log "sdist failed (full log: $WORK/sdist.log)" >&2
  exit 1
}
sdists=("$WORK"/dist/slsam-*.tar.gz)
SDIST="${sdists[0]}"
log "$(basename "$SDIST"): $(tar -tzf "$SDIST" | grep -vc '/$') files"

# 3. Install the sdist (not editable) into the CUDA venv: --force-reinstall
#    since the venv is kept between runs, --no-deps so that it cannot touch
#    torch, --no-cache-dir so that no wheel built against another torch is reused.
log "building from the sdist (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
(cd "$WORK/run" && "$VENV/bin/pip" install --no-build-isolation --no-deps --no-cache-dir --force-reinstall \
  "$SDIST") > "$WORK/build-cuda.log" 2>&1 || {
  tail -n 80 "$WORK/build-cuda.log" >&2
  log "build failed (full log: $WORK/build-cuda.log)" >&2
  exit 1
}
log "built in $(($(date +%s) - start)) s"

# The tests, what they import from the repository (examples/, benchmarks/, the
# csrc/ headers that tests/test_mask_replay.py compiles for the host)
# and pytest's settings (pyproject.toml), copied out of the tree: only the
# installed slsam can be imported there.
cd "$ROOT"
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard -- tests examples benchmarks csrc pyproject.toml \
    | tar --null --ignore-failed-read -cf - -T - 2>/dev/null \
    | tar -xf - -C "$WORK/run"
else
  tar --exclude=__pycache__ -cf - tests examples benchmarks csrc pyproject.toml | tar -xf - -C "$WORK/run"
fi
cd "$WORK/run"

# 4. Import without a GPU, and the CUDA kernels are registered.
"$VENV/bin/python" - "$VENV" <<'EOF'
import os
import sys

import torch

import slsam

venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(slsam._C.__file__).startswith(venv + os.sep), (
    f"imported {slsam._C.__file__}, not the CUDA build installed in {venv}")
# Every operator slsam.ops wraps (a public wrapper named like its operator).
ops = [name for name in vars(slsam.ops)
       if not name.startswith("_") and hasattr(torch.ops.slsam, name)]
assert len(ops) >= 6, f"found only the operators {ops}"
for device in ("cpu", "cuda"):
    missing = [op for op in ops if not slsam.ops.has_kernel(op, device)]
    assert not missing, f"no {device} kernel for {missing}"
print(f"[cuda_compile] import ok: {slsam._C.__file__}; CPU and CUDA kernels registered; "
      f"GPU available: {torch.cuda.is_available()}")
EOF

# 5. The tests against the installed CUDA build (CUDA-marked tests skip
#    without a GPU; the sdist test skips outside a git checkout).
log "pytest against the installed CUDA build"
"$VENV/bin/python" -m pytest -q tests -x -p no:cacheprovider

#!/usr/bin/env bash
# CUDA compile check (no GPU needed): builds slsam's CUDA kernels against a
# CUDA build of torch, imports the package, checks that the CUDA kernels are
# registered, and runs the test suite there (the CUDA tests skip without a GPU).
#
# The build happens in a copy of the tree (build/cuda-tree), installed in its
# own venv (.venv-cuda), so the CPU build in the source tree and .venv is never
# touched. Suitable for CI: a clean clone, 2 cores, no GPU, registries reachable.
#
# Environment: CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST
# (default 9.0), MAX_JOBS (default 2), SLSAM_CUDA_VENV (default .venv-cuda),
# SLSAM_CUDA_TORCH (default torch==2.14.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SLSAM_CUDA_VENV:-$ROOT/.venv-cuda}"
TREE="$ROOT/build/cuda-tree"
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
  "$VENV/bin/pip" install -q "$TORCH_SPEC" numpy pytest hypothesis ninja setuptools wheel
fi
"$VENV/bin/python" -c "import pytest, hypothesis, ninja, numpy" 2>/dev/null \
  || "$VENV/bin/pip" install -q numpy pytest hypothesis ninja setuptools wheel
log "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"

# 2. A copy of the tree: tracked and untracked-but-not-ignored files, so no
#    build output of the CPU build (slsam/_C*.so, build/) comes along.
rm -rf "$TREE"
mkdir -p "$TREE"
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -cf - -T - 2>/dev/null \
    | tar -xf - -C "$TREE"
else  # not a git checkout: everything but venvs, build outputs and caches
  tar --exclude='./.venv*' --exclude=./build --exclude='*.so' --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.git -cf - . | tar -xf - -C "$TREE"
fi

# 3. Build and install the copy (editable) into the CUDA venv.
cd "$TREE"
log "building in $TREE (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
"$VENV/bin/pip" install --no-build-isolation --no-deps -e . > "$TREE/build-cuda.log" 2>&1 || {
  tail -n 80 "$TREE/build-cuda.log" >&2
  log "build failed (full log: $TREE/build-cuda.log)" >&2
  exit 1
}
log "built in $(($(date +%s) - start)) s"

# 4. Import without a GPU, and the CUDA kernels are registered.
"$VENV/bin/python" - <<'EOF'
import os

import torch

import slsam

here = os.path.realpath(os.getcwd())
assert os.path.realpath(slsam._C.__file__).startswith(here), (
    f"imported {slsam._C.__file__}, not the CUDA build in {here}")
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

# 5. The tests, in the CUDA build (CUDA-marked tests skip without a GPU).
log "pytest in the CUDA build"
"$VENV/bin/python" -m pytest -q tests -x -p no:cacheprovider

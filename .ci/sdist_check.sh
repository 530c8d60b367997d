#!/usr/bin/env bash
# Installs slsam as a user would, from its sdist: builds the sdist from this
# checkout, installs it with --no-build-isolation into a fresh venv that holds
# a CPU torch, then, from a folder outside the source tree, imports it, runs an
# SLSAM step and a smoke subset of the tests against the installed package.
# A header missing from the sdist fails the install; a file the install lacks
# fails the import or the tests.
#
# Environment: SLSAM_SDIST_TORCH (default torch==2.13.0), MAX_JOBS (default 2),
# SLSAM_SDIST_KEEP=1 keeps the scratch folder (printed) for a look afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${SLSAM_SDIST_TORCH:-torch==2.13.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The test files that run against the installed package: the import-time torch
# check and the single version, and the optimizer on the compiled kernels
# (tests/test_ops.py would add ~3 CPU-minutes; make test runs it).
SMOKE_TESTS=(tests/conftest.py tests/test_packaging.py tests/test_optim.py)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/slsam-sdist.XXXXXX")"
if [ "${SLSAM_SDIST_KEEP:-0}" = 1 ]; then
  trap 'echo "[sdist_check] kept $WORK"' EXIT
else
  trap 'rm -rf "$WORK"' EXIT
fi
VENV="$WORK/venv"
PY="$VENV/bin/python"
start=$(date +%s)
log() { echo "[sdist_check] +$(($(date +%s) - start))s $*"; }

# 1. A fresh venv. Every pip command names the torch pin, so nothing can
#    replace it with another (multi-GB) build.
python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$TORCH_SPEC"
"$PY" -m pip install -q "$TORCH_SPEC" "setuptools>=77" build ninja pytest hypothesis
torch_before="$("$PY" -c 'import torch; print(torch.__version__)')"
log "venv with torch $torch_before"

# 2. The sdist, built from the checkout as it is (with whatever build outputs
#    lie in it: MANIFEST.in must keep them out).
# NOTE: from $WORK: in the checkout, the CMake folder build/ would shadow the build package.
(cd "$WORK" && "$PY" -m build --sdist --no-isolation --outdir "$WORK/dist" "$ROOT") \
  > "$WORK/sdist.log" 2>&1 || {
  tail -n 40 "$WORK/sdist.log" >&2
  exit 1
}
sdists=("$WORK"/dist/slsam-*.tar.gz)
SDIST="${sdists[0]}"
log "$(basename "$SDIST"): $(tar -tzf "$SDIST" | grep -vc '/$') files"
tar -tzf "$SDIST" | grep -v '/$' | sort | sed 's/^/  /'

# 3. Install it as the README says, with its dependencies (torch is already
#    satisfied and must stay the one installed).
mkdir -p "$WORK/run"
cd "$WORK/run"
"$PY" -m pip install -q --no-build-isolation --no-cache-dir "$SDIST" > "$WORK/install.log" 2>&1 || {
  tail -n 60 "$WORK/install.log" >&2
  exit 1
}
torch_after="$("$PY" -c 'import torch; print(torch.__version__)')"
if [ "$torch_after" != "$torch_before" ]; then
  echo "[sdist_check] installing slsam replaced torch $torch_before with $torch_after" >&2
  exit 1
fi
log "installed"

# 4. Outside the source tree: the installed package, and one SLSAM step.
"$PY" - "$VENV" <<'EOF'
import os
import sys

import torch

import slsam
from slsam import _C

venv = os.path.realpath(sys.argv[1])
for mod in (slsam, _C):
    assert os.path.realpath(mod.__file__).startswith(venv + os.sep), f"{mod.__name__} from {mod.__file__}"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
opt = slsam.SLSAM(model.parameters(), lr=1e-2, rho=0.05, sparsity=0.5, seed=0)
x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
before = [p.detach().clone() for p in model.parameters()]


def closure() -> torch.Tensor:
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


loss = opt.step(closure)
changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
assert torch.isfinite(loss) and changed > 0, (loss, changed)
print(f"[sdist_check] slsam {slsam.__version__} from {os.path.dirname(slsam.__file__)}; "
      f"_C for torch {torch.__version__} (ISA {_C.cpu_isa()}); SLSAM step: loss {float(loss):.4f}, "
      f"{changed} tensors updated")
EOF

# 5. The smoke tests and pytest's settings (pyproject.toml), copied out of the
#    tree so that only the installed slsam can be imported.
mkdir -p "$WORK/run/tests"
for f in "${SMOKE_TESTS[@]}"; do cp "$ROOT/$f" "$WORK/run/tests/"; done
cp "$ROOT/pyproject.toml" "$WORK/run/"
log "pytest (installed package): ${SMOKE_TESTS[*]}"
"$PY" -m pytest -q -p no:cacheprovider --rootdir "$WORK/run" "$WORK/run/tests"
log "done"

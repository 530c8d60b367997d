#!/usr/bin/env bash
# The whole GPU check, as one command for a lent GPU machine (the
# device tool's `run`, which has torch + nvcc but no package registry):
# build the CUDA kernels in place, run the CUDA tests, run a short subset
# under compute-sanitizer (memcheck, then racecheck), then the kernel
# bandwidth benchmark (GB/s of each kernel next to copy_ and _foreach_norm)
# and the bandit's times at 100, 1k and 10k arms. Everything it prints or
# writes goes to ${OUT:-benchmarks/results/gpu}.
#
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
#
# Each piece has its own timeout so the whole fits one 600 s call on an H100
# or H200 (build ~2 min: 3 .cu files at ~25 s each plus the C++, 8 jobs;
# tests <= 150 s; memcheck 60 s; racecheck 60 s; bandwidth 80 s; bandit 40 s),
# and every piece writes its log as it goes, so a cut-off run still returns
# them. GPU_CHECK_FULL=1 adds the micro-benchmarks and a decoder step (another
# ~190 s: run it as a second call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export SLSAM_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-8}"
# The toolkit's root: it must hold nvcc and libcudart (the link step needs
# -lcudart). NOTE: `dirname $(which nvcc)` is not enough: on these images nvcc
# on the PATH can be a wrapper script in /usr/local/bin (seen here), so ask
# nvcc where it lives (its --dryrun prints TOP=<root>).
cuda_root() {
  local top
  top="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  for d in "${CUDA_HOME:-}" "$top" /usr/local/cuda /usr/local/cuda-*; do
    [ -n "$d" ] && [ -x "$d/bin/nvcc" ] || continue
    for lib in lib64 lib targets/x86_64-linux/lib; do
      [ -e "$d/$lib/libcudart.so" ] && { (cd "$d" && pwd -P); return; }
    done
  done
}
CUDA_HOME="$(cuda_root)"
export CUDA_HOME

log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
log "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
log "torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)')"
log "CUDA_HOME=${CUDA_HOME:-<not found>}"
[ -n "$CUDA_HOME" ] || { log "no CUDA toolkit with nvcc and libcudart found; set CUDA_HOME"; exit 1; }

start=$(date +%s)
# One build, not two: pip (editable, no index needed) when it is there, else
# setup.py in place; a compile error is reported, not retried the other way.
if $PY -m pip --version > /dev/null 2>&1; then
  build=("$PY" -m pip install --no-build-isolation --no-deps --no-index -e .)
else
  build=("$PY" setup.py build_ext --inplace)
fi
"${build[@]}" > "$OUT/build.log" 2>&1 || {
  grep -E "error|Error" "$OUT/build.log" | head -n 40 | tee -a "$OUT/summary.txt"
  log "BUILD FAILED: ${build[*]}"; exit 1; }
log "built in $(($(date +%s) - start)) s"
$PY -c "import slsam, torch; print('cuda kernels:', slsam.ops.has_kernel('perturb_', 'cuda'))" | tee -a "$OUT/summary.txt"

log "CUDA tests"
# No -x: a first run on a GPU should report every failing kernel, not the first.
# -m cuda: the CUDA cases of the device-parametrised tests and the CUDA-only tests.
timeout 150 $PY -m pytest -q -p no:cacheprovider -rfs --durations=10 -m cuda \
  tests/test_ops.py tests/test_cuda.py tests/test_backups.py > "$OUT/test_cuda.log" 2>&1
log "test_cuda rc=$? : $(tail -n 1 "$OUT/test_cuda.log")"
grep -E "^FAILED" "$OUT/test_cuda.log" | head -n 40 | tee -a "$OUT/summary.txt"

# compute-sanitizer on a short subset: every kernel once (odd sizes, misaligned
# views, the bandit block around 256 arms, the mask sampler's fallback).
SUBSET=(tests/test_cuda.py::test_every_op_on_a_non_default_stream
        "tests/test_cuda.py::test_bandit_update_matches_cpu_and_reference"
        tests/test_cuda.py::test_sample_mask_fallback_with_more_arms_than_threads
        tests/test_ops.py::test_partially_aligned_lists_give_the_same_bits
        tests/test_ops.py::test_perturb_and_restore_adamw_mixed_dtypes_in_one_list)
if command -v compute-sanitizer > /dev/null 2>&1; then
  for tool in memcheck racecheck; do
    log "compute-sanitizer --tool $tool (subset)"
    # PYTORCH_NO_CUDA_MEMORY_CACHING: memcheck then sees each allocation's own bounds.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool "$tool" \
      --target-processes all --error-exitcode 99 --print-limit 20 \
      $PY -m pytest -q -p no:cacheprovider -m cuda -k "not 10k and not second_gpu" "${SUBSET[@]}" \
      > "$OUT/sanitizer_$tool.log" 2>&1
    rc=$?
    log "$tool rc=$rc (0 clean, 99 errors found, 124 timed out): $(grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer_$tool.log" | tail -n 2 | tr '\n' ' ')"
  done
else
  log "compute-sanitizer not found: memcheck and racecheck skipped"
fi

log "bandwidth (GB/s of each kernel, copy_ and _foreach_norm in the same run)"
timeout 80 $PY -m benchmarks.bandwidth --device cuda --dtypes fp32 bf16 \
  > "$OUT/bandwidth.log" 2>&1
log "bandwidth rc=$?"
# The table (every kernel's GB/s, copy_'s, the fraction, vs _foreach_norm) and the verdicts.
grep -v -E "^\[bandwidth\]|^wrote" "$OUT/bandwidth.log" | tail -n 40 | tee -a "$OUT/summary.txt"

log "bandit_update_ and sample_mask at 100, 1k, 10k arms"
timeout 40 $PY -m benchmarks.micro --device cuda --sections bandit --sizes 100 1000 10000 \
  --min-run-time 0.2 --no-compile --out bandit_cuda > "$OUT/bandit.log" 2>&1
log "bandit rc=$?"
grep -E "bandit_update_|sample_mask" "$OUT/bandit.log" | tee -a "$OUT/summary.txt"

if [ "${GPU_CHECK_FULL:-0}" = 1 ]; then
  log "micro (ops + step, CUDA, no compile)"
  timeout 100 $PY -m benchmarks.micro --device cuda --sizes 1000 --dtypes fp32 bf16 --no-compile \
    --min-run-time 0.2 --out micro_cuda > "$OUT/micro.log" 2>&1
  log "micro rc=$?"; grep TARGET "$OUT/micro.log" | tee -a "$OUT/summary.txt"
  log "step (1.1B Llama-shaped decoder, bf16)"
  timeout 90 $PY -m benchmarks.step --device cuda --models decoder --steps 4 --warmup 2 \
    --sparsities 0.2 1.0 --out step_cuda_decoder > "$OUT/step.log" 2>&1
  log "step rc=$?"; grep TARGET "$OUT/step.log" | tee -a "$OUT/summary.txt"
fi
cp -f benchmarks/results/bandwidth_cuda.json benchmarks/results/bandit_cuda.json \
  benchmarks/results/micro_cuda.json benchmarks/results/step_cuda_decoder.json "$OUT"/ 2>/dev/null || true
log "done"

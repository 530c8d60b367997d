"""The benchmark scripts: bandwidth.py's byte accounting, step.py's decoder workload."""

from __future__ import annotations

import pytest
import torch

from benchmarks import bandwidth


def test_rows_count_the_bytes_each_operator_moves():
    sizes = [1000, 333]
    rows = bandwidth.bench_list("tiny", sizes, torch.bfloat16, "bf16", "cpu", min_run=0.01)
    assert [r["op"] for r in rows] == list(bandwidth.BYTES_PER_ELEMENT)
    for r in rows:
        moved = bandwidth.BYTES_PER_ELEMENT[r["op"]] * sum(sizes) * 2  # bf16: 2 bytes
        assert abs(r["gb_s"] * 1e9 * r["median_s"] - moved) <= 1e-6 * moved
        assert r["of_copy"] == r["gb_s"] / r["copy_gb_s"]
        copy_s = moved / (r["copy_gb_s"] * 1e9)
        assert r["floor_s"] > 0
        assert r["ceiling"] == pytest.approx(copy_s / (copy_s + r["floor_s"]), rel=1e-9)
        assert 0.0 < r["cpu_of_wall"]
    shares = [r["share_of_sam"] for r in rows if "share_of_sam" in r]
    assert len(shares) == len(bandwidth.SAM_STEP) and abs(sum(shares) - 1.0) < 1e-9
    norms = rows[0]
    assert norms["speedup_vs_foreach_norm"] == norms["foreach_norm_s"] / norms["median_s"]


def test_count_parses_powers():
    assert bandwidth.count("2**10") == 1024 and bandwidth.count("5000") == 5000


def test_step_decoder_workload_trains_with_slsam():
    """benchmarks/step.py's Llama-shaped decoder (tiny here) runs an SLSAM step."""
    import argparse

    import slsam
    from benchmarks import step

    pytest.importorskip("transformers")

    args = argparse.Namespace(batch=2, seq=8, decoder_layers=2, decoder_hidden=128,
                              dtype="bf16")
    work = step.make_workload("decoder", args, "cpu")
    params = list(work.model.parameters())
    assert len(params) == 2 * 9 + 3 and params[0].dtype == torch.bfloat16
    before = [p.detach().clone() for p in params]
    opt = slsam.SLSAM(params, lr=1e-3, sparsity=1.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = work.loss(work.model)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=False))


def test_step_runs_without_tqdm():
    """tqdm is optional (a GPU image may lack it): step.py's main() runs with a dummy bar."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.modules['tqdm'] = None\n"
            "from benchmarks import step\n"
            "assert step.tqdm.__module__ == 'benchmarks.step'\n"
            "bar = step.tqdm(total=3, desc='x')\n"
            "bar.set_postfix_str('y'); bar.update(1); bar.close()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_micro_bandit_section_times_only_the_bandit(tmp_path, monkeypatch):
    """benchmarks/gpu_check.sh times the bandit alone: micro.py --sections bandit."""
    import json

    from benchmarks import common, micro

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert micro.main(["--device", "cpu", "--sections", "bandit", "--sizes", "10", "30",
                       "--min-run-time", "0.01", "--no-compile", "--out", "bandit_t"]) == 0
    rows = json.loads((tmp_path / "bandit_t.json").read_text())["rows"]
    assert {r["case"] for r in rows} == {"bandit_update_", "sample_mask"}
    assert {r["n"] for r in rows} == {10, 30}

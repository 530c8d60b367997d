"""benchmarks/bandwidth.py: the byte accounting its GB/s figures rest on."""

from __future__ import annotations

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
    norms = rows[0]
    assert norms["speedup_vs_foreach_norm"] == norms["foreach_norm_s"] / norms["median_s"]


def test_count_parses_powers():
    assert bandwidth.count("2**10") == 1024 and bandwidth.count("5000") == 5000

"""DDP with the gloo backend, 2 processes on CPU, launched with torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mask_mode", ["requires_grad", "grad"])
def test_ddp_ranks_agree_on_masks_and_weights(tmp_path, mask_mode):
    report = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(EXAMPLE), "--steps", "12",
           "--mask-mode", mask_mode, "--report", str(report)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(Path(f"{report}.rank{r}").read_text()) for r in range(2)]
    for r in results:
        assert r["world"] == 2
        assert r["masks_agree"], "ranks sampled different masks"
        assert r["weights_agree"], "ranks hold different weights"
        assert r["last_loss"] < r["first_loss"]
    assert results[0]["probs"] == results[1]["probs"]

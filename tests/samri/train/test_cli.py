"""samri.train.cli: ``samri train`` with publishing, and ``torchrun -m samri.train`` on two CPU processes (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from samri.model.checkpoints import read_decoder_checkpoint

REPO = Path(__file__).resolve().parents[3]


def test_cli_train_and_publish(studies_dir, tiny_config_dir, tmp_path, monkeypatch, capsys):
    from samri.cli import main

    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(tiny_config_dir))
    code = main(["train", "--studies", str(studies_dir), "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache"), "--publish", str(tmp_path / "decoders")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["checkpoint"]).is_file() and "publish" in summary
    assert summary["encoder"]["backend"] == "torch"  # the tiny registry entry's backend
    assert main(["train", "--studies", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2


@pytest.mark.slow  # two processes, each importing torch
def test_torchrun_two_cpu_processes(studies_dir, tiny_config_dir, tmp_path):
    env = {**os.environ, "SAMRI_CONFIG_DIR": str(tiny_config_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "lib")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "samri.train", "--studies", str(studies_dir), "--out", str(tmp_path / "run"),
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = read_decoder_checkpoint(tmp_path / "run" / "decoder.pt")["metadata"]
    assert meta["settings"]["world_size"] == 2
    # stage 1 was sharded: both ranks' slices are in the shared cache, each encoded once
    assert len(list((tmp_path / "cache").rglob("*.npy"))) > 0


def test_cli_train_encodes_with_the_registry_entrys_backend(studies_dir, tiny_config_dir, tmp_path, monkeypatch):
    """Stage 1 runs on the encoder backend serving uses (or ``--backend``), never on the trained decoder."""
    from samri.cli import main
    from samri.model import backends

    calls = []
    real = backends.apply_backend

    def recording(model, backend=None, precision=None, **kwargs):
        calls.append((backend, precision, kwargs.get("parts")))
        return real(model, backend, precision, **kwargs)

    monkeypatch.setattr(backends, "apply_backend", recording)
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(tiny_config_dir))
    args = ["train", "--studies", str(studies_dir), "--cache-dir", str(tmp_path / "cache"), "--max-steps-per-epoch",
            "1", "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--backend", "torch", "--precision", "fp32"]) == 0
    assert calls == [(None, None, ("encoder",)), ("torch", "fp32", ("encoder",))]

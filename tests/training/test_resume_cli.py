"""A real `cortex-train` process killed with SIGKILL mid-epoch, resumed with `resume_from=`, saves the same model
(bit for bit) as an uninterrupted run of the same config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import rbd_slice
from safetensors.torch import load_file

TEST_CONFIGS = Path(__file__).resolve().parents[1] / "cli" / "configs"
BATCHES_PER_EPOCH = 12  # 90 training rows (120 * 0.75) in batches of 8 (the last one short)
EVERY = 5  # a checkpoint every 5 optimizer steps: never at an epoch end within the run (12, 24)
OVERRIDES = [
    f"hydra.searchpath=[file://{TEST_CONFIGS}]",
    "data=rbd_tiny",
    "corruption=mask",
    "roots.protein.max_length=32",
    "roots.protein.channel_dim=8",
    "roots.protein.embed_dim=8",
    "roots.protein.out_dim=8",
    "branches.property.channel_dim=8",
    "branches.property.out_dim=8",
    "datamodule.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "logger=csv",
    "callbacks.checkpoint.every_n_epochs=null",
    f"callbacks.checkpoint.every_n_train_steps={EVERY}",
]


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cortex.cli.train", *OVERRIDES, f"hydra.run.dir={run_dir}", *extra]


def _env(table: Path) -> dict[str, str]:
    return {**os.environ, "CORTEX_TEST_TABLE": str(table), "OMP_NUM_THREADS": "1"}


def _run(command, cwd, env):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_sigkilled_cortex_train_resumes_mid_epoch_to_the_same_model(tmp_path):
    table = tmp_path / "rbd.csv"
    rbd_slice(120).to_csv(table, index=False)
    env = _env(table)
    _run(_command(tmp_path / "full"), tmp_path, env)

    checkpoints = tmp_path / "part" / "checkpoints"
    process = subprocess.Popen(
        _command(tmp_path / "part"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("epoch=*-step=*.ckpt")):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    process.stderr.close()
    assert not (tmp_path / "part" / "model").exists()  # killed before the end of training

    # Lightning writes a checkpoint to a temporary file and moves it into place: every file here is whole.
    steps = {int(path.stem.split("step=")[1]): path for path in checkpoints.glob("epoch=*-step=*.ckpt")}
    step = max(steps)
    assert step % BATCHES_PER_EPOCH != 0  # a mid-epoch position
    saved = torch.load(steps[step], weights_only=True)["loops"]["fit_loop"]
    assert (
        saved["state_dict"]["combined_loader"]
        == [{"epoch": step // BATCHES_PER_EPOCH, "batches_yielded": step % BATCHES_PER_EPOCH}] * 2
    )
    _run(_command(tmp_path / "resumed", f"resume_from='{steps[step]}'"), tmp_path, env)

    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for key, value in full.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)

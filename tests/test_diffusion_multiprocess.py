"""Several processes make one run: two processes at batch 4 train like one at batch 8, resume included.

The two-process run is a real `torchrun --nproc_per_node 2` launch on the CPU backend (gloo, accelerate's
MULTI_CPU mode via ACCELERATE_USE_CPU=True): three steps, then `resume="latest"` to six in the same processes.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion.checkpoints import LaunchError, list_checkpoints, load_checkpoint
from diffusion.config import TrainConfig
from diffusion.train import train

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(image_size=8, dim=8, dim_mults=(1, 2), attention_heads=1, attention_head_dim=8,
                num_train_timesteps=20, steps=6, checkpoint_every=3, sample_every=0, num_preview=2, preview_steps=2,
                gif_frames=2, log_every=1, progress=False, tensorboard=False, warmup_steps=2)

SCRIPT = """
import json, os, sys
from pathlib import Path
from diffusion.config import TrainConfig
from diffusion.train import train
settings = json.loads(sys.argv[2])
first = train(TrainConfig(output_dir=sys.argv[1], **{**settings, "steps": 3}))
second = train(TrainConfig(output_dir=sys.argv[1], resume="latest", **settings))
# one file per rank: two processes printing to one pipe can interleave their lines
Path(sys.argv[1] + f"-result-{os.environ['RANK']}.json").write_text(json.dumps(
    [first.is_main_process, first.num_processes, first.step, second.step,
     second.resumed_step, str(second.resumed_from), second.pipeline_dir is not None]))
"""


def _losses(run: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (run / "logs" / "scalars.jsonl").read_text().splitlines())}


def free_port() -> int:
    """A port no other process listens on now (a fixed one collides with a concurrent run of this test)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_with_resume_equal_one_process_at_the_same_global_batch(tmp_path):
    one = train(TrainConfig(output_dir=str(tmp_path / "one"), batch_size=8, **SETTINGS))
    assert one.step == 6

    script = tmp_path / "two.py"
    script.write_text(SCRIPT)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    settings = {**SETTINGS, "dim_mults": list(SETTINGS["dim_mults"]), "batch_size": 4}
    env = {**os.environ, "ACCELERATE_USE_CPU": "True", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(script), str(tmp_path / "two"),
         json.dumps(settings)], capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(json.loads((tmp_path / f"two-result-{rank}.json").read_text()) for rank in (0, 1))
    checkpoint3 = str(tmp_path / "two" / "checkpoints" / "step-00000003.pt")
    # one report per process; only the main one wrote the pipeline; both resumed from step 3
    assert results == [[False, 2, 3, 6, 3, checkpoint3, False], [True, 2, 3, 6, 3, checkpoint3, True]]
    assert proc.stderr.count(f"resuming from step 3: {checkpoint3}") == 1  # printed by the main process only

    two = tmp_path / "two"
    assert sorted(_losses(two)) == list(range(1, 7))  # one log line per step, written once
    ref, got = _losses(tmp_path / "one"), _losses(two)
    for step in range(1, 7):
        assert got[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-6), step
    ref_state, got_state = load_checkpoint(list_checkpoints(tmp_path / "one")[-1]), load_checkpoint(list_checkpoints(two)[-1])
    assert got_state["step"] == 6 and got_state["num_processes"] == 2 and len(got_state["rng_ranks"]) == 2
    # gradients averaged over processes sum in another order; Adam's steps (~1e-3 each) carry that rounding, so
    # weights agree to 1e-4 where a different batch, noise draw or a lost step moves them by ~1e-3
    for key, value in ref_state["model"].items():
        torch.testing.assert_close(got_state["model"][key], value, rtol=0, atol=1e-4)
    # per-process augmentation streams: the two processes' torch random states differ
    assert not torch.equal(got_state["rng_ranks"][0]["torch"], got_state["rng_ranks"][1]["torch"])


def test_launch_that_would_train_independent_copies_is_refused(tmp_path, monkeypatch):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU box: WORLD_SIZE=2 but accelerate sees one process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match=r"WORLD_SIZE=2.*ACCELERATE_USE_CPU=True accelerate launch --multi_gpu "
                                          r"--num_processes 2"):
        train(TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, **SETTINGS))
    assert not list_checkpoints(tmp_path / "run")


def test_cpu_launch_that_starts_one_process_for_many_is_refused(tmp_path, monkeypatch):
    """`accelerate launch --cpu --num_processes 2`: the simple launcher's environment, one process, no WORLD_SIZE."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in (("ACCELERATE_USE_CPU", "True"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(key, value)
    with pytest.raises(LaunchError, match=r"--cpu --num_processes N starts one process.*ACCELERATE_USE_CPU=True "
                                          r"accelerate launch --multi_gpu --num_processes N"):
        train(TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, **SETTINGS))
    assert not list_checkpoints(tmp_path / "run")

"""Run folders that plain diffusers opens: a fresh interpreter without rlgen loads, swaps schedulers and samples."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusion.config import TrainConfig
from diffusion.export import load_pipeline
from diffusion.train import train

FRESH = r"""
import json, sys, warnings
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DiffusionPipeline, EulerDiscreteScheduler
from diffusers.utils import logging
logging.set_verbosity_warning()
folder = sys.argv[1]
out = {}
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
out["class"] = type(pipe).__name__
images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
out["images"] = images.tolist()
for cls in (DDIMScheduler, EulerDiscreteScheduler):
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    x = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    out[cls.__name__] = [list(x.shape), bool((x >= 0).all() and (x <= 1).all())]
ddpm = DDPMPipeline.from_pretrained(folder, trust_remote_code=True)
ddpm.set_progress_bar_config(disable=True)
out["ddpm_shape"] = list(ddpm(batch_size=1, num_inference_steps=3, output_type="np").images.shape)
out["rlgen_modules"] = sorted(m for m in sys.modules if m == "diffusion" or m.startswith(("diffusion.", "rlgen")))
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    cfg = TrainConfig(output_dir=str(out), image_size=8, dim=8, dim_mults=(1, 2), attention_heads=1,
                      attention_head_dim=8, num_train_timesteps=20, batch_size=8, steps=2, checkpoint_every=2,
                      sample_every=0, num_preview=4, preview_steps=2, gif_frames=2, progress=False, tensorboard=False)
    train(cfg)
    return out


def test_fresh_interpreter_without_rlgen_loads_swaps_schedulers_and_samples(run_folder, tmp_path):
    folder = run_folder / "pipeline"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(folder)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["class"] == "UnconditionalPipeline"
    assert result["rlgen_modules"] == []  # everything came from the folder's own files
    assert result["DDIMScheduler"] == [[1, 8, 8, 1], True] and result["EulerDiscreteScheduler"] == [[1, 8, 8, 1], True]
    assert result["ddpm_shape"] == [1, 8, 8, 1]
    assert "Expected types" not in proc.stderr and "not one of the libraries" not in proc.stderr
    # the same weights and scheduler as the installed classes give
    ours = load_pipeline(run_folder)
    ours.set_progress_bar_config(disable=True)
    expected = ours(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                    output_type="np").images
    np.testing.assert_allclose(np.asarray(result["images"]), expected, atol=1e-5)


def test_folder_layout_names_the_files_diffusers_resolves(run_folder):
    folder = run_folder / "pipeline"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "UnconditionalPipeline"]
    assert index["unet"] == ["unet", "UNet"] and index["scheduler"] == ["scheduler", "NoiseScheduler"]
    for path in ("pipeline.py", "unet/unet.py", "scheduler/scheduler.py", "unet/config.json",
                 "scheduler/scheduler_config.json", "samples.png", "README.md"):
        assert (folder / path).is_file(), path
    for path in ("pipeline.py", "unet/unet.py", "scheduler/scheduler.py"):  # standalone: diffusers/torch only
        text = (folder / path).read_text()
        assert "from diffusion" not in text and "import diffusion" not in text and "rlgen" not in text, path
    saved = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert "_use_default_values" not in saved


def test_model_card_has_model_schedule_config_grid_and_evaluation_slot(run_folder):
    card = (run_folder / "pipeline" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers")
    for needed in ("## Model", "## Noise schedule", "linear betas over 20 timesteps", "## Training config",
                   '"batch_size": 8', "![samples](samples.png)", "## Evaluation", "rlgen diffusion evaluate",
                   "trust_remote_code=True"):
        assert needed in card, needed


def test_load_pipeline_runs_no_code_from_the_folder(run_folder, tmp_path):
    import shutil

    copy = tmp_path / "pipeline"
    shutil.copytree(run_folder / "pipeline", copy)
    for path in ("pipeline.py", "unet/unet.py", "scheduler/scheduler.py"):
        (copy / path).write_text("raise RuntimeError('folder code ran')\n")
    pipe = load_pipeline(copy)
    assert type(pipe.unet).__module__ == "diffusion.unet"
    assert pipe(batch_size=1, num_inference_steps=2, output_type="pt").images.shape == (1, 1, 8, 8)

"""`rlgen diffusion train | sample | evaluate`: outputs as paths, exit codes, and clear messages for bad input."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import diffusion.train as dtrain
from rlgen_plugins.cli import main

TINY = ["--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--timesteps", "20", "--batch-size", "8",
        "--sample-every", "0", "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["diffusion", "train", "--steps", "2", "--output", str(out), *TINY]) == 0
    return out


def test_module_import_is_torch_free():
    code = "import sys, rlgen_plugins.ddpm.commands; print(sorted(m for m in ('torch', 'diffusers', 'datasets') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "[]"


def test_train_prints_output_paths(trained, capsys):
    assert (trained / "pipeline" / "model_index.json").is_file()
    code, out, _ = run(capsys, "diffusion", "train", "--steps", "3", "--output", str(trained), "--resume", "latest",
                       "--no-progress")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("trained 3 steps")
    assert str(trained / "pipeline") in lines and str(trained / "checkpoints" / "step-00000003.pt") in lines
    assert all(Path(line).exists() for line in lines[1:])


def test_sample_writes_grid_and_gif(trained, capsys, tmp_path):
    target = tmp_path / "grid.png"
    code, out, _ = run(capsys, "diffusion", "sample", str(trained), "--scheduler", "ddim", "--steps", "3", "--n", "4",
                       "--output", str(target), "--gif", "--no-progress")
    assert code == 0
    assert out.split() == [str(target), str(target.with_suffix(".gif"))]
    assert Image.open(target).size == (4 * 19, 4 * 19)
    code, out, _ = run(capsys, "diffusion", "sample", str(trained / "pipeline"), "--scheduler", "dpm-solver++",
                       "--steps", "2", "--n", "1", "--no-progress")
    assert code == 0 and Path(out.strip()) == trained / "samples" / "sample-dpm-solver++-2.png"


def test_unknown_scheduler_is_a_usage_error(trained, capsys):
    code, out, err = run(capsys, "diffusion", "sample", str(trained), "--scheduler", "eulerr")
    assert code == 2 and "unknown scheduler 'eulerr'" in err and "Traceback" not in err
    code, _, err = run(capsys, "diffusion", "evaluate", str(trained), "--scheduler", "nope")
    assert code == 2 and "unknown scheduler 'nope'" in err


def test_bad_sample_arguments(trained, capsys, tmp_path):
    code, _, err = run(capsys, "diffusion", "sample", str(trained), "--scheduler", "ddpm", "--steps", "50")
    assert code == 2 and "between 1 and 20" in err
    code, _, err = run(capsys, "diffusion", "sample", str(tmp_path))
    assert code == 2 and "model_index.json" in err
    code, _, err = run(capsys, "diffusion", "sample", str(trained), "--n", "0")
    assert code == 2 and "--n" in err


def test_evaluate_prints_json_and_writes_report(trained, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RLGEN_CACHE_DIR", str(tmp_path / "cache"))
    code, out, _ = run(capsys, "diffusion", "evaluate", str(trained), "--n", "20", "--scheduler", "ddim", "--steps",
                       "2", "--json", "--no-progress")
    assert code == 0
    line, path = out.strip().splitlines()
    report = json.loads(line)
    assert report["n"] == 20 and report["floor_fid"] > 0 and sum(report["class_histogram"]) == 20
    assert json.loads(Path(path).read_text()) == report
    assert list((tmp_path / "cache" / "classifiers").glob("*.safetensors"))
    card = (trained / "pipeline" / "README.md").read_text()  # the model card now carries the FID and its floor
    assert f"Domain FID {report['fid']:.3f} against the real-vs-real floor {report['floor_fid']:.3f}" in card


def test_unreachable_dataset_and_empty_folder(capsys, tmp_path):
    code, _, err = run(capsys, "diffusion", "train", "--dataset", "nobody/nothing-here", "--output",
                       str(tmp_path / "a"), *TINY)
    assert code == 2 and "--dataset digits" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "diffusion", "train", "--dataset", str(tmp_path / "empty"), "--output",
                       str(tmp_path / "b"), *TINY)
    assert code == 2 and "no images found" in err


def test_corrupt_checkpoint_exits_with_message(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["diffusion", "train", "--steps", "1", "--output", str(out), *TINY]) == 0
    ckpt = out / "checkpoints" / "step-00000001.pt"
    ckpt.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "diffusion", "train", "--steps", "2", "--output", str(out), "--resume", "latest",
                       "--no-progress")
    assert code == 1 and "corrupt" in err and str(ckpt) in err
    assert ckpt.read_bytes() == b"not a checkpoint"
    code, _, err = run(capsys, "diffusion", "train", "--steps", "2", "--output", str(out), *TINY)
    assert code == 1 and "--resume latest" in err  # a fresh run never silently replaces the old one


def test_ctrl_c_checkpoints_and_tells_how_to_resume(capsys, tmp_path, monkeypatch):
    real_train = dtrain.train

    def interrupted_train(config):
        return real_train(config, on_step=lambda step, loss: os.kill(os.getpid(), signal.SIGINT))

    monkeypatch.setattr(dtrain, "train", interrupted_train)
    out = tmp_path / "run"
    code, _, err = run(capsys, "diffusion", "train", "--steps", "5", "--output", str(out), *TINY)
    assert code == 130
    assert "interrupted at step 1" in err and "--resume latest" in err
    assert (out / "checkpoints" / "step-00000001.pt").is_file()


def test_nan_loss_exits_with_step_and_last_loss(capsys, tmp_path, monkeypatch):
    real = dtrain.diffusion_loss
    calls = {"n": 0}

    def flaky(pred, target, kind):
        calls["n"] += 1
        return real(pred, target, kind) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(dtrain, "diffusion_loss", flaky)
    code, _, err = run(capsys, "diffusion", "train", "--steps", "5", "--output", str(tmp_path / "r"), *TINY)
    assert code == 1 and "at step 3" in err and "last finite loss" in err and "step-00000002.pt" in err


def test_bad_train_options(capsys, tmp_path):
    code, _, err = run(capsys, "diffusion", "train", "--dim-mults", "1,x", "--output", str(tmp_path))
    assert code == 2 and "--dim-mults" in err
    code, _, err = run(capsys, "diffusion", "train", "--schedule", "wiggly", "--steps", "1", "--output",
                       str(tmp_path / "s"), *TINY)
    assert code == 2 and "wiggly" in err
    code, _, err = run(capsys, "diffusion", "train", "--resume", "latest", "--output", str(tmp_path / "none"))
    assert code == 2 and "not a training run" in err
    assert main(["diffusion"]) == 2


def test_lr_schedule_and_ema_options_are_saved_and_kept_on_resume(capsys, tmp_path):
    import math

    from rlgen_plugins.cli import build_parser
    from rlgen_plugins.ddpm.commands import build_train_config

    out = tmp_path / "run"
    opts = ["--lr-schedule", "cosine", "--lr-end-ratio", "0.1", "--warmup-steps", "1", "--ema-decay", "0.99",
            "--ema-warmup", "--ema-power", "0.75", "--ema-inv-gamma", "2"]
    assert main(["diffusion", "train", "--steps", "2", "--output", str(out), *opts, *TINY]) == 0
    capsys.readouterr()
    saved = json.loads((out / "training_config.json").read_text())
    assert (saved["lr_schedule"], saved["lr_end_ratio"], saved["warmup_steps"]) == ("cosine", 0.1, 1)
    assert (saved["ema_decay"], saved["ema_warmup"], saved["ema_power"], saved["ema_inv_gamma"]) == (0.99, True, 0.75, 2.0)
    (last,) = [json.loads(line) for line in (out / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert last["step"] == 2  # logged every 20 steps and at the end
    assert last["lr"] == pytest.approx(1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi * 1 / 2)) / 2))  # 2nd update
    assert last["ema_decay"] == pytest.approx(1 - (1 + 1 / 2) ** -0.75)
    # --resume latest starts from the saved settings, not from the defaults
    args = build_parser().parse_args(["diffusion", "train", "--output", str(out), "--resume", "latest", "--steps", "4"])
    config = build_train_config(args)
    assert (config.lr_schedule, config.lr_end_ratio, config.ema_warmup, config.ema_power) == ("cosine", 0.1, True, 0.75)
    assert main(["diffusion", "train", "--output", str(out), "--resume", "latest", "--steps", "4", "--no-progress"]) == 0


def test_bad_schedule_options(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:  # argparse's own choices check
        main(["diffusion", "train", "--lr-schedule", "wiggly", "--output", str(tmp_path), *TINY])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--lr-schedule" in err and "cosine" in err
    code, _, err = run(capsys, "diffusion", "train", "--lr-end-ratio", "2", "--output", str(tmp_path), *TINY)
    assert code == 2 and "lr_end_ratio must be in [0, 1]" in err
    code, _, err = run(capsys, "diffusion", "train", "--ema-decay", "1.5", "--output", str(tmp_path), *TINY)
    assert code == 2 and "ema_decay must be in [0, 1)" in err


def test_resume_says_what_it_resumed_from(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["diffusion", "train", "--steps", "2", "--output", str(out), *TINY]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "diffusion", "train", "--steps", "3", "--output", str(out), "--resume", "latest",
                       "--no-progress")
    assert code == 0
    assert f"resuming from step 2: {out / 'checkpoints' / 'step-00000002.pt'}" in err


def test_sample_output_dir_writes_every_image_beside_the_grid(trained, capsys, tmp_path):
    target = tmp_path / "samples"
    code, out, _ = run(capsys, "diffusion", "sample", str(trained), "--scheduler", "ddim", "--steps", "2", "--n", "3",
                       "--output-dir", str(target), "--no-progress")
    assert code == 0 and out.splitlines()[0] == str(target / "grid.png")
    assert sorted(p.name for p in target.iterdir()) == ["00000.png", "00001.png", "00002.png", "grid.png"]
    assert Image.open(target / "00001.png").size == (8, 8) and Image.open(target / "00001.png").mode == "L"


def test_diffusers_train_unconditional_option_names(capsys, tmp_path):
    from rlgen_plugins.cli import build_parser
    from rlgen_plugins.ddpm.commands import build_train_config

    argv = ["diffusion", "train", "--output_dir", str(tmp_path / "run"), "--resolution", "8", "--mixed_precision",
            "no", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "7", "--checkpoints_total_limit",
            "3", "--random_flip", "--no-center_crop", "--dataloader_num_workers", "1", "--gradient_checkpointing"]
    config = build_train_config(build_parser().parse_args(argv))
    assert (config.output_dir, config.image_size, config.mixed_precision) == (str(tmp_path / "run"), 8, "no")
    assert (config.gradient_accumulation_steps, config.checkpoint_every, config.keep_checkpoints) == (2, 7, 3)
    assert (config.random_flip, config.center_crop, config.dataloader_num_workers) == (True, False, 1)
    assert config.gradient_checkpointing is True
    code, _, err = run(capsys, "diffusion", "train", "--gradient_accumulation_steps", "0", "--output",
                       str(tmp_path / "bad"), *TINY)
    assert code == 2 and "gradient_accumulation_steps must be >= 1" in err
    code, _, err = run(capsys, "diffusion", "train", "--preview-scheduler", "eulerr", "--output",
                       str(tmp_path / "bad"), *TINY)
    assert code == 2 and "preview_scheduler='eulerr'" in err and "ddim" in err

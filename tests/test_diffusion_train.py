"""diffusion.train: outputs of a run, exact resume after Ctrl-C, and each fault (corrupt checkpoint, NaN loss, ...)."""
import json
import os
import signal

import pytest
import torch
from PIL import Image

import diffusion.train as dtrain
from diffusion.checkpoints import CheckpointError, NonFiniteLossError, list_checkpoints, load_checkpoint
from diffusion.config import TrainConfig
from diffusion.export import load_pipeline
from diffusion.train import train
from diffusion.training_parts import diffusion_loss, training_target


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    cfg = dict(
        output_dir=str(tmp_path / name), image_size=8, dim=8, dim_mults=(1, 2), attention_heads=1,
        attention_head_dim=8, num_train_timesteps=50, batch_size=8, steps=6, checkpoint_every=3, sample_every=0,
        num_preview=4, preview_steps=3, gif_frames=3, log_every=1, progress=False, tensorboard=False, warmup_steps=2,
    )
    cfg.update(overrides)
    return TrainConfig(**cfg)


def _model_state(path):
    state = load_checkpoint(path)
    return state["model"], state["ema"]["shadow_params"], state["step"]


def _assert_same_final_checkpoint(ref_dir, got_dir, step):
    """The last checkpoints of two runs agree on step, weights and EMA weights."""
    ref_model, ref_ema, _ = _model_state(list_checkpoints(ref_dir)[-1])
    got_model, got_ema, got_step = _model_state(list_checkpoints(got_dir)[-1])
    assert got_step == step
    for key in ref_model:
        torch.testing.assert_close(got_model[key], ref_model[key], rtol=0, atol=1e-6)
    for a, b in zip(got_ema, ref_ema):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Reference: six steps in one go (with TensorBoard and preview grids on)."""
    tmp = tmp_path_factory.mktemp("ref")
    result = train(tiny(tmp, tensorboard=True, sample_every=3))
    return tmp, result


def test_run_writes_pipeline_checkpoints_grids_gif_and_scalars(uninterrupted):
    tmp, result = uninterrupted
    out = tmp / "run"
    assert result.step == 6 and not result.interrupted
    assert [p.name for p in list_checkpoints(out)] == ["step-00000003.pt", "step-00000006.pt"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left
    grid = Image.open(out / "samples" / "step-00000003.png")
    assert grid.size == (4 * (2 * 9 + 1), 4 * (2 * 9 + 1))  # 2x2 grid of 8px images, 1px padding, x4
    gif = Image.open(out / "samples" / "denoising.gif")
    assert gif.n_frames == 3
    lines = [json.loads(line) for line in (out / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert all(0 < line["loss"] < 10 for line in lines)
    assert any(f.name.startswith("events.out.tfevents") for f in (out / "logs").rglob("*"))
    saved = json.loads((out / "training_config.json").read_text())
    assert saved["dim_mults"] == [1, 2] and saved["steps"] == 6


def test_pipeline_folder_reloads_with_ema_weights(uninterrupted):
    tmp, result = uninterrupted
    from diffusers import DDPMPipeline

    from diffusion import UNet

    pipe = load_pipeline(tmp / "run")  # the run folder resolves to run/pipeline
    ema = load_checkpoint(list_checkpoints(tmp / "run")[-1])["ema"]["shadow_params"]
    for p, e in zip(pipe.unet.parameters(), ema):
        torch.testing.assert_close(p.detach(), e)
    unet = UNet.from_pretrained(str(result.pipeline_dir / "unet"))
    images = DDPMPipeline(unet=unet, scheduler=pipe.scheduler)(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 8, 8, 1)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tmp)


def test_ctrl_c_checkpoints_and_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
    ref_dir = uninterrupted[0] / "run"

    def interrupt(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(tiny(tmp_path, sample_every=3), on_step=interrupt)
    assert first.interrupted and first.step == 2 and first.pipeline_dir is None
    assert first.checkpoint.name == "step-00000002.pt"
    second = train(tiny(tmp_path, sample_every=3, resume="latest"))
    assert second.step == 6 and not second.interrupted

    _assert_same_final_checkpoint(ref_dir, tmp_path / "run", step=6)
    losses = lambda d: {j["step"]: j["loss"] for j in map(json.loads, (d / "logs" / "scalars.jsonl").read_text().splitlines())}  # noqa: E731
    ref_losses, got_losses = losses(ref_dir), losses(tmp_path / "run")
    assert got_losses.keys() == ref_losses.keys()
    for s in ref_losses:
        assert got_losses[s] == pytest.approx(ref_losses[s], abs=1e-6)


def test_corrupt_checkpoint_is_a_clear_error_not_a_restart(tmp_path):
    train(tiny(tmp_path, steps=6))
    latest = list_checkpoints(tmp_path / "run")[-1]
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable") as info:
        train(tiny(tmp_path, steps=9, resume="latest"))
    assert str(latest) in str(info.value)
    # nothing was overwritten: both checkpoints are still there, the damaged one untouched
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003.pt", "step-00000006.pt"]
    assert latest.read_bytes() == data[: len(data) // 2]
    # resuming from the earlier, intact checkpoint works
    result = train(tiny(tmp_path, steps=4, resume=str(list_checkpoints(tmp_path / "run")[0])))
    assert result.step == 4


def test_resume_without_checkpoint_and_fresh_run_over_old_one_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny(tmp_path, resume="latest"))
    train(tiny(tmp_path, steps=3))
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(tiny(tmp_path, steps=3))
    with pytest.raises(CheckpointError, match="image_size"):
        train(tiny(tmp_path, steps=6, image_size=16, resume="latest"))


def test_nan_loss_stops_with_step_and_last_finite_loss(tmp_path, monkeypatch):
    real_loss = dtrain.diffusion_loss
    calls = {"n": 0}

    def flaky(pred, target, kind):
        calls["n"] += 1
        loss = real_loss(pred, target, kind)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(dtrain, "diffusion_loss", flaky)
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny(tmp_path, steps=10))
    err = info.value
    assert err.step == 5
    log = [json.loads(line) for line in (tmp_path / "run" / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert err.last_finite_loss == pytest.approx(log[-1]["loss"]) and log[-1]["step"] == 4
    assert "step 5" in str(err) and "last finite loss" in str(err)
    # the last good state (after step 4) is kept, with finite weights
    assert err.checkpoint.name == "step-00000004.pt"
    model, _, step = _model_state(err.checkpoint)
    assert step == 4 and all(torch.isfinite(v).all() for v in model.values())


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target(kind):
    from diffusion import NoiseScheduler

    sched = NoiseScheduler(num_train_timesteps=50, prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 10, 49])
    target = training_target(sched, clean, noise, t)
    expected = {"epsilon": noise, "sample": clean, "v_prediction": sched.get_velocity(clean, noise, t)}[kind]
    torch.testing.assert_close(target, expected)


def test_losses():
    pred, target = torch.tensor([0.0, 0.0]), torch.tensor([0.5, 3.0])
    assert diffusion_loss(pred, target, "l2").item() == pytest.approx((0.25 + 9) / 2)
    assert diffusion_loss(pred, target, "l1").item() == pytest.approx(3.5 / 2)
    assert diffusion_loss(pred, target, "huber").item() == pytest.approx((0.125 + 2.5) / 2)


def test_v_prediction_l1_run_and_bad_settings(tmp_path):
    # random_flip also takes the per-batch transform path instead of the pre-decoded tensor
    result = train(tiny(tmp_path, steps=2, prediction_type="v_prediction", loss="l1", beta_schedule="cosine",
                        random_flip=True))
    assert result.step == 2 and result.last_loss is not None
    with pytest.raises(ValueError, match="loss='.*huber, l1, l2"):
        train(tiny(tmp_path, name="b", loss="l3"))
    with pytest.raises(ValueError, match="either steps or epochs"):
        train(tiny(tmp_path, name="c", epochs=1))


# ----------------------------------------------------------------------------- lr schedule and EMA warm-up
def _scalars(out):
    return [json.loads(line) for line in (out / "logs" / "scalars.jsonl").read_text().splitlines()]


def test_lr_factor_values():
    from diffusion.training_parts import lr_factor

    const = TrainConfig(warmup_steps=4)
    assert [lr_factor(const, s, 100) for s in (0, 1, 3, 50, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cos = TrainConfig(warmup_steps=0, lr_schedule="cosine")
    assert lr_factor(cos, 0, 100) == 1.0
    assert lr_factor(cos, 50, 100) == pytest.approx(0.5)
    assert lr_factor(cos, 25, 100) == pytest.approx((1 + 2 ** -0.5) / 2)
    assert lr_factor(cos, 100, 100) == pytest.approx(0.0)
    lin = TrainConfig(warmup_steps=10, lr_schedule="linear", lr_end_ratio=0.1)
    assert lr_factor(lin, 4, 100) == pytest.approx(0.5 * (0.1 + 0.9 * 0.96))  # still warming up
    assert lr_factor(lin, 60, 100) == pytest.approx(0.1 + 0.9 * 0.4)
    assert lr_factor(lin, 100, 100) == pytest.approx(0.1)
    # with a time budget the clock decides when it is further along than the step count
    timed = TrainConfig(warmup_steps=0, lr_schedule="cosine", time_budget_s=600)
    assert lr_factor(timed, 10, 10**9, elapsed_s=300) == pytest.approx(0.5)
    assert lr_factor(timed, 10, 20, elapsed_s=150) == pytest.approx(0.5)  # steps: 10 / 20
    assert lr_factor(timed, 10, 10**9, elapsed_s=900) == pytest.approx(0.0)  # past the budget: the end value


@pytest.mark.parametrize("overrides, match", [
    ({"lr_schedule": "step"}, "lr_schedule='step' is not supported; choose one of constant, cosine, linear"),
    ({"lr_end_ratio": 1.5}, r"lr_end_ratio must be in \[0, 1\]"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ({"ema_power": 0.0}, "ema_power must be > 0"),
    ({"ema_inv_gamma": -1.0}, "ema_inv_gamma must be > 0"),
    ({"time_budget_s": 0.0}, "time_budget_s must be > 0"),
])
def test_bad_schedule_settings_fail_at_construction(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(tmp_path, **overrides)


def test_cosine_lr_and_ema_warmup_are_applied_and_logged(tmp_path):
    cfg = tiny(tmp_path, lr=1e-3, warmup_steps=2, lr_schedule="cosine", ema_warmup=True, ema_power=0.75,
               ema_inv_gamma=1.0, ema_decay=0.6)
    train(cfg)
    logs = _scalars(tmp_path / "run")
    import math

    for line in logs:
        s = line["step"] - 1  # the lr logged at step k is the one its update used (k - 1 steps done before)
        expected = 1e-3 * min(1.0, (s + 1) / 2) * (1 + math.cos(math.pi * s / 6)) / 2
        assert line["lr"] == pytest.approx(expected, rel=1e-9)
    # EMAModel warm-up: decay 1 - (1 + (k - 1)) ** -0.75 after k updates, capped at ema_decay 0.6
    assert [line["ema_decay"] for line in logs] == pytest.approx([0.0, 1 - 2 ** -0.75, 1 - 3 ** -0.75, 0.6, 0.6, 0.6])
    saved = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert saved["lr_schedule"] == "cosine" and saved["ema_warmup"] is True and saved["ema_power"] == 0.75


def test_resume_with_cosine_lr_and_ema_warmup_matches_uninterrupted_run(tmp_path):
    settings = dict(lr_schedule="cosine", warmup_steps=2, ema_warmup=True, ema_decay=0.9)
    train(tiny(tmp_path, name="ref", **settings))

    def interrupt(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(tiny(tmp_path, **settings), on_step=interrupt)
    assert first.interrupted and first.step == 3
    train(tiny(tmp_path, resume="latest", **settings))
    _assert_same_final_checkpoint(tmp_path / "ref", tmp_path / "run", step=6)
    ref_log, got_log = _scalars(tmp_path / "ref"), _scalars(tmp_path / "run")
    assert [x["step"] for x in got_log] == [x["step"] for x in ref_log]
    for a, b in zip(got_log, ref_log):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12) and a["ema_decay"] == pytest.approx(b["ema_decay"])


def test_time_budget_schedule_follows_the_clock_and_resumes_with_the_time_spent(tmp_path, monkeypatch):
    clock = {"t": 1000.0}
    monkeypatch.setattr(dtrain, "_clock", lambda: clock["t"])

    def tick(step, loss):  # every step takes 10 s of fake wall time
        clock["t"] += 10.0

    cfg = dict(steps=None, time_budget_s=60.0, lr=1e-3, warmup_steps=0, lr_schedule="linear", checkpoint_every=100)
    result = train(tiny(tmp_path, **cfg), on_step=lambda s, l: (tick(s, l), s == 4 and os.kill(os.getpid(), signal.SIGINT)))
    assert result.interrupted and result.step == 4
    assert load_checkpoint(result.checkpoint)["elapsed_s"] == pytest.approx(40.0)
    clock["t"] += 5000.0  # time between the two invocations does not count
    result = train(tiny(tmp_path, resume="latest", **cfg), on_step=tick)
    assert result.step == 6 and not result.interrupted  # 60 s budget: 4 steps before, 2 after resuming
    lrs = [line["lr"] for line in _scalars(tmp_path / "run")]
    assert lrs == pytest.approx([1e-3 * (1 - 10 * s / 60) for s in range(6)], rel=1e-9)


def _scalar_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "logs" / "scalars.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows]


def test_gradient_accumulation_and_checkpointing_train_like_one_big_batch(tmp_path, uninterrupted):
    """Batch 4 x 2 accumulated micro-batches (with gradient checkpointing) gives batch 8's losses and weights."""
    ref_dir, _ = uninterrupted
    got = tmp_path / "acc"
    result = train(tiny(tmp_path, name="acc", batch_size=4, gradient_accumulation_steps=2,
                        gradient_checkpointing=True))
    assert result.step == 6
    assert _scalar_losses(got) == pytest.approx(_scalar_losses(ref_dir / "run"), rel=1e-4)
    ref_model, _, _ = _model_state(list_checkpoints(ref_dir / "run")[-1])
    got_model, _, _ = _model_state(list_checkpoints(got)[-1])
    for key in ref_model:
        torch.testing.assert_close(got_model[key], ref_model[key], rtol=0, atol=1e-4)


def test_dataloader_workers_and_random_crop_path_trains(tmp_path):
    result = train(tiny(tmp_path, steps=2, dataloader_num_workers=1, center_crop=False, random_flip=True))
    assert result.step == 2 and result.last_loss is not None and result.pipeline_dir is not None


def test_library_imports_nothing_from_the_application():
    import ast
    from pathlib import Path

    import diffusion

    for path in Path(diffusion.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.startswith("rlgen_plugins")], path.name

"""diffusion.train: outputs of a run, exact resume after Ctrl-C, and each fault (corrupt checkpoint, NaN loss, ...)."""
import json
import os
import signal

import pytest
import torch
from PIL import Image

import diffusion.train as dtrain
from diffusion.train import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    diffusion_loss,
    list_checkpoints,
    load_checkpoint,
    load_pipeline,
    train,
    training_target,
)


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

    ref_model, ref_ema, _ = _model_state(list_checkpoints(ref_dir)[-1])
    got_model, got_ema, step = _model_state(list_checkpoints(tmp_path / "run")[-1])
    assert step == 6
    for key in ref_model:
        torch.testing.assert_close(got_model[key], ref_model[key], rtol=0, atol=1e-6)
    for a, b in zip(got_ema, ref_ema):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
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
    with pytest.raises(ValueError, match="unknown loss"):
        train(tiny(tmp_path, name="b", loss="l3"))
    with pytest.raises(ValueError, match="either steps or epochs"):
        train(tiny(tmp_path, name="c", epochs=1))

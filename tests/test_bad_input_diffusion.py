"""Issue 19, diffusion part: every bad input is a one-line error naming the argument or the file, before any harm;
non-finite weights and samples are caught where they arise; no work is lost to an early kill or a stale temp file."""
import os
import signal

import pytest
import torch
from PIL import Image
from test_diffusion_train import tiny as train_tiny

import diffusion.train as dtrain
from diffusion import NoiseScheduler, UNet
from diffusion.checkpoints import (
    CheckpointError,
    NonFiniteLossError,
    checkpoint_path,
    last_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    write_checkpoint,
)
from diffusion.config import TrainConfig
from diffusion.data import DataError, load_training_data
from diffusion.export import PipelineFolderError, load_pipeline, save_pipeline
from diffusion.files import remove_stale_temp_files
from diffusion.pipeline import NonFiniteSampleError, UnconditionalPipeline
from diffusion.sampling import generate
from diffusion.train import train
from rlgen_plugins.cli import main

NAN, INF = float("nan"), float("inf")


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    """test_diffusion_train's tiny run with 20 diffusion steps and two small previews."""
    small = dict(num_train_timesteps=20, num_preview=2, preview_steps=2, gif_frames=2)
    return train_tiny(tmp_path, name, **{**small, **overrides})


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(sample_size=8, in_channels=1, out_channels=1, dim=8, dim_mults=(1, 2), resnet_block_groups=4,
                attention_heads=1, attention_head_dim=8)


# ----------------------------------------------------------------------------- scheduler arguments
@pytest.mark.parametrize("kwargs, name", [
    ({"steps_offset": 5000}, "steps_offset"),
    ({"steps_offset": 1000}, "steps_offset"),
    ({"steps_offset": -1}, "steps_offset"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"num_train_timesteps": -5}, "num_train_timesteps"),
    ({"beta_start": NAN}, "beta_start"),
    ({"beta_end": INF}, "beta_end"),
    ({"beta_start": 0.0}, "beta_start"),
    ({"beta_end": 1.5}, "beta_end"),
    ({"beta_start": 0.03, "beta_end": 0.02}, "beta_start"),
    ({"beta_schedule": "cubic"}, "beta_schedule='cubic' is not supported; use one of 'linear'"),
    ({"prediction_type": "x0"}, "prediction_type='x0' is not supported; use one of 'epsilon'"),
    ({"variance_type": "other"}, "variance_type='other' is not supported; use one of 'fixed_small'"),
    ({"clip_sample_range": -1.0}, "clip_sample_range=-1.0 is not supported; use a finite number > 0"),
    ({"clip_sample_range": 0.0}, "clip_sample_range"),
    ({"clip_sample_range": NAN}, "clip_sample_range"),
    ({"clip_sample_range": INF}, "clip_sample_range"),
    ({"sample_max_value": 0.0}, "sample_max_value"),
    ({"dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
])
def test_bad_scheduler_argument_is_a_value_error_naming_it(kwargs, name):
    with pytest.raises(ValueError) as info:
        NoiseScheduler(**kwargs)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_steps_offset_that_pushes_leading_spacing_past_the_end_is_named_at_the_first_step():
    sched = NoiseScheduler(num_train_timesteps=100, steps_offset=1)
    sched.set_timesteps(50)  # 98 + 1: fine
    assert int(sched.timesteps[0]) == 99
    sched.set_timesteps(100)  # DDPMScheduler's timesteps too (1..100): the first step names the timestep
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="step: timestep 100 is out of range; accepted: 0 to 99 .*steps_offset=1"):
        sched.step(x, sched.timesteps[0], x)


@pytest.mark.parametrize("t", [1000, 5000, -1])
def test_timestep_out_of_range_is_a_value_error_naming_it(t):
    sched = NoiseScheduler(num_train_timesteps=1000)
    x = torch.zeros(2, 1, 4, 4)
    for call in (lambda: sched.add_noise(x, x, torch.tensor([0, t])),
                 lambda: sched.get_velocity(x, x, torch.tensor([t, 3])),
                 lambda: sched.step(x, t, x),
                 lambda: sched.step(x, torch.tensor(t), x)):
        with pytest.raises(ValueError, match=rf"timestep {t} is out of range; accepted: 0 to 999"):
            call()


def test_float_timesteps_are_refused_and_in_range_ones_work():
    sched = NoiseScheduler(num_train_timesteps=10)
    x = torch.ones(2, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep must be an integer"):
        sched.add_noise(x, x, torch.tensor([0.5, 1.0]))
    assert torch.isfinite(sched.add_noise(x, x, torch.tensor([0, 9]))).all()
    assert torch.isfinite(sched.step(x, 9, x).prev_sample).all()


# ----------------------------------------------------------------------------- TrainConfig fields
@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", -3), ("steps", 2.5), ("batch_size", 0), ("lr", NAN), ("lr", INF), ("lr", 0.0),
    ("lr", -1e-3), ("checkpoint_every", 0), ("checkpoint_every", -1), ("keep_checkpoints", 0), ("epochs", NAN),
    ("time_budget_s", NAN), ("time_budget_s", INF), ("grad_clip", NAN), ("weight_decay", NAN), ("ema_power", NAN),
    ("ema_inv_gamma", INF), ("warmup_steps", -1), ("holdout_fraction", 1.0), ("holdout_fraction", NAN),
    ("dim", 0), ("attention_heads", 0), ("dim_mults", ()), ("dim_mults", (1, 0)), ("num_train_timesteps", 0),
    ("image_size", "16"),
])
def test_bad_train_config_value_names_the_field(tmp_path, field, value):
    overrides = {field: value}
    if field == "epochs":
        overrides["steps"] = None
    with pytest.raises(ValueError) as info:
        tiny(tmp_path, **overrides)
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- pipeline folder
@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "pipeline"
    return save_pipeline(tiny_unet(), NoiseScheduler(num_train_timesteps=20), folder)


@pytest.mark.parametrize("content, missing", [
    ("{}", "'unet'"),
    ('{"unet": ["unet", "UNet"]}', "'scheduler'"),
    ('{"scheduler": ["scheduler", "NoiseScheduler"]}', "'unet'"),
    ('{"unet": "UNet", "scheduler": ["scheduler", "NoiseScheduler"]}', "'unet' must be a [module, class] pair"),
    ("[1, 2]", "JSON object"),
    ("{not json", "not JSON"),
])
def test_bad_model_index_names_the_file_and_the_key(pipeline_folder, tmp_path, content, missing):
    import shutil

    copy = shutil.copytree(pipeline_folder, tmp_path / "pipeline")
    (copy / "model_index.json").write_text(content)
    with pytest.raises(PipelineFolderError) as info:
        load_pipeline(copy)
    assert str(copy / "model_index.json") in str(info.value) and missing in str(info.value)


def test_model_index_naming_a_missing_component_folder(pipeline_folder, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(pipeline_folder, tmp_path / "pipeline")
    shutil.rmtree(copy / "scheduler")
    with pytest.raises(PipelineFolderError, match="'scheduler' but the folder .*scheduler is missing"):
        load_pipeline(copy)
    (copy / "model_index.json").write_text("{}")
    assert main(["diffusion", "sample", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model_index.json has no 'unet' entry" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- dataset files
def _image_folder(root, n=6, truncate=3):
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"{i}.png")
    bad = root / f"{truncate}.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return bad


def test_truncated_png_names_the_file(tmp_path):
    bad = _image_folder(tmp_path / "images")
    train_ds, _ = load_training_data(str(tmp_path / "images"), image_size=8, holdout_fraction=0.0)
    with pytest.raises(DataError) as info:
        train_ds[:]
    assert str(bad) in str(info.value) and "truncated" in str(info.value)


def test_training_on_a_folder_with_a_truncated_png_stops_before_any_step(tmp_path):
    bad = _image_folder(tmp_path / "images")
    with pytest.raises(DataError, match=str(bad)):
        train(tiny(tmp_path, dataset=str(tmp_path / "images"), holdout_fraction=0.0, batch_size=4))
    assert list_checkpoints(tmp_path / "run") == []


# ----------------------------------------------------------------------------- non-finite weights and samples
def _poison(unet):
    with torch.no_grad():
        next(iter(unet.parameters())).view(-1)[0] = float("nan")
    return next(name for name, _ in unet.named_parameters())


def test_sampling_with_nan_weights_is_an_error_naming_the_parameter(tmp_path):
    unet = tiny_unet()
    name = _poison(unet)
    sched = NoiseScheduler(num_train_timesteps=20)
    with pytest.raises(NonFiniteSampleError, match=rf"weights are not finite \(NaN or inf in {name}"):
        generate(unet, sched, 2, 3)
    with pytest.raises(NonFiniteSampleError, match="weights are not finite"):
        UnconditionalPipeline(unet=unet, scheduler=sched)(batch_size=1, num_inference_steps=2)


def test_non_finite_sample_from_finite_weights_is_an_error():
    class Diverging(NoiseScheduler):
        def step(self, model_output, timestep, sample, generator=None, return_dict=True):
            out = super().step(model_output, timestep, sample, generator=generator)
            out.prev_sample = out.prev_sample * float("inf")
            return out

    with pytest.raises(NonFiniteSampleError, match="sampling produced non-finite values .* Diverging"):
        generate(tiny_unet(), Diverging(num_train_timesteps=20), 2, 2)


def test_cli_sample_of_a_pipeline_with_nan_weights_writes_no_png(tmp_path, capsys):
    unet = tiny_unet()
    name = _poison(unet)
    folder = save_pipeline(unet, NoiseScheduler(num_train_timesteps=20), tmp_path / "run" / "pipeline")
    target = tmp_path / "grid.png"
    assert main(["diffusion", "sample", str(folder), "--steps", "2", "--n", "1", "--output", str(target),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "weights are not finite" in err and name in err and str(folder) in err
    assert not target.exists()


def _finite(path):
    return all(torch.isfinite(v).all() for v in load_checkpoint(path)["model"].values())


def test_checkpoint_with_nan_weights_is_never_written(tmp_path):
    train(tiny(tmp_path, steps=3))
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    next(iter(state["model"].values())).view(-1)[0] = float("nan")
    state["step"] = 4
    with pytest.raises(NonFiniteLossError, match="not writing .*step-00000004.pt: the weights at step 4 are not"):
        write_checkpoint(tmp_path / "run", state, keep=2)
    assert not checkpoint_path(tmp_path / "run", 4).exists()
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_weights_turning_nan_are_not_checkpointed_and_point_to_the_last_finite_checkpoint(tmp_path, monkeypatch):
    real_step = dtrain.Run.train_step

    def poisoning(self, now_s):
        result = real_step(self, now_s)
        if self.step == 3:  # an update that left NaN weights behind a finite loss, just before checkpoint 3
            _poison(self.unwrapped)
        return result

    monkeypatch.setattr(dtrain.Run, "train_step", poisoning)
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny(tmp_path, steps=10, checkpoint_every=3))
    err = info.value
    # step 1 is the early first checkpoint (a tenth of 10 steps); step 3's would hold the NaN weights
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000001.pt"]
    assert err.checkpoint.name == "step-00000001.pt" and _finite(err.checkpoint)
    assert "weights became non-finite by step 3" in str(err) and f"last good checkpoint: {err.checkpoint}" in str(err)


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_non_finite_gradient_norm_stops_before_the_update(tmp_path, monkeypatch):
    real_loss = dtrain.diffusion_loss
    calls = {"n": 0}

    def inf_grad_at_step_3(pred, target, kind):
        calls["n"] += 1
        return real_loss(_InfGrad.apply(pred) if calls["n"] == 3 else pred, target, kind)

    monkeypatch.setattr(dtrain, "diffusion_loss", inf_grad_at_step_3)
    with pytest.raises(NonFiniteLossError, match="gradient norm became (nan|inf) .* at step 3") as info:
        train(tiny(tmp_path, steps=10, checkpoint_every=100))
    # the weights after step 2 are finite and kept
    assert info.value.checkpoint.name == "step-00000002.pt" and _finite(info.value.checkpoint)


def test_nan_loss_after_nan_weights_never_calls_them_good(tmp_path, monkeypatch):
    """Weights poisoned right after checkpoint 3 was written: the NaN loss of step 5 points at a finite checkpoint."""
    real_step = dtrain.Run.train_step

    def poisoning(self, now_s):
        result = real_step(self, now_s)
        if self.step == 4:
            _poison(self.unwrapped)
        return result

    monkeypatch.setattr(dtrain.Run, "train_step", poisoning)
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny(tmp_path, steps=10, checkpoint_every=3, grad_clip=0.0))
    err = info.value
    assert err.step == 5 and err.checkpoint.name == "step-00000003.pt" and _finite(err.checkpoint)
    assert "weights themselves are not finite" in str(err)
    assert all(_finite(p) for p in list_checkpoints(tmp_path / "run"))


def test_last_good_checkpoint_skips_nan_ones_and_resume_refuses_them(tmp_path):
    train(tiny(tmp_path, steps=6))
    first, latest = list_checkpoints(tmp_path / "run")
    state = torch.load(latest, weights_only=True)
    next(iter(state["model"].values())).view(-1)[0] = float("nan")
    torch.save(state, latest)  # as an older version (or disk damage) could have left it
    assert last_good_checkpoint(tmp_path / "run") == first
    with pytest.raises(CheckpointError) as info:
        train(tiny(tmp_path, steps=8, resume="latest"))
    assert str(latest) in str(info.value) and "not finite" in str(info.value) and str(first) in str(info.value)


# ----------------------------------------------------------------------------- nothing lost to an early kill
def test_first_checkpoint_comes_at_a_tenth_of_the_steps(tmp_path):
    result = train(tiny(tmp_path, steps=20, checkpoint_every=500, keep_checkpoints=5))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000002.pt", "step-00000020.pt"]
    assert result.step == 20


def test_first_checkpoint_comes_after_ten_minutes_at_the_latest(tmp_path, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(dtrain, "_clock", lambda: clock["t"])

    def slow(step, loss):  # every step takes 400 s of fake wall time; stop after step 3
        clock["t"] += 400.0
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(tiny(tmp_path, steps=100, checkpoint_every=500, keep_checkpoints=5), on_step=slow)
    assert result.interrupted and result.step == 3
    # 800 s after step 2: past ten minutes, long before a tenth of the steps (10)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000002.pt", "step-00000003.pt"]


def test_resumed_run_keeps_the_regular_interval(tmp_path):
    train(tiny(tmp_path, steps=4, checkpoint_every=3, keep_checkpoints=10))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000001.pt", "step-00000003.pt",
                                                                    "step-00000004.pt"]
    train(tiny(tmp_path, steps=8, checkpoint_every=3, keep_checkpoints=10, resume="latest"))
    assert [int(p.stem[5:]) for p in list_checkpoints(tmp_path / "run")] == [1, 3, 4, 6, 8]


def _stale_files(out):
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    stale = [out / "checkpoints" / ".step-00000009.pt.k2j3h4g5.tmp", out / ".training_config.json.abcd_123.tmp",
             out / "samples" / ".final.png.zz99yy88.png"]
    for p in stale:
        p.write_bytes(b"half a file")
    (out / ".pipeline.tmp").mkdir()
    (out / ".pipeline.tmp" / "model_index.json").write_text("{}")
    keep = out / ".keep"
    keep.write_text("mine")
    return [*stale, out / ".pipeline.tmp"], keep


def test_stale_temp_files_are_removed_when_the_run_resumes(tmp_path):
    train(tiny(tmp_path, steps=3))
    stale, keep = _stale_files(tmp_path / "run")
    train(tiny(tmp_path, steps=4, resume="latest"))
    assert not [p for p in stale if p.exists()] and keep.read_text() == "mine"


def test_stale_temp_files_are_removed_when_a_new_run_starts_in_the_folder(tmp_path):
    stale, keep = _stale_files(tmp_path / "run")
    train(tiny(tmp_path, steps=1))
    assert not [p for p in stale if p.exists()] and keep.exists()


def test_refused_start_removes_nothing(tmp_path):
    train(tiny(tmp_path, steps=1))
    stale, _ = _stale_files(tmp_path / "run")
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(tiny(tmp_path, steps=1))
    assert all(p.exists() for p in stale)
    assert sorted(p.name for p in remove_stale_temp_files(tmp_path / "run", tmp_path / "run" / "checkpoints")) == \
        sorted(p.name for p in stale if p.parent.name != "samples")

"""diffusion.NoiseScheduler: agreement with diffusers' DDPMScheduler, schedule hand-over and bad input."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from diffusion import BETA_SCHEDULES, NoiseScheduler, make_betas

T = 100


def test_schedules_match_the_formulas():
    lin = make_betas("linear", T)
    torch.testing.assert_close(lin[[0, -1]], torch.tensor([1e-4, 0.02]))
    quad = make_betas("quadratic", T)
    torch.testing.assert_close(quad.sqrt(), torch.linspace(1e-2, 0.02**0.5, T), rtol=1e-5, atol=1e-7)
    sig = make_betas("sigmoid", T)
    torch.testing.assert_close(sig[T // 2 - 1] + sig[T // 2], torch.tensor(1e-4 + 0.02), rtol=1e-5, atol=1e-7)
    cos = make_betas("cosine", T)
    assert cos.min() >= 1e-4 and cos.max() <= 0.9999 and cos[-1] > 0.5  # cosine ends near alpha_bar = 0
    for name in BETA_SCHEDULES:
        b = make_betas(name, T)
        assert b.shape == (T,) and b.dtype == torch.float32
        assert bool((b[1:] >= b[:-1] - 1e-7).all()), name  # non-decreasing variances


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_betas_equal_diffusers_ddpm_for_shared_names(schedule, zero_snr):
    ours = NoiseScheduler(num_train_timesteps=T, beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("other", [DDIMScheduler, DPMSolverMultistepScheduler, DDPMScheduler])
def test_betas_survive_from_config(schedule, other):
    ours = NoiseScheduler(num_train_timesteps=T, beta_schedule=schedule)
    converted = other.from_config(ours.config)
    assert torch.equal(converted.betas, ours.betas), (schedule, other.__name__)
    back = NoiseScheduler.from_config(converted.config)
    assert torch.equal(back.betas, ours.betas)


def test_non_default_values_survive_from_config():
    ours = NoiseScheduler(num_train_timesteps=T, prediction_type="v_prediction", clip_sample=False)
    ddim = DDIMScheduler.from_config(ours.config)
    assert ddim.config.prediction_type == "v_prediction" and ddim.config.clip_sample is False
    assert ddim.config.num_train_timesteps == T


def test_save_and_load(tmp_path):
    ours = NoiseScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type="fixed_large")
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").exists()
    back = NoiseScheduler.from_pretrained(tmp_path)
    assert torch.equal(back.betas, ours.betas) and back.config.variance_type == "fixed_large"


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 10, T])
def test_timesteps_match_diffusers(spacing, n):
    ours = NoiseScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ref = DDPMScheduler.from_config(ours.config)
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert ours.timesteps.dtype == torch.int64 and len(ours.timesteps) == n


STEP_CASES = [
    dict(),
    dict(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2"),
    dict(prediction_type="sample", clip_sample=False),
    dict(variance_type="fixed_large", beta_schedule="scaled_linear"),
    dict(variance_type="fixed_small_log", clip_sample_range=0.5),
    dict(thresholding=True, sample_max_value=2.0),
    dict(beta_schedule="sigmoid", rescale_betas_zero_snr=True, prediction_type="v_prediction"),
    dict(variance_type="learned_range"),
]


@pytest.mark.parametrize("kw", STEP_CASES)
@pytest.mark.parametrize("inference_steps", [None, 10])
def test_step_matches_diffusers_ddpm(kw, inference_steps):
    ours = NoiseScheduler(num_train_timesteps=T, **kw)
    ref = DDPMScheduler.from_config(ours.config)
    if inference_steps:
        ours.set_timesteps(inference_steps)
        ref.set_timesteps(inference_steps)
    torch.manual_seed(0)
    channels = 2 if kw.get("variance_type", "").startswith("learned") else 1
    sample = torch.randn(2, 3, 4, 4) * 1.5
    for t in ours.timesteps[[0, len(ours.timesteps) // 2, -1]]:
        out = torch.randn(2, 3 * channels, 4, 4)
        if channels == 2:
            out[:, 3:] = out[:, 3:].tanh()  # learned_range expects a value in [-1, 1]
        a = ours.step(out, t, sample, generator=torch.Generator().manual_seed(5))
        b = ref.step(out, t, sample, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-5, atol=1e-6)


def test_step_tuple_and_last_step_is_noise_free():
    ours = NoiseScheduler(num_train_timesteps=T)
    x, eps = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    a = ours.step(eps, 0, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    b = ours.step(eps, 0, x, generator=torch.Generator().manual_seed(2), return_dict=False)
    assert isinstance(a, tuple) and len(a) == 2
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)


def test_add_noise_and_velocity_match_diffusers_and_formula():
    ours = NoiseScheduler(num_train_timesteps=T, beta_schedule="cosine")
    ref = DDPMScheduler.from_config(ours.config)
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    t = torch.tensor([0, 10, 50, 99])
    xt = ours.add_noise(x0, eps, t)
    torch.testing.assert_close(xt, ref.add_noise(x0, eps, t))
    ab = ours.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    v = ours.get_velocity(x0, eps, t)
    torch.testing.assert_close(v, ref.get_velocity(x0, eps, t))
    # x_0 is recovered from (x_t, v): x_0 = sqrt(a_bar) x_t - sqrt(1 - a_bar) v
    torch.testing.assert_close(ab.sqrt() * xt - (1 - ab).sqrt() * v, x0, rtol=1e-5, atol=1e-5)


def test_interface_attributes():
    ours = NoiseScheduler(num_train_timesteps=T)
    assert ours.order == 1 and ours.init_noise_sigma == 1.0 and len(ours) == T
    assert "DDIMScheduler" in ours._compatibles and DDIMScheduler in ours.compatibles
    x = torch.randn(1, 1, 2, 2)
    assert ours.scale_model_input(x, 3) is x


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta_schedule="exponential"), "beta_schedule='exponential'.*'cosine'"),
        (dict(prediction_type="noise"), "prediction_type='noise'.*'epsilon'"),
        (dict(variance_type="big"), "variance_type"),
        (dict(timestep_spacing="random"), "timestep_spacing"),
        (dict(beta_start=0.1, beta_end=0.01), "beta_start"),
        (dict(trained_betas=[0.1] * 3), "num_train_timesteps=100"),
        (dict(num_train_timesteps=0), "num_train_timesteps"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseScheduler(**{"num_train_timesteps": T, **kwargs})


def test_too_many_inference_steps_raises():
    with pytest.raises(ValueError, match="num_inference_steps=101.*num_train_timesteps=100"):
        NoiseScheduler(num_train_timesteps=T).set_timesteps(T + 1)


def test_learned_variance_without_variance_channels_raises():
    ours = NoiseScheduler(num_train_timesteps=T, variance_type="learned_range")
    with pytest.raises(ValueError, match="twice the sample's channels"):
        ours.step(torch.randn(1, 1, 2, 2), 50, torch.randn(1, 1, 2, 2))


def test_config_keys_match_ddpm_scheduler_after_save_and_reload(tmp_path):
    """diffusers' scheduler suite compares config dicts: ours must carry no `_use_default_values` entry."""
    ours = NoiseScheduler(num_train_timesteps=T)
    assert "_use_default_values" not in ours.config
    ours.save_pretrained(tmp_path)
    back = NoiseScheduler.from_pretrained(tmp_path)
    theirs = DDPMScheduler.from_pretrained(tmp_path)
    assert "_use_default_values" not in back.config
    assert set(back.config) == set(theirs.config)
    # defaults still travel explicitly: a cosine run converted to DDIM keeps our betas, not DDIM's linear default
    cosine = NoiseScheduler(num_train_timesteps=T, beta_schedule="cosine")
    assert torch.equal(DDIMScheduler.from_config(cosine.config).betas, cosine.betas)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_get_variance_matches_ddpm_scheduler(variance_type):
    ours = NoiseScheduler(num_train_timesteps=T, variance_type=variance_type)
    theirs = DDPMScheduler(num_train_timesteps=T, variance_type=variance_type)
    for t in (0, 1, 48, T - 1):
        assert torch.allclose(ours._get_variance(t), theirs._get_variance(t), rtol=1e-5, atol=1e-12), t
    with pytest.raises(ValueError, match="variance_type='other'.*'fixed_small'"):
        ours._get_variance(5, variance_type="other")

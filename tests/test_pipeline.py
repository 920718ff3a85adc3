"""UnconditionalPipeline and interop with diffusers' pipelines, schedulers and save/load."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

import diffusion
from diffusion import NoiseScheduler, UNet, UnconditionalPipeline

T = 50
STEPS = 3


def tiny_unet(channels: int = 1) -> UNet:
    torch.manual_seed(0)
    return UNet(sample_size=8, in_channels=channels, dim=8, dim_mults=(1, 2), attention_heads=2,
                attention_head_dim=8).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_output_types_and_ranges():
    pipe = UnconditionalPipeline(unet=tiny_unet(), scheduler=NoiseScheduler(num_train_timesteps=T))
    pipe.set_progress_bar_config(disable=True)
    pt = pipe(batch_size=2, num_inference_steps=STEPS, generator=gen(), output_type="pt").images
    npy = pipe(batch_size=2, num_inference_steps=STEPS, generator=gen(), output_type="np").images
    pil = pipe(batch_size=2, num_inference_steps=STEPS, generator=gen(), output_type="pil").images
    assert pt.shape == (2, 1, 8, 8) and pt.min() >= 0 and pt.max() <= 1
    assert npy.shape == (2, 8, 8, 1) and npy.dtype == np.float32
    np.testing.assert_allclose(npy, pt.permute(0, 2, 3, 1).numpy())
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (8, 8)


def test_trajectory_for_gif():
    pipe = UnconditionalPipeline(unet=tiny_unet(), scheduler=NoiseScheduler(num_train_timesteps=T))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_inference_steps=STEPS, generator=gen(), output_type="pt", return_trajectory=True)
    assert len(out.trajectory) == STEPS + 1  # x_T, then one entry per step
    torch.testing.assert_close(out.trajectory[-1], out.images)
    images, traj = pipe(num_inference_steps=STEPS, generator=gen(), output_type="pil", return_trajectory=True,
                        return_dict=False)
    assert len(traj) == STEPS + 1 and all(len(frame) == 1 for frame in traj)
    assert pipe(num_inference_steps=STEPS, generator=gen(), output_type="pt").trajectory is None


def test_same_generator_same_images_and_matches_ddpm_pipeline():
    unet, sched = tiny_unet(), NoiseScheduler(num_train_timesteps=T)
    ours = UnconditionalPipeline(unet=unet, scheduler=sched)
    ours.set_progress_bar_config(disable=True)
    a = ours(batch_size=2, num_inference_steps=STEPS, generator=gen(3), output_type="np").images
    b = ours(batch_size=2, num_inference_steps=STEPS, generator=gen(3), output_type="np").images
    np.testing.assert_array_equal(a, b)
    ref = DDPMPipeline(unet=unet, scheduler=sched)
    ref.set_progress_bar_config(disable=True)
    c = ref(batch_size=2, num_inference_steps=STEPS, generator=gen(3), output_type="np").images
    np.testing.assert_allclose(a, c, atol=1e-6)


@pytest.mark.parametrize(
    "sched_cls", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler]
)
def test_any_diffusers_scheduler(sched_cls):
    sched = sched_cls.from_config(NoiseScheduler(num_train_timesteps=T, beta_schedule="cosine").config)
    pipe = UnconditionalPipeline(unet=tiny_unet(), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=4, generator=gen(), output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_diffusers_ddpm_and_ddim_pipelines_run():
    unet = tiny_unet(channels=3)
    for pipe_cls in (DDPMPipeline, DDIMPipeline):
        pipe = pipe_cls(unet=unet, scheduler=NoiseScheduler(num_train_timesteps=T, beta_schedule="sigmoid"))
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, num_inference_steps=STEPS, generator=gen(), output_type="np").images
        assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    # DDIMPipeline converts our scheduler and keeps its betas
    assert torch.equal(pipe.scheduler.betas, NoiseScheduler(num_train_timesteps=T, beta_schedule="sigmoid").betas)


def test_save_and_reload_ddpm_pipeline(tmp_path):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=NoiseScheduler(num_train_timesteps=T, beta_schedule="cosine"))
    pipe.set_progress_bar_config(disable=True)
    before = pipe(num_inference_steps=STEPS, generator=gen(7), output_type="np").images
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    # diffusers records the defining module ("diffusion.unet"); loading needs it imported, which `import diffusion` does
    assert index["unet"] == ["diffusion.unet", "UNet"]
    assert index["scheduler"] == ["diffusion.scheduler", "NoiseScheduler"]
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()

    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.unet, diffusion.UNet) and isinstance(loaded.scheduler, diffusion.NoiseScheduler)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(num_inference_steps=STEPS, generator=gen(7), output_type="np").images
    # identical up to float32 rounding (safetensors buffers are unaligned, so CPU kernels may sum in another order)
    np.testing.assert_allclose(after, before, atol=1e-5)
    again = loaded(num_inference_steps=STEPS, generator=gen(7), output_type="np").images
    np.testing.assert_array_equal(after, again)

    unet = UNet.from_pretrained(tmp_path, subfolder="unet")
    for p, q in zip(unet.parameters(), pipe.unet.parameters()):
        assert torch.equal(p, q)


def test_save_and_reload_our_pipeline(tmp_path):
    pipe = UnconditionalPipeline(unet=tiny_unet(), scheduler=NoiseScheduler(num_train_timesteps=T))
    pipe.set_progress_bar_config(disable=True)
    before = pipe(num_inference_steps=STEPS, generator=gen(1), output_type="pt").images
    pipe.save_pretrained(tmp_path)
    loaded = UnconditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(num_inference_steps=STEPS, generator=gen(1), output_type="pt").images
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_bad_arguments_raise():
    pipe = UnconditionalPipeline(unet=tiny_unet(), scheduler=NoiseScheduler(num_train_timesteps=T))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="output_type='latent'"):
        pipe(num_inference_steps=2, output_type="latent")
    with pytest.raises(ValueError, match="num_inference_steps=51.*num_train_timesteps=50"):
        pipe(num_inference_steps=T + 1)
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=0, num_inference_steps=2)


def test_dpm_solver_from_a_low_snr_schedule_is_clipped_and_stable():
    """`sampling_scheduler` gives DPM-Solver++ the lambda clip and x0 clipping that a cosine schedule needs."""
    from diffusion.sampling import sampling_scheduler

    cosine = NoiseScheduler(num_train_timesteps=1000, beta_schedule="cosine", timestep_spacing="trailing")
    linear = NoiseScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing")
    dpm_cos, dpm_lin = sampling_scheduler(cosine, "dpm-solver++"), sampling_scheduler(linear, "dpm-solver++")
    assert cosine.config.clip_sample and dpm_cos.config.thresholding and dpm_cos.config.sample_max_value == 1.0
    for dpm in (dpm_cos, dpm_lin):
        dpm.set_timesteps(20)
    # the clip skips the cosine schedule's last, near-pure-noise steps; the linear one never gets that low
    assert int(dpm_cos.timesteps[0]) < 999 and int(dpm_lin.timesteps[0]) == 999
    # A model that always predicts zero noise makes x0 = x_t / sqrt(alpha_bar) huge at low SNR: clipped, the
    # result stays in [-1, 1]; DPM-Solver++ built without those settings leaves it far outside.
    def run(scheduler):
        x = torch.randn(4, 1, 8, 8, generator=gen()) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
        return x

    assert run(dpm_cos).abs().max() <= 1.0 + 1e-5
    plain = DPMSolverMultistepScheduler.from_config(cosine.config, algorithm_type="dpmsolver++", solver_order=2)
    plain.set_timesteps(20)
    assert run(plain).abs().max() > 2.0

"""DDPM noise scheduler (Ho et al. 2020) behind diffusers' ``SchedulerMixin``/``ConfigMixin``.

It uses diffusers' configuration names so that ``DDIMScheduler.from_config(ours.config)`` or
``DPMSolverMultistepScheduler.from_config(...)`` continue from the same noise schedule. Schedules that diffusers'
samplers do not all know (``cosine``, ``quadratic``, ``sigmoid``) are written into the config as ``trained_betas``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine", "quadratic", "sigmoid")
# Every diffusers scheduler computes these from the config itself; the others travel as `trained_betas`.
DIFFUSERS_NATIVE_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class NoiseSchedulerOutput(BaseOutput):
    """Result of one reverse step: the sample at the previous timestep and the model's estimate of x_0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _choice(name: str, value: str, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(repr(a) for a in accepted)}")


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is not supported; use a finite number > 0")


def make_betas(
    schedule: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Return the float32 variance schedule beta_1..beta_T for a named schedule."""
    _choice("beta_schedule", schedule, BETA_SCHEDULES)
    T = num_train_timesteps
    if schedule == "linear":  # beta_t evenly spaced (DDPM section 4)
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule in ("quadratic", "scaled_linear"):  # sqrt(beta_t) evenly spaced
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if schedule == "sigmoid":  # beta_t = sigmoid(u_t) (beta_end - beta_start) + beta_start, u_t in [-6, 6]
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float32)) * (beta_end - beta_start) + beta_start
    if schedule == "cosine":
        # Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), beta_t = 1 - a_bar_t/a_bar_{t-1}
        s = 0.008
        x = torch.linspace(0, T, T + 1, dtype=torch.float64)
        alpha_bar = torch.cos((x / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        return betas.clamp(1e-4, 0.9999).to(torch.float32)
    # squaredcos_cap_v2: diffusers' own cosine variant, beta_t = min(1 - a_bar(t+1)/a_bar(t), 0.999)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has zero SNR (Lin et al. 2023, algorithm 1)."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))  # the paper's order: shift, then one scale factor
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


class NoiseScheduler(SchedulerMixin, ConfigMixin):
    """DDPM ancestral sampler and forward-noising utility.

    ``step`` reproduces diffusers' ``DDPMScheduler.step`` for the same configuration, model output and generator.
    """

    _compatibles = ["DDPMScheduler"] + [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
        _choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        _choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _choice("variance_type", variance_type, VARIANCE_TYPES)
        _choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not 0 < beta_start < beta_end < 1:  # False for NaN too
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        # clip_sample_range <= 0 would force every x_0 estimate to -r; a ratio outside (0, 1] breaks the quantile.
        _positive_finite("clip_sample_range", clip_sample_range)
        _positive_finite("sample_max_value", sample_max_value)
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio!r} is not supported; "
                             "use a number in (0, 1]")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or not \
                0 <= steps_offset < num_train_timesteps:
            raise ValueError(f"steps_offset={steps_offset!r} is not supported; use an int in "
                             f"[0, {num_train_timesteps - 1}] (num_train_timesteps={num_train_timesteps})")

        if trained_betas is not None:
            betas = torch.as_tensor(np.asarray(trained_betas), dtype=torch.float32)
            if betas.shape != (num_train_timesteps,):
                raise ValueError(
                    f"trained_betas has {betas.numel()} values but num_train_timesteps={num_train_timesteps}; "
                    "pass one beta per training timestep"
                )
            if not bool(((betas > 0) & (betas < 1)).all()):
                raise ValueError("trained_betas must all lie in (0, 1)")
        else:
            betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
            if beta_schedule not in DIFFUSERS_NATIVE_SCHEDULES:
                # Other diffusers schedulers do not know this schedule: hand it over as explicit betas.
                self.register_to_config(trained_betas=betas.tolist())
        # Every value is explicit in the config (no `_use_default_values` list): from_config into another
        # scheduler then keeps ours rather than its own defaults, and a saved or reloaded config has DDPMScheduler's keys.
        self._internal_dict = FrozenDict({k: v for k, v in self._internal_dict.items() if k != "_use_default_values"})

        self.betas = rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # alpha_bar_t = prod_{s<=t} (1 - beta_s)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    # ------------------------------------------------------------------ sampling schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the descending timesteps used at inference (evenly spaced, or a custom list)."""
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            ts = np.asarray(timesteps, dtype=np.int64)
            if ts.ndim != 1 or len(ts) == 0 or (np.diff(ts) >= 0).any():
                raise ValueError("timesteps must be a non-empty, strictly descending list of ints")
            if ts[0] >= T or ts[-1] < 0:
                raise ValueError(f"timesteps must lie in [0, {T - 1}] (num_train_timesteps={T})")
            self.custom_timesteps, self.num_inference_steps = True, None
        else:
            n = int(num_inference_steps)
            if not 1 <= n <= T:
                raise ValueError(
                    f"num_inference_steps={n} must be between 1 and num_train_timesteps={T}; "
                    "lower num_inference_steps or train with more timesteps"
                )
            self.custom_timesteps, self.num_inference_steps = False, n
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
            elif spacing == "leading":
                ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + self.config.steps_offset
            else:  # trailing
                ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(np.ascontiguousarray(ts)).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep that follows ``timestep`` in the current sampling schedule (-1 after the last)."""
        if self.custom_timesteps or self.num_inference_steps:
            index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
            return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]
        return timestep - 1

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM feeds the sample unscaled; present for interchangeability with other schedulers."""
        return sample

    # ------------------------------------------------------------------ reverse step
    def _posterior_variance(self, t, prev_t) -> tuple[torch.Tensor, torch.Tensor]:
        a_bar_t = self.alphas_cumprod[t]
        a_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_t = 1 - a_bar_t / a_bar_prev
        # DDPM eq. 7: beta_tilde_t = (1 - a_bar_{t-1}) / (1 - a_bar_t) * beta_t
        beta_tilde = ((1 - a_bar_prev) / (1 - a_bar_t) * beta_t).clamp(min=1e-20)
        return beta_tilde, beta_t

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022): clamp x_0 to its per-sample quantile s and divide by s."""
        dtype, shape = x0.dtype, x0.shape
        flat = x0.float().reshape(shape[0], -1)
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> NoiseSchedulerOutput | tuple:
        """Sample x_{t_prev} ~ p(x_{t_prev} | x_t) from the model output at ``timestep``."""
        self._check_timesteps(timestep, "step")
        t = timestep
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == 2 * sample.shape[1] and self.config.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        a_bar_t = self.alphas_cumprod[t]
        a_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        alpha_t = a_bar_t / a_bar_prev
        beta_t = 1 - alpha_t

        pt = self.config.prediction_type
        if pt == "epsilon":  # DDPM eq. 15: x_0 = (x_t - sqrt(1 - a_bar_t) eps) / sqrt(a_bar_t)
            x0 = (sample - (1 - a_bar_t) ** 0.5 * model_output) / a_bar_t**0.5
        elif pt == "v_prediction":  # Salimans & Ho 2022: x_0 = sqrt(a_bar_t) x_t - sqrt(1 - a_bar_t) v
            x0 = a_bar_t**0.5 * sample - (1 - a_bar_t) ** 0.5 * model_output
        else:
            x0 = model_output

        if self.config.thresholding:
            x0 = self._threshold(x0)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp(-r, r)

        # DDPM eq. 7: mu_tilde = sqrt(a_bar_{t-1}) beta_t / (1 - a_bar_t) x_0 + sqrt(alpha_t) (1 - a_bar_{t-1}) / (1 - a_bar_t) x_t
        mean = (a_bar_prev**0.5 * beta_t / (1 - a_bar_t)) * x0 + (alpha_t**0.5 * (1 - a_bar_prev) / (1 - a_bar_t)) * sample

        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
            mean = mean + self._noise_std(t, prev_t, predicted_variance) * noise

        if not return_dict:
            return mean, x0
        return NoiseSchedulerOutput(prev_sample=mean, pred_original_sample=x0)

    def _get_variance(
        self, t: int, predicted_variance: torch.Tensor | None = None, variance_type: str | None = None
    ) -> torch.Tensor:
        """Variance sigma_t^2 of the reverse step at ``t``, as DDPMScheduler's method of the same name gives it for
        fixed_small, fixed_large and learned (for the *_log types and learned_range that one returns a std or a log)."""
        vt = variance_type or self.config.variance_type
        _choice("variance_type", vt, VARIANCE_TYPES)
        if vt in ("learned", "learned_range") and predicted_variance is None:
            raise ValueError(f"variance_type={vt!r} needs predicted_variance")
        return self._noise_std(t, self.previous_timestep(t), predicted_variance, vt) ** 2

    def _noise_std(self, t, prev_t, predicted_variance: torch.Tensor | None, variance_type: str | None = None
                   ) -> torch.Tensor:
        """Standard deviation sigma_t of the reverse step for the configured variance type."""
        beta_tilde, beta_t = self._posterior_variance(t, prev_t)
        vt = variance_type or self.config.variance_type
        if vt == "fixed_small":  # sigma_t^2 = beta_tilde_t
            return beta_tilde**0.5
        if vt == "fixed_small_log":
            return torch.exp(0.5 * torch.log(beta_tilde))
        if vt == "fixed_large":  # sigma_t^2 = beta_t
            return beta_t**0.5
        if vt == "fixed_large_log":
            return torch.exp(0.5 * torch.log(beta_t))
        if predicted_variance is None:
            raise ValueError(
                f"variance_type={vt!r} needs a model with twice the sample's channels (mean and variance)"
            )
        if vt == "learned":  # the model predicts sigma_t^2 directly
            return predicted_variance**0.5
        # learned_range (Nichol & Dhariwal eq. 15): log sigma^2 = v log beta_t + (1 - v) log beta_tilde, v = (out + 1)/2
        frac = (predicted_variance + 1) / 2
        return torch.exp(0.5 * (frac * torch.log(beta_t) + (1 - frac) * torch.log(beta_tilde)))

    # ------------------------------------------------------------------ forward process
    def _check_timesteps(self, timesteps: int | torch.Tensor, where: str) -> None:
        """A ValueError naming the timestep and the accepted range (instead of an IndexError, or a device assert)."""
        T = self.config.num_train_timesteps
        t = torch.as_tensor(timesteps)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{where}: timestep must be an integer in [0, {T - 1}], got dtype {t.dtype}")
        if t.numel() == 0:
            return
        lo, hi = (int(v) for v in torch.stack([t.min(), t.max()]).tolist())  # one host sync
        if lo < 0 or hi >= T:
            bad = lo if lo < 0 else hi
            # 'leading' spacing with steps_offset gets there the way DDPMScheduler's set_timesteps does
            hint = f"; steps_offset={self.config.steps_offset} shifted it" if hi >= T and self.config.steps_offset else ""
            raise ValueError(f"{where}: timestep {bad} is out of range; accepted: 0 to {T - 1} "
                             f"(num_train_timesteps={T}){hint}")

    def _gather(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.alphas_cumprod = self.alphas_cumprod.to(like.device)
        a_bar = self.alphas_cumprod.to(like.dtype)[torch.as_tensor(timesteps, device=like.device)].flatten()
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a_bar.sqrt().reshape(shape), (1 - a_bar).sqrt().reshape(shape)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) given the noise."""
        self._check_timesteps(timesteps, "add_noise")
        sqrt_ab, sqrt_1m_ab = self._gather(timesteps, original_samples)
        return sqrt_ab * original_samples + sqrt_1m_ab * noise  # DDPM eq. 4: x_t = sqrt(a_bar) x_0 + sqrt(1 - a_bar) eps

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target for clean ``sample`` and ``noise``."""
        self._check_timesteps(timesteps, "get_velocity")
        sqrt_ab, sqrt_1m_ab = self._gather(timesteps, sample)
        return sqrt_ab * noise - sqrt_1m_ab * sample  # v = sqrt(a_bar) eps - sqrt(1 - a_bar) x_0

    def __len__(self) -> int:
        return self.config.num_train_timesteps

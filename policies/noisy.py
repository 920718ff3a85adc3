"""Factorised Gaussian noisy linear layer (Fortunato et al. 2018, "Noisy Networks for Exploration")."""

from __future__ import annotations

import math

import torch as th
from torch import nn
from torch.nn import functional as F


@th.no_grad()
def sample_scaled_noise_(out: th.Tensor) -> th.Tensor:
    """Fill ``out`` in place with f(x) = sgn(x) sqrt(|x|), x ~ N(0, 1) (paper, eq. 10); returns ``out``."""
    out.normal_()
    return th.copysign(out.abs().sqrt_(), out, out=out)  # sqrt(|x|) with the sign of x, written back into out


class NoisyLinear(nn.Module):
    """Linear layer whose weights are ``mu + sigma * eps`` with factorised Gaussian ``eps``.

    ``y = (mu_w + sigma_w * (eps_out eps_in^T)) x + mu_b + sigma_b * eps_out`` (paper, eq. 9-11).
    The noise is held in non-persistent buffers and only changes when :meth:`reset_noise` is called,
    so several forward passes can share one noise sample. ``forward(x, noise=False)`` uses the mean
    weights, which is what a deterministic policy acts with.

    :param in_features: size of each input sample
    :param out_features: size of each output sample
    :param sigma0: initial noise scale; sigma is initialised to ``sigma0 / sqrt(in_features)``
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features} and {out_features}")
        if not sigma0 > 0:
            raise ValueError(f"sigma0 (noisy_std) must be > 0, got {sigma0}")
        self.in_features = in_features
        self.out_features = out_features
        self.sigma0 = sigma0
        self.weight_mu = nn.Parameter(th.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(th.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(th.empty(out_features))
        self.bias_sigma = nn.Parameter(th.empty(out_features))
        # Noise is state of the sampler, not of the model: keep it out of state_dict.
        self.register_buffer("eps_in", th.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", th.zeros(out_features), persistent=False)
        self.reset_parameters()
        self.reset_noise()

    def reset_parameters(self) -> None:
        """mu ~ U[-1/sqrt(p), 1/sqrt(p)], sigma = sigma0/sqrt(p) with p = in_features (paper, section 3.2)."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, self.sigma0 * bound)
        nn.init.constant_(self.bias_sigma, self.sigma0 * bound)

    def reset_noise(self) -> None:
        """Sample fresh factorised noise in place (p + q Gaussian draws instead of p * q)."""
        sample_scaled_noise_(self.eps_in)
        sample_scaled_noise_(self.eps_out)

    @property
    def noise_size(self) -> int:
        """Number of scalar noise draws this layer needs."""
        return self.in_features + self.out_features

    def forward(self, x: th.Tensor, noise: bool = True) -> th.Tensor:
        if not noise:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = th.addcmul(self.weight_mu, self.weight_sigma, th.outer(self.eps_out, self.eps_in))
        bias = th.addcmul(self.bias_mu, self.bias_sigma, self.eps_out)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sigma0={self.sigma0}"

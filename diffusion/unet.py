"""A DDPM U-Net (Ho et al. 2020) with weight-standardised ResNet blocks, as a diffusers model.

Layout: an initial convolution, down stages (two ResNet blocks, linear attention, downsample), a middle of
ResNet / full attention / ResNet, up stages mirroring the down stages with skip connections, and a final ResNet
block plus 1x1 convolution. Every ResNet block is conditioned on a sinusoidal embedding of the timestep.
Weight standardisation and the sinusoidal embedding are computed in float32 so bfloat16/float16 weights work.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from einops import rearrange
from torch import nn


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel (Qiao et al. 2019), which pairs well with GroupNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float()  # standardise in float32: low-precision variances are too coarse
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w_hat = (w - mean) * torch.rsqrt(var + 1e-5)  # W_hat = (W - mu_W) / sqrt(var_W + eps)
        return F.conv2d(x, w_hat.to(x.dtype), self.bias, self.stride, self.padding, self.dilation, self.groups)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of (possibly fractional) timesteps, always computed in float32."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding dim must be an even number >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        # PE(t, i) = sin(t / 10000^(i/(half-1))), cos(...)  (Vaswani et al. 2017, section 3.5)
        freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, device=t.device, dtype=torch.float32))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ConvBlock(nn.Module):
    """Weight-standardised 3x3 conv, GroupNorm, optional FiLM scale/shift from the time embedding, SiLU."""

    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim_in, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift  # h = GN(h) (1 + gamma(t)) + beta(t)
        return F.silu(x)


class ResnetBlock(nn.Module):
    """Two conv blocks with the time embedding injected into the first, plus a (1x1-projected) residual path."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, groups: int):
        super().__init__()
        self.time_proj = nn.Linear(time_dim, dim_out * 2)
        self.block1 = ConvBlock(dim_in, dim_out, groups)
        self.block2 = ConvBlock(dim_out, dim_out, groups)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        scale_shift = rearrange(self.time_proj(F.silu(t_emb)), "b c -> b c 1 1").chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.skip(x)


class LinearAttention(nn.Module):
    """Pre-normed residual linear attention (Shen et al. 2018): cost linear in the number of pixels."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.scale = heads, head_dim**-0.5
        hidden = heads * head_dim
        self.norm = nn.GroupNorm(1, dim)
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.GroupNorm(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = (
            rearrange(z, "b (n d) x y -> b n d (x y)", n=self.heads) for z in self.to_qkv(self.norm(x)).chunk(3, dim=1)
        )
        q = q.softmax(dim=-2) * self.scale  # normalise queries over features
        k = k.softmax(dim=-1)  # and keys over positions
        context = k @ v.transpose(-1, -2)  # C = softmax(K) V^T : (d x e) per head
        out = context.transpose(-1, -2) @ q  # out = C^T softmax(Q) : (e x n) per head
        out = rearrange(out, "b n e (x y) -> b (n e) x y", x=h, y=w)
        return x + self.to_out(out)


class Attention(nn.Module):
    """Pre-normed residual multi-head self-attention over all pixels: softmax(Q K^T / sqrt(d)) V."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        hidden = heads * head_dim
        self.norm = nn.GroupNorm(1, dim)
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = (
            rearrange(z, "b (n d) x y -> b n (x y) d", n=self.heads) for z in self.to_qkv(self.norm(x)).chunk(3, dim=1)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(Q K^T / sqrt(d)) V
        return x + self.to_out(rearrange(out, "b n (x y) d -> b (n d) x y", x=h, y=w))


class Downsample(nn.Module):
    """Halve the resolution without striding: move each 2x2 patch into channels, then mix with a 1x1 conv."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in * 4, dim_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling followed by a 3x3 conv."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _run(owner: nn.Module, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)``, recomputed in the backward pass when diffusers' gradient checkpointing is on for ``owner``."""
    if getattr(owner, "gradient_checkpointing", False) and torch.is_grad_enabled():
        return owner._gradient_checkpointing_func(module, *args)
    return module(*args)


class DownStage(nn.Module):
    """Two ResNet blocks and linear attention at one resolution, then a change of resolution/width."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, groups: int, heads: int, head_dim: int, last: bool):
        super().__init__()
        self.gradient_checkpointing = False  # set by UNet.enable_gradient_checkpointing()
        self.block1 = ResnetBlock(dim_in, dim_in, time_dim, groups)
        self.block2 = ResnetBlock(dim_in, dim_in, time_dim, groups)
        self.attn = LinearAttention(dim_in, heads, head_dim)
        self.resample = nn.Conv2d(dim_in, dim_out, 3, padding=1) if last else Downsample(dim_in, dim_out)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = _run(self, self.block1, x, t_emb)
        skips.append(x)
        x = _run(self, self.attn, _run(self, self.block2, x, t_emb))
        skips.append(x)
        return self.resample(x)


class UpStage(nn.Module):
    """Mirror of ``DownStage``: each ResNet block first concatenates one skip connection."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, groups: int, heads: int, head_dim: int, last: bool):
        super().__init__()
        self.gradient_checkpointing = False  # set by UNet.enable_gradient_checkpointing()
        self.block1 = ResnetBlock(dim_out + dim_in, dim_out, time_dim, groups)
        self.block2 = ResnetBlock(dim_out + dim_in, dim_out, time_dim, groups)
        self.attn = LinearAttention(dim_out, heads, head_dim)
        self.resample = nn.Conv2d(dim_out, dim_in, 3, padding=1) if last else Upsample(dim_out, dim_in)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = _run(self, self.block1, torch.cat([x, skips.pop()], dim=1), t_emb)
        x = _run(self, self.block2, torch.cat([x, skips.pop()], dim=1), t_emb)
        return self.resample(_run(self, self.attn, x))


def _as_hw(sample_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(sample_size, int):
        return sample_size, sample_size
    hw = tuple(sample_size)
    if len(hw) != 2 or not all(isinstance(s, int) for s in hw):
        raise ValueError(f"sample_size must be an int or a (height, width) pair of ints, got {sample_size!r}")
    return hw  # type: ignore[return-value]


class UNet(ModelMixin, ConfigMixin):
    """Noise-prediction U-Net eps_theta(x_t, t) that diffusers pipelines accept as ``unet``.

    Args:
        sample_size: image side (or (height, width)); must be divisible by 2 ** (len(dim_mults) - 1).
        in_channels: image channels; out_channels defaults to in_channels (use 2x for learned variance).
        dim: base width; stage widths are dim * dim_mults[i] and the time embedding is 4 * dim wide.
        dim_mults: width multipliers, one stage per entry.
        resnet_block_groups: GroupNorm groups in ResNet blocks; every width must be divisible by it.
        attention_heads / attention_head_dim: heads and per-head width of linear and full attention.
        self_condition: feed a previous x_0 estimate as extra input channels (zeros when not given).
        init_kernel_size: kernel of the first convolution (odd).
    """

    # enable_gradient_checkpointing() recomputes every ResNet block and attention layer in the backward pass
    # instead of keeping their activations: the same outputs and gradients for less memory and more compute.
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | Sequence[int] = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        dim: int = 32,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        resnet_block_groups: int = 4,
        attention_heads: int = 4,
        attention_head_dim: int = 32,
        self_condition: bool = False,
        init_kernel_size: int = 1,
    ):
        super().__init__()
        h, w = _as_hw(sample_size)
        dim_mults = tuple(dim_mults)
        for name, value in (("in_channels", in_channels), ("dim", dim), ("attention_heads", attention_heads),
                            ("attention_head_dim", attention_head_dim), ("resnet_block_groups", resnet_block_groups)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if out_channels is not None and (not isinstance(out_channels, int) or out_channels < 1):
            raise ValueError(f"out_channels must be a positive int or None, got {out_channels!r}")
        if not dim_mults or not all(isinstance(m, int) and m >= 1 for m in dim_mults):
            raise ValueError(f"dim_mults must be a non-empty sequence of positive ints, got {dim_mults!r}")
        factor = 2 ** (len(dim_mults) - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"sample_size={sample_size!r} must be divisible by 2**(len(dim_mults)-1)={factor} "
                f"for dim_mults={dim_mults!r}; change sample_size or use fewer dim_mults"
            )
        widths = [dim] + [dim * m for m in dim_mults]
        bad = sorted({c for c in widths if c % resnet_block_groups})
        if bad:
            raise ValueError(
                f"channel widths {bad} (dim * dim_mults) are not divisible by resnet_block_groups={resnet_block_groups}; "
                "choose dim and dim_mults so every width is a multiple of resnet_block_groups"
            )
        if dim % 2 or dim < 4:
            raise ValueError(f"dim must be an even number >= 4 (it sizes the sinusoidal embedding), got {dim}")
        if init_kernel_size % 2 == 0:
            raise ValueError(f"init_kernel_size must be odd, got {init_kernel_size}")

        groups, heads, head_dim = resnet_block_groups, attention_heads, attention_head_dim
        self.out_dim = out_channels or in_channels
        self.gradient_checkpointing = False  # set by enable_gradient_checkpointing()
        time_dim = dim * 4
        self.init_conv = nn.Conv2d(in_channels * (2 if self_condition else 1), dim, init_kernel_size,
                                   padding=init_kernel_size // 2)
        self.time_embedding = SinusoidalTimeEmbedding(dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))

        in_out = list(zip(widths[:-1], widths[1:]))
        n = len(in_out)
        self.down_stages = nn.ModuleList(
            DownStage(a, b, time_dim, groups, heads, head_dim, last=i == n - 1) for i, (a, b) in enumerate(in_out)
        )
        mid = widths[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, groups)
        self.mid_attn = Attention(mid, heads, head_dim)
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, groups)
        self.up_stages = nn.ModuleList(
            UpStage(a, b, time_dim, groups, heads, head_dim, last=i == n - 1)
            for i, (a, b) in enumerate(reversed(in_out))
        )
        self.final_block = ResnetBlock(dim * 2, dim, time_dim, groups)
        self.final_conv = nn.Conv2d(dim, self.out_dim, 1)

    def _time_embed(self, timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
        t = t.to(device=device, dtype=torch.float32)
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim == 0:
            t = t[None]
        if t.ndim != 1 or t.shape[0] not in (1, batch):
            raise ValueError(
                f"timestep must be a number, a 0-d tensor or a 1-d tensor of length 1 or batch size {batch}; "
                f"got shape {tuple(t.shape)}"
            )
        emb = self.time_embedding(t.expand(batch))  # float32
        return self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        return_dict: bool = True,
        self_cond: torch.Tensor | None = None,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict the model target (noise, by default) for ``sample`` at ``timestep``."""
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(
                f"sample must have shape (batch, {cfg.in_channels}, height, width) to match in_channels="
                f"{cfg.in_channels}; got {tuple(sample.shape)}"
            )
        factor = 2 ** (len(cfg.dim_mults) - 1)
        if sample.shape[-2] % factor or sample.shape[-1] % factor:
            raise ValueError(f"sample height and width must be divisible by {factor}; got {tuple(sample.shape[-2:])}")
        if cfg.self_condition:
            sc = torch.zeros_like(sample) if self_cond is None else self_cond.to(sample.dtype)
            sample = torch.cat([sc, sample], dim=1)
        elif self_cond is not None:
            raise ValueError("self_cond was given but the model was built with self_condition=False")

        t_emb = self._time_embed(timestep, sample.shape[0], sample.device)
        x = self.init_conv(sample)
        r = x
        skips: list[torch.Tensor] = []
        for stage in self.down_stages:
            x = stage(x, t_emb, skips)
        x = _run(self, self.mid_block1, x, t_emb)
        x = _run(self, self.mid_block2, _run(self, self.mid_attn, x), t_emb)
        for stage in self.up_stages:
            x = stage(x, t_emb, skips)
        out = self.final_conv(_run(self, self.final_block, torch.cat([x, r], dim=1), t_emb))
        if not return_dict:
            return (out,)
        return UNet2DOutput(sample=out)

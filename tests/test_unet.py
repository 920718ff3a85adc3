"""diffusion.UNet: shapes, timestep forms, dtypes, config round trip and bad-input errors."""

import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput

from diffusion import UNet
from diffusion.unet import (
    Attention,
    Downsample,
    LinearAttention,
    SinusoidalTimeEmbedding,
    Upsample,
    WeightStandardizedConv2d,
)

TINY = dict(sample_size=8, in_channels=1, dim=8, dim_mults=(1, 2), resnet_block_groups=4,
            attention_heads=2, attention_head_dim=8)


def tiny(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**TINY, **kw}).eval()


def test_output_shape_and_type():
    model = tiny()
    x = torch.randn(3, 1, 8, 8)
    out = model(x, 10)
    assert isinstance(out, UNet2DOutput)
    assert out.sample.shape == (3, 1, 8, 8)
    assert out.sample.dtype == torch.float32
    (tup,) = model(x, 10, return_dict=False)
    assert torch.equal(tup, out.sample)


def test_rectangular_and_three_stage_shapes():
    model = tiny(sample_size=(8, 16), in_channels=3, out_channels=6, dim_mults=(1, 2, 2))
    out = model(torch.randn(2, 3, 8, 16), 1).sample
    assert out.shape == (2, 6, 8, 16)


def test_timestep_forms_agree():
    model = tiny()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = model(x, 7).sample
        for t in (7.0, torch.tensor(7), torch.tensor([7]), torch.tensor([7, 7]), torch.tensor([[7], [7]])):
            torch.testing.assert_close(model(x, t).sample, ref, rtol=0, atol=0)
        per_item = model(x, torch.tensor([7, 500])).sample
    torch.testing.assert_close(per_item[0], ref[0])
    assert not torch.allclose(per_item[1], ref[1])


def test_output_depends_on_timestep():
    model = tiny()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert (model(x, 0).sample - model(x, 999).sample).abs().max() > 1e-4


def test_bfloat16_forward_close_to_float32():
    model = tiny()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = model(x, torch.tensor(3)).sample
        out = model.to(torch.bfloat16)(x.bfloat16(), torch.tensor(3)).sample
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    # bf16 keeps ~3 significant digits; outputs are O(1)
    assert (out.float() - ref).abs().max() < 0.1


def test_float16_forward_if_supported():
    model = tiny().to(torch.float16)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float16)
    try:
        with torch.no_grad():
            out = model(x, 5).sample
    except RuntimeError as err:  # some CPU builds lack half kernels
        pytest.skip(f"float16 not supported on this CPU: {err}")
    assert out.dtype == torch.float16 and torch.isfinite(out.float()).all()


def test_backward_reaches_every_parameter():
    model = tiny().train()
    x = torch.randn(2, 1, 8, 8)
    loss = model(x, torch.tensor([1, 2])).sample.pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_self_condition_changes_input_channels():
    model = tiny(self_condition=True)
    assert model.init_conv.in_channels == 2
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        zero = model(x, 3).sample
        same = model(x, 3, self_cond=torch.zeros_like(x)).sample
        other = model(x, 3, self_cond=torch.ones_like(x)).sample
    torch.testing.assert_close(zero, same)
    assert not torch.allclose(zero, other)
    with pytest.raises(ValueError, match="self_condition=False"):
        tiny()(x, 3, self_cond=x)


def test_weight_standardisation_is_scale_invariant_and_fp32():
    torch.manual_seed(0)
    conv = WeightStandardizedConv2d(4, 6, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 5, 5)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(0.3)  # affine change of W per output channel leaves W_hat unchanged
    # equal up to eps=1e-5 against var(W) ~ 1e-2, i.e. ~1e-3 relative
    torch.testing.assert_close(conv(x), y, rtol=5e-3, atol=5e-3)
    assert conv.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_sinusoidal_embedding_values():
    emb = SinusoidalTimeEmbedding(8)(torch.tensor([0.0, 1.0]))
    assert emb.shape == (2, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # first frequency is 1: sin(1), cos(1); last frequency is 1/10000
    torch.testing.assert_close(emb[1, 0], torch.tensor(1.0).sin())
    torch.testing.assert_close(emb[1, 3], torch.tensor(1e-4).sin(), rtol=1e-3, atol=1e-7)


def test_parts_shapes():
    x = torch.randn(2, 8, 4, 6)
    assert LinearAttention(8, 2, 4)(x).shape == x.shape
    assert Attention(8, 2, 4)(x).shape == x.shape
    assert Downsample(8, 12)(x).shape == (2, 12, 2, 3)
    assert Upsample(8, 4)(x).shape == (2, 4, 8, 12)


def test_config_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = UNet.from_pretrained(tmp_path).eval()
    assert list(loaded.config.dim_mults) == [1, 2]
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        # safetensors hands back unaligned buffers, so CPU kernels may sum in another order: float32 rounding only
        torch.testing.assert_close(loaded(x, 4).sample, model(x, 4).sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sample_size=10, dim_mults=(1, 2, 4)), "divisible by 2\\*\\*\\(len\\(dim_mults\\)-1\\)=4"),
        (dict(dim=6, resnet_block_groups=4), "resnet_block_groups=4"),
        (dict(dim_mults=()), "dim_mults"),
        (dict(in_channels=0), "in_channels"),
        (dict(sample_size=(8, 8, 8)), "sample_size"),
        (dict(init_kernel_size=2), "init_kernel_size"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{**TINY, **kwargs})


def test_bad_forward_inputs_raise():
    model = tiny()
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.randn(1, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="timestep"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(1, 1, 9, 8), 1)


def _saved_activation_bytes(model: UNet, x: torch.Tensor, t: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, t).sample.square().mean().backward()
    return sum(seen.values())


def test_gradient_checkpointing_same_outputs_and_gradients_less_memory():
    model = tiny(sample_size=16).train()
    assert model._supports_gradient_checkpointing
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 70])

    def outputs_and_grads():
        model.zero_grad()
        out = model(x, t).sample
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    plain_out, plain_grads = outputs_and_grads()
    plain_bytes = _saved_activation_bytes(model, x, t)
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    ckpt_out, ckpt_grads = outputs_and_grads()
    ckpt_bytes = _saved_activation_bytes(model, x, t)
    assert torch.allclose(plain_out, ckpt_out, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, ckpt_grads))
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing

"""Training-step throughput of diffusion.UNet against diffusers' UNet2DModel at a similar parameter count.

One training step = forward + MSE loss on the noise + backward + AdamW step, batch 64 of 28x28x1 images with random
timesteps. Each measurement runs in a fresh child process (so peak memory is per model); the two models alternate
over several rounds so that drifting machine load hits both alike. Prints JSON lines: one per measurement, then one
summary per device with the median steps/s of each model and the ratio ours / diffusers (goal >= 1.0).

    python bench/unet.py                      # CPU, and CUDA bf16 autocast too when a GPU is present
    python bench/unet.py --device cpu --steps 8 --rounds 2 --threads 1
    python bench/unet.py --gradient-checkpointing 28,64 --batch 16 --steps 3 --warmup 1   # memory/time with and without

The gradient-checkpointing mode trains our U-Net at each image size with ``enable_gradient_checkpointing()`` off and
on, each in a fresh child, and reports steps/s, peak memory (CUDA: max allocated; CPU: RSS growth) and the bytes
autograd keeps for the backward pass (saved tensors, each storage once: the activation memory checkpointing cuts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ours: the seed document's Fashion-MNIST shape, dim 32, three resolutions (28, 14, 7).
OURS = dict(sample_size=28, in_channels=1, dim=32, dim_mults=(1, 2, 4), resnet_block_groups=4,
            attention_heads=4, attention_head_dim=32)
# Peer: the same three resolutions and first width, two ResNet layers per block, attention at 14x14 and 7x7 plus
# the middle; widths (32, 64, 96) put it within a few percent of our parameter count.
PEER = dict(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 96), layers_per_block=2,
            norm_num_groups=8, attention_head_dim=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _time_steps(step: Callable[[], None], warmup: int, steps: int, device: str,
                base_rss: float) -> tuple[float, float]:
    """Run ``warmup`` then ``steps`` training steps; return the seconds of the timed ones and the peak memory in MiB
    (CUDA's allocator peak, or the process's peak RSS above ``base_rss`` on CPU)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else _peak_rss_mib() - base_rss
    return elapsed, peak


def child_checkpointing(size: int, checkpointing: bool, device: str, steps: int, warmup: int, batch: int,
                        threads: int) -> dict:
    """Time our U-Net at ``size`` x ``size`` with gradient checkpointing off or on; return a result row."""
    import torch

    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    torch.set_num_threads(threads)
    from diffusion import UNet

    base_rss = _peak_rss_mib()
    torch.manual_seed(0)
    model = UNet(**{**OURS, "sample_size": size}).to(device).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 1, size, size, device=device)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=device)
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def step(measure: bool = False) -> None:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x) if measure else _nullcontext()
        with hooks:
            loss = torch.nn.functional.mse_loss(model(x0 + noise, t).sample.float(), noise)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(measure=True)
    elapsed, peak = _time_steps(step, warmup - 1, steps, device, base_rss)
    return dict(bench="unet_gradient_checkpointing", image=f"{size}x{size}x1", checkpointing=checkpointing,
                device=device, batch=batch, threads=threads, steps=steps, steps_per_s=round(steps / elapsed, 4),
                peak_mem_mib=round(peak, 1), saved_activations_mib=round(sum(saved.values()) / 2**20, 1),
                peak_mem_kind="cuda_max_allocated" if device == "cuda" else "rss_growth", torch=torch.__version__)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def run_checkpointing(args: argparse.Namespace, device: str) -> None:
    for size in [int(v) for v in args.gradient_checkpointing.split(",")]:
        rows = {}
        for on in (False, True):
            cmd = [sys.executable, os.path.abspath(__file__), "--child-gc", f"{size}:{int(on)}", "--device", device,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[on] = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(rows[on]), flush=True)
        print(json.dumps(dict(
            bench="unet_gradient_checkpointing_summary", image=f"{size}x{size}x1", device=device, batch=args.batch,
            saved_activations_ratio=round(rows[True]["saved_activations_mib"] / rows[False]["saved_activations_mib"], 3),
            peak_mem_ratio=round(rows[True]["peak_mem_mib"] / max(rows[False]["peak_mem_mib"], 1e-9), 3),
            time_ratio=round(rows[False]["steps_per_s"] / rows[True]["steps_per_s"], 3),
        )), flush=True)


def child(model_name: str, device: str, steps: int, warmup: int, batch: int, threads: int) -> dict:
    """Build one model, time ``steps`` training steps after ``warmup``, return a result row."""
    import torch

    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    torch.set_num_threads(threads)
    from diffusers import UNet2DModel

    from diffusion import UNet

    base_rss = _peak_rss_mib()
    torch.manual_seed(0)
    model = (UNet(**OURS) if model_name == "ours" else UNet2DModel(**PEER)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 1, 28, 28, device=device)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=device)
    use_bf16 = device == "cuda"

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            pred = model(x0 + noise, t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    elapsed, peak = _time_steps(step, warmup, steps, device, base_rss)
    return dict(
        bench="unet_train_step", model=model_name, cls=type(model).__name__, device=device,
        dtype="bf16-autocast" if use_bf16 else "float32", batch=batch, image="28x28x1", threads=threads,
        params=sum(p.numel() for p in model.parameters()), steps=steps, warmup=warmup,
        seconds=round(elapsed, 4), steps_per_s=round(steps / elapsed, 4),
        peak_mem_mib=round(peak, 1), peak_mem_kind="cuda_max_allocated" if device == "cuda" else "rss_growth",
        torch=torch.__version__,
    )


def run_child(model: str, args: argparse.Namespace, device: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, "--device", device, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating measurements per model")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--gradient-checkpointing", metavar="SIZES",
                   help="comma-separated image sizes: measure our U-Net with gradient checkpointing off and on")
    p.add_argument("--child", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--child-gc", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child_gc:
        size, on = args.child_gc.split(":")
        print(json.dumps(child_checkpointing(int(size), on == "1", args.device, args.steps, args.warmup, args.batch,
                                             args.threads)))
        return

    if args.child:
        print(json.dumps(child(args.child, args.device, args.steps, args.warmup, args.batch, args.threads)))
        return

    import torch

    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])
    if args.gradient_checkpointing:
        for device in devices:
            run_checkpointing(args, device)
        return
    for device in devices:
        rows: dict[str, list[dict]] = {"ours": [], "diffusers": []}
        for r in range(args.rounds):
            order = ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")
            for name in order:
                row = run_child(name, args, device)
                row["round"] = r
                rows[name].append(row)
                print(json.dumps(row), flush=True)
        med = {k: statistics.median(x["steps_per_s"] for x in v) for k, v in rows.items()}
        print(json.dumps(dict(
            bench="unet_train_step_summary", device=device, dtype=rows["ours"][0]["dtype"],
            batch=args.batch, threads=args.threads, rounds=args.rounds, steps=args.steps,
            ours_params=rows["ours"][0]["params"], diffusers_params=rows["diffusers"][0]["params"],
            ours_steps_per_s=round(med["ours"], 4), diffusers_steps_per_s=round(med["diffusers"], 4),
            ratio_ours_over_diffusers=round(med["ours"] / med["diffusers"], 3),
            ours_peak_mem_mib=max(x["peak_mem_mib"] for x in rows["ours"]),
            diffusers_peak_mem_mib=max(x["peak_mem_mib"] for x in rows["diffusers"]),
            machine=platform.machine(), cpu_count=os.cpu_count(),
        )), flush=True)


if __name__ == "__main__":
    main()

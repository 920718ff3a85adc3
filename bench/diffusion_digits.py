"""Benchmark: train the DDPM on the offline digits for a fixed CPU budget, then judge it by domain FID/KID.

Prints JSON lines: one for training, one per sampler (DDPM 1000 steps, DDIM 50, DPM-Solver++ 20) with FID/KID
next to the real-vs-real floor (training vs held-out digits at the same N) and the sampling time, and a summary
with the ratios the issue sets goals for (FID <= 2x floor; DPM-Solver++ 20 FID <= 1.1x DDPM 1000 FID).

    python bench/diffusion_digits.py --budget-s 600 --n 400 --grid docs/digits_samples.png

Learning rate (defaults): 100 warm-up steps to 2e-3, then a cosine decay to 0 that follows the wall clock
(`TrainConfig.lr_schedule="cosine"` with `time_budget_s`: progress is elapsed time / budget, because the number of
steps that fit in the budget is not known in advance), so the rate reaches 0 as the budget runs out. Measured on the
2-core machine (seed 0, DPM-Solver++ 20, N = 400): constant 1e-3 (the earlier default) 2.05x-2.14x of the floor,
constant 2e-3 2.13x, cosine 1e-3 2.43x, cosine 2e-3 1.84x, cosine 3e-3 1.97x; averaged over evaluation seeds 0-3,
DPM-Solver++ 20 FID 0.95-0.96 for the constant rates and cosine 1e-3, 0.87-0.91 for cosine 2e-3/3e-3: a modest
gain, of the size of the noise of one N = 400 evaluation (see bench/RESULTS_diffusion.md, 2026-11-25 session 2).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SAMPLERS = (("dpm-solver++", 20), ("ddim", 50), ("ddpm", 1000))


def emit(record: dict) -> None:
    print(json.dumps({"bench": "diffusion_digits", **record}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock budget in seconds")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--n", type=int, default=400, help="samples and real images per set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--dim-mults", default="1,2,2")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    parser.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine", "linear"),
                        help="after warm-up: constant, or decayed to lr x --lr-end-ratio as the budget runs out")
    parser.add_argument("--lr-end-ratio", type=float, default=0.0)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--ema-power", type=float, default=2 / 3)
    parser.add_argument("--ema-inv-gamma", type=float, default=1.0)
    parser.add_argument("--prediction-type", default="epsilon")
    parser.add_argument("--beta-schedule", default="linear")
    parser.add_argument("--loss", default="huber")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared CPU, spinning OpenMP threads cost far more)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="run folder (default runs/bench-digits-<time>)")
    parser.add_argument("--grid", default=None, help="also write a 8x8 DPM-Solver++ sample grid PNG here")
    parser.add_argument("--eval-seeds", default=None,
                        help="comma-separated evaluation seeds (sample noise and reference draw); FID and floor are "
                             "averaged over them (default: --seed only)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the pipeline already in --output")
    parser.add_argument("--samplers", default=",".join(f"{n}:{s}" for n, s in SAMPLERS),
                        help="comma-separated name:steps list")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusion.evaluate import evaluate_model
    from diffusion.sampling import generate, sampling_scheduler, save_grid
    from diffusion.config import TrainConfig
    from diffusion.export import load_pipeline
    from diffusion.train import train

    out = Path(args.output or f"runs/bench-digits-{time.strftime('%Y%m%d-%H%M%S')}")
    config = TrainConfig(
        output_dir=str(out), dataset="digits", image_size=args.image_size, steps=10**9, time_budget_s=args.budget_s,
        batch_size=args.batch_size, lr=args.lr, dim=args.dim, dim_mults=tuple(int(m) for m in args.dim_mults.split(",")),
        attention_heads=1, attention_head_dim=16, ema_decay=args.ema_decay, seed=args.seed, checkpoint_every=1000,
        sample_every=1000, progress=False, lr_schedule=args.lr_schedule, lr_end_ratio=args.lr_end_ratio,
        warmup_steps=args.warmup_steps, ema_warmup=args.ema_warmup, ema_power=args.ema_power,
        ema_inv_gamma=args.ema_inv_gamma, prediction_type=args.prediction_type, beta_schedule=args.beta_schedule,
        loss=args.loss,
    )
    if args.skip_train:
        if args.output is None:
            parser.error("--skip-train needs --output (the run to evaluate)")
        from diffusion.checkpoints import list_checkpoints, load_checkpoint

        train_steps = int(load_checkpoint(list_checkpoints(out)[-1])["step"])
    else:
        start = time.perf_counter()
        result = train(config)
        train_steps = result.step
        emit({"phase": "train", "budget_s": args.budget_s, "seconds": round(time.perf_counter() - start, 1),
              "steps": result.step, "final_loss": result.last_loss, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "output": str(out),
              "settings": {k: getattr(config, k) for k in (
                  "lr", "lr_schedule", "lr_end_ratio", "warmup_steps", "ema_decay", "ema_warmup", "ema_power",
                  "ema_inv_gamma", "prediction_type", "beta_schedule", "loss", "dim")}})

    pipe = load_pipeline(out)
    params = sum(p.numel() for p in pipe.unet.parameters())
    if args.grid:
        g = torch.Generator().manual_seed(args.seed)
        images, _ = generate(pipe.unet, sampling_scheduler(pipe.scheduler, "dpm-solver++"), 64, 20, generator=g)
        emit({"phase": "grid", "path": str(save_grid(images, args.grid, nrow=8, scale=4))})

    eval_seeds = [int(x) for x in args.eval_seeds.split(",")] if args.eval_seeds else [args.seed]
    fids: dict[str, float] = {}
    for item in args.samplers.split(","):
        name, steps = item.rsplit(":", 1)
        reports = []
        for eval_seed in eval_seeds:
            report = evaluate_model(out, n=args.n, scheduler=name, steps=int(steps), seed=eval_seed, pipeline=pipe,
                                    progress=False)
            reports.append(report)
            emit({"phase": "evaluate", "scheduler": name, "steps": int(steps), "n": report.n, "eval_seed": eval_seed,
                  "fid": round(report.fid, 4), "floor_fid": round(report.floor_fid, 4),
                  "fid_ratio_vs_floor": round(report.fid_ratio, 3),
                  "fid_vs_train_images": round(report.fid_train, 4), "kid": round(report.kid, 5),
                  "kid_std": round(report.kid_std, 5), "floor_kid": round(report.floor_kid, 5),
                  "floor_kid_std": round(report.floor_kid_std, 5), "sample_seconds": round(report.sample_seconds, 1),
                  "ms_per_image": round(1000 * report.sample_seconds / report.n, 2),
                  "class_histogram": report.class_histogram, "classifier_accuracy": report.classifier_accuracy,
                  "unet_params": params})
        # One N-sized draw moves the floor by up to ~1.7x (seed to seed), so goals are judged on means over seeds.
        mean_fid = sum(r.fid for r in reports) / len(reports)
        mean_floor = sum(r.floor_fid for r in reports) / len(reports)
        fids[f"{name}:{steps}"] = mean_fid
        if len(reports) > 1:
            emit({"phase": "evaluate_mean", "scheduler": name, "steps": int(steps), "n": args.n,
                  "eval_seeds": eval_seeds, "mean_fid": round(mean_fid, 4), "mean_floor_fid": round(mean_floor, 4),
                  "mean_fid_ratio_vs_floor": round(mean_fid / mean_floor, 3),
                  "fid_min_max": [round(min(r.fid for r in reports), 4), round(max(r.fid for r in reports), 4)]})
    summary: dict = {"phase": "summary", "train_steps": train_steps, "eval_seeds": eval_seeds}
    if "ddpm:1000" in fids and "dpm-solver++:20" in fids:
        summary["dpm20_fid_over_ddpm1000_fid"] = round(fids["dpm-solver++:20"] / fids["ddpm:1000"], 3)
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

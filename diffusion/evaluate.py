"""Offline quality measurement: domain FID/KID from a small classifier trained on the same data.

Inception weights cannot be downloaded offline, so a small CNN trained on the run's own training images provides
the features (torchmetrics' FID/KID accept a custom feature extractor). The number only means something next to
its floor: the same metric between two disjoint sets of real images (training vs held-out) of the same size.
The classifier is cached on disk, keyed by the data and its settings, so evaluation does not retrain it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .files import replace_atomically, write_text_atomically

from .data import label_column, load_images, num_classes, split_holdout, with_image_transform

CLASSIFIER_VERSION = 2  # bump whenever the architecture, training or feature scaling changes


class Classifier(nn.Module):
    """Small CNN: two conv stages and a feature layer whose activations feed FID/KID."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # keep a coarse layout: where the strokes are matters
            nn.Linear(2 * width * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, max(classes, 1))
        self.feature_dim = feature_dim
        # Centring and scaling fitted on the training images: keeps KID's cubic kernel in a sane range.
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.body(x) - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def fit_feature_scale(self, images: torch.Tensor, batch_size: int = 500) -> None:
        """Set the standardisation from the features of ``images``."""
        feats = torch.cat([self.body(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        self.feature_mean.copy_(feats.mean(0))
        # One scale for all features (their RMS spread): per-feature scaling would blow up units that are
        # almost silent on real images but fire on bad samples.
        self.feature_std.fill_(float(feats.var(0).mean().sqrt().clamp_min(1e-6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FeatureExtractor(nn.Module):
    """torchmetrics-facing wrapper: uint8 (B, C, H, W) images in, classifier features out."""

    def __init__(self, classifier: Classifier, image_size: int):
        super().__init__()
        self.classifier = classifier.eval()
        self.image_size = image_size
        self.num_features = classifier.feature_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.classifier.features(x)


@dataclass
class EvalReport:
    """Domain FID/KID of samples next to the real-vs-real floor at the same N."""

    n: int
    scheduler: str
    steps: int
    fid: float
    kid: float
    kid_std: float
    floor_fid: float
    floor_kid: float
    floor_kid_std: float
    fid_ratio: float
    fid_train: float  # samples vs the training images: well below `fid` would hint at memorisation
    sample_seconds: float
    class_histogram: list[int] | None
    classifier_accuracy: float | None
    classifier_path: str | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- classifier
def default_cache_dir() -> Path:
    """$RLGEN_CACHE_DIR, else $XDG_CACHE_HOME/rlgen, else ~/.cache/rlgen."""
    if os.environ.get("RLGEN_CACHE_DIR"):
        return Path(os.environ["RLGEN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlgen"


def _images_tensor(dataset) -> torch.Tensor:
    return torch.stack(dataset[:]["pixel_values"]) if len(dataset) else torch.empty(0)


def _data_key(name: str, images: torch.Tensor, labels: torch.Tensor | None, settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps({"name": name, "v": CLASSIFIER_VERSION, **settings}, sort_keys=True).encode())
    h.update(to_uint8_cpu(images).numpy().tobytes())
    if labels is not None:
        h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def to_uint8_cpu(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int = 15,
                     batch_size: int = 64, seed: int = 0, progress: bool = False) -> Classifier:
    """Fit the CNN on [-1, 1] images with labels (Adam, small random shifts as augmentation)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Classifier(images.shape[1], classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = images.shape[0]
    model.train()
    for _ in tqdm(range(epochs), desc="classifier", disable=not progress, leave=False):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = images[idx]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean())


def cached_classifier(name: str, train_images: torch.Tensor, train_labels: torch.Tensor | None, classes: int,
                      settings: dict[str, Any], held_images: torch.Tensor | None = None,
                      held_labels: torch.Tensor | None = None, cache_dir: str | os.PathLike | None = None,
                      epochs: int = 15, progress: bool = False) -> tuple[Classifier, dict[str, Any], Path]:
    """Load the classifier for this data from the cache, or train it and store it (atomically)."""
    from safetensors.torch import load_file, save_file

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _data_key(name, train_images, train_labels, {**settings, "epochs": epochs, "classes": classes})
    weights, meta_file = cache / "classifiers" / f"{key}.safetensors", cache / "classifiers" / f"{key}.json"
    channels = train_images.shape[1]
    if weights.is_file() and meta_file.is_file():
        try:
            model = Classifier(channels, classes)
            model.load_state_dict(load_file(str(weights)))
            return model.eval(), json.loads(meta_file.read_text()), weights
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, it holds nothing unique
            pass
    if train_labels is None:
        # Unlabelled images: a fixed randomly initialised CNN still gives a consistent feature space.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = Classifier(channels, 1).eval()
        meta: dict[str, Any] = {"trained": False, "accuracy": None}
    else:
        model = train_classifier(train_images, train_labels, classes, epochs=epochs, progress=progress)
        acc = classifier_accuracy(model, held_images, held_labels) if held_images is not None and len(held_images) else None
        meta = {"trained": True, "accuracy": acc}
    model.fit_feature_scale(train_images)
    meta.update(name=name, classes=classes, **settings)
    replace_atomically(weights, lambda tmp: save_file(model.state_dict(), tmp))
    write_text_atomically(meta_file, json.dumps(meta, indent=2))
    return model, meta, weights


# ----------------------------------------------------------------------------- metrics
def fid_kid(extractor: FeatureExtractor, real_u8: torch.Tensor, fake_u8: torch.Tensor, seed: int = 0,
            batch_size: int = 500) -> tuple[float, float, float]:
    """(FID, KID mean, KID std) between two uint8 image sets through the custom feature extractor."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real_u8), len(fake_u8))
    if n < 2:
        raise ValueError(f"need at least 2 images per set for FID/KID, got {n}")
    subset = min(100, n)
    import warnings

    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    kid = KernelInceptionDistance(feature=extractor, normalize=False, subsets=50, subset_size=subset)
    for metric in (fid, kid):
        for imgs, real in ((real_u8, True), (fake_u8, False)):
            for i in range(0, len(imgs), batch_size):
                metric.update(imgs[i:i + batch_size], real=real)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return float(fid.compute()), float(kid_mean), float(kid_std)


def _reference_sets(train: torch.Tensor, held: torch.Tensor | None, n: int, seed: int):
    """(held-out reference, training images, n): samples and training images are both scored against the
    held-out set, which the diffusion model never saw, so copying training images cannot beat the floor."""
    g = torch.Generator().manual_seed(seed)
    if held is None or len(held) == 0:  # no held-out split: two disjoint halves of the training images
        perm = torch.randperm(len(train), generator=g)
        n = min(n, len(train) // 2)
        return train[perm[:n]], train[perm[n:2 * n]], n
    n = min(n, len(held), len(train))
    return held[torch.randperm(len(held), generator=g)[:n]], train[torch.randperm(len(train), generator=g)[:n]], n


def evaluate_model(model_dir: str | os.PathLike, n: int = 500, scheduler: str = "dpm-solver++", steps: int = 20,
                   seed: int = 0, dataset: str | None = None, cache_dir: str | os.PathLike | None = None,
                   batch_size: int = 250, progress: bool = True, pipeline: Any = None) -> EvalReport:
    """Sample ``n`` images from a trained run and report domain FID/KID beside the real-vs-real floor."""
    from .sampling import generate, sampling_scheduler
    from .checkpoints import read_run_config
    from .config import TrainConfig
    from .export import load_pipeline

    if n < 2:
        raise ValueError(f"--n must be at least 2, got {n}")
    pipe = pipeline if pipeline is not None else load_pipeline(model_dir)
    run = read_run_config(model_dir) or TrainConfig()
    notes: list[str] = []
    cfg = pipe.unet.config
    image_size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    name = dataset or run.dataset
    raw = load_images(name)
    train_raw, held_raw = split_holdout(raw, run.holdout_fraction, run.split_seed)
    lbl = label_column(raw)
    classes = num_classes(raw) if lbl else 0
    train_ds = with_image_transform(train_raw, image_size, cfg.in_channels)
    held_ds = with_image_transform(held_raw, image_size, cfg.in_channels) if held_raw is not None else None
    train_x = _images_tensor(train_ds)
    held_x = _images_tensor(held_ds) if held_ds is not None else None
    train_y = torch.tensor(train_raw[lbl]) if lbl else None
    held_y = torch.tensor(held_raw[lbl]) if lbl and held_raw is not None else None
    settings = {"image_size": image_size, "channels": cfg.in_channels}
    clf, meta, clf_path = cached_classifier(name, train_x, train_y, classes, settings, held_x, held_y, cache_dir,
                                            progress=progress)
    if not meta.get("trained"):
        notes.append("unlabelled data: features come from a fixed random CNN, no class histogram")
    extractor = FeatureExtractor(clf, image_size)

    ref, other, n_eff = _reference_sets(train_x, held_x, n, seed)
    if n_eff < n:
        notes.append(f"only {n_eff} real images available per set; N reduced from {n} to {n_eff}")
    sched = sampling_scheduler(pipe.scheduler, scheduler)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    samples, _ = generate(pipe.unet, sched, n_eff, steps, generator=g, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start

    ref_u8, other_u8, fake_u8 = to_uint8_cpu(ref), to_uint8_cpu(other), to_uint8_cpu(samples)
    floor = fid_kid(extractor, ref_u8, other_u8, seed)  # real vs real: held-out vs training images
    got = fid_kid(extractor, ref_u8, fake_u8, seed)  # held-out vs samples
    fid_train = fid_kid(extractor, other_u8, fake_u8, seed)[0]  # training images vs samples
    histogram = None
    if meta.get("trained"):
        with torch.no_grad():
            pred = clf(samples).argmax(1)
        histogram = torch.bincount(pred, minlength=classes).tolist()
    return EvalReport(
        n=n_eff, scheduler=scheduler, steps=steps, fid=got[0], kid=got[1], kid_std=got[2], floor_fid=floor[0],
        floor_kid=floor[1], floor_kid_std=floor[2], fid_ratio=got[0] / floor[0] if floor[0] > 0 else float("inf"),
        fid_train=fid_train,
        sample_seconds=seconds, class_histogram=histogram, classifier_accuracy=meta.get("accuracy"),
        classifier_path=str(clf_path), notes=notes,
    )


def format_report(report: EvalReport) -> str:
    """Human-readable lines for the command line."""
    lines = [
        f"samples: {report.n} with {report.scheduler}, {report.steps} steps ({report.sample_seconds:.1f} s)",
        f"domain FID {report.fid:.3f}   real-vs-real floor {report.floor_fid:.3f}   ratio {report.fid_ratio:.2f}x",
        f"domain FID against the training images {report.fid_train:.3f}",
        f"domain KID {report.kid:.4f} ± {report.kid_std:.4f}   floor {report.floor_kid:.4f} ± {report.floor_kid_std:.4f}",
    ]
    if report.classifier_accuracy is not None:
        lines.append(f"classifier held-out accuracy {report.classifier_accuracy:.3f}")
    if report.class_histogram is not None:
        lines.append("class histogram: " + " ".join(f"{i}:{c}" for i, c in enumerate(report.class_histogram)))
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)

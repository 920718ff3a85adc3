"""diffusion.evaluate: classifier features, FID/KID against the real-vs-real floor, classifier cache."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion.evaluate as deval
from diffusion.config import TrainConfig
from diffusion.data import load_digits_dataset, split_holdout, with_image_transform
from diffusion.evaluate import (
    Classifier,
    FeatureExtractor,
    cached_classifier,
    evaluate_model,
    fid_kid,
    format_report,
    to_uint8_cpu,
)
from diffusion.train import train


SETTINGS = {"image_size": 8, "channels": 1}


@pytest.fixture(scope="module")
def digits8():
    raw = load_digits_dataset()
    train_raw, held_raw = split_holdout(raw, 0.3, seed=0)
    tx = torch.stack(with_image_transform(train_raw, 8)[:]["pixel_values"])
    hx = torch.stack(with_image_transform(held_raw, 8)[:]["pixel_values"])
    return tx, torch.tensor(train_raw["label"]), hx, torch.tensor(held_raw["label"])


@pytest.fixture(scope="module")
def classifier(digits8, tmp_path_factory):
    tx, ty, hx, hy = digits8
    cache = tmp_path_factory.mktemp("cache")
    # The same key evaluate_model uses for 8x8 digits, so the tests below reuse this cached classifier.
    model, meta, path = cached_classifier("digits", tx, ty, 10, SETTINGS, hx, hy, cache)
    return model, meta, path, cache


def test_classifier_learns_digits_and_is_cached(classifier, digits8, monkeypatch):
    model, meta, path, cache = classifier
    tx, ty, hx, hy = digits8
    assert meta["trained"] and meta["accuracy"] > 0.95  # held-out accuracy on 8x8 digits
    assert path.is_file() and path.suffix == ".safetensors"

    def no_training(*a, **k):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(deval, "train_classifier", no_training)
    again, meta2, path2 = cached_classifier("digits", tx, ty, 10, SETTINGS, hx, hy, cache)
    assert path2 == path and meta2["accuracy"] == meta["accuracy"]
    for a, b in zip(again.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_feature_extractor_takes_uint8_and_resizes(classifier):
    extractor = FeatureExtractor(classifier[0], image_size=8)
    imgs = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    feats = extractor(imgs)
    assert feats.shape == (5, extractor.num_features) and extractor.num_features == 64


def test_fid_kid_floor_is_small_and_noise_is_far(classifier, digits8):
    tx, _, hx, _ = digits8
    extractor = FeatureExtractor(classifier[0], 8)
    real_a, real_b = to_uint8_cpu(tx[:300]), to_uint8_cpu(hx[:300])
    same = fid_kid(extractor, real_a, real_a)
    floor = fid_kid(extractor, real_a, real_b)
    noise = to_uint8_cpu(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    far = fid_kid(extractor, real_a, noise)
    assert abs(same[0]) < 1e-3
    assert abs(same[1]) < 3 * same[2] + 1e-6  # KID draws random subsets: zero up to its own spread
    assert floor[0] > 0 and far[0] > 10 * floor[0]
    assert far[1] > floor[1] + 3 * far[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "run"
    cfg = TrainConfig(output_dir=str(out), image_size=8, dim=8, dim_mults=(1, 2), attention_heads=1,
                      attention_head_dim=8, num_train_timesteps=20, batch_size=8, steps=2, sample_every=0,
                      num_preview=4, preview_steps=2, gif_frames=2, progress=False, tensorboard=False)
    train(cfg)
    return out


def test_evaluate_model_reports_fid_next_to_floor(tiny_run, classifier, monkeypatch):
    cache = classifier[3]
    monkeypatch.setattr(deval, "train_classifier", lambda *a, **k: pytest.fail("classifier retrained"))
    report = evaluate_model(tiny_run, n=60, scheduler="ddim", steps=3, cache_dir=cache, progress=False)
    assert report.n == 60 and report.scheduler == "ddim" and report.steps == 3
    assert report.floor_fid > 0 and report.fid > report.floor_fid  # an untrained model is worse than real data
    assert report.fid_ratio == pytest.approx(report.fid / report.floor_fid)
    assert report.fid_train > report.floor_fid  # also far from the training images
    assert len(report.class_histogram) == 10 and sum(report.class_histogram) == 60
    assert report.classifier_accuracy is not None and report.sample_seconds >= 0
    json.dumps(report.to_json())
    text = format_report(report)
    assert "real-vs-real floor" in text and "class histogram" in text


def test_n_larger_than_held_out_is_reduced_with_a_note(tiny_run, classifier):
    report = evaluate_model(tiny_run, n=5000, scheduler="dpm-solver++", steps=2, cache_dir=classifier[3],
                            progress=False)
    assert report.n == 540  # the held-out part of the 1,797 digits
    assert any("reduced" in note for note in report.notes)


def test_unlabelled_folder_uses_fixed_random_features(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    report = evaluate_model(tiny_run, n=8, scheduler="ddim", steps=2, dataset=str(tmp_path),
                            cache_dir=tmp_path / "cache", progress=False)
    assert report.class_histogram is None and report.classifier_accuracy is None
    assert any("unlabelled" in note for note in report.notes)
    assert report.n == 8 and np.isfinite(report.fid)


def test_too_few_images_for_metrics(classifier):
    extractor = FeatureExtractor(classifier[0], 8)
    one = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at least 2"):
        fid_kid(extractor, one, one)


def test_classifier_shapes():
    model = Classifier(channels=3, classes=4, feature_dim=16)
    x = torch.zeros(2, 3, 16, 16)
    assert model(x).shape == (2, 4) and model.features(x).shape == (2, 16)

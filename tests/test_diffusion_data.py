"""diffusion.data: the offline digits default, local image folders, transforms and clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import (
    DataError,
    build_transform,
    load_digits_dataset,
    load_images,
    load_training_data,
    split_holdout,
    with_image_transform,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def test_digits_is_a_real_labelled_dataset(digits):
    import datasets

    assert isinstance(digits, datasets.Dataset)
    assert len(digits) == 1797
    assert digits.features["label"].num_classes == 10
    first = np.asarray(digits[0]["image"])
    assert first.shape == (8, 8) and first.dtype == np.uint8
    assert first.max() == 255 or first.max() > 200  # ink levels 0..16 mapped to 0..255


@pytest.mark.parametrize("size", [16, 32])
def test_digits_upsampled_and_scaled(digits, size):
    ds = with_image_transform(digits.select(range(5)), size, channels=1)
    batch = ds[:5]
    x = torch.stack(batch["pixel_values"])
    assert x.shape == (5, 1, size, size)
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # background is black -> -1
    assert batch["label"] == digits["label"][:5]


def test_rgb_and_flip_transform():
    img = Image.fromarray(np.tile(np.arange(8, dtype=np.uint8)[None, :] * 30, (8, 1)))
    x = build_transform(8, channels=3)(img)
    assert x.shape == (3, 8, 8)
    torch.manual_seed(0)
    flip = build_transform(8, channels=1, random_flip=True)
    outs = {bool(flip(img)[0, 0, 0] > 0) for _ in range(20)}
    assert outs == {True, False}  # flipped sometimes: the bright column moves to the left edge


def test_holdout_split_is_disjoint_and_stratified(digits):
    train, held = split_holdout(digits, 0.3, seed=0)
    assert len(train) + len(held) == 1797 and abs(len(held) - 539) <= 1
    counts = np.bincount(held["label"], minlength=10)
    assert counts.min() >= 50  # every class in the held-out part
    again = split_holdout(digits, 0.3, seed=0)[1]
    assert again["label"] == held["label"]
    assert split_holdout(digits, 0.0)[1] is None


def test_load_training_data_defaults_to_digits():
    train, held = load_training_data(None, image_size=16, holdout_fraction=0.3)
    assert len(train) + len(held) == 1797
    assert train[0]["pixel_values"].shape == (1, 16, 16)


def _write(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_with_mixed_sizes_is_resized(tmp_path):
    _write(tmp_path / "a" / "one.png", (20, 12), (255, 0, 0))
    _write(tmp_path / "a" / "two.png", (7, 9), (0, 255, 0))
    _write(tmp_path / "b" / "three.jpg", (64, 64), (0, 0, 255))
    _write(tmp_path / "b" / "four.png", (5, 30), 128)
    train, held = load_training_data(str(tmp_path), image_size=8, channels=3)
    assert held is None and len(train) == 4
    x = torch.stack(train[:]["pixel_values"])
    assert x.shape == (4, 3, 8, 8)
    assert sorted(set(train[:]["label"])) == [0, 1]  # class folders a, b become labels


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match="no images found in"):
        load_images(str(tmp_path))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "nope"))


def test_unreachable_hub_name_suggests_offline_default():
    with pytest.raises(DataError) as info:
        load_images("no-such-user/no-such-dataset-xyz")
    message = str(info.value)
    assert "--dataset digits" in message and "local image folder" in message
    assert "\n" not in message


def test_bad_channel_count():
    with pytest.raises(DataError, match="channels"):
        build_transform(8, channels=2)

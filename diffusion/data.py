"""Image data for diffusion training through the `datasets` library.

`load_images` accepts a hub name, a local image folder (loaded with the `imagefolder` builder) or the offline
default ``"digits"``: scikit-learn's bundled 1,797 real 8x8 handwritten digits turned into a `datasets.Dataset`,
so training and evaluation work without network. `with_image_transform` attaches torchvision transforms lazily
(`Dataset.with_transform`): resize, center crop, optional flip, grayscale/RGB and scaling to [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import datasets
    from torchvision import transforms

DIGITS = "digits"
"""Name of the offline default dataset (scikit-learn's handwritten digits)."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """Dataset that cannot be loaded or used; the message says what to do instead."""


def load_digits_dataset():
    """Return sklearn's 1,797 digits as a `datasets.Dataset` with `image` (8x8 grayscale PIL) and `label` columns."""
    import datasets
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16 ink levels; map them to 0..255 grayscale.
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "label": bunch.target.tolist()},
        features=features,
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isdir(name)


def _find_images(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


def load_images(name: str | None = DIGITS, split: str = "train"):
    """Load a dataset of images: the offline default, a local folder, or a Hugging Face hub name.

    Raises `DataError` with one clear message when the folder holds no images or the hub cannot be reached.
    """
    if name is None or name == DIGITS:
        return load_digits_dataset()
    import datasets

    if _looks_like_path(name):
        folder = Path(name).expanduser()
        if folder.is_file():
            raise DataError(f"{folder} is a file; pass a folder of images (or a hub dataset name)")
        if not folder.is_dir():
            raise DataError(f"dataset folder {folder} does not exist")
        if not _find_images(folder):
            raise DataError(
                f"no images found in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                f"point --dataset at a folder of images or use the offline default '{DIGITS}'"
            )
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split)
        except Exception as exc:  # noqa: BLE001 - any builder failure becomes one message
            raise DataError(f"could not read images from {folder}: {exc}") from exc
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: same advice
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load dataset '{name}' from the Hugging Face hub ({reason}); "
            f"use the offline default '--dataset {DIGITS}' or a local image folder '--dataset path/to/images'"
        ) from exc


def image_column(dataset) -> str:
    """Name of the first image column (an `Image` feature, else a column called image/img)."""
    import datasets

    for col, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return col
    for col in ("image", "img", "pixel_values"):
        if col in dataset.column_names:
            return col
    raise DataError(f"dataset has no image column (columns: {', '.join(dataset.column_names)})")


def label_column(dataset) -> str | None:
    """Name of the class-label column, or None when the images are unlabelled."""
    import datasets

    for col, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):
            return col
    return "label" if "label" in dataset.column_names else None


def num_classes(dataset) -> int:
    """Number of classes of the label column (0 when unlabelled)."""
    import datasets

    col = label_column(dataset)
    if col is None:
        return 0
    feature = dataset.features[col]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    return int(max(dataset[col])) + 1


def build_transform(image_size: int, channels: int = 1, random_flip: bool = False,
                    center_crop: bool = True) -> transforms.Compose:
    """Torchvision transform from a PIL image of any size/mode to a (C, S, S) float tensor in [-1, 1].

    The short side is resized to ``image_size``, then the square is cut from the centre (``center_crop``) or at a
    random place (diffusers' train_unconditional.py without ``--center_crop``).
    """
    from torchvision import transforms

    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    steps: list[Any] = [
        transforms.Lambda(lambda im: im.convert("L" if channels == 1 else "RGB")),
        # Resize the short side then crop: images of mixed sizes all come out square and equal.
        transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(image_size) if center_crop else transforms.RandomCrop(image_size),
    ]
    if random_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]
    return transforms.Compose(steps)


def with_image_transform(dataset: datasets.Dataset, image_size: int, channels: int = 1, random_flip: bool = False,
                         center_crop: bool = True) -> datasets.Dataset:
    """Attach the transform lazily: items become {"pixel_values": tensor[, "label": int]}.

    Images are decoded here rather than by `datasets`, so that a damaged file (truncated, not an image) raises
    `DataError` naming its path instead of PIL's bare "image file is truncated".
    """
    import datasets

    transform = build_transform(image_size, channels, random_flip, center_crop)
    img_col = image_column(dataset)
    lbl_col = label_column(dataset)
    if isinstance(dataset.features[img_col], datasets.Image):
        dataset = dataset.cast_column(img_col, datasets.Image(decode=False))

    def apply(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"pixel_values": [transform(_to_pil(im)) for im in batch[img_col]]}
        if lbl_col is not None:
            out["label"] = list(batch[lbl_col])
        return out

    return dataset.with_transform(apply)


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and ("path" in image or "bytes" in image):  # an undecoded `datasets.Image` value
        return _decode(image)
    return Image.fromarray(np.asarray(image))


def _decode(value: dict[str, Any]) -> Image.Image:
    """Open and fully read one stored image; any failure is a `DataError` naming the file."""
    import io

    path, data = value.get("path"), value.get("bytes")
    try:
        img = Image.open(io.BytesIO(data)) if data is not None else Image.open(path)
        img.load()  # decode now: a truncated file fails here, not somewhere inside a transform
        return img
    except Exception as exc:  # noqa: BLE001 - truncated, not an image, unreadable: one message naming the file
        where = path if path else "an image stored in the dataset (no file path)"
        raise DataError(f"cannot read image {where}: {exc}; remove or replace the file") from exc


def split_holdout(dataset, holdout_fraction: float, seed: int = 0):
    """Split into (train, held-out) with a fixed seed, stratified when labelled; held-out is None at fraction 0."""
    if holdout_fraction <= 0:
        return dataset, None
    if not 0 < holdout_fraction < 1:
        raise DataError(f"holdout fraction must be in [0, 1), got {holdout_fraction}")
    if len(dataset) < 4:
        raise DataError(f"dataset has only {len(dataset)} images; too few to hold any out")
    lbl = label_column(dataset)
    import datasets

    stratify = lbl if lbl is not None and isinstance(dataset.features[lbl], datasets.ClassLabel) else None
    try:
        parts = dataset.train_test_split(test_size=holdout_fraction, seed=seed, stratify_by_column=stratify)
    except ValueError:  # too few members of some class to stratify
        parts = dataset.train_test_split(test_size=holdout_fraction, seed=seed)
    return parts["train"], parts["test"]


def load_training_data(
    name: str | None = DIGITS,
    image_size: int = 16,
    channels: int = 1,
    random_flip: bool = False,
    holdout_fraction: float = 0.0,
    seed: int = 0,
    center_crop: bool = True,
):
    """Load, split and transform in one call; returns (train, held-out or None) ready for a DataLoader."""
    raw = load_images(name)
    if len(raw) == 0:
        raise DataError(f"dataset '{name}' is empty")
    train, held = split_holdout(raw, holdout_fraction, seed)
    train = with_image_transform(train, image_size, channels, random_flip, center_crop)
    held = with_image_transform(held, image_size, channels, False) if held is not None else None
    return train, held

"""Images for the device: an ``.npz`` (``x_<split>`` uint8 NHWC, ``y_<split>`` ints), an image
folder (``<root>/<class>/*.png|jpg``, or ``<root>/<split>/<class>/...``), or a single image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "check_image_size", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageSet:
    """uint8 images (N, H, W, 3), int labels (N,) or None, class names or None."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(
            "reading image files needs Pillow, which is not installed: `pip install pillow`, or "
            "pass an .npz with x_<split> (uint8 NHWC) and y_<split>"
        ) from e
    return Image


def _read_image(path: Path) -> np.ndarray:
    with _pil().open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_images(path: str | os.PathLike, split: str = "train") -> ImageSet:
    """Load ``split`` of an ``.npz``, an image folder, or one image file (labels None)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSet(_read_image(path)[None], None, None)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            xk, yk = f"x_{split}", f"y_{split}"
            if xk not in data.files:
                raise DataError(f"{path} has no {xk!r}; it holds {sorted(data.files)}")
            x = data[xk]
            y = data[yk].astype(np.int64) if yk in data.files else None
            names = [str(s) for s in data["class_names"]] if "class_names" in data.files else None
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise DataError(f"{path}:{xk} must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
        if y is not None and y.shape != (len(x),):
            raise DataError(f"{path}:{yk} must have shape ({len(x)},), got {y.shape}")
        return ImageSet(x, y, names)
    if path.is_dir():
        root = path / split if (path / split).is_dir() else path
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{root} has no class folders (<root>/<class>/*.png|jpg)")
        images, labels = [], []
        for ci, name in enumerate(classes):
            files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for f in files:
                images.append(_read_image(f))
                labels.append(ci)
        if not images:
            raise DataError(f"{root} holds no .png/.jpg images")
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DataError(f"images in {root} have different sizes {sorted(shapes)}; resize them")
        return ImageSet(np.stack(images), np.asarray(labels, np.int64), classes)
    raise DataError(f"{path}: expected an .npz, an image folder or a .png/.jpg file")


def check_image_size(images: np.ndarray, input_shape: tuple[int, int, int]) -> None:
    """Raise :class:`DataError` unless ``images`` (N, H, W, C) match the encoder's (C, H, W)."""
    c, h, w = input_shape
    if images.shape[1:] != (h, w, c):
        raise DataError(
            f"images are {images.shape[1]}x{images.shape[2]}x{images.shape[3]} (HxWxC) but the "
            f"encoder takes {h}x{w}x{c}; resize the images to {h}x{w} first"
        )

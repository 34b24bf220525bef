"""Eval-time image preprocessing without torch: PIL + numpy, pixel for pixel the torchvision
transform the classifiers are evaluated with (:func:`caspl_plugin.data.unlabeled.eval_transform`:
resize the shorter side with bicubic, centre crop, ``ToTensor``, ``Normalize``).

:func:`open_image` is the one place where the classify paths open an image file.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def open_image(path):
    """The image at ``path`` as an 8-bit RGB ``PIL.Image`` (loaded, file closed): the package's one
    image opener, :func:`caspl_plugin.data.images.open_rgb` (16-bit and alpha handled; no torch)."""
    from ..data.images import open_rgb

    return open_rgb(path)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side ``size`` and the aspect kept, truncated as torchvision does."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def eval_pixels(image, image_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``[3, image_size, image_size]`` float32: resize (bicubic, shorter side), centre crop, normalise."""
    from PIL import Image

    from ..data.images import to_rgb

    image = to_rgb(image)
    new_size = resized_size(image.width, image.height, image_size)
    if new_size != image.size:
        image = image.resize(new_size, Image.BICUBIC)
    top = int(round((image.height - image_size) / 2.0))
    left = int(round((image.width - image_size) / 2.0))
    image = image.crop((left, top, left + image_size, top + image_size))
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((pixels - mean32) / std32, dtype=np.float32)

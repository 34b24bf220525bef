"""Deterministic augmented views: view ``k`` of a file is fully determined by (seed, file key, k).

The augmentation is the authors' (CoOp/Dassl ``random_resized_crop`` + ``random_flip``, see
:func:`caspl_plugin.data.unlabeled.train_transform`): a RandomResizedCrop box drawn by
torchvision's sampling rule (scale 0.08-1, ratio 3/4-4/3, 10 tries then a central crop) and a
horizontal flip with probability 0.5, each view from its own seeded generator. A view is rendered
at any size and normalisation from its parameters, so the student and the teacher see the same
crop, each at its own input size and mean/std.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class AugmentationSettings:
    """The view augmentation (defaults: the authors' phase-1 recipe)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_probability: float = 0.5
    interpolation: str = "bicubic"

    def to_json(self) -> dict:
        data = asdict(self)
        data["scale"], data["ratio"] = list(self.scale), list(self.ratio)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "AugmentationSettings":
        return cls(tuple(data["scale"]), tuple(data["ratio"]), float(data["flip_probability"]), str(data["interpolation"]))


@dataclass(frozen=True)
class ViewParams:
    """One view: the crop box (top, left, height, width) in source pixels and the flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def view_generator(seed: int, key: str, view: int) -> torch.Generator:
    """The generator of view ``view`` of file ``key`` (independent of any other view or file)."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}\0{int(view)}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_view(image_width: int, image_height: int, seed: int, key: str, view: int,
                augmentation: AugmentationSettings = AugmentationSettings()) -> ViewParams:
    """View ``view`` of a ``image_width`` x ``image_height`` image, by torchvision's RandomResizedCrop rule."""
    g = view_generator(seed, key, view)
    width, height = int(image_width), int(image_height)
    area = height * width
    scale, ratio = augmentation.scale, augmentation.ratio
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            box = (top, left, h, w)
            break
    if box is None:  # torchvision's fallback: a central crop at the closest allowed ratio
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(torch.rand(1, generator=g).item() < augmentation.flip_probability)
    return ViewParams(*box, flip)


def render_view(image, params: ViewParams, size: int, mean: Sequence[float], std: Sequence[float],
                interpolation: str = "bicubic") -> Tensor:
    """The view's pixels: crop, resize to ``size`` (antialiased, as torchvision's transform on PIL
    images), flip, to a float tensor, normalise with ``mean``/``std``. ``image`` is an RGB PIL image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = InterpolationMode(interpolation)
    crop = TF.resized_crop(image, params.top, params.left, params.height, params.width, [int(size), int(size)], mode, antialias=True)
    if params.flip:
        crop = TF.hflip(crop)
    return TF.normalize(TF.to_tensor(crop), list(mean), list(std))

"""Unlabeled images of a domain (any folder tree) and class-name files, for the boosting phase.

Unreadable or corrupt images never stop training: :func:`~caspl_plugin.data.images.probe_images`
finds them before training; a read that still fails at run time is skipped, counted and reported.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from .classnames import read_class_names  # noqa: F401  (the one class-names reader, re-exported)
from .images import open_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursive, sorted); a clear error if there is none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"No images in {root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return files


class UnlabeledImages(Dataset):
    """Images of a folder tree (opened with :func:`~caspl_plugin.data.images.open_rgb`), transformed;
    a failed read yields ``None`` (the engine's :func:`~caspl_plugin.engine.collate_items` skips and counts it)."""

    def __init__(self, files: Sequence[Path], transform: Callable):
        self.files, self.transform = list(files), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            return self.transform(open_rgb(path)), str(path)
        except Exception as error:  # any unreadable file is skipped, never fatal
            logger.debug("Skipping unreadable image %s: %s", path, error)
            return None, str(path)


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], scale=(0.08, 1.0)):
    """CoOp/Dassl training augmentation: RandomResizedCrop (bicubic) + horizontal flip + CLIP normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(image_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """Resize (bicubic) + center crop + CLIP normalisation, as Dassl's test transform."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])

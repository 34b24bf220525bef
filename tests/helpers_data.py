"""Tiny on-disk datasets in the CoOp layouts (8x8 images), for the dataset and Dassl tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from PIL import Image


def write_image(path: Path, seed: int = 0) -> Path:
    """An 8x8 RGB image; JPEG or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = ((37 * seed) % 256, (91 * seed + 40) % 256, (17 * seed + 200) % 256)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def make_split_dataset(
    dataset_dir: Path,
    image_subdir: str,
    split_name: str,
    classnames: Sequence[str],
    counts: tuple[int, int, int] = (3, 1, 2),
    flat: bool = False,
) -> dict:
    """Images plus ``split_zhou_<split_name>.json`` with ``counts`` (train, val, test) per class.

    ``flat`` puts every image directly in the image dir as ``<class>_<n>.jpg`` (Oxford Pets);
    otherwise ``<class>/<n>.jpg`` (DTD). Returns the split content.
    """
    image_dir = dataset_dir / image_subdir if image_subdir else dataset_dir
    split = {"train": [], "val": [], "test": []}
    number = 0
    for label, classname in enumerate(classnames):
        for key, count in zip(split, counts):
            for _ in range(count):
                relpath = f"{classname}_{number}.jpg" if flat else f"{classname}/{number}.jpg"
                write_image(image_dir / relpath, seed=number)
                split[key].append([relpath, label, classname])
                number += 1
    (dataset_dir / f"split_zhou_{split_name}.json").write_text(json.dumps(split))
    return split


def make_imagenet(
    dataset_dir: Path, wnids: Sequence[str], names: Sequence[str], n_train: int = 3, n_val: int = 2
) -> None:
    """``images/{train,val}/<wnid>/*.JPEG`` plus ``classnames.txt``."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    for index, wnid in enumerate(wnids):
        for split, count in (("train", n_train), ("val", n_val)):
            for n in range(count):
                write_image(dataset_dir / "images" / split / wnid / f"{wnid}_{n}.JPEG", seed=index * 10 + n)


def make_class_folders(folder: Path, classnames: Sequence[str], per_class: int = 4, suffix: str = ".png") -> None:
    """``<folder>/<class>/<n><suffix>``."""
    for index, classname in enumerate(classnames):
        for n in range(per_class):
            write_image(folder / classname / f"{n}{suffix}", seed=index * 10 + n)

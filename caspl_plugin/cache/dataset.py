"""The deterministic view schedule as a dataset: epoch ``e`` shows view ``e mod K`` of every image.

One dataset serves both sides of the equivalence: online (the teacher's image tower computes the
features of each view on the fly) and cached (the features and the view parameters are read from
a :class:`~caspl_plugin.cache.store.TeacherViewCache`). Either way the student is fed the view's
pixels rendered at its own size and normalisation, and the item is ``(pixels, path,
{"teacher_features": Tensor[D]})`` (the loop's data protocol); an unreadable file yields
``(None, path)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from torch.utils.data import Dataset

from ..data.images import open_rgb

from .store import CacheError, TeacherViewCache, digest_files, file_key
from .views import AugmentationSettings, ViewParams, render_view, sample_view

logger = logging.getLogger(__name__)


class TeacherViewDataset(Dataset):
    """Images with their teacher view features, on a seeded per-epoch view schedule."""

    def __init__(
        self,
        files: Sequence[Path],
        root: str | Path,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        views: int,
        seed: int = 1,
        augmentation: AugmentationSettings = AugmentationSettings(),
        teacher=None,
        cache: Optional[TeacherViewCache] = None,
    ):
        if (teacher is None) == (cache is None):
            raise ValueError("give exactly one of teacher (online features) or cache (cached features)")
        self.root = Path(root)
        self.files = [Path(f) for f in files]
        self.keys = [file_key(f, self.root) for f in self.files]
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.views, self.seed, self.augmentation = int(views), int(seed), augmentation
        self.teacher, self.cache = teacher, cache
        self.epoch = 0

    @classmethod
    def from_cache(cls, cache: TeacherViewCache, files: Sequence[Path], root: str | Path, *, image_size: int,
                   mean: Sequence[float], std: Sequence[float], teacher_identity: Optional[dict] = None,
                   augmentation: Optional[AugmentationSettings] = None, views: Optional[int] = None,
                   seed: Optional[int] = None) -> "TeacherViewDataset":
        """The cached dataset of ``files``, after checking that the folder (every file's digest),
        the teacher, the augmentation, K and the seed match the cache (None: not checked); files the
        precompute found unreadable are left out (and logged)."""
        current = digest_files(files, root, {**cache.files, **cache.index.get("unreadable", {})})
        cache.check({
            "teacher": teacher_identity,
            "augmentation": None if augmentation is None else augmentation.to_json(),
            "views": views, "seed": seed,
        }, current)
        readable = [f for f in files if file_key(f, root) in cache.files]
        if len(readable) < len(files):
            logger.warning("%d image(s) were unreadable when the cache was made and are left out", len(files) - len(readable))
        return cls(readable, root, image_size=image_size, mean=mean, std=std, views=cache.views,
                   seed=cache.index["seed"], augmentation=AugmentationSettings.from_json(cache.index["augmentation"]), cache=cache)

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` uses view ``epoch mod K``."""
        self.epoch = int(epoch)

    @property
    def view(self) -> int:
        return self.epoch % self.views

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path, key, k = self.files[index], self.keys[index], self.view
        try:
            image = open_rgb(path)
        except Exception as error:  # counted and reported by the loop, never fatal
            logger.debug("Skipping unreadable image %s: %s", path, error)
            return None, str(path)
        if self.cache is not None:
            (top, left, height, width, flip), features = self.cache.view(key, k)
            params = ViewParams(top, left, height, width, flip)
            _check_cached_view(self.cache, key, k, params, features, image)
        else:
            params = sample_view(image.width, image.height, self.seed, key, k, self.augmentation)
            teacher = self.teacher
            pixels = render_view(image, params, teacher.image_size, teacher.mean.flatten().tolist(), teacher.std.flatten().tolist(),
                                 self.augmentation.interpolation)
            device = teacher.text_features.device
            features = teacher.image_features(pixels[None].to(device))[0].cpu()
        student = render_view(image, params, self.image_size, self.mean, self.std, self.augmentation.interpolation)
        return student, str(path), {"teacher_features": features}


def _check_cached_view(cache: TeacherViewCache, key: str, view: int, params: ViewParams, features, image) -> None:
    """A cached view must be a crop box inside the image and finite features (else :class:`CacheError`)."""
    import torch

    inside = (0 <= params.top and 0 <= params.left and params.height >= 1 and params.width >= 1
              and params.top + params.height <= image.height and params.left + params.width <= image.width)
    if not inside:
        raise CacheError(f"Teacher-view cache {cache.folder}: view {view} of {key!r} is the box (top {params.top}, left "
                         f"{params.left}, height {params.height}, width {params.width}), not inside the {image.width}x"
                         f"{image.height} image; rebuild the cache with `caspl teacher-cache`")
    if not bool(torch.isfinite(features).all()):
        raise CacheError(f"Teacher-view cache {cache.folder}: view {view} of {key!r} has non-finite teacher features; "
                         "rebuild the cache with `caspl teacher-cache`")


def open_cached_run(folder, files: Sequence[Path], root: str | Path, student, teacher: str, teacher_weights=None, *,
                    weights_dir=None, device=None, epochs: Optional[int] = None,
                    augmentation: Optional[AugmentationSettings] = None):
    """What a training run from a cache needs: ``(text_tower, dataset)``.

    Only the teacher's text tower is built (for the class features); the cache must match the
    folder (every file), the teacher (architecture and weights digest) and the run's augmentation
    (default: the recipe's), else :class:`~caspl_plugin.cache.store.CacheMismatchError` names what differs.
    """
    from ..boosting.teacher import load_text_tower

    cache = TeacherViewCache.open(folder)
    tower = load_text_tower(teacher, teacher_weights, weights_dir=weights_dir, device=device)
    dataset = TeacherViewDataset.from_cache(
        cache, files, root, image_size=student.image_size, mean=student.mean, std=student.std,
        teacher_identity={"arch": tower.arch, "weights_digest": tower.weights_digest},
        augmentation=augmentation or AugmentationSettings(),
    )
    if epochs is not None and epochs > cache.views:
        logger.warning("%d epochs on a cache of %d views: epoch e uses view e mod %d, so views repeat", epochs, cache.views, cache.views)
    return tower, dataset


def open_cached_domains(folder, domains: Sequence, student, teacher: str, teacher_weights=None, *, sampling: str = "size",
                        weights_dir=None, device=None, epochs: Optional[int] = None, augmentation: Optional[AugmentationSettings] = None):
    """What a multi-domain training run from a cache needs: ``(text_tower, MultiDomainImages)``.

    ``folder`` holds one cache per domain (``folder/<domain name>``, as ``caspl teacher-cache
    --domains`` writes it); each is checked like a single cache against its domain's image folder
    (``domain.root``), the teacher and the augmentation. Files the precompute found unreadable are
    left out of their domain; a domain left with no image is an error.
    """
    import dataclasses

    from ..boosting.teacher import load_text_tower
    from ..data.domains import MultiDomainImages
    from .store import DOMAINS_FILE, check_domain_folder, domain_cache_folders, read_domains_index

    folders = domain_cache_folders(folder, [d.name for d in domains])
    if (Path(folder) / DOMAINS_FILE).is_file():  # written by `caspl teacher-cache --domains`: verified too
        read_domains_index(folder)
    for name in folders:
        check_domain_folder(folder, name)
    missing = [name for name, path in folders.items() if not TeacherViewCache.exists(path)]
    if missing:
        raise FileNotFoundError(f"teacher-view cache {folder} has no cache for domain(s) {missing} (expected "
                                f"{', '.join(str(folders[n]) for n in missing)}); make them with `caspl teacher-cache --domains ...`")
    tower = load_text_tower(teacher, teacher_weights, weights_dir=weights_dir, device=device)
    identity = {"arch": tower.arch, "weights_digest": tower.weights_digest}
    kept, datasets, views = [], [], set()
    for d in domains:
        if d.root is None:
            raise ValueError(f"domain {d.name!r} has no image folder (root) to match its cache's file keys against")
        cache = TeacherViewCache.open(folders[d.name])
        dataset = TeacherViewDataset.from_cache(cache, d.files, d.root, image_size=student.image_size, mean=student.mean,
                                                std=student.std, teacher_identity=identity,
                                                augmentation=augmentation or AugmentationSettings())
        if not dataset.files:
            raise ValueError(f"domain {d.name!r}: none of its images was readable when its cache was made")
        if epochs is not None and epochs > cache.views:
            logger.warning("domain %s: %d epochs on a cache of %d views: views repeat", d.name, epochs, cache.views)
        kept.append(dataclasses.replace(d, files=tuple(dataset.files)))
        datasets.append(dataset)
        views.add(cache.views)
    if len(views) > 1:
        logger.warning("the domains' caches have different view counts %s: epoch e uses view e mod K of each", sorted(views))
    return tower, MultiDomainImages(kept, sampling=sampling, datasets=datasets)


def dassl_augmentation(cfg) -> AugmentationSettings:
    """The view augmentation a Dassl config asks for (``INPUT.TRANSFORMS``, ``RRCROP_SCALE``, ``INTERPOLATION``)."""
    transforms = list(cfg.INPUT.TRANSFORMS)
    if "random_resized_crop" not in transforms:
        raise ValueError(f"A teacher-view cache needs random_resized_crop in INPUT.TRANSFORMS, got {transforms}")
    return AugmentationSettings(
        scale=tuple(float(v) for v in cfg.INPUT.RRCROP_SCALE),
        flip_probability=0.5 if "random_flip" in transforms else 0.0,
        interpolation=str(cfg.INPUT.INTERPOLATION),
    )


def dassl_cached_dataset(cfg, impaths: Sequence[str], tower) -> TeacherViewDataset:
    """The cached dataset of a Dassl train split (file keys relative to ``DATASET.ROOT``), checked
    against the folder, the teacher ``tower`` and the config's augmentation."""
    cache = TeacherViewCache.open(cfg.TRAINER.BOOSTDISTILL.TEACHER_CACHE)
    files = sorted({Path(p) for p in impaths})
    return TeacherViewDataset.from_cache(
        cache, files, cfg.DATASET.ROOT, image_size=int(cfg.INPUT.SIZE[0]), mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD,
        teacher_identity={"arch": tower.arch, "weights_digest": tower.weights_digest}, augmentation=dassl_augmentation(cfg),
    )

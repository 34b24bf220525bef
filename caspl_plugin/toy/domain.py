"""ToyShapes: a synthetic 36-class domain of coloured shapes, generated in memory.

Classes are ``"<colour> <shape>"`` for 6 colours x 6 shapes, every word a single CLIP BPE token.
The base/novel split is a checkerboard over (colour, shape): class ``(c, s)`` is *base* iff
``(c + s) % 2 == 0``, so every colour and every shape occurs in both halves (18 + 18 classes).

**Label order** (one order everywhere: tensors, ``classnames.txt``, the CoOp split JSON): the 18 base
classes first, then the 18 novel classes, each half in colour-major order of ``(colour, shape)``.
Hence CoOp's base/new subsampling (sorted labels, first ``ceil(n / 2)`` are base) selects exactly the
checkerboard base classes. :data:`CLASSES` gives the ``(colour_index, shape_index)`` of every label.

Images are rendered with batched tensor ops: each shape is an inequality mask on a per-image affine
coordinate grid (position, size, rotation), supersampled and averaged for anti-aliasing, composited in
a jittered class colour over a tinted, smoothly varying background, plus pixel noise. Everything is
deterministic by ``seed`` (a local :class:`torch.Generator`; the global RNG is never touched).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "COLOURS", "SHAPES", "CLASSES", "NUM_CLASSES", "CAPTION_TEMPLATES", "ToyBatch", "ImageFolderPaths",
    "class_names", "base_classes", "novel_classes", "base_labels", "novel_labels", "is_base",
    "generate", "captions", "size_word", "position_phrase", "shape_mask",
    "write_image_folder", "write_coop_layout", "COOP_DATASET_DIR", "COOP_SPLIT_FILE",
    "VARIANTS", "VARIANT_TEMPLATES",
]

logger = logging.getLogger(__name__)

#: colour name -> (hue in degrees); words chosen to be single CLIP BPE tokens
COLOURS: Dict[str, float] = {
    "red": 0.0, "orange": 30.0, "yellow": 55.0, "green": 125.0, "blue": 220.0, "purple": 285.0,
}
HUE_JITTER_DEG = 6.0
SIZE_RANGE = (0.4, 0.85)          # shape radius as a fraction of half the image side
MAX_ROTATION_DEG = 15.0
PIXEL_NOISE_STD = 0.03
BACKGROUND_NOISE_STD = 0.06       # amplitude of the smooth background variation


# --- canonical shapes: inequality masks in a frame where the shape fits the unit disk, y pointing up ---

def _circle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * x + y * y <= 0.95 ** 2


def _square(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x.abs(), y.abs()) <= 0.7


def _triangle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Equilateral, pointing up, circumradius 1, centred on its centroid."""
    return (y >= -0.5) & (math.sqrt(3.0) * x.abs() + y <= 1.0)


def _star(x: torch.Tensor, y: torch.Tensor, points: int = 5, inner: float = 0.38) -> torch.Tensor:
    """Five-pointed star with outer radius 1, a spike pointing up."""
    sector = 2 * math.pi / points
    angle = torch.atan2(x, y)  # angle from the upward axis
    offset = torch.remainder(angle + sector / 2, sector) - sector / 2  # to the nearest spike
    radius = torch.sqrt(x * x + y * y)
    px, py = radius * torch.cos(offset.abs()), radius * torch.sin(offset.abs())
    # inside iff on the origin's side of the edge from the spike tip (1, 0) to the inner vertex
    ix, iy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    return (ix - 1.0) * py - iy * (px - 1.0) >= 0


def _cross(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An upright plus sign."""
    ax, ay = x.abs(), y.abs()
    return ((ax <= 0.25) & (ay <= 0.95)) | ((ay <= 0.25) & (ax <= 0.95))


def _heart(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The classic implicit heart ``(x^2 + y^2 - 1)^3 <= x^2 y^3``, centred and scaled into the unit disk."""
    x, y = x * 1.27, y * 1.27 + 0.22
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


#: shape name -> canonical inequality mask; names are single CLIP BPE tokens
SHAPES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "circle": _circle, "square": _square, "triangle": _triangle,
    "star": _star, "cross": _cross, "heart": _heart,
}


def shape_mask(shape: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of ``shape`` at canonical coordinates (unit disk, y up)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    return SHAPES[shape](x, y)


# --- classes and the base/novel split ---

def is_base(colour_index: int, shape_index: int) -> bool:
    """The checkerboard split: ``(colour, shape)`` is a base class iff ``(colour + shape) % 2 == 0``."""
    return (colour_index + shape_index) % 2 == 0


def _class_table() -> Tuple[Tuple[int, int], ...]:
    grid = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    return tuple([cs for cs in grid if is_base(*cs)] + [cs for cs in grid if not is_base(*cs)])


#: label -> (colour_index, shape_index): base classes first, then novel, each colour-major
CLASSES: Tuple[Tuple[int, int], ...] = _class_table()
NUM_CLASSES = len(CLASSES)
_NUM_BASE = sum(is_base(*cs) for cs in CLASSES)
_COLOUR_NAMES, _SHAPE_NAMES = list(COLOURS), list(SHAPES)


def class_names() -> List[str]:
    """All 36 class names, indexed by label."""
    return [f"{_COLOUR_NAMES[c]} {_SHAPE_NAMES[s]}" for c, s in CLASSES]


def base_labels() -> List[int]:
    return list(range(_NUM_BASE))


def novel_labels() -> List[int]:
    return list(range(_NUM_BASE, NUM_CLASSES))


def base_classes() -> List[str]:
    return class_names()[:_NUM_BASE]


def novel_classes() -> List[str]:
    return class_names()[_NUM_BASE:]


# --- rendering ---

class ToyBatch(NamedTuple):
    """A generated batch. ``positions`` are shape centres ``(x, y)`` in ``[-1, 1]`` (x right, y down);
    ``sizes`` are shape radii as a fraction of half the image side; ``masks`` mark the shape's pixels."""
    images: torch.Tensor     # [N, 3, H, W] float in [0, 1]
    labels: torch.Tensor     # [N] int64
    sizes: torch.Tensor      # [N] float
    positions: torch.Tensor  # [N, 2] float
    masks: torch.Tensor      # [N, H, W] bool, shape coverage >= 1/2


def _hsv_to_rgb(hue_deg: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB; inputs of shape [N], output [N, 3]."""
    h = torch.remainder(hue_deg, 360.0)[:, None] / 60.0
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0]) + h, 6.0)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[:, None] * (1.0 - saturation[:, None] * ramp)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _as_labels(num_per_class: Optional[int], labels) -> torch.Tensor:
    if (num_per_class is None) == (labels is None):
        raise ValueError("pass exactly one of num_per_class (int) or labels (sequence of class labels)")
    if labels is None:
        if not isinstance(num_per_class, int) or num_per_class < 1:
            raise ValueError(f"num_per_class must be a positive int, got {num_per_class!r}")
        return torch.arange(NUM_CLASSES).repeat_interleave(num_per_class)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if len(bad):
        raise ValueError(f"label {bad[0].item()} out of range; expected labels in [0, {NUM_CLASSES})")
    return labels


def _canonical_coords(axis: torch.Tensor, centres: torch.Tensor, sizes: torch.Tensor,
                      angles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel grid ``axis`` x ``axis`` mapped into each shape's frame: translate, rotate back, scale, y up."""
    dx = axis[None, None, :] - centres[:, 0, None, None]
    dy = axis[None, :, None] - centres[:, 1, None, None]
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    scale = sizes[:, None, None]
    return (cos * dx + sin * dy) / scale, (sin * dx - cos * dy) / scale


def _coverage(shape_ids: torch.Tensor, centres: torch.Tensor, sizes: torch.Tensor, angles: torch.Tensor,
              image_size: int, supersample: int) -> torch.Tensor:
    """Anti-aliased shape coverage [N, H, W] in [0, 1]: supersampled inequality masks, one batched op per shape."""
    side = image_size * supersample
    axis = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1  # pixel centres in [-1, 1]
    inside = torch.zeros(len(shape_ids), side, side)
    for index, draw in enumerate(SHAPES.values()):
        rows = (shape_ids == index).nonzero(as_tuple=True)[0]
        if len(rows):
            inside[rows] = draw(*_canonical_coords(axis, centres[rows], sizes[rows], angles[rows])).float()
    return F.avg_pool2d(inside[:, None], supersample)[:, 0]


#: Domain variants: the same 36 classes and base/novel split, other image statistics.
VARIANTS: Dict[str, str] = {
    "default": "filled shapes over a tinted, smoothly varying background (the shipped CLIPs' domain)",
    "plain": "filled shapes over one flat grey background, no background variation",
    "textured": "filled shapes over a high-contrast striped background (random frequency and angle)",
    "outline": "outline-only shapes (a ring of the shape's border) over the default background",
    "small": "the default rendering with shapes at 70 % of the size",
    "pastel": "another palette: washed-out (low-saturation) shapes over a light background",
}
#: A hand-made teacher template per variant, from the captions the toy CLIPs were trained on.
VARIANT_TEMPLATES: Dict[str, str] = {
    "default": "a photo of a {}.", "plain": "a photo of a {}.", "textured": "a {} on a noisy background.",
    "outline": "a drawing of a {}.", "small": "an image of a {}.", "pastel": "a {}.",
}
OUTLINE_INNER = 0.45     # the outline is the shape minus the same shape scaled by this factor
SMALL_SCALE = 0.7


def generate(num_per_class: Optional[int] = None, seed: int = 0, image_size: int = 32, *,
             labels: Optional[Union[Sequence[int], torch.Tensor]] = None, supersample: int = 2,
             variant: str = "default") -> ToyBatch:
    """Render images for ``num_per_class`` images of every class (grouped by label) or for given ``labels``.

    ``variant`` (see :data:`VARIANTS`) changes the image statistics, never the classes. Deterministic by
    ``seed``; all randomness comes from a local generator (``"default"`` draws exactly what it always did).
    """
    labels = _as_labels(num_per_class, labels)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    n = len(labels)
    generator = torch.Generator().manual_seed(int(seed))
    table = torch.tensor(CLASSES, dtype=torch.long)
    colour_ids, shape_ids = table[labels, 0], table[labels, 1]

    sizes = _uniform(n, *SIZE_RANGE, generator)
    if variant == "small":
        sizes = sizes * SMALL_SCALE
    # keep the whole shape (which fits the unit disk) inside the image
    centres = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - sizes)[:, None]
    angles = _uniform(n, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, generator) * math.pi / 180
    hues = torch.tensor(list(COLOURS.values()))[colour_ids] + _uniform(n, -HUE_JITTER_DEG, HUE_JITTER_DEG, generator)
    saturation, value = _uniform(n, 0.75, 1.0, generator), _uniform(n, 0.8, 1.0, generator)
    if variant == "pastel":
        saturation = saturation * 0.6
    foreground = _hsv_to_rgb(hues, saturation, value)
    background = _hsv_to_rgb(_uniform(n, 0.0, 360.0, generator), _uniform(n, 0.0, 0.3, generator),
                             _uniform(n, 0.1, 0.55, generator))
    if variant == "pastel":
        background = 0.45 + 0.5 * background
    smooth = torch.randn(n, 3, 4, 4, generator=generator) * BACKGROUND_NOISE_STD
    smooth = F.interpolate(smooth, size=(image_size, image_size), mode="bilinear", align_corners=False)
    pixel_noise = torch.randn(n, 3, image_size, image_size, generator=generator) * PIXEL_NOISE_STD
    backdrop = background[:, :, None, None] + smooth
    if variant == "plain":
        backdrop = torch.full_like(backdrop, 0.35)
    elif variant == "textured":
        backdrop = backdrop + _stripes(n, image_size, generator)

    coverage = _coverage(shape_ids, centres, sizes, angles, image_size, supersample)
    if variant == "outline":
        inner = _coverage(shape_ids, centres, sizes * OUTLINE_INNER, angles, image_size, supersample)
        coverage = (coverage - inner).clamp_(0.0, 1.0)
    alpha = coverage[:, None]
    images = (1 - alpha) * backdrop + alpha * foreground[:, :, None, None]
    images = (images + pixel_noise).clamp_(0.0, 1.0)
    return ToyBatch(images, labels, sizes, centres, coverage >= 0.5)


def _stripes(n: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Grey stripes ``[N, 1, H, W]`` of amplitude ±0.2, random period (3-8 px), angle and phase."""
    axis = torch.arange(image_size, dtype=torch.float32)
    angle = _uniform(n, 0.0, math.pi, generator)[:, None, None]
    period = _uniform(n, 3.0, 8.0, generator)[:, None, None]
    phase = _uniform(n, 0.0, 2 * math.pi, generator)[:, None, None]
    along = axis[None, None, :] * torch.cos(angle) + axis[None, :, None] * torch.sin(angle)
    return (0.2 * torch.sign(torch.sin(2 * math.pi * along / period + phase)))[:, None]


# --- captions ---

#: templates for contrastive pre-training; every one names the class
CAPTION_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {name}.",
    "a {name}.",
    "{name}",
    "an image of a {name}.",
    "a drawing of a {name}.",
    "a {size} {name}.",
    "a photo of a {size} {name}.",
    "a {name} {where}.",
    "a {size} {name} {where}.",
    "there is a {name} {where}.",
    "a {name} on a noisy background.",
    "a picture of the {size} {name}.",
)
_POSITION_PHRASES = (
    ("in the top left corner", "at the top", "in the top right corner"),
    ("on the left", "in the center", "on the right"),
    ("in the bottom left corner", "at the bottom", "in the bottom right corner"),
)
_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def size_word(size: float) -> str:
    """``small`` / ``medium`` / ``large`` by thirds of the size range."""
    low, high = SIZE_RANGE
    third = (size - low) / (high - low) * 3
    return "small" if third < 1 else "medium" if third < 2 else "large"


def position_phrase(x: float, y: float) -> str:
    """Where a centre ``(x, y)`` in ``[-1, 1]`` (y down) lies on a 3 x 3 grid, e.g. ``"on the left"``."""
    def third(v: float) -> int:
        return min(2, max(0, int((v + 1) / 2 * 3)))
    return _POSITION_PHRASES[third(y)][third(x)]


def captions(labels: Union[Sequence[int], torch.Tensor], sizes: Union[Sequence[float], torch.Tensor],
             positions: Union[Sequence[Sequence[float]], torch.Tensor],
             generator: Optional[torch.Generator] = None) -> List[str]:
    """One caption per image from :data:`CAPTION_TEMPLATES`, chosen with ``generator`` (seed 0 if None)."""
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    sizes = torch.as_tensor(sizes).reshape(-1).tolist()
    positions = torch.as_tensor(positions).reshape(-1, 2).tolist()
    if not len(labels) == len(sizes) == len(positions):
        raise ValueError(f"labels, sizes and positions differ in length: {len(labels)}, {len(sizes)}, {len(positions)}")
    names = class_names()
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    choice = torch.randint(len(CAPTION_TEMPLATES), (len(labels),), generator=generator).tolist()
    return [
        _ARTICLE.sub("an ", CAPTION_TEMPLATES[t].format(name=names[label], size=size_word(size),
                                                        where=position_phrase(*xy)))
        for t, label, size, xy in zip(choice, labels, sizes, positions)
    ]


# --- writers ---

COOP_DATASET_DIR = "toy_shapes"
COOP_SPLIT_FILE = "split_zhou_ToyShapes.json"


class ImageFolderPaths(NamedTuple):
    images: Path       # folder of PNGs in nested sub-folders, names not revealing the class
    class_names: Path  # one class name per line, in label order


def _to_uint8_hwc(images: torch.Tensor):
    return (images * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _save_pngs(images: torch.Tensor, paths: Sequence[Path]) -> None:
    from PIL import Image

    for array, path in zip(_to_uint8_hwc(images), paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, compress_level=1)


def _split_seeds(seed: int, count: int) -> List[int]:
    """Independent child seeds, so that different parent seeds never share a stream."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randint(2 ** 62, (count,), generator=generator).tolist()


def _publish(build: Callable[[Path], None], target: Path, overwrite: bool) -> Path:
    """Build a directory in a temporary sibling, then move it to ``target`` in one rename."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_image_folder(root: Union[str, Path], num_per_class: int, seed: int = 0, image_size: int = 32,
                       overwrite: bool = False, variant: str = "default") -> ImageFolderPaths:
    """Write an unlabeled image folder for phase 1: ``root/images/<a>/<b>/img_<k>.png`` (shuffled, so
    neither folder nor name reveals the class) and ``root/classnames.txt`` (all classes, label order)."""
    batch = generate(num_per_class, seed=seed, image_size=image_size, variant=variant)
    order = torch.randperm(len(batch.labels), generator=torch.Generator().manual_seed(_split_seeds(seed, 1)[0]))

    def build(staging: Path) -> None:
        paths = [staging / "images" / f"part{k % 3}" / f"sub{k // 3 % 2}" / f"img_{k:05d}.png"
                 for k in range(len(order))]
        _save_pngs(batch.images[order], paths)
        (staging / "classnames.txt").write_text("\n".join(class_names()) + "\n", encoding="utf-8")

    root = _publish(build, Path(root), overwrite)
    logger.info("wrote %d toy images to %s", len(order), root / "images")
    return ImageFolderPaths(root / "images", root / "classnames.txt")


def write_coop_layout(root: Union[str, Path], dataset_dir: str = COOP_DATASET_DIR, train_per_class: int = 16,
                      val_per_class: int = 4, test_per_class: int = 20, seed: int = 0, image_size: int = 32,
                      overwrite: bool = False) -> Path:
    """Write a CoOp-style dataset: ``<root>/<dataset_dir>/images/<class_folder>/<split>_<k>.png`` and
    ``<root>/<dataset_dir>/split_zhou_ToyShapes.json`` = ``{"train"|"val"|"test": [[relpath, label,
    classname], ...]}``, relpaths relative to ``images/``. Labels put base classes first, so CoOp's
    base/new subsampling yields this domain's checkerboard split. Returns ``<root>/<dataset_dir>``."""
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    names = class_names()
    batches = {split: generate(count, seed=split_seed, image_size=image_size)
               for (split, count), split_seed in zip(counts.items(), _split_seeds(seed, len(counts)))}

    def build(staging: Path) -> None:
        split = {}
        for split_name, batch in batches.items():
            labels = batch.labels.tolist()
            relpaths = [f"{names[label].replace(' ', '_')}/{split_name}_{k:05d}.png" for k, label in enumerate(labels)]
            _save_pngs(batch.images, [staging / "images" / rel for rel in relpaths])
            split[split_name] = [[rel, label, names[label]] for rel, label in zip(relpaths, labels)]
        (staging / COOP_SPLIT_FILE).write_text(json.dumps(split, indent=1), encoding="utf-8")

    target = _publish(build, Path(root) / dataset_dir, overwrite)
    logger.info("wrote the CoOp layout of %d toy classes to %s", NUM_CLASSES, target)
    return target

"""The CoOp benchmark datasets: names, on-disk layouts, zero-shot templates. No Dassl import.

Each :class:`DatasetSpec` says where a dataset lives under ``DATASET.ROOT`` and how its splits are
defined (``split_source``):

- ``"split_json"``: CoOp's ``split_zhou_<Name>.json`` in the dataset directory (the protocol);
- ``"fgvc_txt"``: FGVC-Aircraft's ``variants.txt`` and ``images_variant_{train,val,test}.txt``;
- ``"imagenet_folders"``: ``images/{train,val}/<wnid>/`` plus ``classnames.txt``; val is the test set;
- ``"test_folders"`` / ``"test_numbered_folders"``: ImageNet variants, test only, one folder per
  class named by wnid (or by class index for ImageNet-V2) plus ``classnames.txt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..names import did_you_mean

SPLIT_SOURCES = ("split_json", "fgvc_txt", "imagenet_folders", "test_folders", "test_numbered_folders")


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset as CoOp reads it."""

    name: str  # Dassl ``DATASET.NAME`` (the reader's class name)
    config: str  # stem of ``configs/datasets/<config>.yaml``
    dataset_dir: str  # directory under ``DATASET.ROOT``
    image_dir: str  # image directory relative to ``dataset_dir`` ("" = ``dataset_dir`` itself)
    split_source: str  # one of SPLIT_SOURCES
    template: str  # CoOp's zero-shot template (``CUSTOM_TEMPLATES``)
    num_classes: int

    @property
    def split_file(self) -> Optional[str]:
        """The split JSON's file name, for ``split_json`` datasets."""
        return f"split_zhou_{self.name}.json" if self.split_source == "split_json" else None

    @property
    def test_only(self) -> bool:
        return self.split_source.startswith("test_")


_PHOTO = "a photo of a {}."
_IMAGENET_CLASSNAMES = "classnames.txt"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("ImageNet", "imagenet", "imagenet", "images", "imagenet_folders", _PHOTO, 1000),
        DatasetSpec("Caltech101", "caltech101", "caltech-101", "101_ObjectCategories", "split_json", _PHOTO, 100),
        DatasetSpec("OxfordPets", "oxford_pets", "oxford_pets", "images", "split_json",
                    "a photo of a {}, a type of pet.", 37),
        DatasetSpec("StanfordCars", "stanford_cars", "stanford_cars", "", "split_json", _PHOTO, 196),
        DatasetSpec("OxfordFlowers", "oxford_flowers", "oxford_flowers", "jpg", "split_json",
                    "a photo of a {}, a type of flower.", 102),
        DatasetSpec("Food101", "food101", "food-101", "images", "split_json", "a photo of {}, a type of food.", 101),
        DatasetSpec("FGVCAircraft", "fgvc_aircraft", "fgvc_aircraft", "images", "fgvc_txt",
                    "a photo of a {}, a type of aircraft.", 100),
        DatasetSpec("SUN397", "sun397", "sun397", "SUN397", "split_json", _PHOTO, 397),
        DatasetSpec("DescribableTextures", "dtd", "dtd", "images", "split_json", "{} texture.", 47),
        DatasetSpec("EuroSAT", "eurosat", "eurosat", "2750", "split_json", "a centered satellite photo of {}.", 10),
        DatasetSpec("UCF101", "ucf101", "ucf101", "UCF-101-midframes", "split_json",
                    "a photo of a person doing {}.", 101),
        DatasetSpec("ImageNetV2", "imagenetv2", "imagenetv2", "imagenetv2-matched-frequency-format-val",
                    "test_numbered_folders", _PHOTO, 1000),
        DatasetSpec("ImageNetSketch", "imagenet_sketch", "imagenet-sketch", "images", "test_folders", _PHOTO, 1000),
        DatasetSpec("ImageNetA", "imagenet_a", "imagenet-adversarial", "imagenet-a", "test_folders", _PHOTO, 200),
        DatasetSpec("ImageNetR", "imagenet_r", "imagenet-rendition", "imagenet-r", "test_folders", _PHOTO, 200),
    )
}

#: CoOp's zero-shot template per ``DATASET.NAME`` (the teacher's text prompt in phase 1).
TEMPLATES: dict[str, str] = {name: spec.template for name, spec in DATASETS.items()}

#: EuroSAT folder names -> the descriptive class names CoOp's split file uses.
EUROSAT_NEW_CNAMES: dict[str, str] = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec for a ``DATASET.NAME`` or a config-file stem (``"DescribableTextures"`` or ``"dtd"``)."""
    if name in DATASETS:
        return DATASETS[name]
    for spec in DATASETS.values():
        if spec.config == name:
            return spec
    configs = sorted(spec.config for spec in DATASETS.values())
    raise KeyError(
        f"Unknown dataset {name!r}: expected one of {sorted(DATASETS)} or a config name {configs}."
        + did_you_mean(name, [*DATASETS, *configs])
    )


def template_for(dataset_name: str, default: Optional[str] = None) -> str:
    """CoOp's zero-shot template for a dataset; ``default`` (if given) for datasets outside the table."""
    try:
        return dataset_spec(dataset_name).template
    except KeyError:
        if default is not None:
            return default
        raise


#: CoOp's 80 ImageNet prompt templates (from CLIP's prompt-engineering notebook), in CoOp's order.
IMAGENET_TEMPLATES_80: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

#: PromptSRC's 60 templates (its ``fixed_embeddings`` anchor): "a photo of a {}." first, then the
#: rest of CoOp's first 60 (``trainers/imagenet_templates.py`` of PromptSRC has exactly this list).
IMAGENET_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",) + tuple(
    t for t in IMAGENET_TEMPLATES_80[:60] if t != "a photo of a {}."
)

"""ToyShapes: a tiny synthetic domain (36 coloured shapes, checkerboard base/novel split) for demos and tests.

Imports artifacts (its weights are verified artifacts) only.
"""
from .domain import (
    CAPTION_TEMPLATES,
    CLASSES,
    COLOURS,
    COOP_DATASET_DIR,
    COOP_SPLIT_FILE,
    NUM_CLASSES,
    SHAPES,
    VARIANT_TEMPLATES,
    VARIANTS,
    ImageFolderPaths,
    ToyBatch,
    base_classes,
    base_labels,
    captions,
    class_names,
    generate,
    is_base,
    novel_classes,
    novel_labels,
    position_phrase,
    shape_mask,
    size_word,
    write_coop_layout,
    write_image_folder,
)

__all__ = [
    "CAPTION_TEMPLATES", "CLASSES", "COLOURS", "COOP_DATASET_DIR", "COOP_SPLIT_FILE", "NUM_CLASSES", "SHAPES", "VARIANTS", "VARIANT_TEMPLATES",
    "ImageFolderPaths", "ToyBatch", "base_classes", "base_labels", "captions", "class_names", "generate",
    "is_base", "novel_classes", "novel_labels", "position_phrase", "shape_mask", "size_word",
    "write_coop_layout", "write_image_folder",
]

"""Shared pieces of the host-project tests: the host trainers on the tiny DTD-layout data and boosting
artifacts of the host CLIP's geometry."""
from __future__ import annotations

import torch

from helpers_dassl import tiny_cfg
from host_project import trainers as host
from host_project.openai_clip import GEOMETRIES

from caspl_plugin.artifacts.boosting import BoostingArtifact

TINY = GEOMETRIES["host-tiny"]
TEXT_WIDTH, VISION_WIDTH, BASE = TINY["text_width"], TINY["vision_width"], (TINY["image_size"] // TINY["patch_size"]) ** 2 + 1
HOST_GEOMETRY = {"backbone": "host-tiny", "arch": "openai-clip", "text_width": TEXT_WIDTH, "text_depth": 3,
                 "vision_width": VISION_WIDTH, "vision_depth": 3}


def build(root, out, trainer, *opts):
    """The host trainer (or ``CasPL_<host trainer>``) on the tiny DTD-layout data, 1 shot of the base classes."""
    from dassl.engine import build_trainer

    cfg = tiny_cfg(root, out, trainer, "MODEL.BACKBONE.NAME", "host-tiny", "DATASET.NUM_SHOTS", 1,
                   "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", True)
    cfg.defrost()
    host.extend_cfg(cfg)  # what the host's train.py does
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    torch.manual_seed(0)  # the host's context init
    return build_trainer(cfg)


def save_artifact(path, text=None, vision=None, geometry=HOST_GEOMETRY) -> str:
    BoostingArtifact.from_group_tensors(text, vision, student=geometry).save(path)
    return str(path)


def random_artifact(path, text=(2, 2), vision=(2, 3), seed=0) -> str:
    """Boosting tokens ``(depth, n)`` per encoder, large enough to change every output."""
    g = torch.Generator().manual_seed(seed)
    return save_artifact(path, torch.randn(*text, TEXT_WIDTH, generator=g), torch.randn(*vision, VISION_WIDTH, generator=g))


def images(n=2, seed=1):
    return torch.randn(n, 3, TINY["image_size"], TINY["image_size"], generator=torch.Generator().manual_seed(seed))

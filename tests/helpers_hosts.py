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


# --- hand-built forward passes from the host's own modules ----------------------------------------

def run_block(block, x):
    """A block's own computation, without any prompt replacement (the host's or ours)."""
    x = x + block.attention(block.ln_1(x))
    return x + block.mlp(block.ln_2(x))


def seq_first(tokens, rows):
    return tokens.unsqueeze(1).expand(-1, rows, -1)


def hand_image(tower, pixels, boosting):
    """``[CLS][patches] + pos, [boosting][host VPT]`` -> ln_pre -> blocks, each prompt slice replaced up to its depth."""
    blocks = tower.transformer.resblocks
    host = [None] + [getattr(b, "VPT_shallow", None) for b in blocks[1:]]
    x = tower.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([tower.class_embedding.expand(len(pixels), 1, -1), x], dim=1) + tower.positional_embedding
    layer0 = [boosting[0]] + ([tower.VPT] if hasattr(tower, "VPT") else [])
    x = torch.cat([x] + [t.expand(len(pixels), -1, -1) for t in layer0], dim=1)
    x = tower.ln_pre.forward(x).permute(1, 0, 2)  # forward(): without the hooks under test
    nb = boosting.shape[1]
    for i, block in enumerate(blocks):
        ours = seq_first(boosting[i], len(pixels)) if 0 < i < len(boosting) else x[BASE:BASE + nb]
        theirs = seq_first(host[i], len(pixels)) if host[i] is not None else x[BASE + nb:]
        x = run_block(block, torch.cat([x[:BASE], ours, theirs]))
    return tower.ln_post(x[0]) @ tower.proj

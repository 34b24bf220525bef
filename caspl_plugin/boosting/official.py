"""Convert the authors' released phase-1 checkpoints into a :class:`BoostingArtifact`.

The official phase-1 trainer saves Dassl checkpoints (``model.pth.tar-20``) holding
``{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}``; the state dict is the whole
model (student, teacher image encoder, prompts) and the scheduler entry pickles a scheduler
object, which is why ``torch.load(weights_only=True)`` refuses them. They are read with
:class:`~caspl_plugin.artifacts.checkpoint_reader.CheckpointReader`, which executes nothing and
reads only the prompt tensors:

- text layer 0:    ``prompt_learner_teacher.ctx``                            ``[n_text, 512]``
- vision layer 0:  ``image_encoder.VPT_FIRST``                               ``[n_vision, 768]``
- deep, block i:   ``{text,image}_encoder.transformer.resblocks.{i}.VPT_shallow_FIRST``, i = 1..depth-1
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..data.classnames import read_class_names
from ..artifacts.boosting import BoostingArtifact
from ..artifacts.checkpoint_reader import CheckpointError, CheckpointReader, TensorRef

__all__ = ["import_official", "read_class_names", "read_official_prompts", "student_geometry"]

logger = logging.getLogger(__name__)

LAYER0_KEYS = {"text": "prompt_learner_teacher.ctx", "vision": "image_encoder.VPT_FIRST"}
_DEEP_KEY = re.compile(r"^(text|image)_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow_FIRST$")


def student_geometry(name: str) -> dict:
    """``Backbone.describe()``-style geometry of a ViT CLIP, read from its config (no model is built)."""
    import open_clip

    from ..clip import resolve_model_name

    arch = resolve_model_name(name, quick_gelu=True)
    config = open_clip.get_model_config(arch)
    vision, text = config["vision_cfg"], config["text_cfg"]
    if not isinstance(vision.get("layers"), int):
        raise ValueError(f"student {name!r} is not a ViT ({arch} has vision layers {vision.get('layers')!r})")
    return {
        "backbone": name,
        "arch": arch,
        "text_width": text.get("width", 512),
        "text_depth": text.get("layers", 12),
        "vision_width": vision.get("width", 768),
        "vision_depth": vision["layers"],
        "embed_dim": config["embed_dim"],
        "context_length": text.get("context_length", 77),
        "image_size": vision.get("image_size", 224),
    }


def _state_dict(root: Any, path: str) -> dict:
    state = root.get("state_dict", root) if isinstance(root, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict (top level is {type(root).__name__})")
    return {key.removeprefix("module."): value for key, value in state.items() if isinstance(key, str)}


def _stack_encoder(state: dict, name: str, path: str) -> Optional[torch.Tensor]:
    """``[depth, n, width]`` fp32 prompts of one encoder, or None when it has none."""
    prefix = "text" if name == "text" else "image"
    deep = {}
    for key, value in state.items():
        match = _DEEP_KEY.match(key)
        if match and match.group(1) == prefix:
            deep[int(match.group(2))] = value
    first = state.get(LAYER0_KEYS[name])
    if first is None:
        if deep:
            raise CheckpointError(f"{path}: deep {name} prompts without layer-0 prompts {LAYER0_KEYS[name]!r}")
        return None
    if sorted(deep) != list(range(1, len(deep) + 1)):
        raise CheckpointError(
            f"{path}: {name} deep prompts sit at blocks {sorted(deep)}; expected contiguous blocks 1..depth-1"
        )
    rows = [first] + [deep[i] for i in range(1, len(deep) + 1)]
    if not all(isinstance(row, TensorRef) for row in rows):
        raise CheckpointError(f"{path}: {name} prompt entries are not all tensors")
    shapes = {tuple(row.size) for row in rows}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise CheckpointError(f"{path}: {name} prompts have shapes {sorted(shapes)}; expected one [n, width] shape")
    return torch.stack([row.load().to(torch.float32) for row in rows])


def read_official_prompts(ckpt_path: str | os.PathLike) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], dict]:
    """``(text, vision, info)`` from an official checkpoint; tensors are fp32 ``[depth, n, width]``.

    ``info`` holds the file name, its epoch and the optimiser settings it recorded (when plain values).
    """
    path = os.fspath(ckpt_path)
    with CheckpointReader(path) as reader:
        root = reader.load()
        state = _state_dict(root, path)
        text, vision = _stack_encoder(state, "text", path), _stack_encoder(state, "vision", path)
    if text is None and vision is None:
        raise CheckpointError(
            f"{path} holds no boosting prompts: expected {' / '.join(LAYER0_KEYS.values())} among its "
            f"{len(state)} state-dict entries"
        )
    info: dict[str, Any] = {"file": os.path.basename(path)}
    if isinstance(root, dict) and isinstance(root.get("epoch"), int):
        info["epoch"] = root["epoch"]
    optimizer = root.get("optimizer") if isinstance(root, dict) else None
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if isinstance(groups, list) and groups and isinstance(groups[0], dict):
        for key in ("initial_lr", "momentum", "weight_decay"):
            if isinstance(groups[0].get(key), (int, float)):
                info[f"optimizer_{key}"] = groups[0][key]
    return text, vision, info


def _dataset_from_path(path: str) -> Optional[str]:
    """The dataset folder of the official layout ``.../<dataset>/shots_<k>/...``, if present."""
    parts = Path(path).parts
    for index in range(1, len(parts)):
        if parts[index].startswith("shots_"):
            return parts[index - 1]
    return None


def import_official(
    ckpt_path: str | os.PathLike,
    out_path: Optional[str | os.PathLike],
    *,
    student: str = "ViT-B/16",
    teacher: str = "ViT-L/14",
    template: Optional[str] = None,
    class_names: Optional[Sequence[str] | str | os.PathLike] = None,
    dataset: Optional[str] = None,
) -> BoostingArtifact:
    """Convert an official phase-1 checkpoint into a boosting artifact (written to ``out_path`` if given).

    Args:
        student: the backbone the prompts were learned on; its widths and depths must fit them.
        teacher: recorded in the metadata (the official teacher is OpenAI ViT-L/14).
        template: the teacher's text template, recorded in the metadata.
        class_names: a list, or a path to a file with one class name per line (the checkpoint has none).
        dataset: recorded in the metadata; defaults to the folder before ``shots_*`` in the path.
    """
    path = os.fspath(ckpt_path)
    text, vision, info = read_official_prompts(path)
    if isinstance(class_names, (str, os.PathLike)):
        class_names = read_class_names(class_names)
    geometry = student_geometry(student)
    artifact = BoostingArtifact.from_group_tensors(
        text,
        vision,
        student=geometry,
        teacher=teacher,
        teacher_weights="openai",
        template=template,
        class_names=class_names,
        dataset=dataset or _dataset_from_path(path),
        training={key: value for key, value in info.items() if key != "file"},
        source={"kind": "official CasPL phase-1 checkpoint", "file": info["file"], "epoch": info.get("epoch")},
    )
    artifact.check_compatible(geometry)
    if out_path is not None:
        artifact.save(out_path)
    logger.info(
        "converted %s: %d text tokens x depth %d, %d vision tokens x depth %d",
        path, artifact.n_text, artifact.depth_text, artifact.n_vision, artifact.depth_vision,
    )
    return artifact

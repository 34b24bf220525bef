"""``CasPL_<X>``: any registered Dassl trainer ``X`` with frozen boosting prompts cascaded in.

The wrapper builds ``X`` exactly as ``X`` defines it, then — after ``X.build_model`` — loads the
boosting artifact named by ``TRAINER.CASPL.BOOSTING``, finds ``X``'s CLIP with a
:class:`~caspl_plugin.plugin.adapters.ClipAdapter`, checks the artifact against it and attaches the
group. ``X``'s optimizer, losses, checkpoints and evaluation are untouched: the boosting tensors are
never in ``X``'s optimizer. A small registered record carries the artifact's hash through Dassl's own
checkpoints, so reloading with a different artifact is refused.
"""
from __future__ import annotations

import logging
import os.path as osp

import torch
from torch import nn

from ..artifacts.boosting import ArtifactMismatchError, BoostingArtifact
from .config import BOOSTING_FILE

logger = logging.getLogger(__name__)

#: Dassl model name of the artifact record (its checkpoint folder under OUTPUT_DIR)
RECORD = "caspl_boosting"


class BoostingRecord(nn.Module):
    """The attached artifact's sha256 as a buffer; loading a checkpoint with another hash fails."""

    def __init__(self, sha256: str, path: str):
        super().__init__()
        self.path = path
        self.register_buffer("sha256", torch.tensor(list(bytes.fromhex(sha256)), dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "sha256")
        if saved is not None and not torch.equal(saved.to(self.sha256.device), self.sha256):
            raise ArtifactMismatchError(
                f"This checkpoint was trained with boosting artifact {bytes(saved.tolist()).hex()[:16]}..., but "
                f"{self.path} ({bytes(self.sha256.tolist()).hex()[:16]}...) is attached; set TRAINER.CASPL.BOOSTING "
                "to the artifact used for training"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def boosting_path(cfg) -> str:
    """``TRAINER.CASPL.BOOSTING``: an artifact file, or a BoostDistill ``OUTPUT_DIR`` holding one."""
    value = str(cfg.TRAINER.CASPL.BOOSTING or "")
    if not value:
        raise FileNotFoundError(
            f"{cfg.TRAINER.NAME} needs boosting prompts: set TRAINER.CASPL.BOOSTING to the artifact written by "
            f"BoostDistill (its OUTPUT_DIR or the {BOOSTING_FILE} inside it), or one made by `caspl distill`"
        )
    path = osp.join(value, BOOSTING_FILE) if osp.isdir(value) else value
    if not osp.isfile(path):
        raise FileNotFoundError(f"TRAINER.CASPL.BOOSTING: no boosting artifact at {path}")
    return path


def _modules_of(trainer) -> list[str]:
    found = []
    for name, value in vars(trainer).items():
        if isinstance(value, nn.Module):
            found.append(f"{name}: {type(value).__module__}.{type(value).__qualname__}")
    return found


def find_adapter(trainer):
    """The first adapter that recognises the trainer's CLIP, and its handle."""
    from .manager import get_plugin_manager

    hook_results = get_plugin_manager().hook.caspl_clip_adapters()
    adapters = [adapter for result in hook_results if result for adapter in result]
    for adapter in adapters:
        handle = adapter.find(trainer)
        if handle is not None:
            return adapter, handle
    raise TypeError(
        f"CasPL cannot find a CLIP it knows in trainer {type(trainer).__name__}: no adapter "
        f"({', '.join(a.name for a in adapters)}) recognised any of its modules "
        f"[{'; '.join(_modules_of(trainer)) or 'none'}]. Write a ClipAdapter for this model "
        "(caspl_plugin.plugin.adapters) and return it from a `caspl_clip_adapters` hook "
        "implementation registered under the 'caspl_plugin' entry-point group."
    )


def attach_boosting(trainer) -> BoostingRecord:
    """Load, check and attach the configured boosting prompts to a built trainer."""
    from ..methods.cascade import boosting_group_from_artifact

    cfg = trainer.cfg
    path = boosting_path(cfg)
    artifact = BoostingArtifact.load(path)
    adapter, handle = find_adapter(trainer)
    learnable = bool(cfg.TRAINER.CASPL.LEARNABLE_BOOSTING)
    group = boosting_group_from_artifact(artifact, adapter.geometry(handle), learnable=learnable).to(trainer.device)
    adapter.attach(handle, group, trainer)
    trainer.boosting_group = group
    if learnable:  # the paper's ablation: the boosting prompts get their own optimizer
        from dassl.optim import build_lr_scheduler, build_optimizer

        optim = build_optimizer(group, cfg.OPTIM)
        trainer.register_model("boosting", group, optim, build_lr_scheduler(optim, cfg.OPTIM))
    record = BoostingRecord(artifact.content_sha256, path).to(trainer.device)
    trainer.register_model(RECORD, record, None, None)
    spec = group.spec
    logger.info(
        "CasPL: attached %s (%d+%d tokens, depth %d/%d, %s) to %s via %s",
        path, spec.n_text, spec.n_vision, spec.depth_text, spec.depth_vision,
        "learnable" if learnable else "frozen", type(trainer).__name__, adapter.name,
    )
    return record


def make_cascade_trainer(base: type) -> type:
    """``CasPL_<base>``: ``base`` with the configured boosting prompts attached after it is built."""
    from .manager import CASCADE_PREFIX

    def build_model(self):
        base.build_model(self)
        attach_boosting(self)

    name = CASCADE_PREFIX + base.__name__
    return type(name, (base,), {
        "build_model": build_model,
        "__module__": __name__,
        "__doc__": f"{base.__name__} with frozen CasPL boosting prompts (TRAINER.CASPL.BOOSTING) cascaded in.",
    })

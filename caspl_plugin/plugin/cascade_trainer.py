"""``CasPL_<X>``: any registered Dassl trainer ``X`` with frozen boosting prompts cascaded in.

The wrapper builds ``X`` exactly as ``X`` defines it, then — after ``X.build_model`` — loads the
boosting artifact named by ``TRAINER.CASPL.BOOSTING``, finds ``X``'s CLIP with a
:class:`~caspl_plugin.plugin.adapters.ClipAdapter`, checks the artifact against it and attaches the
group. ``X``'s optimizer, losses, checkpoints and evaluation are untouched: the boosting tensors are
never in ``X``'s optimizer. A small registered record carries the artifact's hash (with the depth rule
and seed when ``BOOSTING_DEPTH method``) through Dassl's own checkpoints, so reloading with different
boosting prompts is refused.

What the trainer class and the config already show is decided before ``X`` builds anything (Dassl
calls ``check_cfg`` first, before the data loader and the model): a trainer that cannot take boosting
prompts has no ``CasPL_`` form at all (:func:`caspl_plugin.plugin.manager.cascade_refusal`); in
``check_cfg`` the artifact is read and checked, the adapter that claims ``X`` refuses what it cannot
serve (:meth:`ClipAdapter.check_config`), and a backbone open_clip knows by name is checked against the
artifact (:func:`check_backbone`). What only the built model tells (which adapter, the CLIP's real
geometry, a boosted anchor in a host's own model) is checked right after ``X.build_model``.

One summary line goes to Dassl's log (stdout, which Dassl's ``setup_logger`` copies into ``log.txt``),
with the host's learnable parameters counted as the host trains them (``requires_grad``, in its
optimizers) beside the boosting parameters.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Optional

import torch
from torch import nn

from ..artifacts.boosting import ArtifactMismatchError, BoostingArtifact
from ..artifacts.store import ArtifactError
from ..methods.cascade import run_seed
from ..methods.promptsrc import ANCHORS
from .adapters import CascadeRefused, ClipAdapter, backbone_geometry
from .config import BOOSTING_FILE, CASCADE_BASE, CASCADE_PREFIX
from .plugins import get_plugin_manager

logger = logging.getLogger(__name__)

#: Dassl model name of the artifact record (its checkpoint folder under OUTPUT_DIR)
RECORD = "caspl_boosting"
#: ``TRAINER.CASPL.ANCHOR``: the regularisers' anchor is the vanilla CLIP, or CLIP + boosting prompts


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
                "(and BOOSTING_DEPTH / BOOSTING_SEED) to what was used for training"
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


def boosting_seed(cfg) -> int:
    """The seed of the depth rule's fillers: ``TRAINER.CASPL.BOOSTING_SEED``, or with -1 (the default)
    the run's seed (``SEED``; what the global RNG was seeded with when SEED < 0), as the authors draw them."""
    seed = int(cfg.TRAINER.CASPL.BOOSTING_SEED)
    if seed >= 0:
        return seed
    return int(cfg.SEED) if int(cfg.SEED) >= 0 else run_seed()


def clip_adapters() -> list[ClipAdapter]:
    """Every plugin's adapters, in the order they are tried (later-registered plugins first)."""
    return [adapter for result in get_plugin_manager().hook.caspl_clip_adapters() if result for adapter in result]


def find_adapter(trainer):
    """The first adapter that recognises the trainer's CLIP, and its handle."""
    adapters = clip_adapters()
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


def check_cascade_cfg(cfg, trainer_name: str) -> BoostingArtifact:
    """Checks made before the host builds anything: the plugin's nodes, the cascade options, and the
    artifact (exists, readable, a boosting artifact, its hash). Returns the loaded artifact."""
    from ..methods.cascade import check_boosting_depth
    from .cfg_guard import require_nodes

    require_nodes(cfg, ["CASPL"], trainer_name)
    node = cfg.TRAINER.CASPL
    require_keys = [k for k in ("BOOSTING", "LEARNABLE_BOOSTING", "ANCHOR", "BOOSTING_DEPTH", "BOOSTING_SEED") if k not in node]
    if require_keys:
        raise KeyError(f"{trainer_name}: TRAINER.CASPL lacks {require_keys}; call caspl_plugin.plugin.extend_cfg(cfg)")
    try:
        check_boosting_depth(node.BOOSTING_DEPTH)
    except ValueError as error:
        raise ValueError(f"TRAINER.CASPL.BOOSTING_DEPTH: {error}") from None
    if node.ANCHOR not in ANCHORS:
        raise ValueError(f"TRAINER.CASPL.ANCHOR must be one of {ANCHORS}, got {node.ANCHOR!r}")
    path = boosting_path(cfg)
    try:
        return BoostingArtifact.load(path)
    except ArtifactError as error:
        raise ArtifactError(f"TRAINER.CASPL.BOOSTING: {error}") from error
    except Exception as error:  # unreadable file, not safetensors, ...
        raise ArtifactError(f"TRAINER.CASPL.BOOSTING: cannot read a boosting artifact from {path}: {error}") from error


def check_backbone(cfg, artifact: BoostingArtifact) -> None:
    """Before the host builds anything: ``MODEL.BACKBONE.NAME``, when open_clip knows the name, against
    the artifact (widths, depths, an image tower that can hold vision tokens). Other names are checked
    against the built CLIP only."""
    name = str(cfg.MODEL.BACKBONE.NAME)
    geometry = backbone_geometry(name)
    if geometry is None:
        return
    learned_on = artifact.metadata["student"]["backbone"]
    if geometry["vision_tower"] != "ViT":
        if artifact.n_vision:
            raise CascadeRefused(
                f"MODEL.BACKBONE.NAME {name}: its image encoder is a {geometry['vision_tower']}, not a transformer, so "
                f"the artifact's {artifact.n_vision} vision boosting tokens have nowhere to go; use the backbone the "
                f"boosting prompts were learned on ({learned_on})"
            )
        return
    try:
        artifact.check_compatible(geometry)
    except ArtifactMismatchError as error:
        raise ArtifactMismatchError(
            f"MODEL.BACKBONE.NAME {name} (checked before the host builds its model): {error}. Use the backbone the "
            f"boosting prompts were learned on ({learned_on}), or TRAINER.CASPL.BOOSTING prompts learned on {name}"
        ) from None


def check_host(name: str, base: type, cfg, artifact: BoostingArtifact) -> Optional[ClipAdapter]:
    """Decide ``name`` (``CasPL_<base>``) from the class and the config, before the host builds anything.

    The adapters are asked in order whether ``base`` is theirs (:meth:`ClipAdapter.claim`); the first
    that does not say "surely not" decides: a claiming adapter refuses what the config shows it cannot
    serve (:meth:`ClipAdapter.check_config`), an undecided one leaves the question to the built model.
    When every adapter says "surely not", ``base`` is refused here. Returns the claiming adapter, if any.
    """
    adapters = clip_adapters()
    owner = None
    for adapter in adapters:
        verdict = adapter.claim(base, cfg)
        if verdict is False:
            continue
        owner = adapter if verdict else None
        break
    else:
        raise CascadeRefused(
            f"{name}: no CLIP adapter ({', '.join(a.name for a in adapters) or 'none'}) "
            f"serves trainer {base.__name__} ({base.__module__}). Write a ClipAdapter for its model "
            "(caspl_plugin.plugin.adapters) and return it from a `caspl_clip_adapters` hook implementation "
            "registered under the 'caspl_plugin' entry-point group."
        )
    if owner is not None:
        owner.check_config(base, cfg, artifact)
    check_backbone(cfg, artifact)
    return owner


def host_learnable(trainer, group) -> tuple[int, int]:
    """``(trained, idle)`` parameter counts of the host, the boosting group's excluded: ``trained`` have
    ``requires_grad`` and sit in one of the host's optimizers (what it trains); ``idle`` have
    ``requires_grad`` but sit in no optimizer. Frozen parameters an optimizer holds (hosts that give
    Dassl's ``build_optimizer`` their whole model) are not counted."""
    boosting = {id(p) for p in group.parameters()}
    optimized = {}
    for optim in getattr(trainer, "_optims", {}).values():
        for param_group in getattr(optim, "param_groups", []) if optim is not None else []:
            optimized.update((id(p), p) for p in param_group["params"])
    trained = {key: p.numel() for key, p in optimized.items() if p.requires_grad and key not in boosting}
    idle = {}
    for module in _trainer_modules(trainer):
        for p in module.parameters():
            if p.requires_grad and id(p) not in boosting and id(p) not in optimized:
                idle[id(p)] = p.numel()
    return sum(trained.values()), sum(idle.values())


def _trainer_modules(trainer) -> list[nn.Module]:
    modules = [value for value in vars(trainer).values() if isinstance(value, nn.Module)]
    return modules + [m for m in getattr(trainer, "_models", {}).values() if isinstance(m, nn.Module)]


def attach_boosting(trainer, artifact: Optional[BoostingArtifact] = None) -> BoostingRecord:
    """Check and attach the configured boosting prompts to a built trainer (``artifact``: already loaded)."""
    from ..methods.cascade import boosting_group_from_artifact

    cfg = trainer.cfg
    node = cfg.TRAINER.CASPL
    path = boosting_path(cfg)
    if artifact is None:
        artifact = BoostingArtifact.load(path)
    adapter, handle = find_adapter(trainer)
    learnable = bool(node.LEARNABLE_BOOSTING)
    method_depth = None
    if node.BOOSTING_DEPTH == "method":
        method_depth = adapter.prompt_depth(handle)
        if method_depth is None:
            logger.info("CasPL: BOOSTING_DEPTH method: %s has no deep prompts of its own; keeping the artifact's depth", adapter.name)
    group = boosting_group_from_artifact(artifact, adapter.geometry(handle), learnable=learnable,
                                         method_depth=method_depth, seed=boosting_seed(trainer.cfg)).to(trainer.device)
    unplaced = adapter.unplaced(handle)
    with_tokens = [encoder for encoder, n in (("text", group.spec.n_text), ("vision", group.spec.n_vision)) if n]
    if with_tokens and all(encoder in unplaced for encoder in with_tokens):
        raise CascadeRefused(
            f"{type(trainer).__name__}: the boosting artifact has {' and '.join(with_tokens)} tokens only, and "
            f"{adapter.name} cannot place them: " + "; ".join(unplaced[e] for e in with_tokens)
        )
    for encoder in with_tokens:
        if encoder in unplaced:
            logger.warning("CasPL: the %s boosting tokens are not placed in %s: %s", encoder, type(trainer).__name__, unplaced[encoder])
    adapter.attach(handle, group, trainer)
    anchors: list[str] = []
    if node.ANCHOR == "boosted":
        anchors = adapter.attach_anchor(handle, group, trainer)
        if not anchors:
            raise ValueError(
                f"TRAINER.CASPL.ANCHOR boosted: {adapter.name} found no frozen anchor CLIP in {type(trainer).__name__} "
                "to place the boosting prompts into; set TRAINER.CASPL.ANCHOR clip"
            )
    trainer.boosting_group = group
    if learnable:  # the paper's ablation: the boosting prompts get their own optimizer
        from dassl.optim import build_lr_scheduler, build_optimizer

        optim = build_optimizer(group, cfg.OPTIM)
        trainer.register_model("boosting", group, optim, build_lr_scheduler(optim, cfg.OPTIM))
    record = BoostingRecord(group.placement_sha256, path).to(trainer.device)
    trainer.register_model(RECORD, record, None, None)
    print(summary_line(trainer, adapter, group, artifact, path, anchors, unplaced), flush=True)  # Dassl's log.txt
    return record


def summary_line(trainer, adapter, group, artifact, path, anchors, unplaced=None) -> str:
    """The one line recording the cascade in Dassl's log."""
    spec, unplaced = group.spec, unplaced or {}
    placed = []
    for encoder, n, depth, trained in (("text", spec.n_text, spec.depth_text, artifact.depth_text),
                                       ("vision", spec.n_vision, spec.depth_vision, artifact.depth_vision)):
        if n and encoder in unplaced:
            placed.append(f"{encoder} {n} tokens NOT placed ({unplaced[encoder]})")
            continue
        placed.append(f"{encoder} {n} tokens x depth {depth}" + (f" (trained {trained})" if n and depth != trained else ""))
    frozen = sum(p.numel() for p in group.parameters() if not p.requires_grad)
    node = trainer.cfg.TRAINER.CASPL
    trained, idle = host_learnable(trainer, group)
    return (
        f"CasPL: {type(trainer).__name__} via {adapter.name}: boosting {path} (sha256 {artifact.content_sha256[:16]}); "
        f"placed {', '.join(placed)}; depth rule {node.BOOSTING_DEPTH}; "
        f"anchor {node.ANCHOR}" + (f" ({'; '.join(anchors)})" if anchors else "") + "; "
        f"host learnable parameters {trained} (requires_grad, in its optimizers"
        + (f"; {idle} more with requires_grad are in no optimizer" if idle else "") + "), "
        f"beside {frozen} frozen / {group_numel(group) - frozen} learnable boosting parameters"
    )


def group_numel(group) -> int:
    return sum(p.numel() for p in group.parameters())


def check_trains_something(trainer, base: type) -> None:
    """Refuse ``train()`` at once when nothing would learn (a zero-shot host, boosting prompts frozen)."""
    group = getattr(trainer, "boosting_group", None)
    if group is None:
        return
    trained, _ = host_learnable(trainer, group)
    if trained or any(p.requires_grad for p in group.parameters()):
        return
    name = type(trainer).__name__
    raise CascadeRefused(
        f"{name} has nothing to train: {base.__name__} has no parameter with requires_grad in an "
        "optimizer, and the boosting prompts are frozen. It evaluates the model with the boosting prompts "
        f"(for ZeroshotCLIP: zero-shot CLIP + boosting prompts): run it with --eval-only (trainer.test())."
    )


def make_cascade_trainer(base: type) -> type:
    """``CasPL_<base>``: ``base`` with the configured boosting prompts attached after it is built.

    ``check_cfg`` (run by Dassl before the data and the model are built) puts back ``base``'s config
    node if a host's ``clean_cfg`` removed it, checks the artifact and decides what the class and the
    config show (:func:`check_host`), so those refusals cost no model build. ``train()`` refuses at once
    when nothing would learn.
    """
    from .cfg_guard import restore_node

    name = CASCADE_PREFIX + base.__name__

    def check_cfg(self, cfg):
        restore_node(cfg, base.__name__.upper())
        self._caspl_artifact = check_cascade_cfg(cfg, name)
        check_host(name, base, cfg, self._caspl_artifact)
        base.check_cfg(self, cfg)

    def build_model(self):
        base.build_model(self)
        attach_boosting(self, getattr(self, "_caspl_artifact", None))

    def train(self, *args, **kwargs):
        check_trains_something(self, base)
        return base.train(self, *args, **kwargs)

    return type(name, (base,), {
        "check_cfg": check_cfg,
        "build_model": build_model,
        "train": train,
        CASCADE_BASE: base,
        "__module__": __name__,
        "__doc__": f"{base.__name__} with frozen CasPL boosting prompts (TRAINER.CASPL.BOOSTING) cascaded in.",
    })

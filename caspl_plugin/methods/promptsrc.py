"""PromptSRC: IVLP prompts with self-regulating constraints (Khattak et al., ICCV 2023).

The prompts are IVLP's (:class:`~caspl_plugin.methods.ivlp.IVLP`); the loss adds three terms that
keep the prompted model close to a frozen *anchor*:

- ``scl_text  = text_loss_weight  * mean |norm(T) - norm(T_fixed)|`` over classes and dimensions,
  where ``T_fixed`` is the anchor's text features averaged (unnormalised) over the 60
  :data:`~caspl_plugin.data.catalog.IMAGENET_TEMPLATES` and then normalised; computed without
  gradients once per class set;
- ``scl_image = image_loss_weight * mean |norm(I) - norm(I_anchor)|`` (anchor image features
  without gradients, every step);
- ``scl_logits = KL(p_anchor || p) / (B * C)``: ``F.kl_div(log_softmax(z), log_softmax(z_anchor),
  reduction="sum", log_target=True) / z.numel()`` with ``z_anchor = scale * cos(I_anchor, T_fixed)``
  — the anchor's distribution is the target, and the sum is divided by batch *and* classes.

The anchor text features are one-time work (60 templates x classes through the text encoder: ~25 s
for ten classes on a CPU ViT-B/16): :meth:`PromptSRC.prepare_anchor` computes them with a log line
when training starts (``train()``, on the device training runs on) and when the class set or the
boosting group changes during training, never inside a training step; they move with the model
to another device without being recomputed.

``loss = CE(z, y) + scl_text + scl_image + scl_logits``.

**Anchor.** ``anchor="clip"`` (default, the authors' code, in PromptSRC and in the CasPL cascade):
the vanilla frozen CLIP. ``anchor="boosted"``: the frozen CLIP with the boosting prompts (the
paper's "CLIP + boosting prompts as the new frozen CLIP"): anchor images get the boosting vision
prompts; each template sentence is prefixed by the boosting text prompts, ``[SOS][boosting]a photo of
a {class}.[EOS]``, i.e. at the positions the boosting prompts had in phase 1 (``[SOS][boosting]{class}.``)
with the template words in place of the bare class name.

**GPA** (Gaussian prompt aggregation): the final prompts are ``sum_e w_e * prompts_e`` over the
prompts at the end of each epoch ``e = 1..E``, ``w_e ∝ N(e; gpa_mean, gpa_std)``, normalised to sum
to 1. :class:`GaussianPromptAggregation` does it for any model; :class:`PromptSRC` drives one from
:meth:`~caspl_plugin.methods.PromptModel.on_epoch_end`, so every training loop that calls that hook
ends with the aggregated prompts. Only learnable tensors are aggregated (the authors average the
whole state dict, frozen fp16 weights included, which can round them).

Presets (SGD momentum 0.9, wd 5e-4, cosine, 1 warm-up epoch at 1e-5, batch 4, lr 0.0025; loss
weights text 25, image 10):

=======================  ======  =========  ======  =======  =========================================
preset                   T+V     depth T/V  epochs  GPA      source
=======================  ======  =========  ======  =======  =========================================
``base2novel``           4+4     9/9        20      15 / 1   PromptSRC ``vit_b16_c2_ep20_batch4_4+4ctx``
``few_shot``             4+4     9/9        50      30 / 30  ``..._ep50_batch4_4+4ctx_few_shot`` (group A)
``few_shot_45_5``        4+4     9/9        50      45 / 5   same file, group B
``cross_dataset``        4+4     3/3        20      6 / 10   ``..._4+4ctx_cross_datasets`` (also DG)
``caspl_base2novel``     8+8     12/12      20      15 / 1   CasPL ``vit_b16_c2_ep20_batch4_8+8ctx_l12``
``caspl_few_shot``       8+8     12/12      50      30 / 30  CasPL ``..._ep50_batch4_8+8ctx_few_shot_l12``
``caspl_few_shot_45_5``  8+8     12/12      50      45 / 5   same, group B
``caspl_cross_dataset``  8+8     3/3        20      6 / 10   CasPL ``..._8+8ctx_cross_datasets_l3``
=======================  ======  =========  ======  =======  =========================================

Few-shot GPA by dataset (:data:`FEW_SHOT_GPA`): group A (30/30) ImageNet, Caltech101, OxfordPets,
Food101, UCF101, SUN397; group B (45/5) StanfordCars, OxfordFlowers, FGVCAircraft,
DescribableTextures, EuroSAT. With 8 text tokens the context is random (``ctx_init`` applies up to 4).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.catalog import IMAGENET_TEMPLATES
from ..prompts import PromptedCLIP, Slot, collect_tokens
from .ivlp import IVLP
from .registry import Preset, register_method

logger = logging.getLogger(__name__)

ANCHORS = ("clip", "boosted")

#: Few-shot GPA (mean, std) per dataset, as the PromptSRC few-shot config prescribes.
FEW_SHOT_GPA: dict[str, tuple[float, float]] = {
    **{name: (30.0, 30.0) for name in ("ImageNet", "Caltech101", "OxfordPets", "Food101", "UCF101", "SUN397")},
    **{name: (45.0, 5.0) for name in ("StanfordCars", "OxfordFlowers", "FGVCAircraft", "DescribableTextures", "EuroSAT")},
}


def gaussian_weights(epochs: int, mean: float, std: float) -> tuple[float, ...]:
    """``N(e; mean, std)`` for ``e = 1..epochs``, normalised to sum to 1."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"GPA epochs must be a positive int, got {epochs!r}")
    if not std > 0:
        raise ValueError(f"GPA std must be > 0, got {std!r}")
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(density)
    if not total > 0:
        raise ValueError(f"GPA weights N(e; {mean}, {std}) vanish for every epoch e = 1..{epochs}")
    return tuple(d / total for d in density)


class GaussianPromptAggregation:
    """Gaussian-weighted average of a model's learnable tensors over epochs (PromptSRC's GPA).

    Call :meth:`update` after each epoch with the 0-based index of the epoch that just ended (epoch
    ``e = epoch + 1`` gets weight ``N(e; mean, std)``), and :meth:`apply` after the last one to load
    the average into the model. Frozen tensors are never read or written.
    """

    def __init__(self, model: nn.Module, epochs: int, mean: float, std: float):
        self.epochs, self.mean, self.std = epochs, float(mean), float(std)
        self.weights = gaussian_weights(epochs, self.mean, self.std)
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("GPA needs learnable parameters, the model has none")
        self.sums = {name: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for name, p in self.params.items()}
        self.recorded: list[int] = []

    @property
    def complete(self) -> bool:
        return len(self.recorded) == self.epochs

    @torch.no_grad()
    def update(self, epoch: int) -> None:
        """Add the current values with the weight of (0-based) ``epoch``."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"GPA epoch must be in 0..{self.epochs - 1} (0-based), got {epoch!r}")
        if epoch in self.recorded:
            raise ValueError(f"GPA already holds epoch {epoch}")
        for name, p in self.params.items():
            self.sums[name].add_(p.detach().to(self.sums[name].dtype), alpha=self.weights[epoch])
        self.recorded.append(epoch)

    @torch.no_grad()
    def apply(self) -> None:
        """Load the aggregated values into the model (every epoch must have been recorded)."""
        missing = sorted(set(range(self.epochs)) - set(self.recorded))
        if missing:
            raise RuntimeError(f"GPA cannot apply: epochs {missing} (0-based) were never recorded")
        for name, p in self.params.items():
            p.copy_(self.sums[name].to(p.dtype))

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume aggregation (tensors and a list of ints)."""
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "recorded": list(self.recorded)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["sums"]) != set(self.sums):
            raise ValueError(f"GPA state holds {sorted(state['sums'])}, expected {sorted(self.sums)}")
        for name, value in state["sums"].items():
            self.sums[name].copy_(value)
        self.recorded = [int(e) for e in state["recorded"]]


def _preset(name, description, n_ctx, depth, epochs, gpa):
    return Preset(
        name, description,
        # CasPL_PromptSRC (the authors' configs, and this package's Dassl configs): the boosting prompts
        # take PromptSRC's depth; a no-op for the plain method, which has no boosting prompts
        cascade={"boosting_depth": "method"} if name.startswith("caspl_") else {},
        model={"n_ctx_text": n_ctx, "n_ctx_vision": n_ctx, "depth_text": depth, "depth_vision": depth,
               "ctx_init": "a photo of a", "text_loss_weight": 25.0, "image_loss_weight": 10.0,
               "gpa_mean": gpa[0], "gpa_std": gpa[1]},
        train={"lr": 0.0025, "epochs": epochs, "batch_size": 4, "momentum": 0.9, "weight_decay": 5e-4,
               "warmup_epochs": 1, "warmup_lr": 1e-5},
    )


@register_method
class PromptSRC(IVLP):
    """IVLP prompts + PromptSRC's self-regularisation and Gaussian prompt aggregation.

    Args (besides :class:`IVLP`'s):
        text_loss_weight, image_loss_weight: weights of the two L1 terms (25 and 10).
        anchor: ``"clip"`` (vanilla frozen CLIP, default) or ``"boosted"`` (frozen CLIP with the
            boosting prompts; needs a boosting group).
        gpa_mean, gpa_std: GPA over epochs, run by :meth:`on_epoch_end`; ``gpa_mean=None``
            disables it (the final prompts are then the last epoch's).
    """

    method = "promptsrc"
    presets = {
        p.name: p for p in (
            _preset("base2novel", "PromptSRC base-to-novel", 4, 9, 20, (15.0, 1.0)),
            _preset("few_shot", "PromptSRC few-shot, ImageNet/Caltech101/OxfordPets/Food101/UCF101/SUN397", 4, 9, 50, (30.0, 30.0)),
            _preset("few_shot_45_5", "PromptSRC few-shot, StanfordCars/OxfordFlowers/FGVCAircraft/DTD/EuroSAT", 4, 9, 50, (45.0, 5.0)),
            _preset("cross_dataset", "PromptSRC cross-dataset and domain generalisation", 4, 3, 20, (6.0, 10.0)),
            _preset("caspl_base2novel", "CasPL phase 2 base-to-novel (8+8 random, depth 12)", 8, 12, 20, (15.0, 1.0)),
            _preset("caspl_few_shot", "CasPL phase 2 few-shot, GPA group 30/30", 8, 12, 50, (30.0, 30.0)),
            _preset("caspl_few_shot_45_5", "CasPL phase 2 few-shot, GPA group 45/5", 8, 12, 50, (45.0, 5.0)),
            _preset("caspl_cross_dataset", "CasPL phase 2 domain generalisation (8+8, depth 3)", 8, 3, 20, (6.0, 10.0)),
        )
    }

    def __init__(
        self,
        clip: PromptedCLIP,
        class_names: Sequence[str],
        *,
        text_loss_weight: float = 25.0,
        image_loss_weight: float = 10.0,
        anchor: str = "clip",
        gpa_mean: Optional[float] = 15.0,
        gpa_std: float = 1.0,
        **ivlp_kwargs,
    ):
        if anchor not in ANCHORS:
            raise ValueError(f"PromptSRC anchor must be one of {ANCHORS}, got {anchor!r}")
        if gpa_mean is not None and not gpa_std > 0:
            raise ValueError(f"PromptSRC gpa_std must be > 0, got {gpa_std!r}")
        super().__init__(clip, class_names, **ivlp_kwargs)
        self.text_loss_weight, self.image_loss_weight = float(text_loss_weight), float(image_loss_weight)
        self.anchor = anchor
        self.gpa_mean = None if gpa_mean is None else float(gpa_mean)
        self.gpa_std = float(gpa_std)
        self.gpa: Optional[GaussianPromptAggregation] = None
        self._fixed_text_cache: Optional[tuple[tuple, Tensor]] = None  # (key, features): prepare_anchor()

    # ---- the frozen anchor ----------------------------------------------------------------
    def _anchor_groups(self) -> list:
        if self.anchor == "clip":
            return []
        if self.boosting is None:
            raise ValueError("PromptSRC anchor='boosted' needs a boosting group (cascade one or use anchor='clip')")
        return [self.boosting]

    def prompts_changed(self) -> None:
        super().prompts_changed()
        self._anchor_changed()

    def class_set_changed(self) -> None:
        super().class_set_changed()
        self._anchor_changed()

    def _anchor_changed(self) -> None:
        if self.training and hasattr(self, "_fixed_text_cache"):  # built, and the class set / boosting changed mid-training
            self.prepare_anchor()

    def train(self, mode: bool = True) -> "PromptSRC":
        super().train(mode)
        if mode:
            self.prepare_anchor()
        return self

    def _anchor_key(self) -> tuple:
        groups = self._anchor_groups()
        return (self.class_names, self.anchor, tuple((id(p), p._version) for g in groups for p in g.parameters()))

    def prepare_anchor(self) -> None:
        """Compute the anchor text features now (with a log line) unless they are up to date."""
        cache = self._fixed_text_cache
        if cache is not None and cache[0] == self._anchor_key():
            return
        start = time.perf_counter()
        logger.info("PromptSRC: anchor text features of %d classes x %d templates (once per class set) on %s ...",
                    len(self.class_names), len(IMAGENET_TEMPLATES), self.clip.device)
        self.fixed_text_features()
        logger.info("PromptSRC: anchor text features ready in %.1f s", time.perf_counter() - start)

    @torch.no_grad()
    def fixed_text_features(self) -> Tensor:
        """The anchor's class text features ``[C, D]``: mean over the 60 templates, normalised; computed
        in full precision (outside autocast) once per class set (and boosting values when boosted)."""
        groups = self._anchor_groups()
        key = self._anchor_key()
        cache = self._fixed_text_cache
        if cache is None or cache[0] != key:
            slots = [Slot(g.name, g.role, g.spec.n_text) for g in groups if g.spec.n_text]
            prompts = collect_tokens(groups, "text")
            with torch.autocast(self.clip.device.type, enabled=False):  # once per class set: full precision
                per_template = [
                    self.clip.encode_text(self.clip.text_inputs(self.class_names, slots, template), prompts).float()
                    for template in IMAGENET_TEMPLATES
                ]
            cache = (key, F.normalize(torch.stack(per_template).mean(0), dim=-1))
        if cache[1].device != self.clip.device:  # the model moved: the features move with it
            cache = (key, cache[1].to(self.clip.device))
        self._fixed_text_cache = cache
        return cache[1]

    @torch.no_grad()
    def anchor_image_features(self, images: Tensor) -> Tensor:
        """The anchor's normalised image features ``[B, D]``."""
        features = self.clip.encode_image(images, collect_tokens(self._anchor_groups(), "vision"))
        return F.normalize(features.float(), dim=-1)

    # ---- loss -----------------------------------------------------------------------------
    def regularisers(self, images: Tensor, image_features: Tensor, text_features: Tensor, logits: Tensor) -> dict[str, Tensor]:
        """The three self-regularising terms (weighted) for prompted features and logits."""
        fixed_text = self.fixed_text_features()
        anchor_image = self.anchor_image_features(images)
        anchor_logits = self.clip.logits(anchor_image, fixed_text).float()
        logits = logits.float()
        return {
            "scl_text": self.text_loss_weight * F.l1_loss(F.normalize(text_features.float(), dim=-1), fixed_text),
            "scl_image": self.image_loss_weight * F.l1_loss(F.normalize(image_features.float(), dim=-1), anchor_image),
            "scl_logits": F.kl_div(
                F.log_softmax(logits, dim=-1), F.log_softmax(anchor_logits, dim=-1), reduction="sum", log_target=True
            ) / logits.numel(),
        }

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
        image_features = self.encode_image(images)
        text_features = self.class_features()
        logits = self.clip.logits(image_features, text_features)
        ce = F.cross_entropy(logits, labels)
        terms = self.regularisers(images, image_features, text_features, logits)
        loss = ce + sum(terms.values())
        metrics = {"loss": loss.detach(), "ce": ce.detach(), **{k: v.detach() for k, v in terms.items()}}
        metrics["acc"] = (logits.argmax(-1) == labels).float().mean()
        return loss, metrics

    # ---- GPA ------------------------------------------------------------------------------
    def training_state(self) -> dict[str, Tensor]:
        """The prompt aggregation so far: ``gpa.sums.<parameter>`` and ``gpa.recorded`` (the epochs)."""
        if self.gpa is None:
            return {}
        state = self.gpa.state_dict()
        return {**{f"gpa.sums.{k}": v for k, v in state["sums"].items()},
                "gpa.recorded": torch.tensor(state["recorded"], dtype=torch.long)}

    def load_training_state(self, state: dict[str, Tensor], max_epoch: int) -> None:
        if not state:
            self.gpa = None
            return
        if "gpa.recorded" not in state or self.gpa_mean is None:
            raise ValueError(f"PromptSRC training state {sorted(state)[:4]} does not fit this model's aggregation "
                             f"(gpa_mean={self.gpa_mean})")
        self.gpa = GaussianPromptAggregation(self, max_epoch, self.gpa_mean, self.gpa_std)
        sums = {k[len("gpa.sums."):]: v for k, v in state.items() if k.startswith("gpa.sums.")}
        self.gpa.load_state_dict({"sums": sums, "recorded": state["gpa.recorded"].tolist()})

    def on_epoch_end(self, epoch: int, max_epoch: int) -> None:
        """Record this epoch's prompts for GPA; after the last epoch load the aggregate."""
        super().on_epoch_end(epoch, max_epoch)
        if self.gpa_mean is None:
            return
        if epoch == 0:
            self.gpa = GaussianPromptAggregation(self, max_epoch, self.gpa_mean, self.gpa_std)
        elif self.gpa is None or self.gpa.epochs != max_epoch:
            raise RuntimeError(
                f"GPA of {max_epoch} epochs reached epoch {epoch} (0-based) without the earlier ones: a "
                f"resumed run must restore model.gpa (GaussianPromptAggregation.state_dict) from its checkpoint"
            )
        self.gpa.update(epoch)
        if epoch == max_epoch - 1:
            self.gpa.apply()

    def settings(self) -> dict:
        return {
            **super().settings(), "text_loss_weight": self.text_loss_weight, "image_loss_weight": self.image_loss_weight,
            "anchor": self.anchor, "gpa_mean": self.gpa_mean, "gpa_std": self.gpa_std,
        }

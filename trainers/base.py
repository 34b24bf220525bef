"""One Dassl trainer for every prompt-learning method: a thin adapter from Dassl's ``TrainerX`` loop
to a library :class:`~caspl_plugin.methods.PromptModel`.

A concrete trainer (``CoOp``, ``PromptSRC``, ...) only names its method and its config node; the
model, its loss and its epoch-end work (PromptSRC's prompt aggregation) live in the library, so the
Dassl loop and the ``caspl`` loops run the same code. Checkpoints hold only the learnable tensors
(kilobytes, not a CLIP), through Dassl's own save/load/resume.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import ClassVar

from dassl.engine import TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from torch import nn

from caspl_plugin.clip import create_clip
from caspl_plugin.engine import autocast, training_step
from caspl_plugin.methods import PromptModel, get_method
from caspl_plugin.prompts import PromptedCLIP

logger = logging.getLogger(__name__)

#: the name under which the learnable tensors are registered with Dassl (its checkpoint folder)
LEARNER = "prompt_learner"
#: the classifier artifact written into OUTPUT_DIR after training
CLASSIFIER_FILE = "classifier.safetensors"


class LearnableView(nn.Module):
    """A model's learnable parameters, and only those, as one module for Dassl.

    The parameters are the model's own tensors (no copies): Dassl's optimizer updates them, its
    checkpoints store them, ``load_state_dict`` writes into them. ``train()``/``eval()`` switch the
    whole model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "model", model)
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.register_parameter(name.replace(".", "__"), param)

    def train(self, mode: bool = True) -> "LearnableView":
        self.model.train(mode)
        return super().train(mode)


class TrainingState(nn.Module):
    """The model's :meth:`~caspl_plugin.methods.PromptModel.training_state` (PromptSRC's prompt
    aggregation) in Dassl's checkpoints, so resume continues it."""

    def __init__(self, model: nn.Module, max_epoch: int):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.max_epoch = max_epoch

    def state_dict(self, *args, **kwargs):
        return dict(self.model.training_state())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.model.load_training_state(dict(state_dict), self.max_epoch)


def load_backbone(cfg, name: str = "", weights: str = ""):
    """The CLIP named in the config (``MODEL.BACKBONE.NAME`` / ``WEIGHTS`` / ``WEIGHTS_DIR``)."""
    backbone = cfg.MODEL.BACKBONE
    return create_clip(
        name or backbone.NAME,
        (weights or backbone.get("WEIGHTS", "")) or None,
        weights_dir=backbone.get("WEIGHTS_DIR", "") or None,
    )


def prompted_clip(cfg, backbone) -> PromptedCLIP:
    """The student's prompted CLIP with ``MODEL.BACKBONE.TEXT_CHUNK`` applied."""
    clip = PromptedCLIP(backbone)
    clip.text_chunk = text_chunk_of(cfg)
    return clip


def text_chunk_of(cfg):
    """``MODEL.BACKBONE.TEXT_CHUNK`` as rows per text-tower pass (None: all classes in one pass)."""
    rows = cfg.MODEL.BACKBONE.get("TEXT_CHUNK", 0)
    if not isinstance(rows, int) or rows < 0:
        raise ValueError(f"MODEL.BACKBONE.TEXT_CHUNK must be an int >= 0 (0: all classes in one pass), got {rows!r}")
    return rows or None


def precision_of(node) -> str:
    """``PREC`` of a trainer node in the package's vocabulary (:data:`caspl_plugin.engine.PRECISIONS`).

    ``fp32``, ``amp``, ``bf16`` and ``fp16`` are accepted (any case). Weights stay fp32 and the others
    run under autocast; ``fp16`` — the anchors' GPU half precision, which their configs name — is
    ``amp`` (float16 on CUDA, bfloat16 on CPU, where float16 autocast is not a training setting).
    """
    from caspl_plugin.engine import PRECISIONS

    prec = str(node.get("PREC", "fp32")).strip().lower()
    if prec not in PRECISIONS:
        raise ValueError(f"PREC must be one of {', '.join(PRECISIONS)}, got {node.get('PREC')!r}")
    return "amp" if prec == "fp16" else prec


class PromptTrainer(TrainerX):
    """Dassl trainer over a library method (set ``method`` and ``cfg_node`` in a subclass)."""

    method: ClassVar[str] = ""
    cfg_node: ClassVar[str] = ""

    def check_cfg(self, cfg):
        precision_of(self.method_cfg(cfg))
        text_chunk_of(cfg)

    @classmethod
    def method_cfg(cls, cfg):
        return cfg.TRAINER[cls.cfg_node]

    def model_kwargs(self, cfg) -> dict:
        """Constructor arguments of the method from ``TRAINER.<NODE>`` (override per method)."""
        return {}

    def build_model(self):
        cfg = self.cfg
        self.precision = precision_of(self.method_cfg(cfg))
        backbone = load_backbone(cfg)
        self.clip = prompted_clip(cfg, backbone)
        classnames = self.dm.dataset.classnames
        model: PromptModel = get_method(self.method)(self.clip, classnames, **self.model_kwargs(cfg))
        self.model = model.to(self.device)
        learnable = LearnableView(self.model)
        n_learn = sum(p.numel() for p in learnable.parameters())
        logger.info("%s on %s: %d classes, %d learnable parameters", self.method, backbone.name, len(classnames), n_learn)
        if n_learn:
            self.optim = build_optimizer(learnable, cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
            self.register_model(LEARNER, learnable, self.optim, self.sched)
        else:
            self.register_model(LEARNER, learnable, None, None)
        if getattr(self.model, "gpa_mean", None) is not None:
            self.register_model("aggregation", TrainingState(self.model, self.max_epoch), None, None)

    def set_model_mode(self, mode="train", names=None):
        super().set_model_mode(mode, names)
        self.model.train(mode == "train")

    def forward_backward(self, batch):
        """The engine's step (autocast, GradScaler for fp16 on CUDA) with Dassl's optimizer."""
        images, labels = self.parse_batch_train(batch)
        metrics = training_step(self.model, images, labels, self.optim, self.precision)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return metrics

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, input):
        with autocast(self.device, self.precision):
            return self.model(input).float()

    def after_epoch(self):
        self.model.on_epoch_end(self.epoch, self.max_epoch)
        super().after_epoch()

    def after_train(self):
        """Also save the trained model as a self-contained classifier (``caspl classify --model``)."""
        from caspl_plugin.inference import save_classifier

        path = osp.join(self.output_dir, CLASSIFIER_FILE)
        save_classifier(path, self.model, extra={"dataset": self.cfg.DATASET.NAME, "trainer": self.cfg.TRAINER.NAME})
        print(f"Classifier saved to {path}")
        super().after_train()


def method_trainer(class_name: str, method: str, cfg_node: str, kwargs_from_cfg) -> type:
    """A :class:`PromptTrainer` subclass named ``class_name`` (Dassl registers trainers by name)."""

    def model_kwargs(self, cfg):
        return kwargs_from_cfg(cfg, self.method_cfg(cfg))

    return type(class_name, (PromptTrainer,), {
        "method": method, "cfg_node": cfg_node, "model_kwargs": model_kwargs,
        "__module__": __name__, "__doc__": f"Dassl trainer for the library method {method!r} (config ``TRAINER.{cfg_node}``).",
    })

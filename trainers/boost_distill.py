"""``BoostDistill``: CasPL phase 1 in Dassl — boosting prompts distilled from a zero-shot teacher.

Runs on the dataset's train images with every class name (``SUBSAMPLE_CLASSES all``, the authors'
transductive protocol; ``base`` gives the inductive variant). Labels are never read. When training
ends the boosting prompts are written to ``TRAINER.BOOSTDISTILL.EXPORT`` or, by default,
``OUTPUT_DIR/boosting.safetensors`` — the place ``CasPL_<X>`` reads through
``TRAINER.CASPL.BOOSTING`` (a file, or the phase-1 ``OUTPUT_DIR``).
"""
from __future__ import annotations

import logging
import os.path as osp

from dassl.engine import TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer

from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, export_artifact
from caspl_plugin.engine import autocast
from caspl_plugin.plugin.config import BOOSTING_FILE

from .base import LearnableView, load_backbone, precision_of

logger = logging.getLogger(__name__)


class BoostDistill(TrainerX):
    """Phase 1: student CLIP + learnable boosting prompts, KD from a frozen zero-shot teacher."""

    def check_cfg(self, cfg):
        node = cfg.TRAINER.BOOSTDISTILL
        precision_of(node)
        if node.TEACHER_SCALE not in ("own", "student"):
            raise ValueError(f"TRAINER.BOOSTDISTILL.TEACHER_SCALE must be 'own' or 'student', got {node.TEACHER_SCALE!r}")

    def build_model(self):
        from caspl_plugin.data.catalog import template_for

        cfg, node = self.cfg, self.cfg.TRAINER.BOOSTDISTILL
        self.precision = precision_of(node)
        self.student_backbone = load_backbone(cfg)
        self.teacher_name = node.TEACHER
        if node.TEACHER_CACHE:  # teacher-view cache: only the teacher's text tower is built
            teacher = self._use_teacher_cache(cfg, node)
        else:
            teacher = load_backbone(cfg, node.TEACHER, node.TEACHER_WEIGHTS)
        self.teacher_weights = str(teacher.weights)
        template = node.TEMPLATE or template_for(cfg.DATASET.NAME, "a photo of a {}.")
        config = BoostingConfig(node.N_CTX_TEXT, node.N_CTX_VISION, max(node.PROMPT_DEPTH_TEXT, 1),
                                max(node.PROMPT_DEPTH_VISION, 1), ctx_init=node.CTX_INIT)
        classnames = self.dm.dataset.classnames
        self.distiller = build_distiller(
            self.student_backbone, teacher, classnames, template, config,
            temperature=float(node.TEMPERATURE), teacher_scale=node.TEACHER_SCALE,
        ).to(self.device)
        self.model = self.distiller.student
        learnable = LearnableView(self.model)
        spec = self.model.boosting.spec
        logger.info(
            "BoostDistill: %s student, %s teacher (template %r), %d classes (SUBSAMPLE_CLASSES %s), "
            "%d+%d boosting tokens at depth %d/%d (%d parameters)",
            self.student_backbone.name, node.TEACHER, template, len(classnames), cfg.DATASET.SUBSAMPLE_CLASSES,
            spec.n_text, spec.n_vision, spec.depth_text, spec.depth_vision, sum(p.numel() for p in learnable.parameters()),
        )
        self.optim = build_optimizer(learnable, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("boosting", learnable, self.optim, self.sched)

    def _use_teacher_cache(self, cfg, node):
        """The teacher's text tower, and a train loader over the cache's views and features."""
        from torch.utils.data import DataLoader

        from caspl_plugin.boosting.teacher import load_text_tower
        from caspl_plugin.engine import collate_items
        from caspl_plugin.cache.dataset import dassl_cached_dataset

        tower = load_text_tower(node.TEACHER, node.TEACHER_WEIGHTS or None,
                                weights_dir=cfg.MODEL.BACKBONE.get("WEIGHTS_DIR", "") or None)
        self.cached_views = dassl_cached_dataset(cfg, [item.impath for item in self.dm.dataset.train_x], tower)
        batch_size = cfg.DATALOADER.TRAIN_X.BATCH_SIZE

        def collate(samples):
            batch = collate_items(samples)
            return {"img": batch.images, "impath": batch.paths, **batch.extras}

        self.train_loader_x = DataLoader(
            self.cached_views, batch_size=batch_size, shuffle=True, num_workers=cfg.DATALOADER.NUM_WORKERS,
            drop_last=len(self.cached_views) >= batch_size, collate_fn=collate,
        )
        return tower

    def before_epoch(self):
        super().before_epoch()
        if getattr(self, "cached_views", None) is not None:
            self.cached_views.set_epoch(self.epoch)  # epoch e uses view e mod K

    def set_model_mode(self, mode="train", names=None):
        super().set_model_mode(mode, names)
        self.model.train(mode == "train")

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device)  # labels are never read

    def forward_backward(self, batch):
        images = self.parse_batch_train(batch)
        features = batch.get("teacher_features")
        with autocast(self.device, self.precision):
            loss, metrics = self.distiller.loss(images, teacher_features=None if features is None else features.to(self.device))
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {k: float(v) for k, v in metrics.items()}

    def model_inference(self, input):
        with autocast(self.device, self.precision):
            return self.model(input).float()

    def export_path(self) -> str:
        return self.cfg.TRAINER.BOOSTDISTILL.EXPORT or osp.join(self.output_dir, BOOSTING_FILE)

    def after_train(self):
        cfg = self.cfg
        settings = DistillSettings(
            epochs=cfg.OPTIM.MAX_EPOCH, batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE, lr=cfg.OPTIM.LR,
            momentum=cfg.OPTIM.MOMENTUM, weight_decay=cfg.OPTIM.WEIGHT_DECAY,
            warmup_epochs=max(cfg.OPTIM.WARMUP_EPOCH, 0), warmup_lr=cfg.OPTIM.WARMUP_CONS_LR,
            temperature=float(cfg.TRAINER.BOOSTDISTILL.TEMPERATURE), teacher_scale=cfg.TRAINER.BOOSTDISTILL.TEACHER_SCALE,
            precision=self.precision, seed=cfg.SEED,
        )
        path = self.export_path()
        artifact = export_artifact(
            path, self.distiller, self.student_backbone.describe(), teacher=self.teacher_name,
            teacher_weights=self.teacher_weights, dataset=cfg.DATASET.NAME, settings=settings,
        )
        print(f"Boosting prompts saved to {path} (sha256 {artifact.content_sha256[:12]})")
        super().after_train()

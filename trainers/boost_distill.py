"""``BoostDistill``: CasPL phase 1 in Dassl — boosting prompts distilled from a zero-shot teacher.

Runs on the dataset's train images with every class name (``SUBSAMPLE_CLASSES all``, the authors'
transductive protocol; ``base`` gives the inductive variant). Labels are never read. When training
ends the boosting prompts are written to ``TRAINER.BOOSTDISTILL.EXPORT`` or, by default,
``OUTPUT_DIR/boosting.safetensors`` — the place ``CasPL_<X>`` reads through
``TRAINER.CASPL.BOOSTING`` (a file, or the phase-1 ``OUTPUT_DIR``).

Universal boosting prompts: ``TRAINER.BOOSTDISTILL.DOMAINS`` lists several domains — CoOp dataset
names (their train split under ``DATASET.ROOT``, ``SUBSAMPLE_CLASSES`` classes and CoOp template)
and/or domain manifests (``caspl_plugin.data.domains``). Every batch then comes from one domain and
is distilled over its class set (``DOMAIN_SAMPLING`` ``size`` or ``even``), exactly as ``caspl
distill --domains``; ``DATASET.NAME`` is only the dataset evaluated on. With ``TEACHER_CACHE`` each
domain reads its cache from ``TEACHER_CACHE/<domain name>`` (``caspl teacher-cache --dataset NAME
--root DATASET.ROOT -o TEACHER_CACHE/NAME`` for a dataset domain).
"""
from __future__ import annotations

import logging
import os.path as osp
from types import SimpleNamespace

import torch
from dassl.engine import TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer

from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, export_artifact
from caspl_plugin.data.domains import SAMPLING
from caspl_plugin.engine import autocast, training_step
from caspl_plugin.plugin.config import BOOSTING_FILE

from .base import LearnableView, load_backbone, precision_of, registered_optimizers, text_chunk_of

logger = logging.getLogger(__name__)


class BoostDistill(TrainerX):
    """Phase 1: student CLIP + learnable boosting prompts, KD from a frozen zero-shot teacher."""

    def check_cfg(self, cfg):
        node = cfg.TRAINER.BOOSTDISTILL
        precision_of(node)
        text_chunk_of(cfg)
        if node.TEACHER_SCALE not in ("own", "student"):
            raise ValueError(f"TRAINER.BOOSTDISTILL.TEACHER_SCALE must be 'own' or 'student', got {node.TEACHER_SCALE!r}")
        if node.DOMAIN_SAMPLING not in SAMPLING:
            raise ValueError(f"TRAINER.BOOSTDISTILL.DOMAIN_SAMPLING must be {' or '.join(map(repr, SAMPLING))}, "
                             f"got {node.DOMAIN_SAMPLING!r}")
        if node.DOMAINS and node.TEMPLATE:
            raise ValueError("TRAINER.BOOSTDISTILL.TEMPLATE serves one dataset; with DOMAINS every domain has its own "
                             "template (a dataset's CoOp template, or 'template' in a domain manifest)")
        if node.TEMPLATE:
            from caspl_plugin.data.domains import DomainError, check_template

            try:
                check_template(node.TEMPLATE)
            except DomainError as error:
                raise ValueError(f"TRAINER.BOOSTDISTILL.{error}") from None

    def build_model(self):
        from caspl_plugin.data.catalog import template_for
        from caspl_plugin.data.domains import dassl_domains

        cfg, node = self.cfg, self.cfg.TRAINER.BOOSTDISTILL
        self.precision = precision_of(node)
        self.skipped: set[str] = set()
        self.domains = dassl_domains(node.DOMAINS, cfg.DATASET.ROOT, subsample=cfg.DATASET.SUBSAMPLE_CLASSES) if node.DOMAINS else None
        self.student_backbone = load_backbone(cfg)
        self.teacher_name = node.TEACHER
        self.train_views = None  # the train dataset when the plugin builds the loader (cache, domains)
        if node.TEACHER_CACHE:  # teacher-view cache: only the teacher's text tower is built
            teacher = self._use_teacher_cache(cfg, node)
        else:
            teacher = load_backbone(cfg, node.TEACHER, node.TEACHER_WEIGHTS)
            if self.domains:
                from caspl_plugin.data.domains import MultiDomainImages
                from dassl.data.transforms import build_transform

                self._use_train_views(MultiDomainImages(self.domains, build_transform(cfg, is_train=True), node.DOMAIN_SAMPLING))
        self.teacher_weights = str(teacher.weights)
        template = node.TEMPLATE or template_for(cfg.DATASET.NAME, "a photo of a {}.")
        config = BoostingConfig(node.N_CTX_TEXT, node.N_CTX_VISION, max(node.PROMPT_DEPTH_TEXT, 1),
                                max(node.PROMPT_DEPTH_VISION, 1), ctx_init=node.CTX_INIT)
        classnames = self.dm.dataset.classnames
        self.distiller = build_distiller(
            self.student_backbone, teacher, None if self.domains else classnames, None if self.domains else template, config,
            temperature=float(node.TEMPERATURE), teacher_scale=node.TEACHER_SCALE,
            domains=[d.classes for d in self.domains] if self.domains else None,
            # the prompts' initial draw from SEED alone, as `caspl distill --seed` (SEED < 0: the global RNG)
            generator=torch.Generator().manual_seed(cfg.SEED) if cfg.SEED >= 0 else None,
        ).to(self.device)
        self.model = self.distiller.student
        self.model.clip.text_chunk = text_chunk_of(cfg)
        learnable = LearnableView(self.model)
        spec = self.model.boosting.spec
        if self.domains:
            for d in self.domains:
                logger.info("BoostDistill domain %s: %d images, %d classes, template %r",
                            d.name, len(d.files), len(d.classes.class_names), d.classes.template)
            described = f"{len(self.domains)} domains ({node.DOMAIN_SAMPLING} sampling), evaluated on {cfg.DATASET.NAME}"
        else:
            described = f"template {template!r}, {len(classnames)} classes (SUBSAMPLE_CLASSES {cfg.DATASET.SUBSAMPLE_CLASSES})"
        logger.info(
            "BoostDistill: %s student, %s teacher, %s, %d+%d boosting tokens at depth %d/%d (%d parameters)",
            self.student_backbone.name, node.TEACHER, described, spec.n_text, spec.n_vision, spec.depth_text,
            spec.depth_vision, sum(p.numel() for p in learnable.parameters()),
        )
        self.optim = build_optimizer(learnable, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("boosting", learnable, self.optim, self.sched)

    def _use_teacher_cache(self, cfg, node):
        """The teacher's text tower, and a train loader over the cache's views and features (one
        cache per domain with DOMAINS)."""
        from caspl_plugin.boosting.teacher import load_text_tower
        from caspl_plugin.cache.dataset import dassl_augmentation, dassl_cached_dataset, open_cached_domains

        weights_dir = cfg.MODEL.BACKBONE.get("WEIGHTS_DIR", "") or None
        if self.domains:
            geometry = SimpleNamespace(image_size=int(cfg.INPUT.SIZE[0]), mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
            tower, views = open_cached_domains(node.TEACHER_CACHE, self.domains, geometry, node.TEACHER, node.TEACHER_WEIGHTS or None,
                                               sampling=node.DOMAIN_SAMPLING, weights_dir=weights_dir,
                                               epochs=cfg.OPTIM.MAX_EPOCH, augmentation=dassl_augmentation(cfg))
            self.domains = views.domains
        else:
            tower = load_text_tower(node.TEACHER, node.TEACHER_WEIGHTS or None, weights_dir=weights_dir)
            views = dassl_cached_dataset(cfg, [item.impath for item in self.dm.dataset.train_x], tower)
        self._use_train_views(views)
        return tower

    def _use_train_views(self, dataset) -> None:
        """Train on ``dataset`` (items of the engine's data protocol) instead of Dassl's loader, in the
        engine's batch order (its seeded plan: one domain per batch with several domains), as
        ``caspl distill`` does."""
        from torch.utils.data import DataLoader

        from caspl_plugin.engine import PlannedBatchSampler, collate_items

        cfg = self.cfg

        def collate(samples):
            batch = collate_items(samples)
            return {"img": batch.images, "impath": batch.paths, "skipped": batch.skipped, **batch.extras}

        self.train_views = dataset
        self.batch_sampler = PlannedBatchSampler(dataset, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.SEED if cfg.SEED >= 0 else 0)
        self.train_loader_x = DataLoader(dataset, batch_sampler=self.batch_sampler,
                                         num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=collate)

    @property
    def cached_views(self):
        """The single-folder teacher-view dataset (None without TEACHER_CACHE or with DOMAINS)."""
        from caspl_plugin.cache import TeacherViewDataset

        return self.train_views if isinstance(self.train_views, TeacherViewDataset) else None

    def before_epoch(self):
        super().before_epoch()
        if self.train_views is not None:
            self.batch_sampler.set_epoch(self.epoch)
        if hasattr(self.train_views, "set_epoch"):
            self.train_views.set_epoch(self.epoch)  # a cache's epoch e uses view e mod K

    def set_model_mode(self, mode="train", names=None):
        super().set_model_mode(mode, names)
        self.model.train(mode == "train")

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device)  # labels are never read

    def forward_backward(self, batch):
        self.skipped.update(batch.get("skipped", ()))
        summary = {}
        if batch["img"] is not None:  # a batch whose images were all unreadable trains nothing
            images = self.parse_batch_train(batch)
            extras = {key: batch[key].to(self.device) for key in ("teacher_features", "domain") if key in batch}
            summary = training_step(self.distiller, images, None, registered_optimizers(self), self.precision, **extras)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def test(self, split=None):
        if self.domains:  # evaluate on DATASET.NAME's classes (the student trained over the domains' class sets)
            self.model.set_class_names(self.dm.dataset.classnames)
        return super().test(split)

    def model_inference(self, input):
        with autocast(self.device, self.precision):
            return self.model(input).float()

    def export_path(self) -> str:
        return self.cfg.TRAINER.BOOSTDISTILL.EXPORT or osp.join(self.output_dir, BOOSTING_FILE)

    def after_train(self):
        cfg, node = self.cfg, self.cfg.TRAINER.BOOSTDISTILL
        settings = DistillSettings(
            epochs=cfg.OPTIM.MAX_EPOCH, batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE, lr=cfg.OPTIM.LR,
            momentum=cfg.OPTIM.MOMENTUM, weight_decay=cfg.OPTIM.WEIGHT_DECAY,
            warmup_epochs=max(cfg.OPTIM.WARMUP_EPOCH, 0), warmup_lr=cfg.OPTIM.WARMUP_CONS_LR,
            temperature=float(node.TEMPERATURE), teacher_scale=node.TEACHER_SCALE,
            precision=self.precision, seed=cfg.SEED, domain_sampling=node.DOMAIN_SAMPLING if self.domains else None,
            crop_scale=tuple(cfg.INPUT.RRCROP_SCALE),
        )
        if self.skipped:
            logger.warning("BoostDistill skipped %d unreadable image(s): %s", len(self.skipped),
                           ", ".join(sorted(self.skipped)[:5]) + (" ..." if len(self.skipped) > 5 else ""))
        path = self.export_path()
        artifact = export_artifact(
            path, self.distiller, self.student_backbone.describe(), teacher=self.teacher_name,
            teacher_weights=self.teacher_weights,
            dataset="+".join(d.name for d in self.domains) if self.domains else cfg.DATASET.NAME, settings=settings,
            domains=[d.metadata() for d in self.domains] if self.domains else None,
        )
        print(f"Boosting prompts saved to {path} (sha256 {artifact.content_sha256[:12]})")
        super().after_train()

"""``caspl distill``: phase 1 — learn boosting prompts from a zero-shot teacher on unlabeled images.

Example::

    caspl distill --images data/pets/images --class-names pets.txt --template OxfordPets \\
        --student ViT-B/16 --student-weights ViT-B-16.pt --teacher ViT-L/14 --teacher-weights ViT-L-14.pt \\
        -o boosting/oxford_pets.safetensors

``--demo`` runs on an embedded default instead (tiny models and a generated image folder).

Multi-GPU: ``torchrun --nproc-per-node N -m caspl_plugin.cli distill ...`` trains data-parallel;
``--batch-size`` is per process, so the global batch is batch-size x N (see :data:`BATCH_HELP`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .common import (
    BATCH_HELP, CommandError, add_loop_arguments, check_model_names, check_tensorboard, in_user_words,
    run_distributed, say,
)
from .runrecord import run_record

logger = logging.getLogger(__name__)

DEMO_STUDENT, DEMO_TEACHER = "caspl-tiny-student", "caspl-tiny-teacher"

#: reads --config files (caspl_plugin.cli.options)
CONFIGURABLE = True
#: --demo's smaller recipe, for the settings not given on the command line
DEMO_SETTINGS = {"epochs": 2, "batch_size": 16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options; every training default is the library's (DistillSettings, BoostingConfig)."""
    from caspl_plugin.boosting import BoostingConfig, DistillSettings
    from caspl_plugin.data.domains import SAMPLING

    recipe, geometry = DistillSettings(), BoostingConfig()

    data = parser.add_argument_group("data")
    data.add_argument("--images", help="folder of unlabeled images of the domain (searched recursively)")
    data.add_argument("--class-names", help="text file, one class name per line (all classes of the domain)")
    data.add_argument("--dataset", help="dataset name recorded in the artifact (default: the image folder's name)")
    data.add_argument("--demo", action="store_true", help="run on the embedded default: tiny models + a generated image folder")
    data.add_argument("--domain", nargs="+", action="append", metavar="IMAGES CLASSNAMES TEMPLATE [NAME]",
                      help="multi-domain (universal) phase 1: one domain, repeat for each; NAME defaults to the image folder's name")
    data.add_argument("--domains", metavar="MANIFEST", help="multi-domain phase 1 from a JSON/YAML manifest (see caspl_plugin.data.domains)")
    data.add_argument("--domain-sampling", choices=SAMPLING, default=SAMPLING[0],
                      help="multi-domain: domains in proportion to their image counts (size) or equally often (even)")
    models = parser.add_argument_group("models")
    models.add_argument("--student", default="ViT-B/16", help="student CLIP (Dassl or open_clip name)")
    models.add_argument("--student-weights", help="'openai', another open_clip tag, a local file, or 'random'")
    models.add_argument("--teacher", default="ViT-L/14", help="zero-shot teacher CLIP")
    models.add_argument("--teacher-weights", help="'openai', another open_clip tag, a local file, or 'random'")
    models.add_argument("--weights-dir", help="directory searched for weight files named after the models")
    models.add_argument("--teacher-cache", metavar="DIR",
                        help="train from a teacher-view cache (`caspl teacher-cache`): the teacher's image tower is never built; "
                             "with --domain/--domains, DIR holds one cache per domain (DIR/<name>, `caspl teacher-cache --domains`)")
    models.add_argument("--template", default="a photo of a {}.",
                        help="teacher text template with {} for the class name, or a dataset name whose CoOp template to use (e.g. OxfordPets)")
    prompts = parser.add_argument_group("boosting prompts")
    prompts.add_argument("--n-text", type=int, default=geometry.n_text, help="text tokens")
    prompts.add_argument("--n-vision", type=int, default=geometry.n_vision, help="vision tokens")
    prompts.add_argument("--depth-text", type=int, default=geometry.depth_text, help="clamped to the student's depth")
    prompts.add_argument("--depth-vision", type=int, default=geometry.depth_vision, help="clamped to the student's depth")
    train = parser.add_argument_group("training (defaults: the authors' phase-1 recipe; --demo: epochs 2, batch size 16)")
    train.add_argument("--epochs", type=int, default=recipe.epochs, help="epochs")
    train.add_argument("--batch-size", type=int, default=recipe.batch_size, help=BATCH_HELP.format(half=2))
    train.add_argument("--lr", type=float, default=recipe.lr, help="learning rate (SGD, cosine, one warm-up epoch)")
    train.add_argument("--crop-scale", type=float, nargs=2, default=recipe.crop_scale, metavar=("MIN", "MAX"),
                       help="RandomResizedCrop area range (the authors'); with --teacher-cache, the cache's")
    train.add_argument("--temperature", type=float, default=recipe.temperature, help="KD temperature")
    train.add_argument("--teacher-scale", choices=("own", "student"), default=recipe.teacher_scale,
                       help="teacher logit scale: its own or the student's")
    train.add_argument("--seed", type=int, default=recipe.seed, help="prompt initialisation and data order")
    train.add_argument("--workers", type=int, default=recipe.num_workers, help="data-loading worker processes")
    train.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    add_loop_arguments(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-o", "--output", help="artifact to write (.safetensors); default <out>/boosting.safetensors with --demo")
    parser.add_argument("--out", default="demo_output", help="with --demo: folder for the generated images and the artifact")


def _template(value: str) -> str:
    from caspl_plugin.data.domains import resolve_template

    try:
        return resolve_template(value)
    except ValueError as error:
        raise CommandError(f"--{error}") from None


def _prepare_demo(args) -> None:
    from caspl_plugin import distributed
    from caspl_plugin.toy import domain

    out = Path(args.out)
    if distributed.is_main():
        domain.write_image_folder(out / "data", num_per_class=4, seed=0, overwrite=True)
    distributed.barrier()
    args.images, args.class_names = str(out / "data" / "images"), str(out / "data" / "classnames.txt")
    args.student, args.teacher = DEMO_STUDENT, DEMO_TEACHER
    args.student_weights = args.teacher_weights = None
    args.dataset = args.dataset or "toy-shapes"
    args.output = args.output or str(out / "boosting.safetensors")
    for name, value in DEMO_SETTINGS.items():  # the demo's smaller recipe where no flag says otherwise
        if name not in getattr(args, "_explicit", ()):
            setattr(args, name, value)


def _domains(args):
    """The validated domains of a multi-domain run, or None for a single-domain one."""
    from caspl_plugin.data import domains as multi

    given = [flag for flag, value in (("--images", args.images), ("--class-names", args.class_names), ("--demo", args.demo)) if value]
    if (args.domain or args.domains) and given:
        raise CommandError(f"{', '.join(given)} cannot be combined with --domain/--domains (each domain names its own images and classes)")
    try:
        return multi.read_domains(args.domain, args.domains)
    except (OSError, ValueError) as error:
        raise CommandError(str(error)) from error


def run(args) -> int:
    return run_distributed(args, _run)


def _run(args, device) -> int:
    from .runguard import guarded_run

    if args.demo:
        args.output = args.output or str(Path(args.out) / "boosting.safetensors")
    multi_domain = bool(args.domain or args.domains)
    missing = [flag for flag, value in (("--images", args.images), ("--class-names", args.class_names), ("-o/--output", args.output))
               if not value and not ((args.demo or multi_domain) and flag != "-o/--output")]
    if missing:
        raise CommandError(f"missing {', '.join(missing)} (or use --demo)")
    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise CommandError(f"--output must end in .safetensors, got {output}")
    if not args.demo:
        check_model_names(student=args.student, teacher=args.teacher)
    # validate every input before anything is built or written (--demo: once its data is written)
    inputs = None if args.demo else _validate_inputs(args)
    with guarded_run(output, command="distill") as checkpoint:  # rank 0 owns the outputs
        if args.demo:
            _prepare_demo(args)
            inputs = _validate_inputs(args)
        with run_record(output, "distill", args) as record:
            return _distill(args, device, output, checkpoint, *inputs, record=record)


def _validate_inputs(args):
    """The image list, class names, template (or the domains of a multi-domain run) and settings,
    all checked; nothing is written."""
    from caspl_plugin.boosting import DistillSettings
    from caspl_plugin.boosting.model import PHASE1_MIN_CLASSES
    from caspl_plugin.data.classnames import read_class_names
    from caspl_plugin.data.unlabeled import list_images

    from .runguard import warmup_warning

    domains = _domains(args)
    if domains and args.teacher_cache:
        _check_domain_caches(args.teacher_cache, domains)
    if domains:
        files, class_names, template = [f for d in domains for f in d.files], None, None
    else:
        files = list_images(args.images)
        class_names = read_class_names(args.class_names, min_classes=2, purpose=PHASE1_MIN_CLASSES)
        template = _template(args.template)
    check_tensorboard(args.tensorboard)
    settings = DistillSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
        teacher_scale=args.teacher_scale, precision=args.precision, num_workers=args.workers, seed=args.seed,
        domain_sampling=args.domain_sampling if domains else None, crop_scale=tuple(args.crop_scale),
    )
    warning = warmup_warning(settings.epochs, settings.warmup_epochs, settings.warmup_lr, settings.lr)
    if warning:
        print(f"caspl distill: warning: {warning}", file=sys.stderr)
    return files, class_names, template, settings, domains


def _check_domain_caches(folder, domains) -> None:
    """Every domain has its cache in ``folder`` (checked before anything is built)."""
    from caspl_plugin.cache.store import TeacherViewCache, domain_cache_folders

    try:
        folders = domain_cache_folders(folder, [d.name for d in domains])
    except ValueError as error:
        raise CommandError(f"--teacher-cache: {error}") from None
    missing = [str(path) for path in folders.values() if not TeacherViewCache.exists(path)]
    if missing:
        raise CommandError(f"--teacher-cache {folder} has no cache for {len(missing)} of the {len(domains)} domains "
                           f"(missing: {', '.join(missing)}); make them with `caspl teacher-cache` and the same "
                           "--domain/--domains arguments")


def _probe(files, args):
    """The readable images (probed once, on rank 0, shared with the other processes) and the reasons
    the others could not be read."""
    from caspl_plugin import distributed
    from caspl_plugin.data.images import probe_images

    probe = probe_images(files, progress=not args.no_progress) if distributed.is_main() else None
    probe = distributed.broadcast_object(probe)
    if not probe.readable:
        raise CommandError(f"none of the {len(files)} images under {args.images} is readable; first: "
                           f"{probe.unreadable[0][0]}: {probe.unreadable[0][1]}")
    return probe.readable, {str(path): reason for path, reason in probe.unreadable}


def _distill(args, device, output: Path, checkpoint: Path, files, class_names, template, settings, domains,
             record=None) -> int:
    import dataclasses

    import torch

    from caspl_plugin import distributed
    from caspl_plugin.boosting import BoostingConfig, build_distiller, export_artifact, run_distillation
    from caspl_plugin.cache.views import AugmentationSettings
    from caspl_plugin.clip import create_clip
    from caspl_plugin.data.domains import MultiDomainImages
    from caspl_plugin.data.unlabeled import UnlabeledImages, train_transform

    readable, reasons = _probe(files, args)
    config = BoostingConfig(args.n_text, args.n_vision, args.depth_text, args.depth_vision)
    listed = domains  # every listed file: what a domain's cache is checked against
    if domains:
        kept = {str(path) for path in readable}
        domains = [dataclasses.replace(d, files=tuple(f for f in d.files if str(f) in kept)) for d in domains]
        empty = [d.name for d in domains if not d.files]
        if empty:
            raise CommandError(f"domain(s) {empty} have no readable image")
        for d in domains:
            logger.info("domain %s: %d images, %d classes, teacher template %r",
                        d.name, len(d.files), len(d.classes.class_names), d.classes.template)
    else:
        logger.info("%d images (%d unreadable), %d classes, teacher template %r",
                    len(files), len(reasons), len(class_names), template)

    torch.manual_seed(args.seed)
    with in_user_words("--student-weights"):
        student = create_clip(args.student, args.student_weights, weights_dir=args.weights_dir, device=device)
    dataset = None
    augmentation = AugmentationSettings(scale=settings.crop_scale)
    with in_user_words("--teacher-weights"):
        if args.teacher_cache and domains:  # one cache per domain: only the teacher's text tower is built
            from caspl_plugin.cache.dataset import open_cached_domains

            teacher, dataset = open_cached_domains(args.teacher_cache, listed, student, args.teacher, args.teacher_weights,
                                                   sampling=args.domain_sampling, weights_dir=args.weights_dir,
                                                   device=device, epochs=args.epochs, augmentation=augmentation)
            domains = dataset.domains
        elif args.teacher_cache:  # the teacher-view cache: only the teacher's text tower is built
            from caspl_plugin.cache.dataset import open_cached_run

            teacher, dataset = open_cached_run(args.teacher_cache, files, Path(args.images), student, args.teacher,
                                               args.teacher_weights, weights_dir=args.weights_dir, device=device,
                                               epochs=args.epochs, augmentation=augmentation)
        else:
            teacher = create_clip(args.teacher, args.teacher_weights, weights_dir=args.weights_dir, device=device)
    with in_user_words(prompts_hint="--n-text gives the boosting prompts fewer text tokens"):
        distiller = build_distiller(
            student, teacher, class_names, template, config, temperature=args.temperature,
            teacher_scale=args.teacher_scale, generator=torch.Generator().manual_seed(args.seed),
            domains=[d.classes for d in domains] if domains else None,
        ).to(device)
    distiller.student.clip.text_chunk = args.text_chunk
    teacher_weights = str(teacher.weights)
    del teacher  # the distiller keeps the class features, not the teacher's text tower
    spec = distiller.student.boosting.spec
    logger.info("boosting prompts: %d text x depth %d, %d vision x depth %d (%d parameters)",
                spec.n_text, spec.depth_text, spec.n_vision, spec.depth_vision,
                sum(p.numel() for p in distiller.student.learnable_parameters()))
    transform = train_transform(student.image_size, student.mean, student.std, scale=augmentation.scale)
    if dataset is None:
        dataset = MultiDomainImages(domains, transform, args.domain_sampling) if domains else UnlabeledImages(readable, transform)
    if distributed.world_size() > 1:
        say(f"torchrun: {distributed.world_size()} processes, global batch {settings.batch_size} x "
            f"{distributed.world_size()} = {settings.batch_size * distributed.world_size()}, lr {settings.lr} (as given)")
    report = run_distillation(distiller, dataset, settings, checkpoint=checkpoint, resume=args.resume,
                              progress=not args.no_progress, tensorboard=args.tensorboard,
                              known_unreadable=list(reasons))
    if distributed.is_main():
        artifact = export_artifact(
            output, distiller, student.describe(), teacher=args.teacher,
            teacher_weights=teacher_weights,
            dataset=args.dataset or ("+".join(d.name for d in domains) if domains else Path(args.images).name),
            settings=settings, report=report, domains=[d.metadata() for d in domains] if domains else None,
        )
        record.write_metrics(report)
        record.write_result(
            dataset=artifact.metadata.get("dataset"), seed=settings.seed, student=args.student, teacher=args.teacher,
            output=str(output), output_sha256=artifact.content_sha256, epochs=settings.epochs, steps=report.steps,
            final_loss=report.epoch_losses[-1] if report.epoch_losses else None, seconds=report.seconds,
            skipped_images=len(report.skipped), evaluation={},
        )
        losses = ", ".join(f"{loss:.4f}" for loss in report.epoch_losses)
        say(f"KD loss per epoch: {losses}")
        say(f"wrote {output} ({artifact.content_sha256[:12]}) in {report.seconds:.1f} s, {report.steps} steps")
        if report.skipped:
            say(f"skipped {len(report.skipped)} unreadable image(s):")
            for path in report.skipped:
                say(f"  {path}: {reasons.get(path, 'failed to read during training')}")
        if report.left_out_per_epoch:
            say(f"each epoch left out {report.left_out_per_epoch} of {len(dataset)} readable image(s): "
                  f"its incomplete last batch (global batch {settings.batch_size * distributed.world_size()}, "
                  "other images each epoch)")
    distributed.barrier()
    return 0

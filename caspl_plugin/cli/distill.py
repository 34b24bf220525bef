"""``caspl distill``: phase 1 — learn boosting prompts from a zero-shot teacher on unlabeled images.

Example::

    caspl distill --images data/pets/images --class-names pets.txt --template OxfordPets \\
        --student ViT-B/16 --student-weights ViT-B-16.pt --teacher ViT-L/14 --teacher-weights ViT-L-14.pt \\
        -o boosting/oxford_pets.safetensors

``--demo`` runs on an embedded default instead (tiny models and a generated image folder).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import CommandError

logger = logging.getLogger(__name__)

DEMO_STUDENT, DEMO_TEACHER = "caspl-tiny-student", "caspl-tiny-teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--images", help="folder of unlabeled images of the domain (searched recursively)")
    data.add_argument("--class-names", help="text file, one class name per line (all classes of the domain)")
    data.add_argument("--dataset", help="dataset name recorded in the artifact (default: the image folder's name)")
    data.add_argument("--demo", action="store_true", help="run on the embedded default: tiny models + a generated image folder")
    models = parser.add_argument_group("models")
    models.add_argument("--student", default="ViT-B/16", help="student CLIP (Dassl or open_clip name; default ViT-B/16)")
    models.add_argument("--student-weights", help="'openai', another open_clip tag, a local file, or 'random'")
    models.add_argument("--teacher", default="ViT-L/14", help="zero-shot teacher CLIP (default ViT-L/14)")
    models.add_argument("--teacher-weights", help="'openai', another open_clip tag, a local file, or 'random'")
    models.add_argument("--weights-dir", help="directory searched for weight files named after the models")
    models.add_argument("--teacher-cache", metavar="DIR",
                        help="train from a teacher-view cache (`caspl teacher-cache`): the teacher's image tower is never built")
    models.add_argument("--template", default="a photo of a {}.",
                        help="teacher text template with {} for the class name, or a dataset name whose CoOp template to use (e.g. OxfordPets)")
    prompts = parser.add_argument_group("boosting prompts")
    prompts.add_argument("--n-text", type=int, default=8)
    prompts.add_argument("--n-vision", type=int, default=8)
    prompts.add_argument("--depth-text", type=int, default=12, help="clamped to the student's depth")
    prompts.add_argument("--depth-vision", type=int, default=12, help="clamped to the student's depth")
    train = parser.add_argument_group("training (defaults: the authors' phase-1 recipe)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=0.0025)
    train.add_argument("--temperature", type=float, default=1.0)
    train.add_argument("--teacher-scale", choices=("own", "student"), default="own",
                       help="teacher logit scale: its own (default) or the student's")
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    train.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    train.add_argument("--precision", choices=("fp32", "amp"), default="fp32", help="amp = autocast, weights stay fp32")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint next to the output")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-o", "--output", help="artifact to write (.safetensors); default <out>/boosting.safetensors with --demo")
    parser.add_argument("--out", default="demo_output", help="with --demo: folder for the generated images and the artifact")


def _template(value: str) -> str:
    if "{}" in value:
        return value
    from caspl_plugin.data.catalog import TEMPLATES

    if value in TEMPLATES:
        return TEMPLATES[value]
    raise CommandError(f"--template {value!r} has no '{{}}' and is not a dataset name; known datasets: {', '.join(sorted(TEMPLATES))}")


def _device(value: str):
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(value)
    except RuntimeError as error:
        raise CommandError(f"--device {value!r} is not a device: {error}") from error


def _prepare_demo(args) -> None:
    from caspl_plugin.toy import domain

    out = Path(args.out)
    folder = domain.write_image_folder(out / "data", num_per_class=4, seed=0, overwrite=True)
    args.images, args.class_names = str(folder.images), str(folder.class_names)
    args.student, args.teacher = DEMO_STUDENT, DEMO_TEACHER
    args.student_weights = args.teacher_weights = None
    args.dataset = args.dataset or "toy-shapes"
    args.output = args.output or str(out / "boosting.safetensors")
    if args.epochs == 20:
        args.epochs = 2
    if args.batch_size == 4:
        args.batch_size = 16


def run(args) -> int:
    import torch

    from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, export_artifact, run_distillation
    from caspl_plugin.clip import create_clip
    from caspl_plugin.data.unlabeled import UnlabeledImages, list_images, read_class_names, train_transform

    if args.demo:
        _prepare_demo(args)
    missing = [flag for flag, value in (("--images", args.images), ("--class-names", args.class_names), ("-o/--output", args.output)) if not value]
    if missing:
        raise CommandError(f"missing {', '.join(missing)} (or use --demo)")
    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise CommandError(f"--output must end in .safetensors, got {output}")
    # validate every input before anything is built or written
    files = list_images(args.images)
    class_names = read_class_names(args.class_names)
    template = _template(args.template)
    device = _device(args.device)
    settings = DistillSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
        teacher_scale=args.teacher_scale, precision=args.precision, num_workers=args.workers, seed=args.seed,
    )
    config = BoostingConfig(args.n_text, args.n_vision, args.depth_text, args.depth_vision)
    logger.info("%d images, %d classes, teacher template %r", len(files), len(class_names), template)

    torch.manual_seed(args.seed)
    student = create_clip(args.student, args.student_weights, weights_dir=args.weights_dir, device=device)
    dataset = None
    if args.teacher_cache:  # the teacher-view cache: only the teacher's text tower is built
        from caspl_plugin.cache.dataset import open_cached_run

        teacher, dataset = open_cached_run(args.teacher_cache, files, Path(args.images), student, args.teacher, args.teacher_weights,
                                           weights_dir=args.weights_dir, device=device, epochs=args.epochs)
    else:
        teacher = create_clip(args.teacher, args.teacher_weights, weights_dir=args.weights_dir, device=device)
    distiller = build_distiller(
        student, teacher, class_names, template, config, temperature=args.temperature,
        teacher_scale=args.teacher_scale, generator=torch.Generator().manual_seed(args.seed),
    ).to(device)
    teacher_weights = str(teacher.weights)
    del teacher  # the distiller keeps the class features, not the teacher's text tower
    spec = distiller.student.boosting.spec
    logger.info("boosting prompts: %d text x depth %d, %d vision x depth %d (%d parameters)",
                spec.n_text, spec.depth_text, spec.n_vision, spec.depth_vision,
                sum(p.numel() for p in distiller.student.learnable_parameters()))
    if dataset is None:
        dataset = UnlabeledImages(files, train_transform(student.image_size, student.mean, student.std))
    checkpoint = output.with_name(output.stem + ".ckpt.safetensors")
    report = run_distillation(distiller, dataset, settings, checkpoint=checkpoint, resume=args.resume, progress=not args.no_progress)
    artifact = export_artifact(
        output, distiller, student.describe(), teacher=args.teacher,
        teacher_weights=teacher_weights, dataset=args.dataset or Path(args.images).name,
        settings=settings, report=report,
    )
    losses = ", ".join(f"{loss:.4f}" for loss in report.epoch_losses)
    print(f"KD loss per epoch: {losses}")
    print(f"wrote {output} ({artifact.content_sha256[:12]}) in {report.seconds:.1f} s, {report.steps} steps")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable image(s):")
        for path in report.skipped:
            print(f"  {path}")
    return 0

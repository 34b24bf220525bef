"""``caspl adapt``: phase 2 without Dassl — train a prompt-learning method (optionally cascaded with
phase-1 boosting prompts, CasPL_<Method>) on labeled images, evaluate, and save a classifier.

Examples::

    # an image folder with one sub-folder per class, 16 shots, base-to-novel
    caspl adapt --data my_domain/ --method promptsrc --boosting boosting/my_domain.safetensors \\
        --shots 16 --subsample base --student ViT-B/16 --student-weights openai -o my_domain.safetensors

    # a CoOp dataset layout (DATASET.ROOT of the CoOp projects)
    caspl adapt --dataset OxfordPets --root ~/data --method coop --preset few_shot --shots 16 -o pets.safetensors

Few-shot sampling follows CoOp's protocol (the same picks as Dassl for the same ``--seed``); the
data folder is only read: the split used is kept in the run folder (``<output>.run/``: the resolved
settings, re-runnable with ``--config``, the log, per-epoch metrics and the evaluation). The same
engine as ``caspl distill``: checkpoints and ``--resume``, ``--precision``, ``--tensorboard`` and
``torchrun``.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from .common import (
    BATCH_HELP, CommandError, add_loop_arguments, check_model_names, check_tensorboard, in_user_words,
    run_distributed, say,
)
from .runguard import guarded_run
from .runrecord import run_record

logger = logging.getLogger(__name__)


#: reads --config files (caspl_plugin.cli.options)
CONFIGURABLE = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (one of --data or --dataset/--root)")
    data.add_argument("--data", help="image folder with one sub-folder per class (or train/ val/ test/ sub-folders of class folders)")
    data.add_argument("--dataset", help="a CoOp benchmark dataset name (e.g. OxfordPets), read from --root")
    data.add_argument("--root", help="the folder holding the CoOp datasets (DATASET.ROOT)")
    data.add_argument("--shots", type=int, default=16, help="training images per class, CoOp's few-shot protocol (-1: all)")
    data.add_argument("--subsample", choices=("all", "base", "new"), default="all",
                      help="train on all classes, or the base / new half; with 'base' the test reports base, novel and HM")
    method = parser.add_argument_group("method")
    method.add_argument("--method", default="coop", help="coop, cocoop, ivlp, maple or promptsrc (any registered method)")
    method.add_argument("--preset", help="a preset of the method (default: caspl_base2novel with --boosting, else base2novel, "
                                         "when it has one); PromptSRC's caspl_* presets place the boosting prompts at "
                                         "PromptSRC's depth, the authors' rule, as the CasPL_PromptSRC Dassl configs do "
                                         "(layers the artifact lacks: random tokens drawn from --seed)")
    method.add_argument("--boosting", metavar="ARTIFACT", help="boosting prompts from `caspl distill` (CasPL_<Method>); frozen")
    method.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a method setting of the preset (VALUE is JSON, else a string), e.g. n_ctx=4")
    models = parser.add_argument_group("student CLIP")
    models.add_argument("--student", default="ViT-B/16", help="student CLIP (Dassl or open_clip name)")
    models.add_argument("--student-weights", help="'openai', another open_clip tag, a local file, or 'random'")
    models.add_argument("--weights-dir", help="directory searched for weight files named after the models")
    train = parser.add_argument_group("training (defaults: the preset's)")
    train.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    train.add_argument("--batch-size", type=int, help=BATCH_HELP.format(half="half the preset's") + " (default: the preset's)")
    train.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    train.add_argument("--seed", type=int, default=1, help="few-shot sampling, prompt initialisation and data order")
    train.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    train.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    add_loop_arguments(train)
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation on the test split")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-o", "--output", help="classifier artifact to write (.safetensors), for `caspl classify`; "
                                               "its run folder (settings, log, metrics, evaluation) is <output>.run/")


def run(args) -> int:
    return run_distributed(args, _run)


# ---- inputs -------------------------------------------------------------------------------

def _method_and_preset(args):
    from caspl_plugin.methods.registry import get_method, get_preset

    try:
        cls = get_method(args.method)
    except KeyError as error:
        raise CommandError(f"--method: {error.args[0]}") from None
    presets = getattr(cls, "presets", {})
    name = args.preset
    if name is None:
        wanted = ("caspl_base2novel", "base2novel") if args.boosting else ("base2novel",)
        name = next((p for p in wanted if p in presets), next(iter(presets), None))
    if name is None:
        return cls, None
    try:
        return cls, get_preset(cls.method, name)
    except KeyError as error:
        raise CommandError(f"--preset: {error.args[0]}") from None


def _model_args(pairs) -> dict:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--model-arg {pair!r} is not KEY=VALUE")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def _read_splits(args):
    """``(dataset_dir, image_dir, full splits)`` of --data or --dataset/--root."""
    import os

    from caspl_plugin.data import layouts
    from caspl_plugin.data.catalog import dataset_spec

    if bool(args.data) == bool(args.dataset):
        raise CommandError("give exactly one of --data FOLDER or --dataset NAME (with --root)")
    if args.data:
        folder = os.path.abspath(args.data)
        if not os.path.isdir(folder):
            raise CommandError(f"--data {args.data}: no such folder (expected one sub-folder per class)")
        return folder, folder, layouts.read_labeled_folder(folder)
    if not args.root:
        raise CommandError("--dataset needs --root (the folder holding the CoOp datasets)")
    try:
        spec = dataset_spec(args.dataset)
    except KeyError as error:
        raise CommandError(f"--dataset: {error.args[0]}") from None
    if spec.test_only:
        raise CommandError(f"--dataset {spec.name} is a test-only dataset; train on its source dataset instead")
    dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(args.root)), spec.dataset_dir)
    return dataset_dir, dataset_dir, None


def _image_root(args) -> str:
    """The folder the records' image paths are relative to in a split file (as _read_splits reads them)."""
    import os

    from caspl_plugin.data.catalog import dataset_spec

    if args.data:
        return os.path.abspath(args.data)
    return os.path.join(os.path.abspath(os.path.expanduser(args.root)), dataset_spec(args.dataset).dataset_dir)


def _check_shots(train, shots: int) -> None:
    if shots < 1:
        return
    counts: dict[str, int] = {}
    for record in train:
        counts[record.classname] = counts.get(record.classname, 0) + 1
    short = sorted((n, c) for c, n in counts.items() if n < shots)
    if short:
        listed = ", ".join(f"{c!r} has {n}" for n, c in short[:5]) + (" ..." if len(short) > 5 else "")
        raise CommandError(f"--shots {shots}: {len(short)} class(es) have fewer training images: {listed}")


def _load_data(args):
    """Training records, test records of the trained classes, and (with --subsample base) of the novel ones."""
    from caspl_plugin.data import layouts
    from caspl_plugin.data.splits import subsample_classes

    if args.shots == 0 or args.shots < -1:
        raise CommandError(f"--shots must be >= 1 or -1 (all images), got {args.shots}")
    dataset_dir, image_dir, full = _read_splits(args)
    if full is None:  # a CoOp benchmark: its own reader, then CoOp's protocol
        def read(shots, subsample):
            return layouts.load_benchmark(args.dataset, args.root, num_shots=shots, seed=args.seed,
                                          subsample=subsample, rng=random.Random(args.seed), cache_fewshot=False)
        full = read(-1, "all")
    else:
        def read(shots, subsample):
            return layouts.apply_protocol(dataset_dir, image_dir, full, num_shots=shots, seed=args.seed,
                                          subsample=subsample, rng=random.Random(args.seed), cache_fewshot=False)
    if not full.train:
        raise CommandError(f"no training images in {dataset_dir}")
    _check_shots(full.train, args.shots)
    # CoOp's few-shot picks, drawn from --seed alike on every rank; the data folder is never written
    # (the run folder keeps the split: RunRecord)
    splits = read(args.shots, args.subsample)
    novel_test = subsample_classes(full.train, full.test, subsample="new")[1] if args.subsample == "base" else None
    return splits.train, splits.test, novel_test


def _settings(args, preset):
    """The preset's training recipe with the flags given on top (a flag not given keeps the preset's)."""
    from caspl_plugin.methods import AdaptSettings

    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise CommandError(f"{flag} must be >= 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise CommandError(f"--lr must be > 0, got {args.lr}")
    try:
        return AdaptSettings.from_preset(preset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                         precision=args.precision, num_workers=args.workers, seed=args.seed)
    except ValueError as error:
        raise CommandError(f"--preset {preset.name if preset else None}: {error}") from None


def _run(args, device) -> int:
    from caspl_plugin import distributed
    from caspl_plugin.data.labeled import class_names_of

    # validate every input before anything is built or written
    if not args.output:
        raise CommandError("-o/--output is required (here or in --config): the classifier artifact to write")
    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise CommandError(f"--output must end in .safetensors, got {output}")
    if args.boosting and not Path(args.boosting).is_file():
        raise CommandError(f"--boosting {args.boosting}: no such file")
    check_model_names(student=args.student)
    cls, preset = _method_and_preset(args)
    settings = _settings(args, preset)
    model_settings = {**(preset.model if preset else {}), **_model_args(args.model_arg)}
    check_tensorboard(args.tensorboard)
    train, test, novel_test = _load_data(args)
    names = class_names_of(train)

    with guarded_run(output, command="adapt") as checkpoint:
        with run_record(output, "adapt", args) as record:
            _adapt(args, device, output, checkpoint, record, cls, preset, settings, model_settings, train, test,
                   novel_test, names)
        distributed.barrier()
    return 0


def _adapt(args, device, output, checkpoint, record, cls, preset, settings, model_settings, train, test, novel_test, names):
    """Build the model, train it (run_adaptation), evaluate and write the classifier and the run folder."""
    import torch

    from caspl_plugin import distributed
    from caspl_plugin.artifacts.store import ArtifactError
    from caspl_plugin.clip import create_clip
    from caspl_plugin.data.labeled import LabeledImages, class_names_of
    from caspl_plugin.data.splits import write_split
    from caspl_plugin.data.unlabeled import eval_transform, train_transform
    from caspl_plugin.engine import evaluate
    from caspl_plugin.inference import save_classifier
    from caspl_plugin.methods import cascade, run_adaptation
    from caspl_plugin.prompts import PromptedCLIP
    from caspl_plugin.report import harmonic_mean

    torch.manual_seed(args.seed)
    with in_user_words("--student-weights"):
        student = create_clip(args.student, args.student_weights, weights_dir=args.weights_dir, device=device)
    try:
        with in_user_words(prompts_hint="fewer prompt tokens: --model-arg n_ctx=K (CoOp, CoCoOp, MaPLe) or "
                                        "n_ctx_text=K (IVLP, PromptSRC), or a boosting artifact with fewer text tokens"):
            model = cascade(cls, PromptedCLIP(student), names, args.boosting, boosting_seed=args.seed,
                            **(preset.cascade if preset else {}), **model_settings).to(device)
    except ArtifactError as error:
        raise CommandError(f"--boosting {args.boosting}: {error}") from None
    except TypeError as error:
        raise CommandError(f"method {cls.method!r} does not take these settings {model_settings}: {error}") from None
    model.clip.text_chunk = args.text_chunk
    label = ("CasPL_" if model.boosting is not None else "") + cls.method
    say(f"{label} ({preset.name if preset else 'defaults'}) on {student.name}: {len(names)} classes, "
        f"{len(train)} training images, {settings.epochs} epochs, batch {settings.batch_size} x "
        f"{distributed.world_size()} process(es), lr {settings.lr} (as given)")
    geometry = model.clip.geometry
    dataset = LabeledImages(train, train_transform(geometry["image_size"], model.clip.mean, model.clip.std))
    if args.resume and checkpoint.is_file():
        say(f"resuming from {checkpoint}")
    elif args.resume:
        say(f"--resume: no checkpoint at {checkpoint}, starting from scratch")
    try:
        report = run_adaptation(model, dataset, settings, checkpoint=checkpoint, resume=args.resume,
                                progress=not args.no_progress, tensorboard=args.tensorboard,
                                identity={"shots": args.shots})
    except ArtifactError as error:
        raise CommandError(str(error)) from None
    epochs, batch_size, lr = settings.epochs, settings.batch_size, settings.lr

    if record is not None:
        record.write_metrics(report)
        if args.shots >= 1:  # the few-shot split trained on (the data folder is never written)
            write_split(record.fewshot_split(args.shots, args.seed), _image_root(args), train=train)
    if distributed.is_main():
        evaluation = {}
        if not args.no_eval and test:
            transform = eval_transform(geometry["image_size"], model.clip.mean, model.clip.std)
            progress = None if args.no_progress else "test"
            result = evaluate(model, LabeledImages(test, transform), precision=args.precision,
                              num_workers=args.workers, progress=progress)
            evaluation["base" if novel_test is not None else "accuracy"] = result.accuracy
            if novel_test is not None and novel_test:
                model.set_class_names(class_names_of(novel_test))
                novel = evaluate(model, LabeledImages(novel_test, transform), precision=args.precision,
                                 num_workers=args.workers, progress=progress)
                model.set_class_names(names)
                evaluation.update(novel=novel.accuracy, hm=harmonic_mean(result.accuracy, novel.accuracy))
        extra = {"training": {"epochs": epochs, "batch_size": batch_size, "world_size": distributed.world_size(),
                              "lr": lr, "seed": args.seed, "shots": args.shots, "subsample": args.subsample,
                              "precision": args.precision, "preset": preset.name if preset else None,
                              "optimizer": settings.optimizer, "warmup_epochs": settings.warmup_epochs,
                              "final_loss": report.epoch_losses[-1], "steps": report.steps,
                              "skipped_images": len(report.skipped)},
                 "evaluation": evaluation}
        digest = save_classifier(output, model, extra=extra)
        say("loss per epoch: " + ", ".join(f"{loss:.4f}" for loss in report.epoch_losses))
        if "accuracy" in evaluation:
            say(f"test accuracy: {evaluation['accuracy']:.2f}%")
        elif evaluation:
            say(f"base {evaluation['base']:.2f}%  novel {evaluation.get('novel', float('nan')):.2f}%  "
                  f"HM {evaluation.get('hm') or 0:.2f}%")
        record.write_result(
            method=cls.method, cascade=model.boosting is not None, preset=preset.name if preset else None,
            dataset=args.dataset or Path(args.data).name, shots=args.shots, subsample=args.subsample, seed=args.seed,
            student=args.student, output=str(output), output_sha256=digest, epochs=epochs, steps=report.steps,
            final_loss=report.epoch_losses[-1] if report.epoch_losses else None, seconds=report.seconds,
            skipped_images=len(report.skipped), evaluation=evaluation,
        )
        say(f"wrote {output} ({digest[:12]}) in {report.seconds:.1f} s, {report.steps} steps")
        if report.skipped:
            say(f"skipped {len(report.skipped)} unreadable image(s):")
            for path in report.skipped:
                say(f"  {path}")

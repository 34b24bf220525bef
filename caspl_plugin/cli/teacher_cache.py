"""``caspl teacher-cache``: precompute the teacher's features of K augmented views per image.

Example::

    caspl teacher-cache --images data/pets/images --teacher ViT-L/14 --teacher-weights ViT-L-14.pt \\
        --views 20 -o cache/pets-vitl14
    caspl distill --images data/pets/images --class-names pets.txt --teacher ViT-L/14 \\
        --teacher-weights ViT-L-14.pt --teacher-cache cache/pets-vitl14 -o boosting/pets.safetensors

View ``k`` of an image is fixed by (``--seed``, the file's path under the image root, ``k``);
epoch ``e`` of a cached run uses view ``e mod K``, so the default ``--views 20`` (the recipe's
epochs) reproduces the online recipe. ``--update`` recomputes only new or changed images and drops
removed ones; a killed run keeps its finished shards and resumes when started again. Under
``torchrun --nproc-per-node N`` the images are shared across the processes.

Several domains (universal boosting prompts) take the same ``--domain``/``--domains`` arguments as
``caspl distill``; every domain gets its own cache in ``OUTPUT/<domain name>`` (listed in
``OUTPUT/domains.json``), and ``caspl distill --domains ... --teacher-cache OUTPUT`` trains from them::

    caspl teacher-cache --domains domains.yaml --teacher ViT-L/14 --teacher-weights ViT-L-14.pt -o cache/universal
    caspl distill --domains domains.yaml --teacher ViT-L/14 --teacher-weights ViT-L-14.pt \\
        --teacher-cache cache/universal -o boosting/universal.safetensors
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from .common import CommandError, in_user_words

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (one of)")
    data.add_argument("--images", help="folder of unlabeled images (searched recursively); file keys are relative to it")
    data.add_argument("--dataset", help="a CoOp benchmark dataset name whose train split to cache (with --root)")
    data.add_argument("--root", help="with --dataset: the datasets root (Dassl's DATASET.ROOT); file keys are relative to it")
    data.add_argument("--subsample", choices=("all", "base", "new"), default="all", help="with --dataset: classes of the train split")
    data.add_argument("--domain", nargs="+", action="append", metavar="IMAGES CLASSNAMES TEMPLATE [NAME]",
                      help="several domains, as for `caspl distill`: one cache per domain in OUTPUT/<NAME>")
    data.add_argument("--domains", metavar="MANIFEST", help="several domains from a manifest, as for `caspl distill`")
    models = parser.add_argument_group("teacher")
    models.add_argument("--teacher", default="ViT-L/14", help="any open_clip CLIP")
    models.add_argument("--teacher-weights", help="'openai', another open_clip tag, a local file, or 'random'")
    models.add_argument("--weights-dir", help="directory searched for weight files named after the models")
    views = parser.add_argument_group("views")
    views.add_argument("--views", type=int, default=20, help="K views per image (20: the recipe's epochs)")
    views.add_argument("--seed", type=int, default=1, help="view seed")
    views.add_argument("--crop-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                       help="RandomResizedCrop area range (the authors')")
    run = parser.add_argument_group("run")
    run.add_argument("--update", action="store_true", help="compute only new or changed images; drop removed ones")
    run.add_argument("--shard-size", type=int, default=256, help="images per shard file")
    run.add_argument("--batch-size", type=int, default=64, help="views per teacher forward")
    run.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    run.add_argument("--precision", choices=("auto", "fp32", "amp", "bf16", "fp16"), default="auto",
                     help="teacher compute precision (auto: fp16 on CUDA, fp32 elsewhere)")
    run.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-o", "--output", required=True, help="cache folder to write")


def source_files(args) -> tuple[list[Path], Path]:
    """The images to cache and the root their keys are relative to (``--images`` or ``--dataset``)."""
    from caspl_plugin.data.unlabeled import list_images

    if sum(bool(v) for v in (args.images, args.dataset, args.domain or args.domains)) != 1:
        raise CommandError("give one of --images DIR, --dataset NAME --root DIR, or --domain/--domains")
    if args.images:
        return list_images(args.images), Path(args.images)
    if not args.root:
        raise CommandError("--dataset needs --root (the datasets root, Dassl's DATASET.ROOT)")
    from caspl_plugin.data import load_benchmark

    splits = load_benchmark(args.dataset, args.root, subsample=args.subsample)
    files = sorted({Path(record.impath) for record in splits.train})
    if not files:
        raise CommandError(f"dataset {args.dataset} under {args.root} has no train images")
    return files, Path(args.root)


def source_domains(args):
    """The domains of ``--domain``/``--domains`` and their cache folders (None for one folder)."""
    from caspl_plugin.cache.store import domain_cache_folders
    from caspl_plugin.data.domains import read_domains

    try:
        domains = read_domains(args.domain, args.domains)
        if domains is None:
            return None
        return domains, domain_cache_folders(args.output, [d.name for d in domains])
    except (OSError, ValueError) as error:
        raise CommandError(str(error)) from error


def run(args) -> int:
    from caspl_plugin import distributed
    from caspl_plugin.cache import AugmentationSettings, build_teacher_cache, describe_cache
    from caspl_plugin.clip import create_clip

    from .common import device_of

    if args.views < 1:
        raise CommandError(f"--views must be >= 1, got {args.views}")
    low, high = args.crop_scale
    if not 0 < low <= high <= 1:
        raise CommandError(f"--crop-scale expects 0 < MIN <= MAX <= 1, got {low} {high}")
    multi = source_domains(args)
    jobs = [(d.name, folder, list(d.files), d.root) for d, folder in zip(multi[0], multi[1].values())] if multi else None
    if jobs is None:
        files, root = source_files(args)
        jobs = [(None, Path(args.output), files, root)]
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CommandError(f"--output {output} exists and is not a folder")
    from caspl_plugin.cache.store import DOMAINS_FILE, INDEX_FILE

    other = (output / INDEX_FILE) if multi else (output / DOMAINS_FILE)
    if other.is_file():
        raise CommandError(f"--output {output} holds a {'single-folder' if multi else 'multi-domain'} teacher-view cache "
                           f"({other.name}); use another folder for a {'multi-domain' if multi else 'single-folder'} one")
    device = distributed.setup(device_of(args.device))
    try:
        with in_user_words("--teacher-weights"):
            teacher = create_clip(args.teacher, args.teacher_weights, weights_dir=args.weights_dir, device=device)
        from caspl_plugin.cli.runguard import output_lock  # one run per output at a time

        lock = output_lock(output, command="teacher-cache") if distributed.is_main() else contextlib.nullcontext()
        with lock:
            counts = {}
            for name, folder, files, root in jobs:
                report = build_teacher_cache(
                    folder, files, root, teacher, views=args.views, seed=args.seed,
                    augmentation=AugmentationSettings(scale=(low, high)), update=args.update,
                    shard_size=args.shard_size, batch_size=args.batch_size, device=device,
                    precision=args.precision, feature_dtype=args.dtype, progress=not args.no_progress,
                )
                counts[name] = len(files)
                if distributed.is_main():
                    _print_report(report, folder, name)
            if multi and distributed.is_main():
                from caspl_plugin.cache.store import write_domains_index

                write_domains_index(output, counts)
        if distributed.is_main():
            print(describe_cache(output))
    finally:
        distributed.cleanup()
    return 0


def _print_report(report, folder: Path, name=None) -> None:
    where = f"domain {name}: " if name else ""
    if report.up_to_date:
        print(f"{where}{folder} is up to date ({report.kept} images)")
    else:
        print(f"{where}{report.computed} image(s) computed ({report.shards_written} shard(s) written, "
              f"{report.shards_reused} reused), {report.kept} kept, {report.removed} removed in {report.seconds:.1f} s")
    if report.unreadable:
        print(f"{where}skipped {len(report.unreadable)} unreadable image(s):")
        for key in report.unreadable:
            print(f"  {key}")

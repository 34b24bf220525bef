"""``caspl import-official CKPT -o OUT``: convert the authors' phase-1 checkpoint into a boosting artifact."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official phase-1 checkpoint, e.g. .../CasPL/model.pth.tar-20")
    parser.add_argument("-o", "--output", required=True, help="artifact to write (.safetensors)")
    parser.add_argument("--class-names", metavar="FILE", help="text file with the class names, one per line")
    parser.add_argument("--template", help="the teacher's text template, e.g. 'a photo of a {}, a type of pet.'")
    parser.add_argument("--dataset", help="dataset name (default: the folder before shots_* in the checkpoint path)")
    parser.add_argument("--student", default="ViT-B/16", help="student backbone the prompts were learned on")
    parser.add_argument("--teacher", default="ViT-L/14", help="teacher backbone (recorded in the metadata)")


def run(args: argparse.Namespace) -> int:
    from caspl_plugin.boosting.official import import_official
    from caspl_plugin.data.classnames import read_class_names_file

    class_names = None
    if args.class_names:
        names_file = read_class_names_file(args.class_names)
        class_names = names_file.names
        print(f"{args.class_names}: {len(class_names)} class names ({names_file.comments} '#' comment line(s) skipped)")
    artifact = import_official(
        args.checkpoint,
        args.output,
        student=args.student,
        teacher=args.teacher,
        template=args.template,
        class_names=class_names,
        dataset=args.dataset,
    )
    counts = (("text", artifact.n_text, artifact.depth_text), ("vision", artifact.n_vision, artifact.depth_vision))
    encoders = [f"{name} {n} tokens x depth {depth}" for name, n, depth in counts if n]
    print(f"wrote {args.output}: {', '.join(encoders)}; sha256 {artifact.content_sha256}")
    return 0

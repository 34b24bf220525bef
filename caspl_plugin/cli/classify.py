"""``caspl classify --model FILE IMAGE...``: top-k classes of images with a saved classifier."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", required=True, help="classifier artifact (.safetensors) saved after phase 2")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--weights", help="override the student CLIP's weights (tag, file or 'random')")
    parser.add_argument("--weights-dir", help="directory searched for CLIP weight files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def run(args) -> int:
    from caspl_plugin.inference import Classifier

    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    classifier = Classifier.load(args.model, weights=args.weights, weights_dir=args.weights_dir, device=args.device)
    model = classifier.model
    print(f"{model.method} on {model.clip.backbone_name}, {len(model.class_names)} classes"
          + (", with boosting prompts" if model.boosting is not None else ""))
    for prediction in classifier.predict(args.images, topk=args.topk):
        print(prediction.image)
        for name, p in zip(prediction.classes, prediction.probabilities):
            print(f"  {p:7.2%}  {name}")
    return 0

"""``caspl classify --model FILE IMAGE...``: top-k classes of images with a saved classifier.

``FILE`` is a classifier artifact (``.safetensors``, run in PyTorch) or its ONNX export (``.onnx``,
run with onnxruntime; torch is not imported then). Every image is checked before the model is
loaded: an unreadable one gets an error line, the others are still classified, and the exit code
is non-zero at the end.
"""
from __future__ import annotations

import argparse
import json
import sys

#: images per forward pass
BATCH_SIZE = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", required=True,
                        help="classifier artifact (.safetensors) saved after phase 2, or its ONNX export (.onnx)")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list: {"image", "top": [{"class", "probability"}...]} or {"image", "error"} per image')
    parser.add_argument("--weights", help="override the student CLIP's weights (tag, file or 'random'; .safetensors only)")
    parser.add_argument("--weights-dir", help="directory searched for CLIP weight files (.safetensors only)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_vocabulary_arguments(parser)


def add_vocabulary_arguments(parser: argparse.ArgumentParser) -> None:
    """--class-names / --template: rank other classes than the classifier was trained on."""
    parser.add_argument("--class-names", metavar="FILE",
                        help="rank these classes instead (one name per line): open vocabulary, the learned prompts "
                             "serve any class names (not CoOp's class-specific context)")
    parser.add_argument("--template", help="with the new names: another class template with {} (e.g. zero-shot models)")


def vocabulary(args):
    """(class names or None, template or None) of --class-names / --template, checked."""
    if args.class_names is None:
        return None, args.template
    from caspl_plugin.data.classnames import read_class_names

    return read_class_names(args.class_names), args.template


def is_onnx(path: str) -> bool:
    return str(path).lower().endswith(".onnx")


def load_model(args):
    """The classifier named by ``--model``: :class:`OnnxClassifier` for ``.onnx``, else :class:`Classifier`."""
    if is_onnx(args.model):
        from caspl_plugin.export.runtime import OnnxClassifier

        given = [flag for flag, value in (("--weights", args.weights), ("--weights-dir", args.weights_dir)) if value]
        if given:
            raise ValueError(f"{' and '.join(given)} apply to .safetensors classifiers; {args.model} carries its weights")
        if args.class_names or args.template:
            raise ValueError(f"{args.model} holds its class features as constants: --class-names / --template need the "
                             ".safetensors classifier (or export it again with `caspl export --class-names FILE`)")
        return OnnxClassifier(args.model, device=args.device)
    from caspl_plugin.inference import Classifier

    names, template = vocabulary(args)
    from .common import in_user_words

    with in_user_words("--weights"):
        classifier = Classifier.load(args.model, weights=args.weights, weights_dir=args.weights_dir, device=args.device)
    return classifier if names is None and template is None else classifier.with_class_names(
        classifier.class_names if names is None else names, template)


def probe(path: str):
    """``None`` if ``path`` is a readable image, else the error message for it."""
    from caspl_plugin.export.preprocess import open_image

    try:
        open_image(path)
    except FileNotFoundError:
        return f"Image not found: {path}"
    except Exception as error:
        return f"Cannot read image {path}: {error}"
    return None


def run(args) -> int:
    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    errors = {path: message for path in args.images if (message := probe(path)) is not None}
    for message in errors.values():
        print(f"caspl classify: error: {message}", file=sys.stderr)
    readable = [path for path in args.images if path not in errors]
    predictions = {}
    if readable:
        classifier = load_model(args)
        if not args.json:
            print(classifier.description)
        for start in range(0, len(readable), BATCH_SIZE):
            batch = readable[start:start + BATCH_SIZE]
            try:
                results = classifier.predict(batch, topk=args.topk)
            except (FileNotFoundError, ValueError):  # changed since the check: retry one by one
                results = []
                for path in batch:
                    try:
                        results += classifier.predict([path], topk=args.topk)
                    except (FileNotFoundError, ValueError) as error:
                        errors[path] = str(error)
                        print(f"caspl classify: error: {error}", file=sys.stderr)
            predictions.update((p.image, p) for p in results)
            if not args.json:
                for prediction in results:
                    print(prediction.image)
                    for name, p in zip(prediction.classes, prediction.probabilities):
                        print(f"  {p:7.2%}  {name}")
    if args.json:
        document = [predictions[path].as_json() if path in predictions else {"image": path, "error": errors[path]}
                    for path in args.images]
        print(json.dumps(document, indent=2, ensure_ascii=False))
    if errors:
        print(f"caspl classify: {len(errors)} of {len(args.images)} image(s) could not be read", file=sys.stderr)
        return 2
    return 0

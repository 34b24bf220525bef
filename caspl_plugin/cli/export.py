"""``caspl export --model CLASSIFIER.safetensors -o MODEL.onnx``: the classifier as one ONNX graph.

Input ``images`` (a batch of normalised images, dynamic batch axis), output ``logits``; class names,
image size, mean/std, method, student and boosting hash in the model's metadata. Run it with
``caspl classify --model MODEL.onnx IMAGE...`` (onnxruntime, no torch).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="classifier artifact (.safetensors) saved after phase 2")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="int8: onnxruntime dynamic quantisation of the weights; none: fp32")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--weights", help="override the student CLIP's weights (tag, file or 'random')")
    parser.add_argument("--weights-dir", help="directory searched for CLIP weight files")
    from .classify import add_vocabulary_arguments

    add_vocabulary_arguments(parser)


def run(args) -> int:
    from caspl_plugin.cli.common import CommandError, in_user_words
    from caspl_plugin.cli.runguard import preflight_output
    from caspl_plugin.export import ExportError
    from caspl_plugin.export.onnx_export import _require_export_packages

    try:
        _require_export_packages()
    except ExportError as error:
        raise CommandError(f"caspl export: {error}") from None
    output = Path(args.output)
    preflight_output(output, suffix=".onnx", what="-o")
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"Classifier not found: {args.model}")
    from caspl_plugin.export.onnx_export import export_classifier

    from .classify import vocabulary

    names, template = vocabulary(args)
    try:
        with in_user_words("--weights"):
            result = export_classifier(args.model, output, quantize=args.quantize, opset=args.opset,
                                       weights=args.weights, weights_dir=args.weights_dir, class_names=names,
                                       template=template)
    except ExportError as error:
        raise CommandError(str(error)) from None
    meta = result["metadata"]
    size_mb = output.stat().st_size / 1e6
    print(f"wrote {output} ({size_mb:.1f} MB): {meta['caspl.method']}, "
          f"{len(json.loads(meta['caspl.class_names']))} classes, "
          f"{'fp32' if args.quantize == 'none' else args.quantize}; "
          f"max |logit - PyTorch| {result['max_abs_difference']:.2g}, top-1 agreement {result['top1_agreement']:.0%} on a check batch")
    return 0

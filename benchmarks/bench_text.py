"""The text tower at real class counts (random ViT-B/16 weights, nothing downloaded), side by side:
the full 77-token path vs trimmed to the longest EOT vs the shared prefix run once.

(a) class features forward + backward: IVLP 16 text tokens at depth 12 (the text shape of
    CasPL_PromptSRC: 8 adapting + 8 boosting), CoOp 16 tokens, CoCoOp at batch 4 (B x C rows), for
    10 / 37 / 100 / 397 / 1000 classes; and IVLP's image features forward + backward at batch 4.
    Targets on a CPU: shared <= 0.15 x full at 100 classes; IVLP's class features <= 0.6 x its image
    features (batch 4).
(b) peak memory of one text forward + backward, each path in its own process (peak RSS on a CPU,
    peak allocated on CUDA). Target: shared <= 0.35 x full at 1000 classes.
(c) whole training steps at 100 classes, full (before) vs shared (after): the phase-1 cached step
    (8+8 boosting tokens at depth 12, teacher features from memory), the CasPL_PromptSRC step, the
    CoCoOp step (batch 4). Targets: phase-1 <= 0.4 x, CoCoOp <= 0.3 x.

    python benchmarks/bench_text.py [--quick] [--device cpu|cuda] [--precision fp32|bf16|fp16]
        [--classes 10 37 100 397 1000] [--repeats 3] [--skip-memory] [--skip-steps]
        [--max-full-tokens 2000000]

A path whose rows x positions exceed ``--max-full-tokens`` is not run (its memory would not fit a
small machine): the table says so. ``--quick`` uses the tiny CLIP and finishes in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from caspl_plugin.boosting.model import (  # noqa: E402
    BoostingConfig, BoostingDistiller, ZeroShotTeacher, boosting_student, make_boosting_group,
)
from caspl_plugin.clip import create_clip  # noqa: E402
from caspl_plugin.engine import autocast, make_optimizer, training_step  # noqa: E402
from caspl_plugin.methods import IVLP, CoCoOp, CoOp, PromptSRC  # noqa: E402
from caspl_plugin.prompts import PromptedCLIP  # noqa: E402
from caspl_plugin.prompts.text import PackedText, plan_text  # noqa: E402
from bench_scale import random_text_tower  # noqa: E402  (benchmarks/bench_scale.py)
from timing import interleaved, peak_rss_mib  # noqa: E402  (benchmarks/timing.py)

MODES = ("full", "trimmed", "shared")
WORDS = (
    "red golden spotted wild common great little northern sea mountain desert river black white grey "
    "retriever terrier eagle owl sparrow lion tiger shark whale beetle butterfly orchid lily rose oak "
    "maple pine truck bicycle guitar violin kettle teapot lamp bridge castle tower canyon glacier "
    "volcano reef lagoon harbor airliner sedan convertible pickup"
).split()


def class_names(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct names of 1-3 words (1-8 BPE tokens, as real class names)."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n:
        name = " ".join(rng.choice(WORDS) for _ in range(rng.choice((1, 2, 2, 3))))
        if name not in names:
            names.append(name)
    return names


def make_clip(name: str, device) -> PromptedCLIP:
    torch.manual_seed(0)
    return PromptedCLIP(create_clip(name, weights="random", device=device))


def boosting(clip, n_text=8, n_vision=8, depth=12):
    config = BoostingConfig(n_text=n_text, n_vision=n_vision, depth_text=depth, depth_vision=depth, ctx_init="")
    return make_boosting_group(clip, config, learnable=False, generator=torch.Generator().manual_seed(1))


def build_text_model(kind: str, clip, classes: int):
    names = class_names(classes)
    if kind == "ivlp":  # 16 learnable text tokens at depth 12
        return IVLP(clip, names, n_ctx_text=16, n_ctx_vision=8, depth_text=12, depth_vision=12, ctx_init="")
    if kind == "coop":
        return CoOp(clip, names, n_ctx=16, ctx_init="")
    if kind == "cocoop":
        return CoCoOp(clip, names, n_ctx=8, ctx_init="", boosting=boosting(clip))
    raise ValueError(kind)


def text_rows(kind: str, classes: int, batch: int) -> int:
    return classes * (batch if kind == "cocoop" else 1)


def text_function(model, kind: str, device, precision: str, batch: int):
    """One forward + backward of the class features (CoCoOp: per image of a batch)."""
    image_features = torch.randn(batch, model.clip.embed_dim, device=device)

    def run():
        model.zero_grad(set_to_none=True)
        with autocast(device, precision):
            features = model.conditioned_class_features(image_features) if kind == "cocoop" else model.encode_classes()
        features.float().square().mean().backward()

    return run


def image_function(model, device, precision: str, batch: int):
    size = model.clip.geometry["image_size"]
    images = torch.randn(batch, 3, size, size, device=device)

    def run():
        model.zero_grad(set_to_none=True)
        with autocast(device, precision):
            features = model.encode_image(images)
        features.float().square().mean().backward()

    return run


def positions(model, mode: str, rows: int, device) -> int:
    """Token positions one text block runs on ``mode``'s path (``shared``: the layout the cost model
    picks for ``device``, which may be the trimmed one)."""
    inputs = model.text_inputs()
    if mode == "full":
        return rows * inputs.token_ids.shape[1]
    if mode == "trimmed":
        return rows * (int(inputs.eot_index.max()) + 1)
    prompts = model.text_prompts()
    if rows != inputs.rows:  # CoCoOp: one prefix per image
        images = rows // inputs.rows
        contexts = torch.zeros(images, model.n_ctx, model.clip.text_width)
        inputs, prompts = inputs.repeat(images), model.prompts_with_context(contexts, rows=torch.arange(images).repeat_interleave(inputs.rows))
    plan = plan_text(inputs, prompts, "shared", device)
    return plan.tokens if isinstance(plan, PackedText) else plan.tokens(rows)


def bench_text(args, device):
    print(f"\n(a) class features forward + backward on {args.model} ({device}, {args.precision}); ms (x full) "
          "[positions per block]")
    clip = make_clip(args.model, device)
    for kind in ("ivlp", "coop", "cocoop"):
        for classes in args.classes:
            model = build_text_model(kind, clip, classes).to(device)
            rows = text_rows(kind, classes, args.batch)
            fns, skipped = {}, []
            for mode in MODES:
                if positions(model, mode, rows, device) > args.max_full_tokens:
                    skipped.append(mode)
                    continue
                clip.text_mode = mode
                fns[mode] = (lambda m=mode, f=text_function(model, kind, device, args.precision, args.batch):
                             (setattr(clip, "text_mode", m), f()))
            times = interleaved(fns, device, args.repeats) if fns else {}
            cells = []
            for mode in MODES:
                if mode in skipped:
                    cells.append(f"{mode} (not run: {positions(model, mode, rows, device) / 1e6:.1f} M positions)")
                else:
                    ratio = f" (x{times[mode] / times['full']:.3f})" if "full" in times and mode != "full" else ""
                    cells.append(f"{mode} {times[mode] * 1e3:8.1f}{ratio} [{positions(model, mode, rows, device)} pos]")
            print(f"  {kind:6s} {classes:5d} classes, {rows:5d} rows: " + " | ".join(cells))
            if kind == "ivlp" and classes == 100:
                clip.text_mode = "shared"
                both = interleaved({"text": text_function(model, kind, device, args.precision, args.batch),
                                    "image": image_function(model, device, args.precision, args.batch)}, device, args.repeats)
                print(f"         IVLP 100 classes: class features {both['text'] * 1e3:.1f} ms vs image features at batch "
                      f"{args.batch} {both['image'] * 1e3:.1f} ms = x{both['text'] / both['image']:.2f} (target <= 0.6)")
            del model
    clip.text_mode = "shared"


def memory_worker(args, device):
    """Child process: build, one text forward + backward on one path; prints the peak as JSON."""
    clip = make_clip(args.model, device)
    model = build_text_model(args.kind, clip, args.worker_classes).to(device)
    clip.text_mode = args.worker_mode
    before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    text_function(model, args.kind, device, args.precision, args.batch)()
    result = {"rss_mib": peak_rss_mib(), "built_mib": before}
    if device.type == "cuda":
        result["cuda_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    print(json.dumps(result))


def bench_memory(args, device):
    print(f"\n(b) peak memory of one class-features forward + backward ({args.model}, IVLP 16 tokens depth 12, {device})")
    for classes in args.memory_classes:
        model = build_text_model("ivlp", make_clip(args.model, "cpu"), classes)
        peaks = {}
        for mode in MODES:
            if positions(model, mode, classes, device) > args.max_full_tokens:
                print(f"  {classes:5d} classes {mode:8s}: not run ({positions(model, mode, classes, device) / 1e6:.1f} M positions)")
                continue
            command = [sys.executable, __file__, "--worker", "--kind", "ivlp", "--worker-mode", mode,
                       "--worker-classes", str(classes), "--model", args.model, "--device", str(device),
                       "--precision", args.precision, "--batch", str(args.batch)]
            out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parent)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if device.type == "cuda":
                peaks[mode] = result["cuda_mib"]
                extra = ""
            else:
                peaks[mode] = result["rss_mib"] - result["built_mib"]
                extra = f" (process peak {result['rss_mib']:.0f} MiB, built model {result['built_mib']:.0f} MiB)"
            ratio = f" = x{peaks[mode] / peaks['full']:.3f} of full" if "full" in peaks and mode != "full" else ""
            print(f"  {classes:5d} classes {mode:8s}: {peaks[mode]:8.0f} MiB above the built model{ratio}{extra}")


def bench_steps(args, device):
    classes = 100 if args.model == "ViT-B/16" else 20
    print(f"\n(c) training steps at {classes} classes, batch {args.batch}, {args.model} ({device}, {args.precision}): full (before) vs shared (after)")
    clip = make_clip(args.model, device)
    names = class_names(classes)
    size = clip.geometry["image_size"]
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.arange(args.batch, device=device) % classes

    # phase 1, cached: the teacher's image features come from memory; its class features are fixed
    group = make_boosting_group(clip, BoostingConfig(), learnable=True, generator=torch.Generator().manual_seed(0))
    student = boosting_student(clip, names, group)
    teacher = ZeroShotTeacher(random_text_tower(args.teacher, device), names, image_tower=False)
    distiller = BoostingDistiller(student, teacher).to(device)
    features = F.normalize(torch.randn(args.batch, teacher.text_features.shape[-1], device=device), dim=-1)
    phase1 = make_optimizer(student.learnable_parameters(), 1e-4)

    promptsrc = PromptSRC(clip, names, n_ctx_text=8, n_ctx_vision=8, depth_text=12, depth_vision=12, ctx_init="",
                          boosting=boosting(clip)).to(device)
    psrc_opt = make_optimizer(promptsrc.learnable_parameters(), 1e-4)
    cocoop = CoCoOp(clip, names, n_ctx=8, ctx_init="", boosting=boosting(clip)).to(device)
    cocoop_opt = make_optimizer(cocoop.learnable_parameters(), 1e-4)
    steps = {
        "phase-1 cached": lambda: training_step(distiller, images, None, phase1, args.precision, teacher_features=features),
        "CasPL_PromptSRC": lambda: training_step(promptsrc, images, labels, psrc_opt, args.precision),
        "CasPL_CoCoOp": lambda: training_step(cocoop, images, labels, cocoop_opt, args.precision),
    }
    for name, step in steps.items():
        fns = {mode: (lambda m=mode: (setattr(clip, "text_mode", m), step())) for mode in ("full", "shared")}
        times = interleaved(fns, device, args.repeats)
        print(f"  {name:16s}: full {times['full'] * 1e3:9.1f} ms | shared {times['shared'] * 1e3:9.1f} ms = "
              f"x{times['shared'] / times['full']:.3f}")
    clip.text_mode = "shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny CLIP, few classes (seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "amp"))
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 37, 100, 397, 1000])
    parser.add_argument("--memory-classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-full-tokens", type=int, default=2_000_000,
                        help="skip a path that runs more positions per block than this (its memory)")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--teacher", default="ViT-L/14", help="teacher of the phase-1 step (its text tower only)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="ivlp", help=argparse.SUPPRESS)
    parser.add_argument("--worker-mode", default="shared", help=argparse.SUPPRESS)
    parser.add_argument("--worker-classes", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.model, args.teacher = "caspl-tiny-student", "caspl-tiny-teacher"
        args.classes, args.memory_classes, args.repeats = [10, 37], [37], 2
    device = torch.device(args.device)
    if args.worker:
        return memory_worker(args, device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if not args.skip_text:
        bench_text(args, device)
    if not args.skip_memory:
        bench_memory(args, device)
    if not args.skip_steps:
        bench_steps(args, device)


if __name__ == "__main__":
    main()

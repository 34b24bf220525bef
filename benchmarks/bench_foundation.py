"""Benchmarks of the foundation (random weights, nothing downloaded), measured side by side:

(a) prompted vs plain open_clip encoders, ViT-B/16, batch 8, 8 boosting tokens (target ratio <= 1.05);
(b) one boosting training step (student fwd+bwd + teacher fwd), batch 4, for the tiny pair and for
    ViT-B/16 student + ViT-L/14 teacher, with the share of time spent in the teacher.

    python benchmarks/bench_foundation.py [--device cpu|cuda] [--repeats 5] [--classes 10] [--skip-large]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from caspl_plugin.boosting import BoostingConfig, build_distiller  # noqa: E402
from caspl_plugin.clip import create_clip  # noqa: E402
from caspl_plugin.engine import make_optimizer, training_step  # noqa: E402
from caspl_plugin.prompts import PromptedCLIP, Slot, collect_tokens  # noqa: E402
from caspl_plugin.boosting import make_boosting_group  # noqa: E402
from timing import interleaved  # noqa: E402  (benchmarks/timing.py)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)



def bench_encoders(device, repeats, classes):
    backbone = create_clip("ViT-B/16", "random", device=device)
    clip = PromptedCLIP(backbone)
    group = make_boosting_group(clip, BoostingConfig(8, 8, 12, 12), learnable=False).to(device)
    images = torch.randn(8, 3, 224, 224, device=device)
    names = [f"class number {i}" for i in range(classes)]
    plain_ids = backbone.tokenizer([f"{n}." for n in names]).to(device)
    plain_inputs = clip.text_inputs(names)
    prompted_inputs = clip.text_inputs(names, [Slot("boosting", "boosting", 8)])
    text_tokens, vision_tokens = collect_tokens([group], "text"), collect_tokens([group], "vision")
    with torch.inference_mode():
        t = interleaved({
            "open_clip encode_image": lambda: backbone.model.encode_image(images),
            "ours, no prompts": lambda: clip.encode_image(images),
            "ours, 8 boosting tokens": lambda: clip.encode_image(images, vision_tokens),
        }, device, repeats)
        u = interleaved({
            "open_clip encode_text": lambda: backbone.model.encode_text(plain_ids),
            "ours, no prompts": lambda: clip.encode_text(plain_inputs),
            "ours, 8 boosting tokens": lambda: clip.encode_text(prompted_inputs, text_tokens),
        }, device, repeats)
    print(f"\n(a) ViT-B/16 encoders, batch 8 images / {classes} class prompts, {device}, median of {repeats}")
    base = t["open_clip encode_image"]
    for name, value in t.items():
        print(f"  image  {name:<26} {value * 1000:9.1f} ms   x{value / base:.3f}")
    base = u["open_clip encode_text"]
    for name, value in u.items():
        print(f"  text   {name:<26} {value * 1000:9.1f} ms   x{value / base:.3f}")
    print(f"  image tokens: plain 197, prompted 205 (+{8 / 197:.1%} sequence length)")


def bench_boost_step(student_name, teacher_name, device, repeats, classes, image_size):
    student = create_clip(student_name, "random" if "/" in student_name else None, device=device)
    teacher = create_clip(teacher_name, "random" if "/" in teacher_name else None, device=device)
    names = [f"class number {i}" for i in range(classes)]
    distiller = build_distiller(student, teacher, names, config=BoostingConfig()).to(device)
    optimizer = make_optimizer(distiller.student.learnable_parameters(), lr=0.0025)
    images = torch.randn(4, 3, image_size, image_size, device=device)

    def teacher_only():
        with torch.no_grad():
            distiller.teacher_logits(images)

    t = interleaved({
        "step": lambda: training_step(distiller, images, None, optimizer),
        "teacher": teacher_only,
    }, device, repeats)
    spec = distiller.student.boosting.spec
    print(f"\n(b) boosting step, {student_name} + teacher {teacher_name}, batch 4, {classes} classes, "
          f"{spec.n_text}+{spec.n_vision} tokens depth {spec.depth_text}/{spec.depth_vision}, {device}")
    print(f"  one training step   {t['step']:8.3f} s")
    print(f"  teacher forward     {t['teacher']:8.3f} s   ({t['teacher'] / t['step']:.0%} of the step)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--skip-large", action="store_true", help="skip the ViT-B/16 + ViT-L/14 step")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_encoders(device, args.repeats, args.classes)
    bench_boost_step("caspl-tiny-student", "caspl-tiny-teacher", device, args.repeats, args.classes, 32)
    if not args.skip_large:
        bench_boost_step("ViT-B/16", "ViT-L/14", device, max(1, args.repeats // 2), args.classes, 224)


if __name__ == "__main__":
    main()

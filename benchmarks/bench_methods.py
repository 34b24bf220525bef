"""Benchmarks of the methods on random ViT-B/16 weights (nothing downloaded), measured side by side:

(a) eval throughput with cached class features vs recomputing the text encoder per batch
    (100 classes, batch 32; target >= 5x);
(b) inference latency of CasPL_PromptSRC vs PromptSRC alone (target <= 1.05x);
(c) one training step per method at batch 4 (10 classes).

    python benchmarks/bench_methods.py [--device cpu|cuda] [--repeats 3] [--skip-train]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from caspl_plugin.boosting import BoostingConfig, make_boosting_group  # noqa: E402
from caspl_plugin.clip import create_clip  # noqa: E402
from caspl_plugin.engine import make_optimizer, training_step  # noqa: E402
from caspl_plugin.methods import get_method  # noqa: E402
from caspl_plugin.prompts import PromptedCLIP  # noqa: E402
from timing import interleaved  # noqa: E402  (benchmarks/timing.py)



def bench_eval_cache(clip, device, repeats):
    names = [f"class number {i}" for i in range(100)]
    model = get_method("promptsrc")(clip, names, gpa_mean=None).to(device).eval()
    images = torch.randn(32, 3, 224, 224, device=device)

    def cached():
        with torch.no_grad():
            model(images)

    def recomputed():
        with torch.no_grad():
            model.clip.logits(model.encode_image(images), model.encode_classes())

    def text_only():
        with torch.no_grad():
            model.encode_classes()

    t = interleaved({"cached": cached, "recomputed": recomputed, "text": text_only}, device, repeats)
    print(f"\n(a) eval, PromptSRC, 100 classes, batch 32, {device}, median of {repeats} batches")
    print(f"  cached class features      {t['cached']:8.3f} s/batch   {32 / t['cached']:7.1f} img/s")
    print(f"  text encoder every batch   {t['recomputed']:8.3f} s/batch   {32 / t['recomputed']:7.1f} img/s")
    print(f"  speed-up                   x{t['recomputed'] / t['cached']:.2f}")
    per_class = t["text"] / 100
    print(f"  text encoder alone         {t['text']:8.3f} s per class set ({per_class * 1000:.1f} ms/class); the cache removes it")
    print("  speed-up = 1 + text/image, so at batch 32 it grows with the class count: "
          + ", ".join(f"{c} classes x{1 + per_class * c / t['cached']:.1f}" for c in (100, 397, 1000)))


def bench_cascade_latency(clip, device, repeats):
    names = [f"class number {i}" for i in range(10)]
    kwargs = dict(n_ctx_text=8, n_ctx_vision=8, depth_text=12, depth_vision=12, gpa_mean=None)  # CasPL preset
    alone = get_method("promptsrc")(clip, names, **kwargs).to(device).eval()
    boosting = make_boosting_group(clip, BoostingConfig(8, 8, 12, 12), learnable=False)
    cascaded = get_method("promptsrc")(clip, names, boosting=boosting, **kwargs).to(device).eval()
    images = torch.randn(1, 3, 224, 224, device=device)

    def run(model):
        def fn():
            with torch.no_grad():
                model(images)
        return fn

    t = interleaved({"PromptSRC": run(alone), "CasPL_PromptSRC": run(cascaded)}, device, repeats)
    print(f"\n(b) inference latency, batch 1, 10 classes (class features cached), 8+8 adapting tokens, depth 12, {device}")
    print(f"  PromptSRC                  {t['PromptSRC'] * 1000:8.1f} ms")
    print(f"  CasPL_PromptSRC (+8+8)     {t['CasPL_PromptSRC'] * 1000:8.1f} ms   x{t['CasPL_PromptSRC'] / t['PromptSRC']:.3f}")
    print(f"  image tokens: 197 + 8 = 205 vs 197 + 16 = 213 (x{213 / 205:.3f} sequence length)")


def bench_train_steps(clip, device, repeats):
    names = [f"class number {i}" for i in range(10)]
    images = torch.randn(4, 3, 224, 224, device=device)
    labels = torch.arange(4, device=device)
    print(f"\n(c) one training step, batch 4, 10 classes, base presets, {device}, median of {repeats}")
    for method, kwargs in (("coop", {}), ("cocoop", {}), ("ivlp", {}), ("maple", {}), ("promptsrc", {"gpa_mean": None})):
        model = get_method(method)(clip, names, **kwargs).to(device).train()
        optimizer = make_optimizer(model.learnable_parameters(), lr=0.002)
        t = interleaved({"step": lambda: training_step(model, images, labels, optimizer)}, device, repeats)
        print(f"  {method:<10} {t['step']:8.3f} s   ({sum(p.numel() for p in model.learnable_parameters()):,} learnable)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = PromptedCLIP(create_clip("ViT-B/16", "random", device=device))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ViT-B/16 random weights")
    bench_eval_cache(clip, device, args.repeats)
    bench_cascade_latency(clip, device, max(args.repeats, 5))
    if not args.skip_train:
        bench_train_steps(clip, device, args.repeats)


if __name__ == "__main__":
    main()

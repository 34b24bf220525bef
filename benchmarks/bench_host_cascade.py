"""Cost of CasPL's hooks in a host project's own trainer (random ViT-B/16 weights in OpenAI's ``clip``
layout, nothing downloaded), measured side by side on the same model with the boosting group attached
and removed:

- the host's forward (batch 4, 10 classes) without gradients, and a training step (forward + the
  host's cross-entropy + backward);
- for the CoOp-style host (4 context tokens) and the IVLP fork (4+4 prompts to depth 9);
- boosting group: the official 8 text + 8 vision tokens to depth 12;
- parameter counts: the host's trainable parameters, the frozen boosting tokens.

    python benchmarks/bench_host_cascade.py [--repeats 5] [--classes 10] [--batch 4] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test host project

from host_project.openai_clip import build_clip  # noqa: E402
from host_project.trainers import CustomCLIP  # noqa: E402

from caspl_plugin.plugin.openai_adapters import BoostingHooks, openai_clip_adapters  # noqa: E402
from caspl_plugin.prompts import PromptGroup, PromptSpec  # noqa: E402
from caspl_plugin.toy import domain  # noqa: E402

HOSTS = {
    "CoOp-style host (4 ctx)": dict(),
    "IVLP fork (4+4 prompts, depth 9)": dict(text_prompts=(4, 9), vision_prompts=(4, 9)),
}


def build_host(prompts: dict, classes: int):
    """The host's CustomCLIP with its own learnable prompts, frozen CLIP, as its trainer builds it."""
    model = CustomCLIP(domain.class_names()[:classes], build_clip("ViT-B/16", **prompts), n_ctx=4)
    for name, param in model.named_parameters():
        param.requires_grad_("prompt_learner" in name or "VPT" in name)
    return model


def paired_times(model, attach, step, repeats: int) -> tuple[float, float]:
    """Median seconds of ``step()`` without and with the boosting hooks, measured in alternation."""
    without, with_hooks = [], []
    for i in range(repeats + 1):  # the first round warms up
        for times, attached in ((without, False), (with_hooks, True)):
            hooks = attach() if attached else None
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if hooks is not None:
                hooks.remove()
            if i:
                times.append(elapsed)
    return statistics.median(without), statistics.median(with_hooks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(0, args.classes, (args.batch,))
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch}, {args.classes} classes, "
          f"median of {args.repeats} (alternating with/without)")
    print("the ratio includes the 8 boosting vision tokens: 197 -> 205 vision tokens (x1.041); text keeps 77")

    for title, prompts in HOSTS.items():
        model = build_host(prompts, args.classes)
        trainer = SimpleNamespace(model=model, cfg=None, dm=None)
        adapter, handle = next((a, h) for a in openai_clip_adapters() for h in [a.find(trainer)] if h is not None)
        geometry = adapter.geometry(handle)
        group = PromptGroup("boosting", "boosting", PromptSpec(8, 8, 12, 12), geometry["text_width"],
                            geometry["vision_width"], learnable=False)

        def attach():
            return BoostingHooks(handle, group).attach()

        def forward():
            with torch.no_grad():
                model(images)

        def train_step():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen_clip = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        boosting = sum(p.numel() for p in group.parameters())
        print(f"\n{title} via '{adapter.name}'")
        print(f"  parameters: host trainable {trainable:,} | boosting (frozen) {boosting:,} | frozen CLIP {frozen_clip:,}")
        for name, step in (("forward (no grad)", forward), ("train step (fwd+CE+bwd)", train_step)):
            plain, boosted = paired_times(model, attach, step, args.repeats)
            print(f"  {name:24s} host {plain * 1000:8.1f} ms | host + boosting {boosted * 1000:8.1f} ms | "
                  f"ratio {boosted / plain:.3f}")


if __name__ == "__main__":
    main()

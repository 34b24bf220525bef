"""Two fidelity numbers on random ViT-B/16 weights (nothing downloaded; prints, asserts nothing):

1. **Host regulariser scale, vanilla vs boosted anchor.** The test host project's anchored CoOp host
   (L1 of its normalised text / image features to a frozen zero-shot CLIP's, weights 8 and 8) with
   boosting prompts in the prompted path, before any training: the regulariser with the vanilla
   anchor (``TRAINER.CASPL.ANCHOR clip``) and with the boosting group attached to the anchor too
   (``boosted``).
2. **Logits, the authors' depth rule vs the artifact's depth.** The library's PromptSRC (8+8 tokens)
   cascaded with the same boosting artifact and the same adapting prompts, ``boosting_depth``
   ``"method"`` vs ``"artifact"``: the domain-generalisation route (boosting 4+4 at depth 1 into
   PromptSRC depth 3) and PromptSRC at depth 9 over 12-deep boosting.

Boosting tokens are random with std ``--boost-std`` (trained prompts are larger than the 0.02 init).

    python benchmarks/bench_fidelity.py [--boost-std 0.02 1.0] [--classes 10] [--batch 4] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test host project

from host_project.openai_clip import build_clip  # noqa: E402
from host_project.trainers import AnchoredCLIP  # noqa: E402

from caspl_plugin.artifacts.boosting import BoostingArtifact  # noqa: E402
from caspl_plugin.clip import create_clip  # noqa: E402
from caspl_plugin.methods import cascade  # noqa: E402
from caspl_plugin.methods.cascade import boosting_group_from_artifact  # noqa: E402
from caspl_plugin.plugin.openai_adapters import OpenAICoOpAdapter  # noqa: E402
from caspl_plugin.prompts import PromptedCLIP  # noqa: E402
from caspl_plugin.toy import domain  # noqa: E402


def random_artifact(geometry: dict, n: int, depth: int, std: float, seed: int = 0) -> BoostingArtifact:
    g = torch.Generator().manual_seed(seed)
    return BoostingArtifact.from_group_tensors(
        torch.randn(depth, n, geometry["text_width"], generator=g) * std,
        torch.randn(depth, n, geometry["vision_width"], generator=g) * std, student=geometry)


def host_regulariser(classes, images, std: float) -> dict:
    """The anchored host's regulariser terms with the vanilla and the boosted anchor."""
    torch.manual_seed(0)
    model = AnchoredCLIP(classes, build_clip("ViT-B/16"), build_clip("ViT-B/16"), "a photo of a {}.", n_ctx=4)
    adapter = OpenAICoOpAdapter()
    handle = adapter.find(SimpleNamespace(model=model, cfg=None, dm=None))
    geometry = adapter.geometry(handle)
    group = boosting_group_from_artifact(random_artifact(geometry, 8, 12, std), geometry)
    adapter.attach(handle, group)
    out = {}
    with torch.no_grad():
        image_features, text_features = model.features(images)
        for anchor in ("clip", "boosted"):
            if anchor == "boosted":
                adapter.attach_anchor(handle, group)
            anchor_image, anchor_text = model.anchor_features(images)
            text = 8.0 * torch.nn.functional.l1_loss(text_features, anchor_text)
            image = 8.0 * torch.nn.functional.l1_loss(image_features, anchor_image)
            out[anchor] = (float(text), float(image))
    return out


def depth_rule_logits(backbone, classes, images, std: float, boosting_depth: int, method_depth: int, n: int) -> tuple[float, float]:
    """max and mean |logits(method) - logits(artifact)| for PromptSRC 8+8 at ``method_depth``."""
    artifact = random_artifact(backbone.describe(), n, boosting_depth, std)
    kwargs = dict(n_ctx_text=8, n_ctx_vision=8, depth_text=method_depth, depth_vision=method_depth, ctx_init="")
    torch.manual_seed(0)
    ours = cascade("promptsrc", PromptedCLIP(backbone), classes, artifact, **kwargs)
    torch.manual_seed(0)
    authors = cascade("promptsrc", PromptedCLIP(backbone), classes, artifact, boosting_depth="method", **kwargs)
    authors.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("boosting.")}, strict=False)
    with torch.no_grad():
        difference = (authors(images) - ours(images)).abs()
    return float(difference.max()), float(difference.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boost-std", type=float, nargs="+", default=[0.02, 1.0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = domain.class_names()[:args.classes]
    images = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    print(f"random ViT-B/16 weights, batch {args.batch}, {args.classes} classes")
    print("\n1. anchored host: regulariser (8 * L1 text + 8 * L1 image) with boosting in the prompted path")
    for std in args.boost_std:
        terms = host_regulariser(classes, images, std)
        clip, boosted = terms["clip"], terms["boosted"]
        print(f"   boosting std {std:g}: vanilla anchor {sum(clip):.4f} (text {clip[0]:.4f}, image {clip[1]:.4f}) | "
              f"boosted anchor {sum(boosted):.4f} (text {boosted[0]:.4f}, image {boosted[1]:.4f})")
    print("\n2. PromptSRC 8+8: |logits(BOOSTING_DEPTH method) - logits(artifact)|, same weights and prompts")
    torch.manual_seed(0)
    backbone = create_clip("ViT-B/16", weights="random")
    for title, boosting_depth, method_depth, n in (("DG route: boosting 4+4 depth 1 -> PromptSRC depth 3", 1, 3, 4),
                                                   ("boosting 8+8 depth 12 -> PromptSRC depth 9", 12, 9, 8)):
        for std in args.boost_std:
            worst, mean = depth_rule_logits(backbone, classes, images, std, boosting_depth, method_depth, n)
            print(f"   {title}, boosting std {std:g}: max {worst:.3f}, mean {mean:.3f}")


if __name__ == "__main__":
    main()

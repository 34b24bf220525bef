#!/usr/bin/env python
"""Pre-train the toy CLIPs shipped in ``caspl_plugin/toy/weights`` (a few minutes on 2 CPU cores).

    python scripts/pretrain_toy_clips.py --out caspl_plugin/toy/weights

``toy-teacher`` learns from images and captions of all 36 ToyShapes classes, ``toy-student`` (half
the width) from the 18 base classes only, so it is weak on the novel ones. Both are trained with a
multi-positive InfoNCE loss in both directions (every caption of the same class counts as a
positive, since a batch holds many images of each class) and their own learnable logit scale.
Zero-shot accuracy with "a photo of a {}." on a fixed held-out set is measured on the weights as
stored (fp16, trimmed token embedding) and recorded in each file's metadata; ``manifest.json``
pins the files' content hashes. Everything is deterministic from the recipes' seeds (CPU only).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import string
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from caspl_plugin import __version__
from caspl_plugin.artifacts.store import save_artifact
from caspl_plugin.clip import create_clip
from caspl_plugin.clip.names import MODEL_CONFIG_DIR
from caspl_plugin.toy import domain
from caspl_plugin.toy.weights import (
    FILL_SEED, FILL_STD, FORMAT, FORMAT_VERSION, MANIFEST_FILE, REGENERATE_COMMAND, pack_state_dict, unpack_state_dict,
)

logger = logging.getLogger("pretrain_toy_clips")

#: the held-out zero-shot test set and template (the demo's and the tests' too)
TEST_PER_CLASS, TEST_SEED = 20, 12345
ZERO_SHOT_TEMPLATE = "a photo of a {}."
#: class-prompt templates whose tokens are kept besides the captions': the zero-shot template, the
#: boosting student's "{}." and a few close variants a user may try
PROMPT_TEMPLATES = (ZERO_SHOT_TEMPLATE, "{}.", "a {}.", "a photo of the {}.", "an image of a {}.", "a drawing of a {}.")


@dataclass(frozen=True)
class Recipe:
    """How one toy CLIP is pre-trained."""

    model: str
    classes: str             # "all" or "base"
    steps: int
    batch_size: int
    images_per_class: int    # size of the fixed training pool
    lr: float
    weight_decay: float      # on weight matrices only (not embeddings, norms, biases, logit scale)
    warmup_steps: int
    seed: int
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0


#: Both models get the same schedule; the student differs by width and by seeing base classes only.
RECIPES = {
    name: Recipe(name, classes, steps=600, batch_size=128, images_per_class=400, lr=1e-3, weight_decay=0.1,
                 warmup_steps=50, seed=seed)
    for name, classes, seed in (("toy-teacher", "all", 1), ("toy-student", "base", 2))
}


# --- data -------------------------------------------------------------------------------------------


def training_labels(classes: str) -> torch.Tensor:
    if classes == "all":
        return torch.arange(domain.NUM_CLASSES)
    if classes == "base":
        return torch.tensor(domain.base_labels())
    raise ValueError(f"classes must be 'all' or 'base', got {classes!r}")


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def domain_texts() -> list[str]:
    """Every text whose tokens are kept: all captions the domain can produce, the class prompts of
    :data:`PROMPT_TEMPLATES`, the prompt placeholder "X", digits and ASCII punctuation."""
    sizes = ("small", "medium", "large")
    places = [domain.position_phrase(x, y) for y in (-0.9, 0.0, 0.9) for x in (-0.9, 0.0, 0.9)]
    names = domain.class_names()
    captions = [
        template.format(name=name, size=size, where=where)
        for template, name, size, where in itertools.product(domain.CAPTION_TEMPLATES, names, sizes, places)
    ]
    prompts = [template.format(name) for template in PROMPT_TEMPLATES for name in names]
    return sorted(set(captions)) + prompts + ["an", "X", *string.digits, *string.punctuation]


def domain_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.sot_token_id, tokenizer.eot_token_id}
    for text in domain_texts():
        ids.update(tokenizer.encode(text))
    return sorted(ids)


# --- training -----------------------------------------------------------------------------------------


def multi_positive_infonce(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                           scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets are the normalised same-class masks (all captions of a class are positives)."""
    logits = scale * image_features @ text_features.t()
    positives = (labels[:, None] == labels[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)  # symmetric mask: rows and columns alike
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only (as CLIP training does)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or "embedding" in name or name.endswith(("class_embedding", "logit_scale"))
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_lr(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(recipe: Recipe, test: Optional[domain.ToyBatch] = None, log_every: int = 50):
    """Train ``recipe.model`` from random init; returns the backbone (trained, eval mode) and its init state.

    With a ``test`` set, zero-shot accuracy is logged every ``log_every`` steps."""
    torch.manual_seed(recipe.seed)
    backbone = create_clip(recipe.model, weights="random")
    model = backbone.model
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.logit_scale.fill_(math.log(recipe.init_logit_scale))
    model.requires_grad_(True).train()

    pool_labels = training_labels(recipe.classes).repeat_interleave(recipe.images_per_class)
    pool = domain.generate(labels=pool_labels, seed=recipe.seed, image_size=backbone.image_size)
    pool_images = normalise(pool.images, backbone.mean, backbone.std)
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)
    sampler = torch.Generator().manual_seed(recipe.seed)
    max_log_scale = math.log(recipe.max_logit_scale)

    for step in range(recipe.steps):
        batch = torch.randint(len(pool_labels), (recipe.batch_size,), generator=sampler)
        labels = pool.labels[batch]
        texts = domain.captions(labels, pool.sizes[batch], pool.positions[batch], generator=sampler)
        image_features = F.normalize(model.encode_image(pool_images[batch]), dim=-1)
        text_features = F.normalize(model.encode_text(backbone.tokenizer(texts)), dim=-1)
        loss = multi_positive_infonce(image_features, text_features, labels, model.logit_scale.exp())
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, recipe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
            accuracy = zero_shot_accuracy(backbone, test) if test is not None else ""
            logger.info("%s step %d/%d loss %.4f logit scale %.2f %s", recipe.model, step + 1, recipe.steps,
                        loss.item(), model.logit_scale.exp().item(), accuracy)
    model.eval().requires_grad_(False)
    return backbone, init_state


# --- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
def zero_shot_accuracy(backbone, test: domain.ToyBatch, template: str = ZERO_SHOT_TEMPLATE) -> dict[str, float]:
    """Zero-shot accuracy (%): ``base`` among the base classes, ``novel`` among the novel ones, ``all`` among all 36."""
    model = backbone.model
    text = F.normalize(model.encode_text(backbone.tokenizer([template.format(n) for n in domain.class_names()])), dim=-1)
    image = F.normalize(model.encode_image(normalise(test.images, backbone.mean, backbone.std)), dim=-1)
    scores = image @ text.t()
    result = {}
    for split, classes in (("base", domain.base_labels()), ("novel", domain.novel_labels()),
                           ("all", list(range(domain.NUM_CLASSES)))):
        classes = torch.tensor(classes)
        rows = torch.isin(test.labels, classes)
        predicted = classes[scores[rows][:, classes].argmax(dim=1)]
        result[split] = round(100.0 * (predicted == test.labels[rows]).float().mean().item(), 2)
    return result


# --- main ---------------------------------------------------------------------------------------------


def build_model_file(recipe: Recipe, out: Path, test: domain.ToyBatch, accuracy_every: Optional[int] = None) -> dict:
    """Train one model, store it packed, and return its manifest entry (with accuracies and timing)."""
    start = time.perf_counter()
    backbone, init_state = pretrain(recipe, test if accuracy_every else None, accuracy_every or 50)
    train_seconds = time.perf_counter() - start
    state = backbone.model.state_dict()
    keep = domain_token_ids(backbone.tokenizer)
    trained_rows = (state["token_embedding.weight"] != init_state["token_embedding.weight"]).any(dim=1).nonzero().flatten()
    dropped = sorted(set(trained_rows.tolist()) - set(keep))
    if dropped:  # the refill of missing rows is only equivalent for rows that training never touched
        raise RuntimeError(f"{recipe.model}: token rows {dropped} were trained but would not be stored")

    packed = pack_state_dict(state, keep)
    vocab_size = state["token_embedding.weight"].shape[0]
    stored = create_clip(recipe.model, weights="random")
    stored.model.load_state_dict(unpack_state_dict(packed, vocab_size))
    accuracy = zero_shot_accuracy(stored, test)
    logger.info("%s zero-shot %s (trained in %.0f s)", recipe.model, accuracy, train_seconds)

    config = json.loads((MODEL_CONFIG_DIR / f"{recipe.model}.json").read_text(encoding="utf-8"))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": recipe.model,
        "model_config": config,
        "vocab_size": vocab_size,
        "token_rows": {"kept": len(keep), "trained": len(trained_rows), "fill": {"std": FILL_STD, "seed": FILL_SEED}},
        "recipe": dataclasses.asdict(recipe),
        "loss": "multi-positive InfoNCE (same-class targets), both directions",
        "logit_scale": round(backbone.model.logit_scale.exp().item(), 4),
        "zero_shot": {"template": ZERO_SHOT_TEMPLATE, "test_set": {"num_per_class": TEST_PER_CLASS, "seed": TEST_SEED},
                      "accuracy": accuracy},
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "versions": {"caspl_plugin": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "regenerate": REGENERATE_COMMAND,
    }
    path = out / f"{recipe.model}.safetensors"
    digest = save_artifact(path, packed, metadata)
    return {"file": path.name, "content_sha256": digest, "bytes": path.stat().st_size,
            "zero_shot_accuracy": accuracy, "train_seconds": round(train_seconds, 1)}


def write_json_atomic(path: Path, document: dict) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=2)
            stream.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def with_overrides(recipe: Recipe, assignments: list[str]) -> Recipe:
    """``recipe`` with ``FIELD=VALUE`` assignments applied (values parsed as the field's type)."""
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    changes = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        if key not in fields or key == "model":
            raise SystemExit(f"--set {assignment!r}: expected FIELD=VALUE with FIELD one of {sorted(set(fields) - {'model'})}")
        changes[key] = value if key == "classes" else type(getattr(recipe, key))(float(value))
    return dataclasses.replace(recipe, **changes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the weight files and manifest.json")
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES),
                        help="train only these (the manifest keeps the others' entries)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override recipe fields for trials, e.g. --set steps=50 lr=1e-3 (not for the shipped files)")
    parser.add_argument("--log-accuracy", action="store_true", help="log zero-shot test accuracy during training")
    parser.add_argument("--log-every", type=int, default=50, help="log every this many steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    entries = dict(manifest.get("models", {}))
    test = domain.generate(TEST_PER_CLASS, seed=TEST_SEED)
    for name in args.models:
        entries[name] = build_model_file(with_overrides(RECIPES[name], args.set), args.out, test,
                                         args.log_every if args.log_accuracy else None)
        write_json_atomic(manifest_path, {"format": FORMAT, "regenerate": REGENERATE_COMMAND, "models": dict(sorted(entries.items()))})

    print(f"{'model':<12} {'base':>6} {'novel':>6} {'all':>6} {'train s':>8} {'bytes':>9}")
    for name in args.models:
        entry = entries[name]
        acc = entry["zero_shot_accuracy"]
        print(f"{name:<12} {acc['base']:>6.2f} {acc['novel']:>6.2f} {acc['all']:>6.2f} {entry['train_seconds']:>8.1f} {entry['bytes']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

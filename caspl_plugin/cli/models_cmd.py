"""``caspl models``: the CLIP models ``caspl`` knows, which can be the student (prompts placed into
both towers) and which only a teacher, their open_clip pretrained tags, and the weight files found."""
from __future__ import annotations

import argparse
import json

#: shown by default: the CoOp-family backbones and this package's own models
_COMMON = ("ViT-B/16", "ViT-B/32", "ViT-L/14", "ViT-L/14@336px", "RN50", "RN101")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="every open_clip architecture, not only the common ones")
    parser.add_argument("--weights-dir", help="also look for weight files here (as distill/adapt would)")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table")


def student_problem(config: dict) -> str:
    """Why an open_clip config cannot be a prompted student ('' when it can): the prompt mechanism
    drives open_clip's own ViT image tower and built-in causal text tower."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if "timm_model_name" in vision or not isinstance(vision.get("layers"), int):
        return "image tower is not open_clip's ViT"
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok" or vision.get("final_ln_after_pool"):
        return "image tower pools otherwise than its class token"
    if "hf_model_name" in text or config.get("custom_text"):
        return "text tower is a Hugging Face model"
    if text.get("pool_type", "argmax") not in ("argmax", "eos") or text.get("embed_cls"):
        return "text tower is not pooled at its EOT token"
    return ""


def describe_models(names, weights_dir=None) -> list[dict]:
    import open_clip

    from caspl_plugin.clip.names import DASSL_NAMES, PACKAGE_MODELS, resolve_model_name
    from caspl_plugin.clip.weights import WeightsNotFoundError, resolve_weights

    tags: dict[str, list[str]] = {}
    for arch, tag in open_clip.list_pretrained():
        tags.setdefault(arch, []).append(tag)
    rows = []
    for name in names:
        arch = resolve_model_name(name)
        config = open_clip.get_model_config(arch) or {}
        try:
            source = resolve_weights(name, weights_dir=weights_dir)
            found = str(source)
        except (WeightsNotFoundError, ValueError):
            found = None
        problem = student_problem(config)
        rows.append({
            "name": name, "open_clip": arch, "student": not problem, "why_not_student": problem or None,
            "package_model": name in PACKAGE_MODELS, "dassl_name": name in DASSL_NAMES,
            "pretrained_tags": tags.get(arch, []), "weights_found": found,
        })
    return rows


def run(args) -> int:
    import open_clip

    from caspl_plugin.clip.names import DASSL_NAMES, PACKAGE_MODELS, register_package_configs

    register_package_configs()
    names = list(_COMMON) + list(PACKAGE_MODELS)
    if args.all:
        taken = {DASSL_NAMES.get(n, n) for n in names}
        names += [arch for arch in open_clip.list_models() if arch not in taken]
    rows = describe_models(names, args.weights_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'model':<{width}}  role               weights here        open_clip pretrained tags")
    for r in rows:
        role = "student or teacher" if r["student"] else "teacher only"
        found = r["weights_found"] or "-"
        tags = ", ".join(r["pretrained_tags"][:4]) + (" ..." if len(r["pretrained_tags"]) > 4 else "")
        print(f"{r['name']:<{width}}  {role:<18} {found[:19]:<19} {tags or '-'}")
    print("\nAlso: any open_clip architecture (--all lists them) and hf-hub:ORG/REPO names where open_clip "
          "reads them (config and weights from the Hugging Face cache). Weights: --student-weights / "
          "--teacher-weights take 'openai' or another tag, a local .pt/.safetensors file, or 'random'; "
          "--weights-dir or $CASPL_WEIGHTS_DIR is searched for files named after the model.")
    return 0

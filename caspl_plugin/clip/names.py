"""CLIP model names: Dassl/CoOp spellings, open_clip architectures and this package's own configs."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional

import open_clip

#: This package's open_clip configs (tiny models for tests and toys), one JSON file per model.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
#: Models that may be built with random weights when no weights are found.
PACKAGE_MODELS = tuple(sorted(path.stem for path in MODEL_CONFIG_DIR.glob("*.json")))

#: Dassl/CoOp backbone names -> open_clip architecture names.
DASSL_NAMES = {
    "ViT-B/16": "ViT-B-16",
    "ViT-B/32": "ViT-B-32",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
    "RN50": "RN50",
    "RN101": "RN101",
}

QUICK_GELU_SUFFIX = "-quickgelu"
#: open_clip's prefix of models read from the Hugging Face hub (their config and weights come from its cache)
HF_HUB_PREFIX = "hf-hub:"


def is_hub_name(name) -> bool:
    """``hf-hub:ORG/REPO``: a model whose config and weights open_clip reads from the Hugging Face hub."""
    return isinstance(name, str) and name.startswith(HF_HUB_PREFIX)

_registered = False


def register_package_configs() -> None:
    """Make this package's configs known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def list_named_models() -> list[str]:
    """Every model name :func:`~caspl_plugin.clip.create_clip` accepts (open_clip's, Dassl's, ours)."""
    register_package_configs()
    return sorted(set(open_clip.list_models()) | set(DASSL_NAMES))


def resolve_model_name(name: str, quick_gelu: Optional[bool] = None) -> str:
    """Map a Dassl/CoOp or open_clip name to the open_clip architecture to build.

    ``quick_gelu=True`` selects the ``-quickgelu`` variant where open_clip has one and
    ``quick_gelu=False`` the plain one; ``None`` keeps the name's own choice.
    """
    if is_hub_name(name):
        repo = name[len(HF_HUB_PREFIX):]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ValueError(f"Unknown CLIP model {name!r}: a hub model is named hf-hub:ORG/REPO")
        return name
    register_package_configs()
    arch = DASSL_NAMES.get(name, name)
    available = set(open_clip.list_models())
    if arch not in available:
        close = difflib.get_close_matches(name, sorted(available | set(DASSL_NAMES)), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown CLIP model {name!r}: expected a Dassl name ({', '.join(DASSL_NAMES)}) or an "
            f"open_clip model name (see caspl_plugin.clip.list_named_models()).{hint}"
        )
    base = arch[: -len(QUICK_GELU_SUFFIX)] if arch.endswith(QUICK_GELU_SUFFIX) else arch
    if quick_gelu and f"{base}{QUICK_GELU_SUFFIX}" in available:
        return f"{base}{QUICK_GELU_SUFFIX}"
    if quick_gelu is False and base in available:
        return base
    return arch


def weight_file_stems(name: str, arch: str) -> list[str]:
    """File names (without extension) a weights file for ``name`` may have, most specific first.

    ``ViT-B/16`` -> ``ViT-B-16``; ``ViT-L/14@336px`` -> ``ViT-L-14-336px`` (the name CoOp's and
    OpenAI's downloader give the file) and ``ViT-L-14-336`` (open_clip's architecture name).
    """
    stems = [name.replace("/", "-").replace("@", "-"), arch]
    if arch.endswith(QUICK_GELU_SUFFIX):
        stems.append(arch[: -len(QUICK_GELU_SUFFIX)])
    openai_url = open_clip.get_pretrained_cfg(stems[-1], "openai").get("url", "")
    if openai_url:
        stems.append(Path(openai_url).stem)
    return list(dict.fromkeys(stems))

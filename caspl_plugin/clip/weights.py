"""Where CLIP weights come from, and reading them without unpickling Python objects.

:func:`resolve_weights` picks the source:

1. ``weights="random"``: random initialisation.
2. ``weights=<file>``: an OpenAI TorchScript ``.pt`` (as CoOp keeps them; read as data by
   :func:`caspl_plugin.artifacts.checkpoint_reader.read_torchscript`, its code is never run),
   an OpenAI or open_clip state dict (``torch.load(weights_only=True)``; ``{"state_dict": ...}``
   wrappers and ``module.`` prefixes are accepted) or a ``.safetensors`` state dict.
   ``weights=<directory>`` is searched like ``weights_dir``.
3. ``weights=<tag>``: an open_clip pretrained tag such as ``"openai"``, from open_clip's caches
   (Hugging Face hub cache, ``~/.cache/clip``) or downloaded by open_clip when online.
4. ``weights=None``: a file named after the model in ``weights_dir``, then in ``$CASPL_WEIGHTS_DIR``;
   then a package model's registered loader (:data:`PACKAGE_WEIGHT_LOADERS`) or, for the package's
   own configs, random initialisation; otherwise the ``openai`` tag as in 3.

When nothing is found a single :class:`WeightsNotFoundError` names the model and every place
searched. Offline (``HF_HUB_OFFLINE=1``, or the download host does not resolve) it is raised at
once instead of after huggingface_hub's retries.

OpenAI's weights were trained with QuickGELU. :func:`read_weights` records what a file says about
its activation (``WeightsSource.quick_gelu``) from its content, never from its name: TorchScript
archives name their activation modules' classes in their pickles, OpenAI state dicts carry ``input_resolution`` /
``context_length`` / ``vocab_size`` entries, tags carry open_clip's ``quick_gelu`` flag.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import difflib
import logging
import os
import socket
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Union
from urllib.parse import urlparse

import open_clip
import torch
from torch import nn

from ..files import file_sha256  # noqa: F401  (re-exported: the one file digest)
from .names import PACKAGE_MODELS, is_hub_name, resolve_model_name, weight_file_stems

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "CASPL_WEIGHTS_DIR"
RANDOM = "random"
DEFAULT_TAG = "openai"
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
#: Integers that OpenAI's CLIP state dicts carry next to the tensors.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
#: Package models that ship default weights: name -> zero-argument loader returning a state dict,
#: or its ``"module:function"`` path, imported on first use.
PACKAGE_WEIGHT_LOADERS: dict[str, Union[str, Callable[[], Mapping[str, torch.Tensor]]]] = {
    "toy-student": "caspl_plugin.toy.weights:load_toy_student",
    "toy-teacher": "caspl_plugin.toy.weights:load_toy_teacher",
}

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_TRUTHY = {"1", "on", "yes", "true"}
_HOST_PROBE_TIMEOUT_S = 2.0

PathLike = Union[str, os.PathLike]


class WeightsNotFoundError(FileNotFoundError):
    """No weights for a model at any of the places searched (the message lists them)."""

    def __init__(self, name: str, arch: str, searched: list[str]):
        self.name, self.arch, self.searched = name, arch, list(searched)
        super().__init__(_not_found_message(name, arch, self.searched))

    def describe(self, weights: str = "weights=", weights_dir: str = "weights_dir") -> str:
        """The message with the ways in spelled as the caller's user types them (e.g. command-line flags)."""
        return _not_found_message(self.name, self.arch, self.searched, weights, weights_dir)


class IncompatibleWeightsError(ValueError):
    """Weights that do not fit the model: missing/unexpected keys, shapes, or activation."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from.

    ``kind`` is ``random``, ``file``, ``tag`` or ``package``; ``location`` the file, the tag or the
    package model name; ``path`` the file actually read (a tag's cached download). ``quick_gelu``
    is the activation the weights were trained with when known (``None``: unknown).
    """

    kind: str
    location: Optional[str] = None
    openai_format: bool = False
    quick_gelu: Optional[bool] = None
    path: Optional[str] = None

    def __str__(self) -> str:
        return self.kind if self.location is None else f"{self.kind}:{self.location}"


def resolve_weights(
    name: str, weights: Optional[PathLike] = None, *, weights_dir: Optional[PathLike] = None
) -> WeightsSource:
    """Decide where ``name``'s weights come from; fail at once, naming every place searched."""
    arch = resolve_model_name(name)
    if is_hub_name(name):
        if weights is not None:
            raise IncompatibleWeightsError(f"{name} brings its own weights from the Hugging Face hub; give none for it "
                                           f"(got {weights!r})")
        return WeightsSource("hub", name)
    if weights is not None and str(weights) == RANDOM:
        return WeightsSource(RANDOM)
    searched: list[str] = []
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return WeightsSource("file", str(path), path=str(path))
        if path.is_dir():
            found = _search_directory(name, arch, path, searched)
        elif _looks_like_path(str(weights)):
            searched.append(f"{path} (no such file)")
            found = None
        else:
            found = _resolve_tag(name, arch, str(weights), searched)
        if found is None:
            raise WeightsNotFoundError(name, arch, searched)
        return found

    for directory, label in ((weights_dir, "weights_dir"), (os.environ.get(WEIGHTS_DIR_ENV), f"${WEIGHTS_DIR_ENV}")):
        if not directory:
            searched.append(f"({label} not given)")
            continue
        found = _search_directory(name, arch, Path(directory).expanduser(), searched)
        if found is not None:
            return found
    if name in PACKAGE_WEIGHT_LOADERS:
        return WeightsSource("package", name)
    if name in PACKAGE_MODELS:
        return WeightsSource(RANDOM)
    found = _resolve_tag(name, arch, DEFAULT_TAG, searched, required=False)
    if found is None:
        raise WeightsNotFoundError(name, arch, searched)
    return found


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith("~") or text.endswith(WEIGHT_FILE_SUFFIXES)


def _search_directory(name: str, arch: str, directory: Path, searched: list[str]) -> Optional[WeightsSource]:
    if not directory.is_dir():
        searched.append(f"{directory} (not a directory)")
        return None
    for stem in weight_file_stems(name, arch):
        for suffix in WEIGHT_FILE_SUFFIXES:
            candidate = directory / f"{stem}{suffix}"
            searched.append(str(candidate))
            if candidate.is_file():
                return WeightsSource("file", str(candidate), path=str(candidate))
    return None


# --- open_clip pretrained tags -------------------------------------------------------------------


def tag_config(name: str, tag: str, required: bool = True) -> tuple[str, dict]:
    """(architecture, open_clip pretrained config) of ``tag`` for ``name`` or its (non-)QuickGELU
    sibling; ``(arch, {})`` when there is none and not ``required``."""
    candidates = list(dict.fromkeys(resolve_model_name(name, quick_gelu=q) for q in (None, True, False)))
    for candidate in candidates:
        cfg = open_clip.get_pretrained_cfg(candidate, tag)
        if cfg:
            return candidate, cfg
    if not required:
        return candidates[0], {}
    tags = sorted({t for c in candidates for t in open_clip.list_pretrained_tags_by_model(c)})
    close = difflib.get_close_matches(tag, tags, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown weights {tag!r} for CLIP model {name!r}: not an existing file or directory, and not an "
        f"open_clip pretrained tag of {candidates[0]} (its tags: {', '.join(tags) or 'none'}).{hint}"
    )


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (as huggingface_hub does at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or Path(xdg) / "huggingface").expanduser() / "hub"


def _tag_cache_files(cfg: dict) -> Iterator[tuple[Optional[Path], str]]:
    """(cached file or None, description) for every place open_clip keeps ``cfg``'s weights."""
    if cfg.get("file"):
        yield Path(cfg["file"]), str(cfg["file"])
    if cfg.get("hf_hub"):
        # open_clip prefers a .safetensors twin of the named file, as listed here
        repo_id, named = os.path.split(cfg["hf_hub"])
        if not named:
            filenames = [open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_WEIGHTS_NAME]
        elif named.endswith((".bin", ".pth")):
            filenames = [named[:-4] + ".safetensors", named]
        else:
            filenames = [named]
        cache = _hf_cache_dir()
        for filename in filenames:
            cached = _hf_cached_file(repo_id, filename, cache)
            yield cached, f"{cache}/models--{repo_id.replace('/', '--')}/snapshots/*/{filename}"
    if cfg.get("url"):
        # open_clip's URL cache; also where OpenAI's and CoOp's `clip.load` download to
        target = Path.home() / ".cache" / "clip" / Path(urlparse(cfg["url"]).path).name
        yield target, f"{target} (OpenAI/CoOp download cache)"


def _hf_cached_file(repo_id: str, filename: str, cache: Path) -> Optional[Path]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
    return Path(cached) if isinstance(cached, str) else None


def _resolve_tag(name: str, arch: str, tag: str, searched: list[str], required: bool = True) -> Optional[WeightsSource]:
    """A tag's weights from open_clip's caches, else downloaded when online; None when not found."""
    tag_arch, cfg = tag_config(name, tag, required)
    if not cfg:
        searched.append(f"(open_clip has no {tag!r} weights for {arch})")
        return None

    def source(path: PathLike) -> WeightsSource:
        return WeightsSource(
            "tag", tag, openai_format=tag == "openai", quick_gelu=bool(cfg.get("quick_gelu", False)), path=str(path)
        )

    for cached, description in _tag_cache_files(cfg):
        searched.append(description)
        if cached is not None and cached.is_file():
            return source(cached)
    what = f"download of open_clip tag {tag!r} for {tag_arch}"
    reason = offline_reason(_download_host(cfg))
    if reason:
        searched.append(f"({what}: skipped, offline: {reason})")
        return None
    logger.info("Downloading CLIP weights: open_clip tag %r for %s", tag, tag_arch)
    try:
        return source(open_clip.pretrained.download_pretrained(cfg))
    except Exception as err:  # hub/URL errors come in many types; all mean "not available"
        searched.append(f"({what}: failed: {type(err).__name__}: {err})")
        return None


def _download_host(cfg: dict) -> Optional[str]:
    if cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    return urlparse(cfg["url"]).hostname if cfg.get("url") else None


def offline_reason(host: Optional[str]) -> Optional[str]:
    """Why a download from ``host`` cannot work right now, or None if it may."""
    for var in _OFFLINE_ENV:
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return f"{var}={os.environ[var]}"
    if host is None or any(os.environ.get(var) for var in _PROXY_ENV):
        return None
    if not _host_resolves(host, _HOST_PROBE_TIMEOUT_S):
        return f"{host} cannot be resolved (no network)"
    return None


def _host_resolves(host: str, timeout: float) -> bool:
    """DNS lookup bounded by ``timeout`` (getaddrinfo itself has no timeout)."""
    resolved = threading.Event()

    def lookup() -> None:
        with contextlib.suppress(OSError):
            socket.getaddrinfo(host, 443)
            resolved.set()

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return resolved.is_set()


def _not_found_message(name: str, arch: str, searched: list[str], weights: str = "weights=",
                       weights_dir: str = "weights_dir") -> str:
    stem = weight_file_stems(name, arch)[0]
    places = "\n  ".join(searched)
    return (
        f"No weights found for CLIP model {name!r} (open_clip architecture {arch!r}). Searched:\n  {places}\n"
        "Provide them in one of these ways:\n"
        f"  - {weights}'/path/to/{stem}.pt': an OpenAI .pt (as CoOp downloads it), an open_clip checkpoint "
        "or a .safetensors state dict;\n"
        f"  - put {stem}.pt in a directory given as {weights_dir} or ${WEIGHTS_DIR_ENV};\n"
        f"  - go online (HF_HUB_OFFLINE unset) so open_clip can download {weights}'openai' or another tag;\n"
        f"  - {weights}'random' for random initialisation."
    )


# --- reading -------------------------------------------------------------------------------------


def is_torchscript(path: PathLike) -> bool:
    """True for a TorchScript archive (as OpenAI's CLIP ``.pt`` files are)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _read_file(path: Path) -> tuple[Mapping, Optional[bool]]:
    """A file's raw mapping and, for TorchScript, the activation its modules use (None: unknown)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), None
    if is_torchscript(path):
        from ..artifacts.checkpoint_reader import CheckpointError, read_torchscript

        try:
            archive = read_torchscript(path)
        except CheckpointError as err:
            raise IncompatibleWeightsError(f"{path} cannot be read as an OpenAI TorchScript CLIP: {err}") from err
        module_types = archive.class_names
        activation = True if "QuickGELU" in module_types else (False if "GELU" in module_types else None)
        return archive.state_dict, activation
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # UnpicklingError for pickled objects, RuntimeError for corrupt files
        raise IncompatibleWeightsError(
            f"{path} cannot be read as a state dict without unpickling Python objects ({err}). "
            "Expected an OpenAI TorchScript .pt, a state dict saved with torch.save, or a .safetensors file."
        ) from err
    return state, None


def _unwrap(state: object, origin: str) -> dict:
    """The state dict inside ``{"state_dict": ...}`` checkpoints, without DataParallel's ``module.``."""
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise IncompatibleWeightsError(f"{origin} does not hold a state dict (found {type(state).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def read_weights(source: WeightsSource) -> tuple[Optional[dict[str, torch.Tensor]], WeightsSource]:
    """Read ``source`` as an fp32 state dict of CLIP keys, and record its format in the source.

    OpenAI's integer entries are dropped; ``random`` gives ``(None, source)``.
    """
    if source.kind == RANDOM:
        return None, source
    activation = None
    if source.kind == "package":
        loader = PACKAGE_WEIGHT_LOADERS[source.location]
        if isinstance(loader, str):
            module, _, function = loader.partition(":")
            loader = getattr(importlib.import_module(module), function)
        raw = loader()
    else:
        raw, activation = _read_file(Path(source.path))
    state = _unwrap(raw, str(source))
    openai_format = source.openai_format or any(key in state for key in OPENAI_EXTRA_KEYS)
    if activation is None:
        activation = True if openai_format else source.quick_gelu
    tensors = {}
    for key, value in state.items():
        if key in OPENAI_EXTRA_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise IncompatibleWeightsError(f"{source}: entry {key!r} is a {type(value).__name__}, expected a tensor")
        tensors[key] = value.float() if value.is_floating_point() else value
    return tensors, dataclasses.replace(source, openai_format=openai_format, quick_gelu=activation)


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: WeightsSource, model_desc: str) -> None:
    """Load ``state`` into ``model`` strictly; name the weights and the model on any mismatch."""
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = open_clip.model.convert_to_custom_text_state_dict(state)
    scale = state.get("logit_scale")
    if scale is not None and scale.ndim != model.logit_scale.ndim:
        state = {**state, "logit_scale": scale.reshape(model.logit_scale.shape)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches, one line per tensor
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        shown = "\n  ".join(lines[:6]) + (f"\n  ... ({len(lines) - 6} more)" if len(lines) > 6 else "")
        raise IncompatibleWeightsError(
            f"Weights {source} do not fit CLIP model {model_desc}:\n  {shown}\n"
            "Check that the model name matches the weights."
        ) from err
    if missing or unexpected:

        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")

        raise IncompatibleWeightsError(
            f"Weights {source} do not fit CLIP model {model_desc}: "
            f"{len(missing)} missing key(s) [{listing(missing)}], {len(unexpected)} unexpected key(s) "
            f"[{listing(unexpected)}]. Check that the model name matches the weights."
        )


# --- digests: what a saved classifier records about its weights ------------------------------------

def package_weights_file(name: str) -> Optional[Path]:
    """The file a package model's default weights are read from, when the package ships one."""
    from caspl_plugin.toy.weights import TOY_MODELS, weights_path

    return weights_path(name) if name in TOY_MODELS else None


def weights_digest(source: WeightsSource) -> Optional[str]:
    """The digest a classifier records for ``source``: the sha256 of the file read (``file``; a
    ``tag``'s cached download; a ``package`` model's shipped file), ``None`` for ``random`` weights
    or a package loader without a file."""
    if source.kind == RANDOM:
        return None
    if source.kind == "package":
        path = package_weights_file(source.location)
        return None if path is None else file_sha256(path)
    if source.kind == "hub":
        return None if source.path is None else file_sha256(source.path)
    return file_sha256(source.path or source.location)


def hub_weights_file(name: str) -> Optional[str]:
    """The file open_clip reads an ``hf-hub:`` model's weights from (its Hugging Face cache), or None."""
    try:
        return str(open_clip.pretrained.download_pretrained_from_hf(name[len("hf-hub:"):]))
    except Exception:  # not cached and offline, no hub access, ...
        return None

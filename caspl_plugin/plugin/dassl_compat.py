"""Runtime fixes that let Dassl.pytorch 0.6.3 run on current torch and numpy (no edits to Dassl).

:func:`apply` patches, once per process (later calls patch nothing new):

``warmup_init``
    ``_BaseWarmupScheduler.__init__`` passes ``verbose`` positionally to ``LRScheduler.__init__``,
    which torch >= 2.7 no longer accepts: every config with ``OPTIM.WARMUP_EPOCH > 0`` fails in
    ``build_lr_scheduler``. The replacement calls the base ``__init__(optimizer, last_epoch)``.
``warmup_state``
    The warm-up schedulers' ``state_dict`` holds the successor scheduler *object*, so their
    checkpoints do not load with ``torch.load(weights_only=True)``. The replacement stores the
    successor's ``state_dict()`` and ``load_state_dict`` restores it (and still accepts an object).
``load_checkpoint``
    Dassl's ``load_checkpoint`` (in ``dassl.utils.torchtools`` and wherever it was imported by
    name) is replaced by :func:`load_checkpoint`: ``weights_only=True`` first; a legacy checkpoint
    that fails only because its ``scheduler`` entry pickles objects is read with a restricted
    reader that executes nothing, and the unusable scheduler entry is dropped with a warning
    (weights and optimizer state still load). Nothing is ever plainly unpickled.
``numpy_int``
    With numpy >= 1.24 (no ``np.int``), Dassl's ``imagenet_policy``/``cifar10_policy``/
    ``svhn_policy``/``randaugment`` transforms fail. Their two modules get a numpy namespace that
    adds ``int``; the global ``numpy`` module is left untouched.
``load_model``
    ``TrainerBase.load_model`` formats ``val_result`` with ``:.1f`` and crashes on the ``None``
    that every ``model.pth.tar-N`` holds. The replacement logs ``n/a`` instead.
``logging``
    Importing ``dassl.data`` runs ``logging.disable(logging.WARNING)`` (in its WILDS reader),
    which silences every INFO and WARNING record of the process. Restored to ``NOTSET`` when it
    is still at that level.

Set ``CASPL_DASSL_COMPAT=0`` (or call ``apply(enable=False)``) to leave Dassl untouched;
:func:`revert` undoes the patches.
"""
from __future__ import annotations

import importlib
import logging
import os
import pickle
import sys
import types
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

ENV_SWITCH = "CASPL_DASSL_COMPAT"
_OFF_VALUES = ("0", "false", "no", "off")

#: patch name -> the callables that undo it, in the order applied.
_applied: dict[str, list[Callable[[], None]]] = {}
_restricted_reader: Optional[Callable[[str], Any]] = None


def is_enabled() -> bool:
    """False when the environment variable ``CASPL_DASSL_COMPAT`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF_VALUES


def applied_patches() -> list[str]:
    """Names of the patches currently in place."""
    return list(_applied)


def _replace(name: str, owner: Any, attribute: str, value: Any) -> None:
    original = getattr(owner, attribute)
    _applied.setdefault(name, []).append(lambda: setattr(owner, attribute, original))
    setattr(owner, attribute, value)


# -- (a) and (b): warm-up schedulers -------------------------------------------------------------


def _patch_warmup_init(lr_scheduler) -> None:
    base = lr_scheduler._BaseWarmupScheduler

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1, verbose=False):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super(base, self).__init__(optimizer, last_epoch)

    _replace("warmup_init", base, "__init__", __init__)


def _warmup_state_dict(self) -> dict:
    state = {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "successor")}
    state["successor"] = self.successor.state_dict()
    return state


def _warmup_load_state_dict(self, state_dict: dict) -> None:
    state = dict(state_dict)
    successor = state.pop("successor", None)
    if hasattr(successor, "state_dict"):  # a pickled scheduler object (old format, trusted load)
        successor = successor.state_dict()
    if isinstance(successor, dict):
        self.successor.load_state_dict(successor)
    self.__dict__.update(state)


def _patch_warmup_state(lr_scheduler) -> None:
    base = lr_scheduler._BaseWarmupScheduler
    _replace("warmup_state", base, "state_dict", _warmup_state_dict)
    _replace("warmup_state", base, "load_state_dict", _warmup_load_state_dict)


# -- (b): loading checkpoints ----------------------------------------------------------------------

_PLAIN_LEAVES = (str, bytes, int, float, complex, bool, type(None))


def _foreign_objects(obj: Any, path: str = "") -> list[str]:
    """``"path: type"`` for everything in ``obj`` that is not a tensor, plain value or container."""
    import torch

    if isinstance(obj, (torch.Tensor, torch.dtype, torch.device) + _PLAIN_LEAVES):
        return []
    if isinstance(obj, dict):
        return [found for key, value in obj.items() for found in _foreign_objects(value, f"{path}[{key!r}]")]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [found for index, value in enumerate(obj) for found in _foreign_objects(value, f"{path}[{index}]")]
    return [f"{path or '<root>'}: {obj!r}"]


def _default_restricted_reader() -> Optional[Callable[[str], Any]]:
    try:
        from caspl_plugin.artifacts.checkpoint_reader import read_checkpoint
    except ImportError:
        return None
    return read_checkpoint


def load_checkpoint(fpath, restricted_reader: Optional[Callable[[str], Any]] = None) -> dict:
    """Load a Dassl checkpoint with ``weights_only=True``; read legacy ones without executing them.

    A checkpoint refused by ``weights_only`` is read with ``restricted_reader`` (default: the one
    given to :func:`apply`, else :func:`caspl_plugin.artifacts.checkpoint_reader.read_checkpoint`),
    which materialises tensors and containers and turns other globals into inert placeholders.
    If placeholders occur only in its ``scheduler`` entry (a warm-up scheduler pickled by an
    unpatched Dassl), that entry is dropped with a warning; otherwise the load is refused.
    """
    import torch

    if fpath is None:
        raise ValueError("Checkpoint path is None")
    fpath = os.fspath(fpath)
    if not os.path.exists(fpath):
        raise FileNotFoundError(f'File is not found at "{fpath}"')
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refusal = str(error).splitlines()[0]
    reader = restricted_reader or _restricted_reader or _default_restricted_reader()
    if reader is None:
        raise pickle.UnpicklingError(
            f"{fpath} does not load with weights_only=True ({refusal}) and no restricted checkpoint "
            "reader is available to read it without executing it"
        )
    checkpoint = reader(fpath)
    if not isinstance(checkpoint, dict):
        raise pickle.UnpicklingError(f"{fpath} is not a Dassl checkpoint (top level is {checkpoint!r})")
    outside = _foreign_objects({key: value for key, value in checkpoint.items() if key != "scheduler"})
    if outside:
        raise pickle.UnpicklingError(
            f"{fpath} pickles Python objects outside its scheduler entry, refusing to load it: {'; '.join(outside[:5])}"
        )
    if _foreign_objects(checkpoint.get("scheduler")):
        del checkpoint["scheduler"]
        logger.warning(
            "%s is a legacy Dassl checkpoint whose scheduler entry pickles a scheduler object; "
            "loaded model weights and optimizer state, dropped the scheduler state", fpath,
        )
    return checkpoint


def _patch_load_checkpoint(torchtools) -> None:
    original = torchtools.load_checkpoint
    holders = [torchtools] + [
        module
        for module in list(sys.modules.values())
        if module is not torchtools and isinstance(module, types.ModuleType)
        and vars(module).get("load_checkpoint") is original
    ]
    for module in holders:
        _replace("load_checkpoint", module, "load_checkpoint", load_checkpoint)


# -- (c): np.int in the augmentation policies --------------------------------------------------------


class _NumpyWithInt(types.ModuleType):
    """The ``numpy`` module seen through a namespace that also has ``int`` (removed in numpy 1.24)."""

    def __init__(self, numpy_module):
        super().__init__(numpy_module.__name__)
        self._numpy = numpy_module
        self.int = int

    def __getattr__(self, name):
        return getattr(self._numpy, name)


def _patch_numpy_int() -> None:
    import numpy

    if hasattr(numpy, "int"):
        return
    for name in ("dassl.data.transforms.autoaugment", "dassl.data.transforms.randaugment"):
        module = importlib.import_module(name)
        _replace("numpy_int", module, "np", _NumpyWithInt(numpy))


# -- (d): TrainerBase.load_model with val_result=None ---------------------------------------------


def _load_model(self, directory, epoch=None):
    """Dassl's ``TrainerBase.load_model``, tolerating ``val_result=None``."""
    from dassl.utils import torchtools

    if not directory:
        print("Note that load_model() is skipped as no pretrained model is given")  # Dassl's own line
        return
    model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    for name in self.get_model_names():
        model_path = os.path.join(directory, name, model_file)
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"No model at {model_path}")
        checkpoint = torchtools.load_checkpoint(model_path)
        val_result = checkpoint.get("val_result")
        shown = "n/a" if val_result is None else f"{val_result:.1f}"
        print(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}, val_result={shown})")  # as Dassl, into log.txt
        self._models[name].load_state_dict(checkpoint["state_dict"])


def _patch_load_model(trainer_module) -> None:
    _replace("load_model", trainer_module.TrainerBase, "load_model", _load_model)


# -- (e): logging silenced by Dassl's import ------------------------------------------------------


def _patch_logging() -> None:
    disabled = logging.root.manager.disable
    if disabled == logging.WARNING:
        logging.disable(logging.NOTSET)
        _applied["logging"] = [lambda: logging.disable(disabled)]


# -- switch -------------------------------------------------------------------------------------------


def apply(enable: bool = True, restricted_reader: Optional[Callable[[str], Any]] = None) -> list[str]:
    """Patch Dassl (imported here) unless disabled; returns the names patched by this call.

    ``restricted_reader(path)`` replaces the default reader for legacy checkpoints.
    """
    global _restricted_reader
    if not enable or not is_enabled():
        logger.info("Dassl compatibility patches disabled (%s=%s)", ENV_SWITCH, os.environ.get(ENV_SWITCH))
        return []
    if restricted_reader is not None:
        _restricted_reader = restricted_reader
    try:
        from dassl.engine import trainer as trainer_module
        from dassl.optim import lr_scheduler
        from dassl.utils import torchtools
    except ImportError as error:
        raise ImportError(f"The Dassl compatibility layer needs Dassl.pytorch installed ({error})") from error

    patches = {
        "warmup_init": lambda: _patch_warmup_init(lr_scheduler),
        "warmup_state": lambda: _patch_warmup_state(lr_scheduler),
        "load_checkpoint": lambda: _patch_load_checkpoint(torchtools),
        "numpy_int": _patch_numpy_int,
        "load_model": lambda: _patch_load_model(trainer_module),
        "logging": _patch_logging,
    }
    new = []
    for name, patch in patches.items():
        if name not in _applied:
            patch()
            if name in _applied:  # numpy_int and logging patch only where needed
                new.append(name)
    if new:
        logger.info("Dassl compatibility patches applied: %s (disable with %s=0)", ", ".join(new), ENV_SWITCH)
    return new


def revert() -> None:
    """Undo every patch (restores the replaced attributes, newest first)."""
    for name in reversed(list(_applied)):
        for undo in reversed(_applied.pop(name)):
            undo()

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
``read_image``
    Dassl reads every dataset image with its ``read_image`` (``Image.open(path).convert("RGB")``;
    the copies vendored by CoOp-style projects retry forever on an ``IOError``, so one corrupt
    file hangs the run; and 16-bit images are clipped). It is replaced, wherever it was imported by
    name, by :func:`read_image`: the package's reader
    (:func:`caspl_plugin.data.images.open_rgb`: 16-bit scaled, alpha on white), one try, an
    :class:`UnreadableImageError` otherwise. ``DatasetWrapper.__getitem__`` turns that error into a
    marked item, and the loaders ``build_data_loader`` builds (every Dassl split) drop marked items
    from their batches, as the package's own loops do: a training batch left empty is refilled
    with the next readable images, an evaluation batch left empty is not yielded. At the end of
    each pass over a loader (an epoch), the unreadable files it skipped are counted and listed on
    the ``caspl_plugin.dassl`` logger, which writes to ``sys.stdout`` (Dassl's ``log.txt``).
    (A ``DatasetWrapper`` used outside those loaders gets the next readable item instead, logged.)

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


# -- (f): image reads through the package's reader, unreadable images skipped and counted -----------

#: the item key that marks an unreadable image, and the batch key listing the skipped ``(path, reason)``
UNREADABLE_KEY = "caspl_unreadable"
SKIPPED_KEY = "caspl_skipped"
_EMPTY_KEY = "caspl_empty"


class UnreadableImageError(OSError):
    """An image file that :func:`caspl_plugin.data.images.open_rgb` cannot read (one try, no retry)."""


def read_image(path):
    """Dassl's ``read_image`` through :func:`caspl_plugin.data.images.open_rgb`: an 8-bit RGB image
    (16-bit scaled, alpha on white), or :class:`UnreadableImageError` after one try."""
    from caspl_plugin.data.images import open_rgb

    try:
        return open_rgb(path)
    except Exception as error:  # any decoding failure: one line, never retried
        reason = f"{type(error).__name__}: {error}".replace(str(path), "").strip(" :'\"") or type(error).__name__
        unreadable = UnreadableImageError(f"Cannot read image {path}: {reason}")
        unreadable.reason = reason
        raise unreadable from None


def dassl_log() -> logging.Logger:
    """The logger whose records reach Dassl's ``log.txt``: it writes to the current ``sys.stdout``
    (which Dassl's ``setup_logger`` tees into the log file) and not to the root handlers."""
    log = logging.getLogger("caspl_plugin.dassl")
    if not any(isinstance(h, _StdoutHandler) for h in log.handlers):
        log.addHandler(_StdoutHandler())
        log.propagate = False
        log.setLevel(logging.INFO)
    return log


class _StdoutHandler(logging.Handler):
    """Writes records to whatever ``sys.stdout`` is when they are emitted."""

    def emit(self, record):
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # never let logging break training
            self.handleError(record)


def _wrapper_getitem(original):
    def __getitem__(self, idx):
        try:
            return original(self, idx)
        except UnreadableImageError as error:
            impath = getattr(self.data_source[idx], "impath", "?")
            if getattr(self, "_caspl_skip_unreadable", False):  # our loaders drop it and count it
                return {UNREADABLE_KEY: str(impath), "caspl_reason": getattr(error, "reason", str(error)), "index": idx}
            substitute = _next_readable(self, idx, original)
            dassl_log().warning("Skipping unreadable image %s (%s); item %d is given instead", impath, error, substitute["index"])
            return substitute
    __getitem__._caspl_original = original
    return __getitem__


def _next_readable(wrapper, idx: int, getitem):
    """The item of the first readable image after ``idx`` (wrapping around)."""
    size = len(wrapper)
    for step in range(1, size + 1):
        try:
            return getitem(wrapper, (idx + step) % size)
        except UnreadableImageError:
            continue
    raise UnreadableImageError(f"none of the {size} images of this Dassl data source is readable")


class _DropUnreadable:
    """A loader's ``collate_fn``: drops marked (unreadable) items and lists them under ``SKIPPED_KEY``;
    a training batch left empty gets the next readable images instead."""

    def __init__(self, dataset, is_train: bool, collate):
        self.dataset, self.is_train, self.collate = dataset, is_train, collate

    def __call__(self, items):
        good = [item for item in items if UNREADABLE_KEY not in item]
        skipped = [(item[UNREADABLE_KEY], item["caspl_reason"]) for item in items if UNREADABLE_KEY in item]
        if not good and self.is_train:
            start = max(item["index"] for item in items)
            size = len(self.dataset)
            for step in range(1, size + 1):
                item = self.dataset[(start + step) % size]
                if UNREADABLE_KEY not in item:
                    good = [item]
                    break
            else:
                raise UnreadableImageError(f"none of the {size} images of this Dassl data source is readable")
        batch = self.collate(good) if good else {_EMPTY_KEY: True}
        batch[SKIPPED_KEY] = skipped
        return batch


def _skipping_loader_class():
    import torch.utils.data

    class SkippingDataLoader(torch.utils.data.DataLoader):
        """Dassl's loader with unreadable images dropped from its batches and reported once per pass."""

        def __iter__(self):
            skipped: dict[str, str] = {}
            try:
                for batch in super().__iter__():
                    skipped.update(batch.pop(SKIPPED_KEY, ()))
                    if batch.pop(_EMPTY_KEY, False):
                        continue
                    yield batch
            finally:
                if skipped:
                    self.caspl_skipped.update(skipped)
                    shown = "; ".join(f"{path} ({reason})" for path, reason in sorted(skipped.items())[:5])
                    more = f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else ""
                    dassl_log().warning("Skipped %d unreadable image(s) in this pass over the %s data: %s%s",
                                        len(skipped), self.caspl_split, shown, more)

    return SkippingDataLoader


def _skipping(loader, is_train: bool):
    """``loader`` rebuilt with the same dataset, sampling and workers, dropping unreadable images."""
    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import default_collate

    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "data_source"):
        return loader
    dataset = loader.dataset
    dataset._caspl_skip_unreadable = True
    sampling = ({"batch_size": loader.batch_size, "sampler": loader.sampler, "drop_last": loader.drop_last}
                if loader.batch_size is not None else {"batch_sampler": loader.batch_sampler})
    extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers} \
        if loader.num_workers > 0 else {}
    collate = loader.collate_fn if loader.collate_fn is not default_collate else default_collate
    rebuilt = _skipping_loader_class()(
        dataset, num_workers=loader.num_workers, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        collate_fn=_DropUnreadable(dataset, is_train, collate), **sampling, **extra,
    )
    rebuilt.caspl_skipped = {}
    rebuilt.caspl_split = "training" if is_train else "evaluation"
    return rebuilt


def _patch_read_image(data_manager, tools) -> None:
    original = tools.read_image
    holders = [tools] + [
        module for module in list(sys.modules.values())
        if module is not tools and isinstance(module, types.ModuleType) and vars(module).get("read_image") is original
    ]
    for module in holders:
        _replace("read_image", module, "read_image", read_image)
    wrapper = data_manager.DatasetWrapper
    _replace("read_image", wrapper, "__getitem__", _wrapper_getitem(wrapper.__getitem__))
    build = data_manager.build_data_loader

    def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64, n_domain=0, n_ins=2,
                          tfm=None, is_train=True, dataset_wrapper=None):
        loader = build(cfg, sampler_type=sampler_type, data_source=data_source, batch_size=batch_size, n_domain=n_domain,
                       n_ins=n_ins, tfm=tfm, is_train=is_train, dataset_wrapper=dataset_wrapper)
        return _skipping(loader, is_train)

    build_data_loader.__doc__ = build.__doc__
    for module in [data_manager] + [
        m for m in list(sys.modules.values())
        if m is not data_manager and isinstance(m, types.ModuleType) and vars(m).get("build_data_loader") is build
    ]:
        _replace("read_image", module, "build_data_loader", build_data_loader)


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
        from dassl.data import data_manager
        from dassl.engine import trainer as trainer_module
        from dassl.optim import lr_scheduler
        from dassl.utils import tools, torchtools
    except ImportError as error:
        raise ImportError(f"The Dassl compatibility layer needs Dassl.pytorch installed ({error})") from error

    patches = {
        "warmup_init": lambda: _patch_warmup_init(lr_scheduler),
        "warmup_state": lambda: _patch_warmup_state(lr_scheduler),
        "load_checkpoint": lambda: _patch_load_checkpoint(torchtools),
        "numpy_int": _patch_numpy_int,
        "load_model": lambda: _patch_load_model(trainer_module),
        "logging": _patch_logging,
        "read_image": lambda: _patch_read_image(data_manager, tools),
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

"""Read ``torch.save`` checkpoints without executing anything stored in them.

``torch.load(weights_only=True)`` refuses checkpoints that pickle Python objects (Dassl's, for one,
hold the LR scheduler object), and ``weights_only=False`` would run whatever the file asks for. The
reader here sits in between: a :class:`pickle.Unpickler` whose ``find_class`` resolves only a short
allow-list (tensor rebuild functions, storage types, ``OrderedDict`` and a few builtins, each
replaced by a function of this module) and turns every other global into an inert
:class:`PickledObject` that records its name and arguments and never runs.

Tensors come back as :class:`TensorRef` (storage key, dtype, offset, size, stride) while unpickling;
their bytes are read only when asked for, so pulling a few prompts out of a 1 GB checkpoint reads a
few hundred kilobytes. Both torch formats are understood: the zip archive written since torch 1.6
(``<prefix>/data.pkl``, ``<prefix>/data/<key>``, ``<prefix>/byteorder``) and the older "legacy"
stream (magic number, protocol, sys-info pickles, the object pickle, the storage keys, then each
storage's raw bytes).

TorchScript archives (OpenAI's CLIP ``.pt`` files) are read the same way, as data, by
:func:`read_torchscript`: their ``data.pkl`` pickles the module tree as ``__torch__.*`` objects (inert
placeholders here) whose attribute dictionaries hold the tensors; which attributes are parameters or
buffers is read from the ``__parameters__`` / ``__buffers__`` lines of the archive's ``code/`` text,
which is never compiled or run. A module whose pickled state is not a plain attribute dictionary (a
custom ``__setstate__``, which ``torch.jit.load`` would run) is refused.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import sys
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

__all__ = [
    "CheckpointError", "CheckpointReader", "PickledObject", "TensorRef", "TorchScriptState", "read_checkpoint",
    "read_torchscript",
]

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class CheckpointError(ValueError):
    """The file is not a readable torch checkpoint."""


class PickledObject:
    """Inert stand-in for a pickled global that the reader does not materialise.

    ``find_class`` returns one subclass per global (so pickle's ``REDUCE`` and ``NEWOBJ`` opcodes can
    "call" it); an instance only records what the pickle passed to it. :attr:`pickled_global` names
    what the file referred to, e.g. ``"torch.optim.lr_scheduler.CosineAnnealingLR"``.
    """

    pickled_global = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.list_items = None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list_items.append(value)

    def extend(self, values):
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<not loaded: {self.pickled_global}>"


@dataclass(frozen=True)
class StorageRef:
    """A storage record of the checkpoint: ``numel`` elements of ``dtype`` under ``key``.

    ``base`` / ``element_offset`` describe a legacy-format view into another storage.
    """

    key: str
    dtype: torch.dtype
    numel: int
    base: Optional[str] = None
    element_offset: int = 0


class TensorRef:
    """A tensor of the checkpoint, not read yet: call :meth:`load` (the reader must still be open)."""

    __slots__ = ("reader", "storage", "dtype", "offset", "size", "stride")

    def __init__(self, reader, storage: StorageRef, dtype: torch.dtype, offset: int, size, stride):
        self.reader, self.storage, self.dtype = reader, storage, dtype
        self.offset, self.size, self.stride = int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    def load(self) -> torch.Tensor:
        return self.reader.load_tensor(self)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("the pickle tries to set state on a rebuilt tensor")

    def __repr__(self) -> str:
        return f"TensorRef({list(self.size)}, {self.dtype})"


class _StorageType:
    """What ``find_class`` returns for ``torch.<X>Storage``: only its dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _BoundStorage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, expected a storage record")
    return TensorRef(storage.reader, storage.ref, storage.ref.dtype, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    ref = _rebuild_tensor(storage, storage_offset, size, stride)
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"tensor dtype {dtype!r} is not a torch.dtype")
    ref.dtype = dtype
    return ref


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type(func, new_type, args, state):
    if not callable(func):
        raise pickle.UnpicklingError(f"{func!r} is not callable")
    return func(*args)  # func can only be an allow-listed function or a PickledObject class


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin1-encoded byte strings are supported")
    return text.encode("latin1")


def _as_tuple(values=()):
    return tuple(values)


_SAFE_GLOBALS: dict[tuple[str, str], Callable] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _latin1_encode,
    ("torch", "Size"): _as_tuple,
}


_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128", "bool",
        "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2",
    )
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _BoundStorage:
    """A storage record plus the reader that can fetch its bytes (what ``persistent_load`` returns)."""

    __slots__ = ("reader", "ref")

    def __init__(self, reader, ref: StorageRef):
        self.reader, self.ref = reader, ref


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load: Callable):
        super().__init__(file)
        self._persistent_load = persistent_load
        self._placeholders: dict[tuple[str, str], type] = {}

    def persistent_load(self, pid):
        return self._persistent_load(pid)

    def find_class(self, module: str, name: str):
        module = _PYTHON2_MODULES.get(module, module)  # protocol-2 pickles name builtins "__builtin__"
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        key = (str(module), str(name))
        if key not in self._placeholders:
            self._placeholders[key] = type("PickledObject", (PickledObject,), {"pickled_global": ".".join(key)})
        return self._placeholders[key]


def _storage_dtype(storage_type) -> torch.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")


class CheckpointReader:
    """Open a ``torch.save`` file for restricted reading. Use as a context manager::

        with CheckpointReader("model.pth.tar-20") as reader:
            obj = reader.load()                  # containers, TensorRefs and PickledObjects
            ctx = obj["state_dict"]["prompt_learner_teacher.ctx"].load()
    """

    def __init__(self, path: str | os.PathLike, *, torchscript: bool = False):
        self.path = os.fspath(path)
        self.torchscript = torchscript
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"checkpoint not found: {self.path}")
        self._file = open(self.path, "rb")
        self._zip: Optional[zipfile.ZipFile] = None
        self._zip_prefix = ""
        self._records: dict[str, tuple[int, int]] = {}  # legacy: key -> (file offset, numel)
        self._cache: dict[str, torch.Tensor] = {}
        self._storages: dict[str, StorageRef] = {}
        self._byteorder = "little"
        self._root: Any = None
        self._loaded = False

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._file.close()

    # -- unpickling ------------------------------------------------------------------------------

    def load(self) -> Any:
        """The unpickled object, with tensors as :class:`TensorRef` and other objects inert."""
        if not self._loaded:
            try:
                self._root = self._load_zip() if zipfile.is_zipfile(self._file) else self._load_legacy()
            except CheckpointError:
                raise
            except Exception as error:  # a malformed pickle can fail in many ways
                raise CheckpointError(f"cannot read {self.path}: {type(error).__name__}: {error}") from error
            self._loaded = True
        return self._root

    def _unpickle(self, data: io.BufferedIOBase, persistent_load: Callable = None) -> Any:
        def refuse(pid):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")

        return _RestrictedUnpickler(data, persistent_load or refuse).load()

    def _load_zip(self) -> Any:
        self._file.seek(0)
        self._zip = zipfile.ZipFile(self._file)
        names = self._zip.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        is_script = any(n.endswith("constants.pkl") for n in names)
        if is_script and not self.torchscript:
            raise CheckpointError(f"{self.path} is a TorchScript archive, not a checkpoint")
        if self.torchscript and not is_script:
            raise CheckpointError(f"{self.path} is not a TorchScript archive (no constants.pkl record)")
        if len(pickles) != 1:
            raise CheckpointError(f"{self.path} is a zip file but not a torch checkpoint (no data.pkl record)")
        self._zip_prefix = prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names:
            self._byteorder = self._zip.read(prefix + "byteorder").decode("ascii", "replace")
            if self._byteorder not in ("little", "big"):
                raise CheckpointError(f"{self.path}: unknown byte order {self._byteorder!r}")

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and _ascii(pid[0]) == "storage"):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            _, storage_type, key, _location, numel = pid
            return self._storage(str(key), _storage_dtype(storage_type), int(numel))

        with self._zip.open(prefix + "data.pkl") as data:
            return self._unpickle(io.BytesIO(data.read()), persistent_load)

    def _load_legacy(self) -> Any:
        self._file.seek(0)
        head = self._file.read(2)
        if not head or head[0] != 0x80:
            raise CheckpointError(f"{self.path} is neither a zip-format nor a legacy torch checkpoint")
        self._file.seek(0)
        if self._unpickle(self._file) != _LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{self.path} is not a torch checkpoint (bad magic number)")
        protocol = self._unpickle(self._file)
        if protocol != _LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{self.path}: unsupported legacy protocol {protocol!r} (expected 1001)")
        sys_info = self._unpickle(self._file)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{self.path} is a legacy checkpoint from a big-endian machine (not supported)")

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and pid and _ascii(pid[0]) in ("storage", "module")):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            if _ascii(pid[0]) == "module":
                return pid[1]  # the module's class (a PickledObject); its source is ignored
            _, storage_type, root_key, _location, numel, view = pid
            dtype = _storage_dtype(storage_type)
            root = self._storage(str(root_key), dtype, int(numel))
            if view is None:
                return root
            view_key, offset, view_numel = view
            ref = StorageRef(str(view_key), dtype, int(view_numel), base=root.ref.key, element_offset=int(offset))
            return _BoundStorage(self, self._storages.setdefault(ref.key, ref))

        root = self._unpickle(self._file, persistent_load)
        keys = self._unpickle(self._file)
        offset = self._file.tell()
        size = os.fstat(self._file.fileno()).st_size
        for key in keys:
            ref = self._storages.get(str(key))
            if ref is None:
                raise CheckpointError(f"{self.path}: storage {key!r} is listed but never used")
            self._file.seek(offset)
            (numel,) = struct.unpack("<q", self._file.read(8))
            offset += 8
            self._records[ref.key] = (offset, numel)
            offset += numel * _element_size(ref.dtype)
            if offset > size:
                raise CheckpointError(f"{self.path} is truncated (storage {key!r} ends past the end of the file)")
        return root

    def _storage(self, key: str, dtype: torch.dtype, numel: int) -> _BoundStorage:
        ref = self._storages.setdefault(key, StorageRef(key, dtype, numel))
        return _BoundStorage(self, ref)

    def code_text(self, module: str) -> Optional[str]:
        """The TorchScript source text recorded for ``module`` (e.g. ``__torch__.clip.model``), as text."""
        if self._zip is None:
            return None
        name = f"{self._zip_prefix}code/{module.replace('.', '/')}.py"
        try:
            return self._zip.read(name).decode("utf-8", "replace")
        except KeyError:
            return None

    # -- tensor data -----------------------------------------------------------------------------

    def load_tensor(self, ref: TensorRef) -> torch.Tensor:
        """Read one tensor's storage (cached) and view it with the pickled offset, size and stride."""
        storage = ref.storage
        flat = self._storage_bytes(storage.base or storage.key)
        start = storage.element_offset * _element_size(storage.dtype)
        flat = flat[start : start + storage.numel * _element_size(storage.dtype)]
        if flat.numel() % _element_size(ref.dtype):
            raise CheckpointError(f"{self.path}: storage {storage.key!r} does not hold whole {ref.dtype} elements")
        values = flat.view(ref.dtype)
        _check_bounds(self.path, ref, values.numel())
        return torch.as_strided(values, ref.size, ref.stride, ref.offset)

    def _storage_bytes(self, key: str) -> torch.Tensor:
        if key not in self._cache:
            ref = self._storages[key]
            nbytes = ref.numel * _element_size(ref.dtype)
            if self._zip is not None:
                data = bytearray(self._zip.read(f"{self._zip_prefix}data/{key}"))
            else:
                offset, numel = self._records.get(key, (None, None))
                if offset is None:
                    raise CheckpointError(f"{self.path}: storage {key!r} has no data")
                self._file.seek(offset)
                data = bytearray(self._file.read(numel * _element_size(ref.dtype)))
            if len(data) != nbytes:
                raise CheckpointError(
                    f"{self.path}: storage {key!r} holds {len(data)} bytes, expected {nbytes} "
                    f"({ref.numel} x {ref.dtype})"
                )
            flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            if self._byteorder != sys.byteorder and _element_size(ref.dtype) > 1:
                flat = flat.view(-1, _element_size(ref.dtype)).flip(-1).reshape(-1)
            self._cache[key] = flat
        return self._cache[key]


def _ascii(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _element_size(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _check_bounds(path: str, ref: TensorRef, available: int) -> None:
    if len(ref.size) != len(ref.stride) or min(ref.size + ref.stride + (ref.offset,), default=0) < 0:
        raise CheckpointError(f"{path}: invalid tensor geometry size={ref.size} stride={ref.stride}")
    if 0 in ref.size:
        return
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= available:
        raise CheckpointError(
            f"{path}: tensor of size {list(ref.size)} reaches element {last} of a storage with {available}"
        )


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a whole checkpoint without executing it: every :class:`TensorRef` becomes a tensor.

    Non-allow-listed objects stay :class:`PickledObject` placeholders (their recorded arguments
    and state are materialised too).
    """
    with CheckpointReader(path) as reader:
        return _materialise(reader.load(), {})


def _materialise(obj: Any, memo: dict[int, Any]) -> Any:
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, TensorRef):
        memo[id(obj)] = result = obj.load()
    elif isinstance(obj, dict):
        memo[id(obj)] = obj
        for key, value in list(obj.items()):
            obj[key] = _materialise(value, memo)
        result = obj
    elif isinstance(obj, list):
        memo[id(obj)] = obj
        obj[:] = [_materialise(value, memo) for value in obj]
        result = obj
    elif isinstance(obj, tuple):
        memo[id(obj)] = result = tuple(_materialise(value, memo) for value in obj)
    elif isinstance(obj, PickledObject):
        memo[id(obj)] = obj
        obj.args = _materialise(obj.args, memo)
        obj.state = _materialise(obj.state, memo)
        _materialise(obj.kwargs, memo)
        _materialise(obj.items, memo)
        _materialise(obj.list_items, memo)
        result = obj
    else:
        result = obj
    return result


@dataclass
class TorchScriptState:
    """What :func:`read_torchscript` finds: the archive's state dict and its module class names."""

    state_dict: "collections.OrderedDict[str, torch.Tensor]"
    module_classes: set[str]  # qualified names, e.g. "__torch__.clip.model.QuickGELU"

    @property
    def class_names(self) -> set[str]:
        """Unqualified class names (``QuickGELU``, ``GELU``, ...)."""
        return {name.rsplit(".", 1)[-1] for name in self.module_classes}


_TORCHSCRIPT_PREFIX = "__torch__"
_NAME_LIST = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _slot_names(class_text: str, slot: str) -> Optional[list[str]]:
    match = re.search(rf"^\s+{slot} = \[(.*)\]\s*$", class_text, re.MULTILINE)
    return None if match is None else _NAME_LIST.findall(match.group(1))


def _state_slots(reader: CheckpointReader, qualified: str, memo: dict) -> Optional[set[str]]:
    """Names of the parameters and buffers of TorchScript class ``qualified`` (None: not recorded)."""
    if qualified not in memo:
        module, _, name = qualified.rpartition(".")
        text = reader.code_text(module) or ""
        block = re.search(rf"^class {re.escape(name)}\(Module\):\n((?:[ \t].*\n?|\n)*)", text, re.MULTILINE)
        slots = None
        if block is not None:
            parameters = _slot_names(block.group(1), "__parameters__")
            buffers = _slot_names(block.group(1), "__buffers__")
            if parameters is not None or buffers is not None:
                slots = set(parameters or ()) | set(buffers or ())
        memo[qualified] = slots
    return memo[qualified]


def read_torchscript(path: str | os.PathLike) -> TorchScriptState:
    """Read a TorchScript archive's parameters and buffers as data, never running its code.

    Returns what the TorchScript loader's ``state_dict()`` would hold (same keys, values and order) and the
    class names of its modules. Raises :class:`CheckpointError` for anything else, including a module
    with custom pickled state.
    """
    state: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    classes: set[str] = set()
    with CheckpointReader(path, torchscript=True) as reader:
        root = reader.load()
        slots_memo: dict = {}
        seen: set[int] = set()

        def walk(obj: Any, prefix: str) -> None:
            qualified = obj.pickled_global
            if id(obj) in seen:
                raise CheckpointError(f"{reader.path}: module {qualified} appears twice in the module tree")
            seen.add(id(obj))
            classes.add(qualified)
            attributes = obj.state
            if obj.args or obj.kwargs or obj.items or obj.list_items or not isinstance(attributes, dict):
                raise CheckpointError(
                    f"{reader.path}: module {prefix.rstrip('.') or '<root>'} ({qualified}) has custom pickled state "
                    "(a TorchScript __setstate__ would run code to restore it); refusing to read it"
                )
            slots = _state_slots(reader, qualified, slots_memo)
            for name, value in attributes.items():
                if not isinstance(name, str):
                    raise CheckpointError(f"{reader.path}: module {qualified} has a non-string attribute {name!r}")
                if isinstance(value, PickledObject) and value.pickled_global.startswith(_TORCHSCRIPT_PREFIX + "."):
                    walk(value, f"{prefix}{name}.")
                elif isinstance(value, TensorRef) and (slots is None or name in slots):
                    state[prefix + name] = value.load()

        if not (isinstance(root, PickledObject) and root.pickled_global.split(".")[0] == _TORCHSCRIPT_PREFIX):
            raise CheckpointError(f"{reader.path}: the archive's root is not a TorchScript module")
        try:
            walk(root, "")
        except CheckpointError:
            raise
        except Exception as error:  # malformed tensor records
            raise CheckpointError(f"cannot read {reader.path}: {type(error).__name__}: {error}") from error
    return TorchScriptState(state, classes)

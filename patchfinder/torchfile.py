"""Read PyTorch state dicts saved in the legacy (pre-zip) format, without torch.

A legacy file (`torch.save(..., _use_new_zipfile_serialization=False)`, the only format
before torch 1.6) is a concatenation of

1. a pickle of the magic number `0x1950A86A20F9469CFC6C`,
2. a pickle of the protocol version (1001),
3. a pickle of `sys_info` (byte order, C type sizes),
4. the main pickle: the object, with every storage replaced by a persistent id
   `("storage", StorageType, key, location, numel, view_metadata)`,
5. a pickle of the list of storage keys, in the order their data follows,
6. per storage: its element count as an 8-byte little-endian integer, then its raw bytes.

Unpickling runs code named by the file, so it is only safe with a strict allow-list: the
unpickler here admits `collections.OrderedDict`, torch's tensor-rebuild functions and the
storage classes, each mapped to a small stand-in defined below; any other global raises
`UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["LEGACY_MAGIC", "LEGACY_PROTOCOL", "UnsafePickleError", "read_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_CONVERT_HINT = (
    "convert it once with torch: python -c \"import torch; torch.save(torch.load('IN.pth', "
    "map_location='cpu', weights_only=True), 'OUT.pth', _use_new_zipfile_serialization=False)\""
)


class UnsafePickleError(ValueError):
    """The file's pickle names a global outside the tensor-rebuilding allow-list."""


# --- stand-ins for the torch objects a state dict pickle refers to ----------------------------


@dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only the element type matters here."""

    name: str
    dtype: np.dtype  # little-endian element type as stored on disk


# bfloat16 has no numpy dtype: its raw 16-bit words are the top half of a float32.
_BFLOAT16 = "BFloat16Storage"

_STORAGE_TYPES: dict[str, _StorageType] = {
    name: _StorageType(name, np.dtype(code))
    for name, code in {
        "DoubleStorage": "<f8",
        "FloatStorage": "<f4",
        "HalfStorage": "<f2",
        _BFLOAT16: "<u2",
        "LongStorage": "<i8",
        "IntStorage": "<i4",
        "ShortStorage": "<i2",
        "CharStorage": "i1",
        "ByteStorage": "u1",
        "BoolStorage": "?",
    }.items()
}


@dataclass(eq=False)
class _Storage:
    """A root storage: its declared size now, its bytes once the data section is read."""

    type: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class _StorageView:
    """A slice of a root storage (legacy `view_metadata`), in elements."""

    root: _Storage
    offset: int
    numel: int


@dataclass(frozen=True, eq=False)
class _TensorRef:
    """A tensor whose storage bytes are not read yet (they follow the main pickle)."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any
) -> _TensorRef:
    if not isinstance(storage, _Storage | _StorageView):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    if not (_is_index_tuple(size) and _is_index_tuple(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError(f"bad tensor size/stride: {size!r} / {stride!r}")
    if not (isinstance(storage_offset, int) and storage_offset >= 0):
        raise pickle.UnpicklingError(f"bad tensor storage offset: {storage_offset!r}")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    # nn.Parameter wraps a tensor; the wrapper carries nothing a state dict needs.
    return data


def _is_index_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): kind for name, kind in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals, and storages as persistent ids."""

    def __init__(self, file: BinaryIO, *, path: Path, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._path = path
        self._storages = storages
        self._views: dict[str, _StorageView] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refusing to unpickle global {module}.{name}: only the globals "
                "needed to rebuild tensors are allowed (this file may not be a plain state "
                "dict, or it may be malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) == 6):
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        _, kind, key, _location, numel, view = pid
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"storage of unknown type {kind!r}")
        if not (isinstance(key, str) and isinstance(numel, int) and numel >= 0):
            raise pickle.UnpicklingError(f"bad storage id {pid!r}")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(kind, key, numel)
        elif root.type is not kind or root.numel != numel:
            raise pickle.UnpicklingError(f"storage {key!r} declared twice, differently")
        if view is None:
            return root
        # Pre-1.0 torch saved storage slices as views of a root storage.
        if not (isinstance(view, tuple) and len(view) == 3):
            raise pickle.UnpicklingError(f"bad storage view {view!r}")
        view_key, offset, view_numel = view
        if not (isinstance(offset, int) and isinstance(view_numel, int)):
            raise pickle.UnpicklingError(f"bad storage view {view!r}")
        if offset < 0 or view_numel < 0 or offset + view_numel > numel:
            raise pickle.UnpicklingError(f"storage view {view!r} outside its storage")
        if view_key not in self._views:
            self._views[view_key] = _StorageView(root, offset, view_numel)
        return self._views[view_key]


# --- reading --------------------------------------------------------------------------------


def _load_pickle(handle: BinaryIO, path: Path, storages: dict[str, _Storage]) -> Any:
    return _RestrictedUnpickler(handle, path=path, storages=storages).load()


def _check_format(handle: BinaryIO, path: Path) -> None:
    head = handle.read(512)
    handle.seek(0)
    if head.startswith(b"PK\x03\x04"):
        raise ValueError(
            f"{path}: this is a zip-format torch file (the default since torch 1.6), which "
            f"is not supported; only the legacy format is. To read it here, {_CONVERT_HINT}"
        )
    if head[257:262] == b"ustar":
        raise ValueError(f"{path}: tar-format torch files (torch < 0.4) are not supported")
    if not head.startswith(b"\x80"):
        raise ValueError(f"{path}: not a legacy torch file (it does not start with a pickle)")


def _read_storage_data(
    handle: BinaryIO, path: Path, storage: _Storage, remaining: int, byte_order: str
) -> None:
    """Read one storage record (element count, then raw elements) into `storage.data`."""
    header = handle.read(8)
    if len(header) != 8:
        raise ValueError(f"{path}: truncated: storage {storage.key!r} has no data")
    numel = int.from_bytes(header, "little")
    if numel != storage.numel:
        raise ValueError(
            f"{path}: storage {storage.key!r} holds {numel} elements, the pickle says "
            f"{storage.numel}"
        )
    dtype = storage.type.dtype.newbyteorder(byte_order)
    nbytes = numel * dtype.itemsize
    # Check before reading so a corrupt size cannot make us allocate gigabytes.
    if nbytes > remaining - 8:
        raise ValueError(f"{path}: truncated: storage {storage.key!r} needs {nbytes} bytes")
    raw = handle.read(nbytes)
    if len(raw) != nbytes:
        raise ValueError(f"{path}: truncated: storage {storage.key!r} needs {nbytes} bytes")
    data = np.frombuffer(raw, dtype=dtype)
    if storage.type.name == _BFLOAT16:
        data = (data.astype(np.uint32) << 16).view(np.float32)
    storage.data = data.astype(data.dtype.newbyteorder("="), copy=False)


def _materialize(ref: _TensorRef, path: Path, key: str) -> np.ndarray:
    source = ref.storage
    root = source.root if isinstance(source, _StorageView) else source
    base, limit = (source.offset, source.numel) if isinstance(source, _StorageView) else (0, None)
    if root.data is None:
        raise ValueError(
            f"{path}: tensor {key!r} refers to storage {root.key!r}, which has no data"
        )
    data = root.data[base:] if limit is None else root.data[base : base + limit]
    # as_strided reads raw memory, so every index it can touch must lie inside the storage.
    numel = int(np.prod(ref.size, dtype=np.int64))
    if numel:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if last >= data.size:
            raise ValueError(
                f"{path}: tensor {key!r} (size {ref.size}, stride {ref.stride}, offset "
                f"{ref.offset}) reaches past the end of its storage ({data.size} elements)"
            )
    else:
        return np.zeros(ref.size, dtype=data.dtype)
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.size,
        strides=tuple(s * data.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, order="C", copy=True)


def _tensor_mapping(obj: Any, path: Path) -> Mapping[str, Any]:
    """The mapping of names to tensors in a loaded object (a state dict or a checkpoint)."""
    if isinstance(obj, Mapping) and all(isinstance(v, _TensorRef) for v in obj.values()):
        return obj
    # Training checkpoints often wrap the state dict with bookkeeping.
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return _tensor_mapping(obj["state_dict"], path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    bad = next(k for k, v in obj.items() if not isinstance(v, _TensorRef))
    raise ValueError(f"{path}: entry {bad!r} is not a tensor; expected a plain state dict")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format torch state dict as numpy arrays, without importing torch.

    Args:
        path: a file written by `torch.save(state_dict, path,
            _use_new_zipfile_serialization=False)` (or by torch < 1.6).

    Returns:
        name -> C-contiguous array with the tensor's shape and dtype (bfloat16 becomes
        float32), in the file's order. Strided and offset views are materialised.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (nothing runs).
        ValueError: the file is not a legacy torch file (zip format, truncated, not a
            pickle), or holds something other than a mapping of tensors.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        _check_format(handle, path)
        return _read(handle, path)


def _read(handle: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    size = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    storages: dict[str, _Storage] = {}
    try:
        magic = _load_pickle(handle, path, {})
        protocol = _load_pickle(handle, path, {}) if magic == LEGACY_MAGIC else None
        sys_info = _load_pickle(handle, path, {}) if protocol == LEGACY_PROTOCOL else None
        obj = _load_pickle(handle, path, storages) if sys_info is not None else None
        keys = _load_pickle(handle, path, {}) if sys_info is not None else None
    except UnsafePickleError:
        raise
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean "unreadable"
        raise ValueError(
            f"{path}: not a readable legacy torch file ({type(err).__name__}: {err})"
        ) from err
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{path}: not a legacy torch file (wrong magic number)")
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"{path}: unsupported legacy torch protocol version {protocol!r}")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ValueError(f"{path}: malformed storage key list")
    little = not isinstance(sys_info, dict) or bool(sys_info.get("little_endian", True))
    tensors = _tensor_mapping(obj, path)
    for key in keys:
        if key not in storages:
            raise ValueError(f"{path}: data for storage {key!r}, which no tensor uses")
        _read_storage_data(
            handle, path, storages[key], size - handle.tell(), "<" if little else ">"
        )
    return {str(name): _materialize(ref, path, str(name)) for name, ref in tensors.items()}

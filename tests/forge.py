"""Forge torch.save files by hand, without PyTorch: for refusal, damage and hostile-checkpoint tests.

A torch checkpoint is a pickle whose tensors are REDUCE calls of ``torch._utils._rebuild_tensor_v2``
on persistent ids naming storages. The pure-Python pickler below writes exactly those opcodes from
small markers -- `Global` (a GLOBAL opcode, never imported), `Call` (REDUCE), `Storage` (a
persistent id), `Build` (BUILD) and `Raw` (opcodes as given) -- so tests can write any
well-formed or malicious variant in either layout:

* `write_legacy`: the pre-1.6 layout (magic, protocol, sys_info, object, key list, storage records);
* `write_zip`: ``archive/data.pkl`` + ``archive/data/<key>`` members.

`forge_tensors` turns a real checkpoint (as `torch_file.read_checkpoint` returns it) back
into markers, so a payload can be planted inside an otherwise valid state dict.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

FORMATS = ["legacy", "zip"]
# torch.serialization.MAGIC_NUMBER and PROTOCOL_VERSION
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class Global:
    """A module-level name written as a GLOBAL opcode without importing it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only reduces callables
        raise AssertionError("never called")


class Call:
    """Pickles as REDUCE: ``func(*args)`` on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __call__(self, *args):  # a Call can be the function of another Call (f(x)(y))
        raise AssertionError("never called")


class Raw:
    """Opcodes written verbatim where this object sits (for INST, OBJ, EXT... tricks)."""

    def __init__(self, opcodes):
        self.opcodes = opcodes


class Build:
    """Pickles ``obj``, then ``state`` and a BUILD opcode: pickle's ``__setstate__`` / attribute update."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Storage:
    """Pickles as a torch persistent id for storage ``key`` (``view``: old
    storage slices, (view key, offset, size))."""

    def __init__(self, key, numel, type_name="FloatStorage", view=None):
        self.key, self.numel, self.type_name, self.view = key, numel, type_name, view


def tensor(storage, offset, size, stride):
    """A _rebuild_tensor_v2 call as torch writes it."""
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride,
                False, Call(Global("collections", "OrderedDict")))


class HandPickler(pickle._Pickler):
    """Pure-Python pickler that writes Global/Call/Storage/Build/Raw like torch.save does.

    Storage ids are 5-tuples as in zip files; with ``legacy``, 6-tuples ending in the view
    (None for a whole storage), as the legacy format has them.
    """

    def __init__(self, file, legacy=False):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            pid = ("storage", Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
            return pid + (obj.view,) if self.legacy or obj.view is not None else pid
        return None

    def reducer_override(self, obj):
        if isinstance(obj, Call):
            return obj.func, obj.args
        return NotImplemented

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        if isinstance(obj, Build):
            self.save(obj.obj)
            self.save(obj.state)
            self.write(pickle.BUILD)
            return
        if isinstance(obj, Raw):
            self.write(obj.opcodes)
            return
        super().save(obj, save_persistent_id)


def hand_pickle(obj, legacy=False):
    buf = io.BytesIO()
    HandPickler(buf, legacy).dump(obj)
    return buf.getvalue()


def write_legacy(path, obj, storages=(), little_endian=True):
    """storages: (key, element count, raw bytes) in file order."""
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump({"protocol_version": LEGACY_PROTOCOL, "little_endian": little_endian,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(hand_pickle(obj, legacy=True))
        pickle.dump([key for key, _, _ in storages], f, protocol=2)
        for _, count, raw in storages:
            f.write(struct.pack("<q" if little_endian else ">q", count))
            f.write(raw)
    return path


def write_zip(path, obj, storages=(), byteorder="little", extra=()):
    """extra: (member name, bytes) written after the regular members."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", hand_pickle(obj))
        zf.writestr("archive/byteorder", byteorder)
        zf.writestr("archive/version", "3\n")
        for key, _, raw in storages:
            zf.writestr(f"archive/data/{key}", raw)
        for name, data in extra:
            zf.writestr(name, data)
    return path


def write_format(fmt, path, obj, storages=()):
    return (write_legacy if fmt == "legacy" else write_zip)(path, obj, storages)


# ---- a real checkpoint back into markers ----

# numpy dtype -> the legacy typed-storage class torch pickles for it
STORAGE_TYPES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


def forge_tensors(obj, storages=None):
    """(markers, storages): `obj` with every numpy array replaced by a tensor on its own storage.

    `storages` collects (key, element count, raw little-endian bytes) in key order, as
    `write_legacy` / `write_zip` take them. Containers keep their type (OrderedDict stays one).
    """
    storages = [] if storages is None else storages
    if isinstance(obj, np.ndarray):
        key = str(len(storages))
        array = np.ascontiguousarray(obj)
        storages.append((key, array.size, array.astype(array.dtype.newbyteorder("<")).tobytes()))
        # C-order strides in elements, as torch writes them for a contiguous tensor
        strides = tuple(s // array.itemsize for s in array.strides)
        marker = tensor(Storage(key, array.size, STORAGE_TYPES[array.dtype]), 0, array.shape, strides)
        return marker, storages
    if isinstance(obj, dict):
        items = [(k, forge_tensors(v, storages)[0]) for k, v in obj.items()]
        return (collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) else dict(items)), storages
    if isinstance(obj, (list, tuple)):
        return type(obj)(forge_tensors(v, storages)[0] for v in obj), storages
    return obj, storages


def insert_after(ordered, anchor, key, value):
    """A copy of the mapping `ordered` with `key: value` placed right after `anchor`."""
    out = collections.OrderedDict()
    for k, v in ordered.items():
        out[k] = v
        if k == anchor:
            out[key] = value
    return out

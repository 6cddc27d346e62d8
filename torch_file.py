"""Read ``torch.save`` files (PyTorch checkpoints) into numpy, without PyTorch and without running code.

The published First Order Motion Model checkpoints (``vox-cpk.pth.tar`` and
friends) are ``torch.save`` files.  ``read_checkpoint`` turns such a file into
the nested dicts / lists that ``torch.load`` would return, except that every
tensor comes back as a numpy array.

Both layouts ``torch.save`` writes are understood:

* legacy (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``; the 2019
  FOMM checkpoints): a run of pickles -- magic number, protocol version,
  sys_info, the object itself, the sorted list of storage keys -- followed by
  every storage as an int64 element count and its raw bytes;
* zip (PyTorch >= 1.6): ``<prefix>/data.pkl`` plus one raw-bytes member
  ``<prefix>/data/<key>`` per storage, and ``<prefix>/byteorder``.

Unpickling can run arbitrary code, so the unpickler here is restricted: it
resolves only the few names a state dict needs (tensor rebuild functions,
storage types, dtypes, ``OrderedDict``, container builtins), each to a local
stand-in, and refuses anything else without importing its module.  Offsets,
sizes, strides and element counts are checked against the file before any
memory is allocated or any data is read, and all the tensors of one file
together may take at most a few times the file's size (plus 256 MiB).

``read_checkpoint(path, keep=("kp_detector", "generator"))`` reads only what
those top-level entries hold: the pickle is run once without data to find
their storages, the other storages (discriminator and optimizer state, two
thirds of a published checkpoint) are checked but never read -- stepped over
in a legacy file, their zip members never opened -- and the kept tensors are
read straight from the file into their final arrays.

``load_with_torch`` is the opt-in alternative (``--loadwithtorch``) that lets
real PyTorch parse the file; it is the only place torch is imported.
"""

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib

import numpy as np

__all__ = ["CheckpointError", "read_checkpoint", "load_with_torch"]


class CheckpointError(ValueError):
    """One-line, user-facing message about a bad checkpoint file."""


class _Malformed(Exception):
    """What is wrong with the file, before the file name is known.

    ``read_checkpoint`` prefixes the file name and re-raises it as
    ``CheckpointError``; internal code raises this so that every message gets
    the same prefix in exactly one place.
    """


def _truncated(needed, left):
    """The message for a file that ends early: in bytes the user can check against the download."""
    return f"truncated: a tensor needs {needed} bytes, the file has {left} left (an interrupted download?)"


# ---- file-format constants ----

# torch.serialization.MAGIC_NUMBER and PROTOCOL_VERSION: the first two pickles
# of a legacy file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
# PyTorch 0.1-0.3 wrote tar archives; tar headers carry "ustar" at byte 257.
_TAR_MAGIC_OFFSET = 257
_TAR_MAGIC = b"ustar"

# A tensor may legitimately have more elements than its storage holds
# (stride 0, e.g. after expand()), but we materialise every tensor, so a forged
# file could ask for an enormous copy of a one-element storage.  Expansion is
# allowed up to this many bytes.
_MAX_EXPANDED_BYTES = 1 << 28
# Every tensor passing that check is not enough: a thousand stride-0 views of
# one element, or a deflated zip member of zeros, would still turn a file of a
# few kilobytes into gigabytes.  So all the tensors of one file together may
# take at most _MAX_EXPANDED_BYTES plus this many bytes per byte of the file
# (a real checkpoint needs about one).
_MEMORY_PER_FILE_BYTE = 4
# numpy (1.x) supports at most 32 dimensions.
_MAX_NDIM = 32
# byteorder and version members hold a word or a number.
_MAX_SMALL_MEMBER = 64
# data.pkl holds only structure, never tensor data.
_MAX_DATA_PKL = 1 << 30


# ---- element types ----

class _DType:
    """One torch element type: how it is laid out on disk and returned."""

    __slots__ = ("name", "code", "itemsize", "out")

    def __init__(self, name, code, out=None):
        self.name = name
        self.code = code  # numpy type code of the on-disk element, no byte order
        self.itemsize = np.dtype(code).itemsize
        self.out = np.dtype(out or code)  # dtype of the returned array

    def raw(self, byteorder):
        """numpy dtype of the on-disk elements for byte order '<' or '>'."""
        return np.dtype(self.code).newbyteorder(byteorder)

    def __repr__(self):
        return "torch." + self.name


_DTYPES = {
    d.name: d
    for d in (
        _DType("float32", "f4"),
        _DType("float64", "f8"),
        _DType("float16", "f2"),
        # numpy has no bfloat16; its bits are the top half of a float32, so it
        # widens to float32 exactly.
        _DType("bfloat16", "u2", out="f4"),
        _DType("int64", "i8"),
        _DType("int32", "i4"),
        _DType("int16", "i2"),
        _DType("int8", "i1"),
        _DType("uint8", "u1"),
        # read as bytes and compared with 0 so stray values still give 0/1
        _DType("bool", "u1", out="?"),
        _DType("uint16", "u2"),
        _DType("uint32", "u4"),
        _DType("uint64", "u8"),
    )
}

# Legacy typed-storage classes as torch pickles them ("torch FloatStorage").
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    # Byte storage without an element type; tensors on it come through
    # _rebuild_tensor_v3, which names the dtype separately.
    "UntypedStorage": "uint8",
}


def _to_numpy(view, dtype):
    """Copy a strided view of on-disk elements into a fresh C-contiguous array.

    The copy owns its memory, so nothing returned aliases the bytes read from
    the file, and big-endian data becomes native here.
    """
    if dtype.name == "bool":
        # out= keeps a 0-d result an array (a bare ufunc would give a scalar)
        return np.not_equal(view, 0, out=np.empty(view.shape, np.bool_))
    if dtype.name == "bfloat16":
        out = np.empty(view.shape, np.float32)
        out.view(np.uint32)[...] = view.astype(np.uint32) << 16
        return out
    return view.astype(dtype.out, order="C")


# ---- stand-ins handed to the unpickler instead of real globals ----

class _Frozen:
    """Base for stand-ins: immutable, and refusing pickle's BUILD opcode.

    A pickle can apply BUILD (``__setstate__`` / attribute updates) to any
    object on its stack, including the shared stand-ins below; refusing it
    keeps one crafted file from altering how later files are read.
    """

    __slots__ = ()

    def __setattr__(self, name, value):
        raise _Malformed(f"checkpoint tries to modify {self!r}")

    def __setstate__(self, state):
        raise _Malformed(f"checkpoint tries to modify {self!r}")


class _TorchDtype(_Frozen):
    """Stand-in for a ``torch.<dtype>`` object named in a pickle."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self):
        return "torch." + self.dtype.name

    def __eq__(self, other):
        return isinstance(other, _TorchDtype) and other.dtype is self.dtype

    def __hash__(self):
        return hash(("torch-dtype", self.dtype.name))


class _StorageType(_Frozen):
    """Stand-in for a storage class such as ``torch.FloatStorage``."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self):
        return "torch." + self.name


class _StandIn(_Frozen):
    """A callable handed out in place of a real function or class."""

    __slots__ = ("qualname", "fn", "min_args", "max_args")

    def __init__(self, qualname, fn, min_args, max_args):
        for attr, value in zip(self.__slots__, (qualname, fn, min_args, max_args)):
            object.__setattr__(self, attr, value)

    def __call__(self, *args):
        # Check the arity here so a forged call gets a clear message rather
        # than a TypeError from inside our own function.
        if not self.min_args <= len(args) <= self.max_args:
            raise _Malformed(f"{self.qualname} called with {len(args)} arguments")
        return self.fn(*args)

    def __repr__(self):
        return self.qualname


class _Deferred:
    """Placeholder tensor from a first pass over the pickle: no data read, its storage remembered.

    The first pass learns the structure (which storages a legacy file declares, which storages the
    entries a caller keeps use) before any tensor data is read. Like the old shared placeholder it
    is hashable and refuses pickle's BUILD (no ``__dict__``, attributes cannot be set), so a first
    pass fails or succeeds exactly where reading the data would.
    """

    __slots__ = ("key",)

    def __init__(self, key):
        object.__setattr__(self, "key", key)

    def __setattr__(self, name, value):
        raise AttributeError(f"a tensor has no attribute {name!r} to set")

    def __repr__(self):
        return "<tensor not read yet>"


class _Skipped:
    """A tensor outside the entries the caller keeps: checked against the file, never read.

    Unhashable and unmodifiable like the numpy array it stands for, so a pickle that uses a tensor
    as a dict key is refused whether or not the tensor is read.
    """

    __slots__ = ()
    __hash__ = None

    def __setattr__(self, name, value):
        raise AttributeError(f"a tensor has no attribute {name!r} to set")

    def __repr__(self):
        return "<tensor not read>"


_SKIPPED = _Skipped()


# ---- storages ----

class _StorageId:
    """A checked persistent id: ('storage', type, key, location, numel[, view])."""

    __slots__ = ("dtype", "key", "numel", "view")

    def __init__(self, dtype, key, numel, view):
        self.dtype, self.key, self.numel, self.view = dtype, key, numel, view


class _StorageRef:
    """What persistent_load returns: which bytes of which storage a tensor sees.

    ``source`` reads the bytes; it is None during a first pass (see ``_Deferred``),
    when the position of the data is not known yet or which tensors to read is not decided.
    """

    __slots__ = ("key", "dtype", "byte_offset", "nbytes", "source")

    def __init__(self, key, dtype, byte_offset, nbytes, source):
        self.key, self.dtype = key, dtype
        self.byte_offset, self.nbytes, self.source = byte_offset, nbytes, source


def _describe(value):
    """A short description of a value from the file, for error messages."""
    if isinstance(value, (int, float, str, bytes)) or value is None:
        return repr(value)[:40]
    return f"a {type(value).__name__}"


def _as_count(value, what):
    """Check that an integer read from the pickle is a non-negative int."""
    # bool is an int subclass, but torch never writes one where a count goes.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Malformed(f"{what} must be a non-negative integer, got {_describe(value)}")
    return value


def _as_key(value):
    """Storage keys are short strings (old Python 2 pickles may give bytes)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or not value or len(value) > 256:
        raise _Malformed(f"bad storage key {_describe(value)}")
    return value


def _parse_storage_id(pid):
    """Check a persistent id and unpack it into a ``_StorageId``."""
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
        raise _Malformed(f"unexpected persistent id ({_describe(pid)})")
    tag = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if tag != "storage":
        raise _Malformed(f"unexpected persistent id kind {_describe(tag)}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise _Malformed(f"storage of unknown type {_describe(storage_type)}")
    view = pid[5] if len(pid) == 6 else None
    if view is not None:
        # Very old files saved storage slices: (view key, offset, size) in
        # elements of the root storage.
        if not isinstance(view, tuple) or len(view) != 3:
            raise _Malformed(f"bad storage view ({_describe(view)})")
        view = (_as_count(view[1], "storage view offset"), _as_count(view[2], "storage view size"))
    return _StorageId(storage_type.dtype, _as_key(key), _as_count(numel, "storage size"), view)


def _make_ref(sid, source):
    """Turn a storage id into the byte range a tensor may use."""
    itemsize = sid.dtype.itemsize
    if sid.view is None:
        return _StorageRef(sid.key, sid.dtype, 0, sid.numel * itemsize, source)
    offset, size = sid.view
    if offset + size > sid.numel:
        raise _Malformed(
            f"storage view [{offset}:{offset + size}] lies outside storage {sid.key!r} "
            f"of {sid.numel} elements"
        )
    return _StorageRef(sid.key, sid.dtype, offset * itemsize, size * itemsize, source)


class _Allowance:
    """The tensor memory one file may still make the reader allocate."""

    def __init__(self, file_size):
        self.limit = _MAX_EXPANDED_BYTES + _MEMORY_PER_FILE_BYTE * file_size
        self.used = 0

    def charge(self, nbytes, what):
        """Account for ``nbytes`` more, or refuse before they are allocated."""
        self.used += nbytes
        if self.used > self.limit:
            raise _Malformed(
                f"{what} would take the tensors of this file past {self.limit} bytes "
                f"of memory, more than a file of its size can hold; refusing to load it"
            )


def _no_storages(sid):
    """persistent_load for the pickles that must not reference storages."""
    raise _Malformed(f"unexpected storage reference {sid.key!r} outside the main pickle")


# ---- tensor rebuilding (stand-ins for torch._utils._rebuild_*) ----

def _as_shape(value, what):
    """Check a size or stride tuple from the pickle."""
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_NDIM:
        raise _Malformed(f"bad tensor {what} ({_describe(value)})")
    return tuple(_as_count(v, f"tensor {what} entry") for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, dtype=None):
    """Build the numpy array for a tensor viewing ``storage``.

    Everything is checked before reading: the last element the view touches
    must lie inside the storage, and an expanding view (stride 0) must not
    blow up into an unreasonable copy.  Only the bytes the view spans are
    read, so tensors sharing one storage each get their own correct slice.
    """
    if not isinstance(storage, _StorageRef):
        raise _Malformed(f"tensor built from {type(storage).__name__}, not a storage")
    if dtype is None:
        dtype = storage.dtype
    elif isinstance(dtype, _TorchDtype):
        dtype = dtype.dtype
    else:
        raise _Malformed(f"tensor dtype ({_describe(dtype)}) is not a torch dtype")
    offset = _as_count(storage_offset, "tensor storage offset")
    size = _as_shape(size, "size")
    stride = _as_shape(stride, "stride")
    if len(stride) != len(size):
        raise _Malformed(f"tensor of shape {size} has stride {stride} of another length")

    itemsize = dtype.itemsize
    capacity = storage.nbytes // itemsize  # elements of this dtype in the storage
    numel = math.prod(size)
    if numel == 0:
        if offset > capacity:
            raise _Malformed(
                f"empty tensor of shape {size} starts at element {offset} of storage "
                f"{storage.key!r}, which holds {capacity}"
            )
        return _Deferred(storage.key) if storage.source is None else np.zeros(size, dtype.out)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= capacity:
        raise _Malformed(
            f"tensor of shape {size} (offset {offset}, stride {stride}) reaches element "
            f"{last} of storage {storage.key!r}, which holds {capacity}"
        )
    out_bytes = numel * dtype.out.itemsize
    if out_bytes > max(_MAX_EXPANDED_BYTES, storage.nbytes):
        raise _Malformed(
            f"tensor of shape {size} would expand storage {storage.key!r} of {capacity} "
            f"elements into {out_bytes} bytes"
        )
    if storage.source is None:
        return _Deferred(storage.key)

    span = (last - offset + 1) * itemsize
    # The copy costs out_bytes; reading a compressed zip member costs span. Charged for skipped
    # tensors too, so what a file may ask for does not depend on what the caller keeps.
    storage.source.allowance.charge(max(out_bytes, span), f"tensor of shape {size}")
    if not storage.source.wants(storage.key):
        return _SKIPPED
    start = storage.byte_offset + offset * itemsize
    if _reads_straight(dtype, storage.source.byteorder, size, stride):
        # The bytes on disk are the array: read them into it, no intermediate copy.
        out = np.empty(size, dtype.out)
        storage.source.readinto(storage.key, start, memoryview(out.reshape(-1).view(np.uint8)))
        return out
    data = storage.source.read(storage.key, start, span)
    flat = np.frombuffer(data, dtype=dtype.raw(storage.source.byteorder))
    # A dimension of size 1 is never stepped along, but a huge stride there
    # would overflow numpy's byte strides; zero is equivalent.
    byte_strides = tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride))
    view = np.lib.stride_tricks.as_strided(flat, shape=size, strides=byte_strides, writeable=False)
    return _to_numpy(view, dtype)


def _reads_straight(dtype, byteorder, size, stride):
    """Whether the tensor's bytes on disk are exactly its returned array's bytes.

    True for a C-contiguous view (sizes of 1 step nowhere, so their stride does not matter) of
    elements stored as returned: the native byte order, and neither bool (normalised to 0/1)
    nor bfloat16 (widened).
    """
    if dtype.out != dtype.raw(byteorder) or dtype.name == "bool":
        return False
    expected = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _readinto_full(file, buffer):
    """Fill ``buffer`` from ``file``; the number of bytes read (short only at the end of the file)."""
    done, total = 0, len(buffer)
    while done < total:
        got = file.readinto(buffer[done:])
        if not got:
            break
        done += got
    return done


def _rebuild_tensor_v1(storage, storage_offset, size, stride):
    """torch._utils._rebuild_tensor (PyTorch 0.4)."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2, the usual form.

    requires_grad and hooks concern autograd only; metadata holds
    dispatch-key flags (conj/neg views) that no real-valued weight carries.
    """
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
    """torch._utils._rebuild_tensor_v3: an untyped storage plus an explicit dtype."""
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
    if not isinstance(data, (np.ndarray, _Deferred, _Skipped)):
        raise _Malformed(f"parameter wraps {type(data).__name__}, not a tensor")
    return data


def _bytearray(data):
    """builtins.bytearray, limited to copying bytes (never bytearray(10**12))."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Malformed("bytearray built from something other than bytes")
    return bytearray(data)


def _codecs_encode(text, encoding):
    """_codecs.encode as protocol-2 pickles use it to store bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Malformed("unexpected _codecs.encode call")
    return text.encode("latin-1")


def _allowed_globals():
    """The only (module, name) pairs a checkpoint may name, and their stand-ins."""
    table = {}
    for storage_name, dtype_name in _STORAGE_DTYPES.items():
        table["torch", storage_name] = _StorageType(storage_name, _DTYPES[dtype_name])
    # torch >= 2 spells the untyped storage class with its defining module.
    table["torch.storage", "UntypedStorage"] = table["torch", "UntypedStorage"]
    for dtype in _DTYPES.values():
        table["torch", dtype.name] = _TorchDtype(dtype)

    rebuilds = {
        "_rebuild_tensor": (_rebuild_tensor_v1, 4, 4),
        "_rebuild_tensor_v2": (_rebuild_tensor_v2, 6, 7),
        "_rebuild_tensor_v3": (_rebuild_tensor_v3, 7, 8),
        "_rebuild_parameter": (_rebuild_parameter, 3, 3),
        "_rebuild_parameter_with_state": (_rebuild_parameter, 4, 4),
    }
    for name, (fn, lo, hi) in rebuilds.items():
        table["torch._utils", name] = _StandIn("torch._utils." + name, fn, lo, hi)

    # Built-in container types are immutable and build only what the file
    # spells out, so the real ones are safe to hand out.
    table["collections", "OrderedDict"] = collections.OrderedDict
    for module in ("builtins", "__builtin__"):  # protocol 2 writes __builtin__
        for kind in (set, frozenset, complex, slice):
            table[module, kind.__name__] = kind
        table[module, "bytearray"] = _StandIn("builtins.bytearray", _bytearray, 1, 1)
    table["_codecs", "encode"] = _StandIn("_codecs.encode", _codecs_encode, 2, 2)
    return table


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``_ALLOWED`` names and torch storages."""

    def __init__(self, file, open_storage):
        # utf-8 as torch.load uses, for Python 2 era pickles
        super().__init__(file, encoding="utf-8")
        self._open_storage = open_storage  # _StorageId -> _StorageRef

    def find_class(self, module, name):
        # Never falls back to pickle's import machinery, so a refused module
        # is not even imported.
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise _Malformed(
                f"checkpoint asks for {_printable(module)}.{_printable(name)}, which a "
                "state dict never needs; refusing to load it"
            ) from None

    def persistent_load(self, pid):
        return self._open_storage(_parse_storage_id(pid))


def _printable(text):
    """Text from the file, safe to put in a one-line message."""
    return text if text.isprintable() else repr(text)


# Protocol-5 opcodes: out-of-band buffers and bytearrays, never in a state dict.
_REFUSED_OPCODES = {"BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _prescan(file):
    """Walk the next pickle's opcodes without executing anything.

    The C unpickler trusts some numbers before it has the data: BYTEARRAY8
    allocates its declared length before reading, and a memo index of 2**32
    makes it allocate and zero a memo that large.  pickletools.genops only
    reads what is really there, so checking with it first turns such forged
    files into clean errors.
    """
    ops = 0
    try:
        for opcode, arg, _pos in pickletools.genops(file):
            ops += 1
            if opcode.name in _REFUSED_OPCODES:
                raise _Malformed(f"pickle uses {opcode.name}, which a state dict never needs")
            # pickle numbers memo slots 0, 1, 2, ...: one PUT each.
            if opcode.name in _MEMO_PUTS and not 0 <= arg < ops:
                raise _Malformed(f"pickle memo index {arg} out of range")
    except ValueError as err:
        # pickletools' wordings for running out of data mid-pickle
        if any(words in str(err) for words in ("exhausted", "but only", "not enough data")):
            raise _Malformed("truncated (pickle data ends early)") from None
        raise _Malformed(f"corrupt pickle data ({err})") from None


class _Recorder:
    """File wrapper that keeps every byte read through it (for ``_checked_pickle``)."""

    def __init__(self, file):
        self._file, self.chunks = file, []

    def read(self, n=-1):
        data = self._file.read(n)
        self.chunks.append(data)
        return data

    def readline(self, limit=-1):
        data = self._file.readline(limit)
        self.chunks.append(data)
        return data

    def tell(self):
        return self._file.tell()


def _checked_pickle(file):
    """The bytes of the next pickle in ``file``, checked by ``_prescan``; leaves ``file`` after it.

    Exactly the bytes that were checked are returned, so every pass of the unpickler over them is
    covered by that one check without reading the file again.
    """
    recorder = _Recorder(file)
    _prescan(recorder)
    return b"".join(recorder.chunks)


def _load_pickle(data, open_storage):
    """Unpickle ``data`` (from ``_checked_pickle``) with the restricted unpickler."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), open_storage).load()
    except (TypeError, KeyError, AttributeError) as err:
        # The file's opcodes call allowed stand-ins with arguments of its choosing (wrong arity, a dict
        # key that is not there, BUILD on an object without that attribute): a malformed file. Outside
        # the pickle machine these exceptions are bugs in this reader and are not caught.
        raise _Malformed(f"corrupt checkpoint ({type(err).__name__} in the pickle: {err})") from err


def _unpickle(file, open_storage):
    """Load the next pickle from ``file`` with the restricted unpickler."""
    return _load_pickle(_checked_pickle(file), open_storage)


# ---- choosing what to read ----

def _leaves(roots):
    """Every non-container object reachable from ``roots``, each container visited once.

    Iterative, and following each shared container once, so a pickle nested thousands deep or
    sharing one list 2**64 ways costs what its opcodes cost. Containers are those the restricted
    unpickler can build: dicts (keys and values), lists, tuples, sets and slices.
    """
    seen, stack = set(), list(roots)
    while stack:
        obj = stack.pop()
        if isinstance(obj, (dict, list, tuple, set, frozenset, slice)):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, dict):
                stack.extend(obj.keys())
                stack.extend(obj.values())
            elif isinstance(obj, slice):
                stack.extend((obj.start, obj.stop, obj.step))
            else:
                stack.extend(obj)
        else:
            yield obj


def _kept_storages(skeleton, keep):
    """Storage keys of the tensors under the ``keep`` entries of a first-pass result.

    None (read everything) without ``keep``, or when the top level is not a dict and so has no
    entries to choose from.
    """
    if keep is None or not isinstance(skeleton, dict):
        return None
    roots = [value for key, value in skeleton.items() if key in keep]
    return {leaf.key for leaf in _leaves(roots) if isinstance(leaf, _Deferred)}


def _select(obj, keep, wanted):
    """The ``keep`` entries of a second-pass result (all of ``obj`` when everything was read)."""
    if wanted is None:
        return obj
    if not isinstance(obj, dict):
        raise _Malformed("the second pass over the pickle gave another top level than the first")
    kept = type(obj)((key, value) for key, value in obj.items() if key in keep)
    # Both passes ran the same checked bytes, so a kept entry reaches only tensors on kept storages.
    if any(leaf is _SKIPPED for leaf in _leaves(kept.values())):
        raise _Malformed("a kept entry reaches a tensor the first pass did not find there")
    return kept


# ---- legacy format ----

class _BoundedReader:
    """File wrapper for the unpickler that never asks for more than remains.

    The unpickler takes lengths from the data and calls read(n); a buffered
    file allocates n bytes up front, so a forged length of 2**40 would fail
    with MemoryError (or worse) instead of a clean "truncated".
    """

    def __init__(self, file, size):
        self._file, self._size = file, size

    def read(self, n=-1):
        if n is not None and 0 <= n <= 1 << 16:  # small reads are safe as they are
            return self._file.read(n)
        left = max(self._size - self._file.tell(), 0)
        return self._file.read(left if n is None or n < 0 or n > left else n)

    def readline(self, limit=-1):
        return self._file.readline(limit)

    def tell(self):
        return self._file.tell()

    def seek(self, pos):
        return self._file.seek(pos)


class _LegacySource:
    """Reads storage bytes from a legacy file, given where each storage starts.

    ``wanted``: the storage keys to read (None: all); the others are never touched.
    """

    def __init__(self, file, offsets, byteorder, file_size, wanted=None):
        self._file, self._offsets, self.byteorder = file, offsets, byteorder
        self._wanted = wanted
        self.allowance = _Allowance(file_size)

    def wants(self, key):
        return self._wanted is None or key in self._wanted

    def read(self, key, start, nbytes):
        self._file.seek(self._offsets[key] + start)
        data = self._file.read(nbytes)
        if len(data) != nbytes:
            raise _Malformed(_truncated(nbytes, len(data)))
        return data

    def readinto(self, key, start, buffer):
        self._file.seek(self._offsets[key] + start)
        got = _readinto_full(self._file, buffer)
        if got != len(buffer):
            raise _Malformed(_truncated(len(buffer), got))


class _LegacyCatalog:
    """Storages declared by the main pickle of a legacy file.

    Their data follows the pickle in key order, each preceded by its element
    count; to step over one we need its element size, which only the pickle
    knows.  So the pickle is run twice: once to learn the storages (this
    catalog, tensors deferred), once more with the data located.
    """

    def __init__(self):
        self.declared = {}  # key -> (dtype, numel)

    def record(self, sid):
        """persistent_load for the first pass."""
        known = self.declared.setdefault(sid.key, (sid.dtype, sid.numel))
        if known != (sid.dtype, sid.numel):
            raise _Malformed(f"storage {sid.key!r} is declared twice with different types or sizes")
        return _make_ref(sid, None)

    def locate(self, file, keys, file_size, byteorder):
        """Walk the storage records after the key list; return key -> data offset.

        Each declared count is checked against the bytes left in the file
        before moving on, so a forged 10**12-element storage fails here.
        """
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _Malformed("the storage key list is malformed")
        listed = set(keys)
        if len(listed) != len(keys):
            raise _Malformed("the storage key list repeats a key")
        for key in self.declared:
            if key not in listed:
                raise _Malformed(
                    f"missing storage key {key!r}: a tensor uses it but the file has no data for it"
                )
        offsets = {}
        count_format = byteorder + "q"
        pos = file.tell()
        for key in keys:
            if key not in self.declared:
                raise _Malformed(f"the storage list names {key!r}, which no tensor declares")
            dtype, numel = self.declared[key]
            header = file.read(8)
            if len(header) != 8:
                raise _Malformed(
                    _truncated(8, len(header))
                )
            (count,) = struct.unpack(count_format, header)
            if count != numel:
                raise _Malformed(
                    f"storage {key} holds {count} elements but is declared with {numel}"
                )
            nbytes = count * dtype.itemsize
            left = file_size - (pos + 8)
            if nbytes > left:
                raise _Malformed(_truncated(nbytes, left))
            offsets[key] = pos + 8
            pos += 8 + nbytes
            file.seek(pos)
        return offsets


def _legacy_byteorder(sys_info):
    """'<' or '>' from the sys_info pickle (the data is in the writer's order)."""
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        return ">"
    return "<"


def _read_legacy(file, file_size, keep):
    """Read a legacy-format checkpoint (see the module docstring)."""
    reader = _BoundedReader(file, file_size)
    if _unpickle(reader, _no_storages) != _LEGACY_MAGIC:
        raise _Malformed("not a PyTorch checkpoint (a pickle without torch's magic number)")
    version = _unpickle(reader, _no_storages)
    if version != _LEGACY_PROTOCOL:
        raise _Malformed(f"unsupported legacy protocol version {_describe(version)}")
    byteorder = _legacy_byteorder(_unpickle(reader, _no_storages))

    # The main pickle is read once and run twice: first to learn the storages (and which of them
    # the kept entries use), then with the data located.
    main = _checked_pickle(reader)
    catalog = _LegacyCatalog()
    skeleton = _load_pickle(main, catalog.record)
    keys = _unpickle(reader, _no_storages)
    offsets = catalog.locate(file, keys, file_size, byteorder)
    wanted = _kept_storages(skeleton, keep)
    source = _LegacySource(file, offsets, byteorder, file_size, wanted)
    return _select(_load_pickle(main, lambda sid: _make_ref(sid, source)), keep, wanted)


# ---- zip format ----

def _check_member_names(names):
    """Refuse names that climb out of the archive (we never extract, but such
    a name only appears in a forged file)."""
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or ".." in parts:
            raise _Malformed(f"zip member name {name[:80]!r} escapes the archive")


def _archive_prefix(names):
    """The '<prefix>/' under which torch.save put data.pkl ('' if at the root)."""
    found = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if not found:
        raise _Malformed("zip archive without <name>/data.pkl; not a PyTorch checkpoint")
    if len(found) > 1:
        raise _Malformed(f"zip archive with {len(found)} data.pkl members")
    return found[0][: -len("data.pkl")]


class _ZipSource:
    """Reads storage bytes from ``<prefix>/data/<key>`` members.

    ``wanted``: the storage keys to read (None: all); the members of the others are never opened.
    """

    def __init__(self, file, archive, prefix, archive_size):
        self._file, self._archive, self._prefix, self._archive_size = file, archive, prefix, archive_size
        self.byteorder = self._read_byteorder()
        self.allowance = _Allowance(archive_size)
        self.wanted = None

    def wants(self, key):
        return self.wanted is None or key in self.wanted

    def _info(self, name):
        """The member's ZipInfo, once its sizes are checked against the file.

        zipfile believes the sizes in the directory; a forged size would make
        it try to read (and allocate) far more than the file holds.
        """
        info = self._archive.getinfo(name)
        if info.header_offset + info.compress_size > self._archive_size:
            raise _Malformed(
                f"truncated (zip member {name} claims {info.compress_size} bytes, "
                f"more than the file holds)"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise _Malformed(f"zip member {name} has inconsistent sizes")
        return info

    def _small_member(self, name):
        """Text of a tiny member such as byteorder, or None if absent."""
        try:
            info = self._info(self._prefix + name)
        except KeyError:
            return None
        if info.file_size > _MAX_SMALL_MEMBER:
            raise _Malformed(f"zip member {name} is {info.file_size} bytes, expected a word")
        return self._archive.read(info).decode("ascii", "replace").strip()

    def _read_byteorder(self):
        # Files from PyTorch 1.6-1.9 have no byteorder record; they are little-endian.
        order = self._small_member("byteorder")
        if order in (None, "little"):
            return "<"
        if order == "big":
            return ">"
        raise _Malformed(f"unknown byteorder {order[:20]!r}")

    def data_pickle(self):
        """The bytes of data.pkl."""
        info = self._info(self._prefix + "data.pkl")
        # Only a compressed member can claim more than the file size; real
        # ones are a few megabytes at most.
        if info.file_size > _MAX_DATA_PKL:
            raise _Malformed(f"data.pkl claims {info.file_size} bytes; refusing to inflate it")
        return self._archive.read(info)

    def _member(self, key):
        if "/" in key or "\\" in key or key in (".", ".."):
            raise _Malformed(f"bad storage key {key[:40]!r}")
        try:
            return self._info(f"{self._prefix}data/{key}")
        except KeyError:
            raise _Malformed(
                f"missing storage key {key!r} (no member {self._prefix}data/{key})"
            ) from None

    def open_storage(self, sid, deferred=False):
        """persistent_load: check the declared size against the member size.

        ``deferred``: for a first pass, whose tensors are placeholders (see ``_Deferred``).
        """
        info = self._member(sid.key)
        needed = sid.numel * sid.dtype.itemsize
        if info.file_size < needed:
            raise _Malformed(
                _truncated(needed, info.file_size)
            )
        return _make_ref(sid, None if deferred else self)

    def read(self, key, start, nbytes):
        with self._archive.open(self._member(key)) as member:
            member.seek(start)
            data = member.read(nbytes)
        if len(data) != nbytes:
            raise _Malformed(_truncated(nbytes, len(data)))
        return data

    def readinto(self, key, start, buffer):
        """Fill ``buffer`` with the member's bytes from ``start`` on, straight from the file.

        torch.save stores members uncompressed, so their bytes lie in the file as they are. The
        checks zipfile makes on the way stay: the local header (through ``ZipFile.open``) and, when
        the read spans the whole member, the CRC -- zipfile checks it whenever a read reaches the
        end of a member, and from the start of a member is the only way here to reach it.
        Anything else (a compressed member, a view ending the member but starting inside it)
        goes through zipfile.
        """
        info = self._member(key)
        nbytes = len(buffer)
        whole = start == 0 and nbytes == info.file_size
        if info.compress_type != zipfile.ZIP_STORED or (not whole and start + nbytes >= info.file_size):
            buffer[:] = self.read(key, start, nbytes)
            return
        with self._archive.open(info):
            pass  # zipfile checks the local header: signature, name, flags, encryption
        self._file.seek(info.header_offset)
        header = self._file.read(30)
        if len(header) != 30:
            raise _Malformed(_truncated(30, len(header)))
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        data_start = info.header_offset + 30 + name_length + extra_length
        left = self._archive_size - (data_start + start)
        if nbytes > left:
            raise _Malformed(_truncated(nbytes, max(left, 0)))
        self._file.seek(data_start + start)
        got = _readinto_full(self._file, buffer)
        if got != nbytes:
            raise _Malformed(_truncated(nbytes, got))
        if whole and zlib.crc32(buffer) != info.CRC:
            # zipfile's own wording, reported like a CRC error found by zipfile
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")


def _read_zip(file, file_size, keep):
    """Read a zip-format checkpoint (see the module docstring)."""
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
        _check_member_names(names)
        source = _ZipSource(file, archive, _archive_prefix(names), file_size)
        data = _checked_pickle(io.BytesIO(source.data_pickle()))
        if keep is not None:
            # A first pass finds the storages of the kept entries; the members of the others are
            # never opened. It checks every storage's member and size as the second pass does.
            skeleton = _load_pickle(data, lambda sid: source.open_storage(sid, deferred=True))
            source.wanted = _kept_storages(skeleton, keep)
        return _select(_load_pickle(data, source.open_storage), keep, source.wanted)


# ---- public reader ----

# What parsing a damaged file can raise from pickle, struct, zipfile and zlib
# (zipfile signals encrypted members with RuntimeError, unsupported
# compression with NotImplementedError).
_PARSE_ERRORS = (
    struct.error,
    zlib.error,
    ValueError,
    IndexError,
    OverflowError,
    MemoryError,
    RecursionError,
    RuntimeError,
    NotImplementedError,
)


def _one_line(text):
    """Collapse a message onto one line."""
    return " ".join(str(text).split())


def _read_open_file(file, keep=None):
    """Dispatch on the first bytes of the file."""
    file_size = os.fstat(file.fileno()).st_size
    head = file.read(_TAR_MAGIC_OFFSET + len(_TAR_MAGIC))
    file.seek(0)
    if not head:
        raise _Malformed("empty file")
    if head.startswith(_ZIP_MAGIC):
        return _read_zip(file, file_size, keep)
    if head[_TAR_MAGIC_OFFSET:] == _TAR_MAGIC:
        raise _Malformed(
            "tar-format checkpoint from PyTorch 0.3 or older is not supported; "
            "load it and save it again with a newer PyTorch"
        )
    if head.startswith(b"\x80"):  # pickle protocol 2+, as torch.save writes
        return _read_legacy(file, file_size, keep)
    raise _Malformed(f"not a PyTorch checkpoint (file starts with {head[:8]!r})")


def read_checkpoint(path, keep=None):
    """Read a ``torch.save`` file without PyTorch.

    Returns the unpickled top-level object (normally a dict like
    ``{'generator': OrderedDict(name -> np.ndarray), 'kp_detector': ...,
    'optimizer_...': ..., 'epoch': int}``) with every tensor turned into a
    numpy array that owns its memory, is C-contiguous and has the tensor's
    dtype (bfloat16 comes back as float32).  ``torch.<dtype>`` objects in the
    pickle come back as stand-ins printing as ``torch.float32`` etc.

    ``keep``: names of top-level entries (e.g. ``("kp_detector", "generator")``).
    When given and the top level is a dict, only those entries are returned
    (in file order; absent names are left out) and only the storages their
    tensors use are read: the others are checked as always (declared sizes
    against the file, views against their storage, the memory a file may ask
    for) but their bytes are never read -- skipped by seeking in a legacy
    file, their members never opened in a zip.  A top level that is not a
    dict is read whole.

    Raises ``CheckpointError`` with a one-line message starting with ``path``
    for every kind of failure.
    """
    name = os.fsdecode(path)
    try:
        with open(path, "rb") as file:
            return _read_open_file(file, None if keep is None else frozenset(keep))
    except _Malformed as err:
        raise CheckpointError(_one_line(f"{name}: {err}")) from None
    except OSError as err:
        raise CheckpointError(_one_line(f"{name}: cannot read ({err.strerror or err})")) from err
    except EOFError as err:
        raise CheckpointError(f"{name}: truncated (pickle data ends early)") from err
    except pickle.UnpicklingError as err:
        if "truncated" in str(err):  # the unpickler's wording for a short read
            raise CheckpointError(f"{name}: truncated (pickle data ends early)") from err
        raise CheckpointError(_one_line(f"{name}: corrupt pickle data ({err})")[:300]) from err
    except zipfile.BadZipFile as err:
        raise CheckpointError(_one_line(f"{name}: bad or truncated zip archive ({err})")) from err
    except _PARSE_ERRORS as err:
        raise CheckpointError(
            _one_line(f"{name}: corrupt checkpoint ({type(err).__name__}: {err})")[:300]
        ) from err


# ---- optional: let PyTorch do the reading ----

# What torch.load raises for unreadable, damaged or refused files.
_TORCH_LOAD_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    struct.error,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ImportError,
    OverflowError,
    MemoryError,
)


# Lines of torch's weights_only refusals that are the same whatever the file holds.
_TORCH_BOILERPLATE = ("Please file an issue", "Check the documentation")


def _torch_to_numpy(obj, torch, allowance, converted):
    """Replace tensors in a torch.load result by numpy copies, like read_checkpoint.

    ``converted`` maps the id() of every tensor and container done so far to
    its result: an object the file references many times (a pickle can nest
    references exponentially, or make a list contain itself) is converted once.
    ``allowance`` bounds the memory the copies take, as in read_checkpoint:
    torch keeps a stride-0 view small, its numpy copy would not be.
    """
    if id(obj) in converted:
        return converted[id(obj)]
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().resolve_conj().resolve_neg()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16
        allowance.charge(tensor.numel() * tensor.element_size(), f"tensor of shape {tuple(tensor.shape)}")
        result = np.array(tensor.numpy(), copy=True, order="C")
    elif isinstance(obj, torch.dtype):
        dtype = _DTYPES.get(str(obj).rpartition(".")[2])
        result = _ALLOWED["torch", dtype.name] if dtype else obj
    elif isinstance(obj, dict):
        # registered before its values, so that a dict reaching itself ends here
        result = converted[id(obj)] = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        result.update((k, _torch_to_numpy(v, torch, allowance, converted)) for k, v in obj.items())
    elif isinstance(obj, list):
        result = converted[id(obj)] = []
        result.extend(_torch_to_numpy(v, torch, allowance, converted) for v in obj)
    elif isinstance(obj, tuple):
        result = tuple(_torch_to_numpy(v, torch, allowance, converted) for v in obj)
    else:
        result = obj
    converted[id(obj)] = result
    return result


def _torch_reason(err):
    """The line of a torch.load error that says what is wrong.

    weights_only refusals open with advice to load the file again with
    weights_only=False -- exactly wrong for a file that asks to run code --
    and say what the file asked for on a later line, between boilerplate.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Weights only load failed"):
        details = [line for line in lines[1:] if not line.startswith(_TORCH_BOILERPLATE)]
        if details:
            return f"refused by weights_only: {details[0]}"
    return lines[0]


def load_with_torch(path):
    """Same result as ``read_checkpoint``, but parsed by PyTorch itself.

    Uses ``torch.load(path, map_location='cpu', weights_only=True)`` and turns
    tensors into numpy copies.  Raises ``CheckpointError`` if PyTorch is not
    installed or cannot load the file.
    """
    try:
        import torch  # optional dependency: only this escape hatch needs it
    except ImportError:
        raise CheckpointError("--loadwithtorch needs PyTorch: pip install torch") from None
    name = os.fsdecode(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as err:
        raise CheckpointError(_one_line(f"{name}: torch.load failed: {_torch_reason(err)}")[:300]) from err
    try:
        return _torch_to_numpy(obj, torch, _Allowance(os.path.getsize(path)), {})
    except _Malformed as err:
        raise CheckpointError(_one_line(f"{name}: {err}")) from None
    except RecursionError:
        raise CheckpointError(f"{name}: containers nested too deeply for a checkpoint") from None

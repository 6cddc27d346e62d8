"""Tests for torch_file: the torch-free reader of torch.save files.

Files are generated at test time: with PyTorch for round trips (those tests
skip when torch is missing), and with a tiny hand-made pickler for refusals
and damaged files, which therefore run without torch.
"""

import collections
import io
import pickle
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # let plain `pytest` find the module too
    sys.path.insert(0, str(ROOT))

from torch_file import CheckpointError, load_with_torch, read_checkpoint  # noqa: E402
from forge import FORMATS, Call, Global, Storage, tensor, write_format, write_legacy, write_zip  # noqa: E402


def assert_refused(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- refusals and damaged files, without torch ----

@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_os_system_and_runs_nothing(tmp_path, fmt):
    canary = tmp_path / "canary"
    evil = {"generator": Call(Global("os", "system"), f"touch {canary}"), "epoch": 1}
    path = write_format(fmt, tmp_path / "evil.pth", evil)
    message = assert_refused(path, "asks for os.system", "refusing")
    assert "state dict never needs" in message
    assert not canary.exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("__builtin__", "getattr"), ("subprocess", "Popen"),
    ("posix", "system"), ("torch", "load"), ("numpy", "load"), ("torch._utils", "_rebuild_qtensor"),
])
def test_refuses_other_globals(tmp_path, module, name):
    path = write_legacy(tmp_path / "evil.pth", [Call(Global(module, name), "x")])
    assert_refused(path, f"asks for {module}.{name}")


def test_refused_module_is_never_imported(tmp_path, monkeypatch):
    canary = tmp_path / "imported"
    (tmp_path / "fomm_evil_canary.py").write_text(
        f"open({str(canary)!r}, 'w').close()\nboom = print\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for fmt in FORMATS:
        path = write_format(fmt, tmp_path / f"evil_{fmt}.pth",
                            Call(Global("fomm_evil_canary", "boom"), "hi"))
        assert_refused(path, "fomm_evil_canary.boom")
    assert not canary.exists()
    assert "fomm_evil_canary" not in sys.modules


def test_refuses_persistent_id_for_torch_load(tmp_path):
    # the storage "type" slot must be a storage class, not any global
    obj = tensor(Storage("0", 1, type_name="load"), 0, (1,), (1,))
    path = write_zip(tmp_path / "bad.pth", obj, [("0", 1, b"\0" * 4)])
    assert_refused(path, "asks for torch.load")


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.pth.tar", "cannot read")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert_refused(path, "empty file")


def test_png_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(40))
    assert_refused(path, "not a PyTorch checkpoint")


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert_refused(path, "magic number")


def test_tar_format_refused(tmp_path):
    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("sys_info")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert_refused(path, "tar-format")


def test_bad_zip(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    assert_refused(path, "zip archive")


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("photos/cat.jpg", b"meow")
    assert_refused(path, "data.pkl")


def test_zip_member_with_dotdot_refused(tmp_path):
    path = write_zip(tmp_path / "x.pth", {"epoch": 1}, extra=[("archive/../../etc/passwd", b"x")])
    assert_refused(path, "escapes the archive")


def test_zip_ignores_unreferenced_members(tmp_path):
    path = write_zip(tmp_path / "x.pth", {"epoch": 1},
                     extra=[("archive/data/99", b"junk"), ("archive/.data/serialization_id", b"1")])
    assert read_checkpoint(path) == {"epoch": 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_huge_declared_storage_refused_quickly(tmp_path, fmt):
    numel = 10**12
    obj = {"w": tensor(Storage("0", numel), 0, (numel,), (1,))}
    path = tmp_path / "huge.pth"
    if fmt == "legacy":
        write_legacy(path, obj, [("0", numel, bytes(64))])
    else:
        write_zip(path, obj, [("0", numel, bytes(64))])
    start = time.perf_counter()
    assert_refused(path, "truncated", str(4 * numel))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("offset,size,stride,shown", [
    (0, (3, 4), (4, 1), "(3, 4)"),        # needs 12 elements, storage has 10
    (8, (4,), (1,), "(4,)"),              # offset pushes the end out
    (0, (2, 2), (9, 1), "(2, 2)"),        # stride jumps out
    (11, (), (), "()"),                   # scalar past the end
])
def test_out_of_bounds_views_refused(tmp_path, fmt, offset, size, stride, shown):
    obj = {"w": tensor(Storage("0", 10), offset, size, stride)}
    path = write_format(fmt, tmp_path / "oob.pth", obj, [("0", 10, bytes(40))])
    assert_refused(path, f"tensor of shape {shown}", "storage '0'")


@pytest.mark.parametrize("fmt", FORMATS)
def test_expansion_bomb_refused(tmp_path, fmt):
    obj = {"w": tensor(Storage("0", 1), 0, (10**6, 10**6), (0, 0))}
    path = write_format(fmt, tmp_path / "bomb.pth", obj, [("0", 1, bytes(4))])
    assert_refused(path, "expand")


def test_missing_storage_key(tmp_path):
    obj = {"w": tensor(Storage("7", 2), 0, (2,), (1,))}
    zipped = write_zip(tmp_path / "z.pth", obj, [("0", 2, bytes(8))])
    assert_refused(zipped, "missing storage key '7'")
    assert_refused(write_legacy(tmp_path / "l.pth", obj, [("0", 2, bytes(8))]), "'7'")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_handmade_file(tmp_path, fmt):
    obj = {"w": tensor(Storage("0", 100), 0, (100,), (1,))}
    path = write_format(fmt, tmp_path / "t.pth", obj, [("0", 100, bytes(400))])
    data = path.read_bytes()
    for cut in (len(data) - 50, len(data) // 2, 20, 3):
        path.write_bytes(data[:cut])
        assert_refused(path)


def test_handmade_shared_storage_without_torch(tmp_path):
    raw = np.arange(12, dtype="<f4").tobytes()
    store = Storage("0", 12)
    obj = collections.OrderedDict(
        full=tensor(store, 0, (3, 4), (4, 1)),
        col=tensor(store, 1, (3,), (4,)),
        tail=tensor(store, 10, (2,), (1,)))
    expected = np.arange(12, dtype=np.float32).reshape(3, 4)
    for fmt in FORMATS:
        out = read_checkpoint(write_format(fmt, tmp_path / f"s_{fmt}.pth", obj, [("0", 12, raw)]))
        assert type(out) is collections.OrderedDict
        np.testing.assert_array_equal(out["full"], expected)
        np.testing.assert_array_equal(out["col"], expected[:, 1])
        np.testing.assert_array_equal(out["tail"], [10, 11])
        assert all(a.flags.owndata and a.flags.c_contiguous for a in out.values())


def test_old_storage_views_and_rebuild_forms(tmp_path):
    # storage slices (PyTorch 0.x legacy files), _rebuild_tensor (0.4) and parameters
    raw = np.arange(12, dtype="<i8").tobytes()
    sliced = Storage("0", 12, "LongStorage", view=("1", 4, 6))  # elements 4..9
    obj = {
        "v1": Call(Global("torch._utils", "_rebuild_tensor"), sliced, 1, (3,), (2,)),
        "param": Call(Global("torch._utils", "_rebuild_parameter"),
                      tensor(Storage("0", 12, "LongStorage"), 0, (2, 2), (1, 2)), True,
                      Call(Global("collections", "OrderedDict"))),
    }
    out = read_checkpoint(write_legacy(tmp_path / "old.pth", obj, [("0", 12, raw)]))
    np.testing.assert_array_equal(out["v1"], [5, 7, 9])
    np.testing.assert_array_equal(out["param"], [[0, 2], [1, 3]])
    assert out["v1"].dtype == np.int64

    outside = {"v": tensor(Storage("0", 12, "LongStorage", view=("1", 10, 6)), 0, (1,), (1,))}
    assert_refused(write_legacy(tmp_path / "bad.pth", outside, [("0", 12, raw)]), "storage view")
    # a slice cannot widen what the tensor may reach
    beyond = {"v": tensor(sliced, 5, (2,), (1,))}
    path = write_legacy(tmp_path / "bad2.pth", beyond, [("0", 12, raw)])
    assert_refused(path, "tensor of shape (2,)")


def test_big_endian_files(tmp_path):
    values = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    raw = values.astype(">f4").tobytes()
    obj = {"w": tensor(Storage("0", 3), 0, (3,), (1,))}
    out = read_checkpoint(write_zip(tmp_path / "z.pth", obj, [("0", 3, raw)], byteorder="big"))
    np.testing.assert_array_equal(out["w"], values)
    assert out["w"].dtype == np.float32 and out["w"].dtype.isnative
    path = write_legacy(tmp_path / "l.pth", obj, [("0", 3, raw)], little_endian=False)
    out = read_checkpoint(path)
    np.testing.assert_array_equal(out["w"], values)


@pytest.mark.parametrize("body,fragment", [
    (b"\x80\x02]r\xff\xff\xff\xff.", "memo index 4294967295"),          # LONG_BINPUT 2**32-1
    (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b".", "truncated"),   # 1 TiB bytearray
    (b"\x80\x02X\xff\xff\xff\x7f", "truncated"),                       # 2 GiB string, 0 bytes
])
def test_forged_pickle_lengths_refused_before_allocating(tmp_path, body, fragment):
    path = tmp_path / "forged.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", body)
    start = time.perf_counter()
    assert_refused(path, fragment)
    legacy = tmp_path / "forged_legacy.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + body)
    assert_refused(legacy, fragment)
    assert time.perf_counter() - start < 1.0


def test_stand_ins_cannot_be_modified_by_build(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD with a state: must be refused
    body = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}b."
    path = write_zip(tmp_path / "b.pth", None)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", body)
    assert_refused(path, "modify")


def test_load_with_torch_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(CheckpointError, match="needs PyTorch: pip install torch"):
        load_with_torch(tmp_path / "x.pth")


def test_reader_does_not_import_torch(tmp_path):
    path = write_legacy(tmp_path / "l.pth", {"w": tensor(Storage("0", 1), 0, (1,), (1,))},
                        [("0", 1, bytes(4))])
    code = ("import sys, torch_file as c; c.read_checkpoint(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True)


# ---- round trips through real torch.save ----

def save(torch, obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def expected_array(torch, t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def assert_same(got, want):
    """Deep comparison; arrays must match dtype/shape/values and own C memory."""
    assert type(got) is type(want), (type(got), type(want))
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.c_contiguous and got.flags.owndata
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    else:
        assert got == want


def all_dtype_state(torch):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=gen)
    state = collections.OrderedDict()
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        state[str(dtype)] = base.to(dtype)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        state[str(dtype)] = (base * 40).to(dtype)
    state["bool"] = base > 0
    state["scalar"] = torch.tensor(2.5)
    state["long_scalar"] = torch.tensor(7)
    state["empty"] = torch.zeros(0, 4)
    return state


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_every_dtype(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    state = all_dtype_state(torch)
    out = read_checkpoint(save(torch, state, tmp_path / "s.pth", fmt))
    assert type(out) is collections.OrderedDict and list(out) == list(state)
    for key, t in state.items():
        assert_same(out[key], expected_array(torch, t))


def test_roundtrip_uint16_via_untyped_storage(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.tensor([1, 2, 65535]).to(torch.uint16)
    out = read_checkpoint(save(torch, {"u": t, "d": torch.float32}, tmp_path / "u.pth", "zip"))
    assert_same(out["u"], np.array([1, 2, 65535], dtype=np.uint16))
    assert repr(out["d"]) == "torch.float32"


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_parameters(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    plain = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    with_attr = torch.nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)
    with_attr.note = "extra python state"  # saved through _rebuild_parameter_with_state
    out = read_checkpoint(save(torch, {"a": plain, "b": with_attr}, tmp_path / "p.pth", fmt))
    assert_same(out["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert_same(out["b"], np.ones(2))


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_non_contiguous_views(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = collections.OrderedDict(
        base=base,
        transposed=base.t(),
        offset_slice=base[2:5, 3:8],
        every_other=base[::2, 1::3],
        row=base[4],
        shared_int=torch.arange(10)[3:],
        expanded=torch.arange(3.0).expand(4, 3),
    )
    out = read_checkpoint(save(torch, views, tmp_path / "v.pth", fmt))
    for key, t in views.items():
        assert_same(out[key], expected_array(torch, t.contiguous()))


def training_checkpoint(torch):
    torch.manual_seed(0)
    generator = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    kp_detector = torch.nn.Linear(5, 2)
    optimizer = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    generator(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    return {
        "generator": generator.state_dict(),
        "kp_detector": kp_detector.state_dict(),
        "optimizer_generator": optimizer.state_dict(),
        "epoch": 3,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_training_checkpoint_matches_load_with_torch(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    ckpt = training_checkpoint(torch)
    path = save(torch, ckpt, tmp_path / "vox-cpk.pth.tar", fmt)
    out = read_checkpoint(path)
    assert_same(out, load_with_torch(path))
    assert type(out["generator"]) is collections.OrderedDict
    assert out["epoch"] == 3
    assert_same(out["generator"]["0.weight"], expected_array(torch, ckpt["generator"]["0.weight"]))
    assert out["generator"]["1.num_batches_tracked"].dtype == np.int64
    adam = out["optimizer_generator"]
    assert adam["param_groups"][0]["betas"] == (0.5, 0.999)
    assert set(adam["state"][0]) >= {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_torch_file(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    path = save(torch, all_dtype_state(torch), tmp_path / "t.pth", fmt)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) - 100, len(data) // 2, 200, 30, 1):
        path.write_bytes(data[:cut])
        assert_refused(path)


def test_load_with_torch_errors_are_one_line(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(CheckpointError) as info:
        load_with_torch(path)
    assert str(info.value).startswith(str(path) + ": torch.load failed")
    assert "\n" not in str(info.value)


def test_a_bug_in_the_reader_surfaces_as_a_bug_not_as_a_corrupt_file(monkeypatch):
    # Only the pickle machine (fed by the file) turns TypeError/KeyError/AttributeError into "corrupt";
    # the same exception from the reader's own code must reach the test as itself.
    import torch_file

    def broken_catalog(*args):
        raise KeyError("a bug in the reader")

    monkeypatch.setattr(torch_file._LegacyCatalog, "locate", broken_catalog)
    fixture = ROOT / "tests" / "fixtures" / "vox" / "legacy.pth.tar"
    with pytest.raises(KeyError, match="a bug in the reader"):
        read_checkpoint(fixture)


# ---- reading only the kept entries (read_checkpoint(path, keep=...)) ----

KEEP = ("kp_detector", "generator")
ADAM_NUMEL = 1 << 18  # 1 MiB per optimizer tensor: large next to the model, as in the published files


def garbage(seed, nbytes):
    """Bytes that are not the values of any real tensor (NaNs and all), and unique in the file."""
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


def training_layout():
    """(markers, storages, skipped keys): a forged FOMM training checkpoint, small model, big optimizer."""
    model = np.arange(12, dtype="<f4")
    obj = {
        "kp_detector": collections.OrderedDict(
            [("kp.weight", tensor(Storage("k", 4), 0, (2, 2), (2, 1)))]),
        "generator": collections.OrderedDict([
            ("final.weight", tensor(Storage("g", 6), 0, (2, 3), (3, 1))),
            ("final.bias", tensor(Storage("g", 6), 4, (2,), (1,))),  # a view sharing the storage
        ]),
        "discriminator": {"d.weight": tensor(Storage("d", 1024), 0, (1024,), (1,))},
        "optimizer_generator": {
            "state": {0: {"step": 1, "exp_avg": tensor(Storage("adam", ADAM_NUMEL), 0, (ADAM_NUMEL,), (1,)),
                          "exp_avg_sq": tensor(Storage("adam2", ADAM_NUMEL), 0, (ADAM_NUMEL,), (1,))}},
            "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0]}],
        },
        "epoch": 3,
    }
    storages = [("k", 4, model[:4].tobytes()), ("g", 6, model[4:10].tobytes()),
                ("d", 1024, garbage(1, 4096)),
                ("adam", ADAM_NUMEL, garbage(2, 4 * ADAM_NUMEL)), ("adam2", ADAM_NUMEL, garbage(3, 4 * ADAM_NUMEL))]
    return obj, storages, ("d", "adam", "adam2")


class RecordingFile:
    """The reader's file, noting every byte range it reads (read, readinto, readline)."""

    def __init__(self, file, ranges):
        self._file, self.ranges = file, ranges

    def _noted(self, start, count):
        if count:
            self.ranges.append((start, start + count))

    def read(self, *args):
        start = self._file.tell()
        data = self._file.read(*args)
        self._noted(start, len(data))
        return data

    def readinto(self, buffer):
        start = self._file.tell()
        count = self._file.readinto(buffer)
        self._noted(start, count or 0)
        return count

    def readline(self, *args):
        start = self._file.tell()
        line = self._file.readline(*args)
        self._noted(start, len(line))
        return line

    def __getattr__(self, name):  # seek, tell, fileno, seekable: as they are
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@pytest.fixture
def read_ranges(monkeypatch):
    """The byte ranges read_checkpoint reads, file by file, through the module's own open()."""
    import builtins
    import torch_file

    ranges = []
    monkeypatch.setattr(torch_file, "open", lambda path, mode: RecordingFile(builtins.open(path, mode), ranges),
                        raising=False)
    return ranges


def data_regions(path, storages, keys):
    """(start, end) of the raw bytes of the named storages in the file (stored as they are in both formats)."""
    data = path.read_bytes()
    regions = []
    for key, _, raw in storages:
        if key in keys:
            start = data.find(raw)
            assert start > 0 and data.find(raw, start + 1) == -1
            regions.append((start, start + len(raw)))
    return regions


def overlapping(ranges, regions):
    return [(r, g) for r in ranges for g in regions if r[0] < g[1] and g[0] < r[1]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_keep_never_reads_the_skipped_storages(tmp_path, read_ranges, fmt):
    obj, storages, skipped = training_layout()
    path = write_format(fmt, tmp_path / "vox-cpk.pth.tar", obj, storages)
    regions = data_regions(path, storages, skipped)

    out = read_checkpoint(path, keep=KEEP)
    assert list(out) == ["kp_detector", "generator"] and type(out) is dict
    np.testing.assert_array_equal(out["kp_detector"]["kp.weight"], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(out["generator"]["final.weight"], [[4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(out["generator"]["final.bias"], [8, 9])
    assert all(a.flags.owndata and a.flags.c_contiguous for s in out.values() for a in s.values())
    assert not overlapping(read_ranges, regions), "read skipped storage data"
    # pickles, headers, the zip directory and the model: a few kilobytes of a 2 MiB file
    assert sum(end - start for start, end in read_ranges) < 16 << 10

    # the recorder sees them when everything is read
    read_ranges.clear()
    full = read_checkpoint(path)
    assert len(overlapping(read_ranges, regions)) >= len(regions)
    assert full["optimizer_generator"]["state"][0]["exp_avg"].tobytes() == storages[3][2]
    for section in KEEP:
        for key, value in out[section].items():
            np.testing.assert_array_equal(value, full[section][key])


@pytest.mark.parametrize("fmt", FORMATS)
def test_keep_loads_the_model_when_skipped_storages_are_garbage(tmp_path, fmt):
    import checkpoint_loader

    obj, storages, skipped = training_layout()
    path = write_format(fmt, tmp_path / "vox-cpk.pth.tar", obj, storages)
    pristine = checkpoint_loader.load_state_dicts(path)
    # Overwrite the optimizer's and discriminator's bytes in place: in a zip their CRCs no longer match.
    data = bytearray(path.read_bytes())
    regions = data_regions(path, storages, skipped)
    for number, (start, end) in enumerate(regions):
        data[start:end] = garbage(100 + number, end - start)
    path.write_bytes(bytes(data))

    loaded = checkpoint_loader.load_state_dicts(path)
    for section in KEEP:
        assert list(loaded[section]) == list(pristine[section])
        for key, value in pristine[section].items():
            np.testing.assert_array_equal(loaded[section][key], value)
    if fmt == "zip":
        assert_refused(path, "Bad CRC-32", "archive/data/d")  # reading everything finds the damage
    else:  # nothing to check a legacy file's bytes against: reading everything gives the garbage
        start, end = regions[0]
        assert read_checkpoint(path)["discriminator"]["d.weight"].tobytes() == bytes(data[start:end])


def test_keep_still_checks_the_crc_of_what_it_reads(tmp_path):
    obj, storages, _ = training_layout()
    path = write_zip(tmp_path / "vox-cpk.pth.tar", obj, storages)
    data = bytearray(path.read_bytes())
    (start, _), = data_regions(path, storages, ("g",))
    data[start + 5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="Bad CRC-32 for file 'archive/data/g'"):
        read_checkpoint(path, keep=KEEP)


# name -> (value planted as an optimizer entry, extra storages, fragment): each refused with keep
# as without, though its tensors are never read
SKIPPED_BUT_CHECKED = {
    "declares 10^12 elements": (tensor(Storage("big", 10**12), 0, (10**12,), (1,)), [("big", 10**12, bytes(64))],
                                "4000000000000 bytes"),
    "view past its storage": (tensor(Storage("adam", ADAM_NUMEL), 1, (ADAM_NUMEL,), (1,)), [], "reaches element"),
    "expansion bomb": (tensor(Storage("adam", ADAM_NUMEL), 0, (10**6, 10**6), (0, 0)), [], "expand"),
    "1000 stride-0 views": ([tensor(Storage("one", 1), 0, (1 << 24,), (0,)) for _ in range(1000)],
                            [("one", 1, bytes(4))], "more than a file of its size can hold"),
    "missing storage": (tensor(Storage("7", 2), 0, (2,), (1,)), [], "'7'"),
    "os.system": (Call(Global("os", "system"), "true"), [], "asks for os.system"),
    "tensor as a dict key": ({tensor(Storage("adam", ADAM_NUMEL), 0, (2,), (1,)): 1}, [], "unhashable"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(SKIPPED_BUT_CHECKED))
def test_keep_still_refuses_what_it_skips(tmp_path, fmt, name):
    value, extra, fragment = SKIPPED_BUT_CHECKED[name]
    obj, storages, _ = training_layout()
    obj["optimizer_generator"]["state"][1] = {"exp_avg": value}
    path = write_format(fmt, tmp_path / "bad.pth.tar", obj, storages + extra)
    start = time.perf_counter()
    for keep in (None, KEEP):
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path, keep=keep)
        assert fragment in str(info.value) and str(info.value).startswith(f"{path}: ")
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_keep_still_finds_a_truncated_skipped_storage(tmp_path, fmt):
    obj, storages, _ = training_layout()
    path = write_format(fmt, tmp_path / "cut.pth.tar", obj, storages)
    data = path.read_bytes()
    (start, end), = data_regions(path, storages, ("adam2",))
    path.write_bytes(data[:(start + end) // 2])  # the download stopped inside the optimizer state
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path, keep=KEEP)


@pytest.mark.parametrize("fmt", FORMATS)
def test_keep_on_a_torch_training_checkpoint(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    ckpt = training_checkpoint(torch)
    # optimizer state on a parameter's storage: read for the kept entry, harmless for the skipped one
    ckpt["optimizer_generator"]["state"][0]["alias"] = ckpt["generator"]["0.weight"]
    path = save(torch, ckpt, tmp_path / "vox-cpk.pth.tar", fmt)
    full = read_checkpoint(path)
    kept = read_checkpoint(path, keep=("generator", "kp_detector", "epoch", "absent"))
    assert list(kept) == ["generator", "kp_detector", "epoch"]
    assert_same(kept, {key: full[key] for key in kept})
    assert read_checkpoint(path, keep=()) == {}
    # a top level that is not a dict has no entries to choose from: read whole
    listed = save(torch, [ckpt["generator"]], tmp_path / "list.pth", fmt)
    assert_same(read_checkpoint(listed, keep=KEEP), read_checkpoint(listed))

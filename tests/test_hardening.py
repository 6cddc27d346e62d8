"""Hardening corpus (issue 6): hostile checkpoints, broken media, bad configs and interrupted runs.

Every case is generated here (no binary blobs) and goes through the CLI: `run.main([...])` in this
process for the bulk, real `python run.py` processes for exit codes and Ctrl-C. A case ends in one
of two ways:

* refused: exit code 1, exactly one line on stderr, no traceback, nothing left in the output folder
  (no output, no temporary file);
* converted: inputs the spec says to convert (grayscale, RGBA, 16-bit, palette, tiny or huge
  images) give a complete output and no temporary file.

Checkpoint payloads also carry canaries -- a file the payload would create and an environment
variable it would set -- which must stay untouched: loading a checkpoint never runs code.

`python tests/corpus_report.py` runs this module and prints the table of every case.
"""
import collections
import contextlib
import copyreg
import dataclasses
import functools
import io
import json
import os
import pickle
import pickletools
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
import yaml
from PIL import Image

import torch_file
import run
from conftest import REPO, load_fixture, stderr_lines
from forge import (FORMATS, Build, Call, Global, Raw, Storage, forge_tensors, insert_after, tensor, write_format,
                   write_zip)

FIXTURE = "zero_order"  # the smallest fixture model: it builds and runs fastest
OTHER_MODEL = "vox"  # a first-order model whose checkpoint does not fit FIXTURE's config
CANARY_ENV = "FOMM_HARDENING_CANARY"
REPORT_ENV = "CORPUS_REPORT"  # file the case table is written to (tests/corpus_report.py sets it)


# ----------------------------------------------------------------------------
# 1. Running a case and recording what happened
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """What one CLI run did: the row of the corpus table."""
    group: str
    case: str
    code: object  # exit code, or the name of the exception that escaped run.main
    lines: list  # stderr lines, progress-bar updates left out
    leftovers: list  # names left in the output folder
    canary_untouched: bool
    stdout: str = ""  # its last line: what a successful run reports

    @property
    def traceback(self):
        """An exception escaped, or Python printed one (also from a __del__: "Exception ignored in")."""
        return not isinstance(self.code, int) or any(
            "Traceback" in line or "Exception ignored" in line for line in self.lines)

    @property
    def message(self):
        return self.lines[-1] if self.lines else ""

    @property
    def refused_cleanly(self):
        return (self.code == 1 and len(self.lines) == 1 and not self.traceback and not self.leftovers
                and self.canary_untouched)


RESULTS = []


class Corpus:
    """One test's workspace: input files, an output folder, a canary, and a CLI runner.

    The driving video defaults to a GIF of the fixture's frames: it decodes in-process, where
    an mp4 costs an ffmpeg start per case, and that adds up over hundreds of cases.
    """

    def __init__(self, tmp_path, capsys, driving_gif):
        self.dir = tmp_path
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.canary = tmp_path / "canary"
        self.fixture = load_fixture(FIXTURE)
        self.driving = driving_gif
        self._capsys = capsys

    def path(self, name, data=None):
        """A path in the workspace; with `data` (bytes), the file is written first."""
        path = self.dir / name
        if data is not None:
            path.write_bytes(data)
        return path

    def canary_untouched(self):
        return not self.canary.exists() and CANARY_ENV not in os.environ

    def args(self, checkpoint=None, config=None, source=None, driving=None, output=None, extra=()):
        fx = self.fixture
        return ["--config", str(config or fx.config_path), "--checkpoint", str(checkpoint or fx.checkpoint()),
                "--source_image", str(source or fx.dir / "source.png"),
                "--driving_video", str(driving or self.driving),
                "--output", str(output or self.out / "result.mp4"), "--frames", "1", *extra]

    def run(self, group, case, **inputs):
        """run.main on the fixture's inputs with `inputs` swapped in; the outcome is recorded."""
        self._capsys.readouterr()
        try:
            code = run.main(self.args(**inputs))
        except Exception as err:  # a crash is what the corpus looks for: record it, the test then fails
            code = type(err).__name__
        captured = self._capsys.readouterr()
        outcome = Outcome(group, case, code, stderr_lines(captured.err), sorted(p.name for p in self.out.iterdir()),
                          self.canary_untouched(), (captured.out.strip().splitlines() or [""])[-1])
        RESULTS.append(outcome)
        return outcome


def assert_refused(outcome, *fragments):
    """Exit 1, one line on stderr, no traceback, nothing written, canary untouched."""
    assert outcome.code == 1, outcome
    assert len(outcome.lines) == 1 and not outcome.traceback, outcome.lines
    assert outcome.message.startswith("error: "), outcome.message
    for fragment in fragments:
        assert fragment in outcome.message, outcome.message
    assert outcome.leftovers == [], outcome.leftovers
    assert outcome.canary_untouched, "the payload ran"


def assert_converted(outcome, output):
    """Exit 0, the complete output in place, no temporary file beside it."""
    assert outcome.code == 0 and not outcome.traceback, outcome
    assert Path(output).is_file() and Path(output).stat().st_size > 0
    assert outcome.leftovers == [Path(output).name], outcome.leftovers


@pytest.fixture(scope="module")
def driving_gif(tmp_path_factory):
    """The fixture's driving video as a GIF, same frames and frame rate."""
    mp4 = load_fixture(FIXTURE).dir / "driving.mp4"
    path = tmp_path_factory.mktemp("driving") / "driving.gif"
    reader = imageio.get_reader(mp4)
    imageio.mimwrite(path, [frame for frame in reader], duration=1000 / reader.get_meta_data()["fps"], loop=0)
    return path


@pytest.fixture
def corpus(tmp_path, capsys, driving_gif):
    yield Corpus(tmp_path, capsys, driving_gif)
    os.environ.pop(CANARY_ENV, None)  # a payload that ran must not poison the next case


@pytest.fixture(scope="module", autouse=True)
def corpus_report():
    """Write the table of every case to $CORPUS_REPORT once the module is done."""
    start = time.perf_counter()
    yield
    path = os.environ.get(REPORT_ENV)
    if path:
        Path(path).write_text(render_report(RESULTS, time.perf_counter() - start), encoding="utf-8")


def render_report(outcomes, seconds):
    """A markdown table, case -> exit code, message, canary untouched; then the counts."""
    rows = ["| group | case | exit | message (stderr; stdout when it succeeded) | canary untouched |",
            "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        message = re.sub(r"/\S*?/pytest-of-[^/]+/pytest-\d+/[^/\s:']+", "<tmp>", o.message or o.stdout)
        message = message[:150].replace("|", "\\|")
        rows.append(f"| {o.group} | {o.case} | {o.code} | {message} | {'yes' if o.canary_untouched else 'NO'} |")
    tried = len(outcomes)
    refused = sum(o.refused_cleanly for o in outcomes)
    succeeded = sum(o.code == 0 and not o.traceback for o in outcomes)
    interrupted = sum(o.code == 130 and not o.traceback for o in outcomes)
    tracebacks = sum(o.traceback for o in outcomes)
    rows.append("")
    rows.append(f"cases tried: {tried}; refused cleanly: {refused}; converted/accepted (exit 0): {succeeded}; "
                f"interrupted cleanly (exit 130): {interrupted}; tracebacks: {tracebacks}; "
                f"canaries touched: {sum(not o.canary_untouched for o in outcomes)}; "
                f"time: {seconds:.1f} s")
    rows += [f"traceback: {o.group} / {o.case} ({o.code})" for o in outcomes if o.traceback]
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------
# 2. A valid checkpoint, forged by hand, to plant payloads in
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def valid_markers():
    """(markers, storages): the fixture checkpoint's generator and kp_detector as hand-made tensors."""
    real = torch_file.read_checkpoint(load_fixture(FIXTURE).checkpoint())
    return forge_tensors({"generator": real["generator"], "kp_detector": real["kp_detector"], "epoch": 1})


def middle_key(state):
    """A key in the middle of a state dict, so that a payload sits between real tensors."""
    keys = list(state)
    return keys[len(keys) // 2]


def write_with(fmt, path, section, key, value, storages=None, replace=False):
    """Write the valid checkpoint with `value` planted (or replacing `key`) in one state dict."""
    markers, valid_storages = valid_markers()
    state = markers[section]
    if replace:
        planted = collections.OrderedDict((k, value if k == key else v) for k, v in state.items())
    else:
        planted = insert_after(state, middle_key(state), key, value)
    return write_format(fmt, path, {**markers, section: planted},
                        valid_storages if storages is None else storages)


def test_forged_valid_checkpoint_reads_like_the_real_one(tmp_path):
    # The corpus plants its payloads in this file, so it must be a valid checkpoint to begin with.
    real = torch_file.read_checkpoint(load_fixture(FIXTURE).checkpoint())
    for fmt in FORMATS:
        markers, storages = valid_markers()
        forged = torch_file.read_checkpoint(write_format(fmt, tmp_path / f"{fmt}.pth", markers, storages))
        for section in ("generator", "kp_detector"):
            assert list(forged[section]) == list(real[section])
            for key, value in real[section].items():
                np.testing.assert_array_equal(forged[section][key], value)


# ----------------------------------------------------------------------------
# 3. Pickles that reach for code, planted inside a valid state dict
# ----------------------------------------------------------------------------

def unicode_op(text):
    """BINUNICODE: push a str."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def python_code(canary):
    """Code that, if ever run, creates the canary file and sets the canary variable."""
    return f"open({str(canary)!r}, 'w').close(); __import__('os').environ[{CANARY_ENV!r}] = '1'"


class ReduceExploit:
    """The classic pickle exploit: __reduce__ makes unpickling call os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class SetstateExploit:
    """Runs code from __setstate__, which pickle calls on BUILD."""

    def __init__(self, code):
        self.code = code

    def __setstate__(self, state):
        exec(state["code"])  # what a malicious class would do; must never run


EXT_CODE = 0xF7  # an extension code the test registers for ("os", "system")

# name -> (payload made from the canary path, fragment the refusal must contain)
PAYLOADS = {
    "os.system": (lambda c: Call(Global("os", "system"), f"touch {c}"), "asks for os.system"),
    "posix.system": (lambda c: Call(Global("posix", "system"), f"touch {c}"), "asks for posix.system"),
    "nt.system": (lambda c: Call(Global("nt", "system"), f"touch {c}"), "asks for nt.system"),
    "subprocess.Popen": (lambda c: Call(Global("subprocess", "Popen"), ["touch", str(c)]),
                         "asks for subprocess.Popen"),
    "subprocess.check_output": (lambda c: Call(Global("subprocess", "check_output"), ["touch", str(c)]),
                                "asks for subprocess.check_output"),
    "builtins.eval": (lambda c: Call(Global("builtins", "eval"), f"exec({python_code(c)!r})"),
                      "asks for builtins.eval"),
    "builtins.exec": (lambda c: Call(Global("builtins", "exec"), python_code(c)), "asks for builtins.exec"),
    "__builtin__.eval (protocol-2 spelling)": (lambda c: Call(Global("__builtin__", "eval"), "1"),
                                               "asks for __builtin__.eval"),
    "builtins.getattr(__import__('os'), 'system')": (
        lambda c: Call(Call(Global("builtins", "getattr"), Call(Global("builtins", "__import__"), "os"), "system"),
                       f"touch {c}"), "asks for builtins.getattr"),
    "builtins.__import__": (lambda c: Call(Global("builtins", "__import__"), "os"), "asks for builtins.__import__"),
    "builtins.open (creates the canary)": (lambda c: Call(Global("builtins", "open"), str(c), "w"),
                                           "asks for builtins.open"),
    "builtins.compile": (lambda c: Call(Global("builtins", "compile"), python_code(c), "x", "exec"),
                         "asks for builtins.compile"),
    "torch.load": (lambda c: Call(Global("torch", "load"), str(c)), "asks for torch.load"),
    "torch.serialization.load": (lambda c: Call(Global("torch.serialization", "load"), str(c)),
                                 "asks for torch.serialization.load"),
    "numpy.load(allow_pickle)": (lambda c: Call(Global("numpy", "load"), str(c), None, True),
                                 "asks for numpy.load"),
    "numpy array pickle (_reconstruct)": (
        lambda c: Call(Global("numpy.core.multiarray", "_reconstruct"), 0, (0,), b"b"),
        "asks for numpy.core.multiarray._reconstruct"),
    "pickle.loads of a nested exploit": (lambda c: Call(Global("pickle", "loads"),
                                                        pickle.dumps(ReduceExploit(f"touch {c}"))),
                                         "asks for pickle.loads"),
    "importlib.import_module": (lambda c: Call(Global("importlib", "import_module"), "os"),
                                "asks for importlib.import_module"),
    "runpy.run_path": (lambda c: Call(Global("runpy", "run_path"), str(c)), "asks for runpy.run_path"),
    "functools.partial(os.system)": (
        lambda c: Call(Call(Global("functools", "partial"), Global("os", "system"), f"touch {c}")),
        "asks for functools.partial"),
    "operator.methodcaller": (lambda c: Call(Global("operator", "methodcaller"), "system"),
                              "asks for operator.methodcaller"),
    "copyreg._reconstructor": (lambda c: Call(Global("copyreg", "_reconstructor"), Global("os", "system")),
                               "asks for copyreg._reconstructor"),
    "ctypes.CDLL": (lambda c: Call(Global("ctypes", "CDLL"), "libc.so.6"), "asks for ctypes.CDLL"),
    "dotted name: OrderedDict.__class__": (
        lambda c: Call(Global("collections", "OrderedDict.__class__"), "X", (), {}),
        "asks for collections.OrderedDict.__class__"),
    "dotted name: _rebuild_tensor_v2.__globals__": (
        lambda c: Global("torch._utils", "_rebuild_tensor_v2.__globals__"),
        "asks for torch._utils._rebuild_tensor_v2.__globals__"),
    "real object with __reduce__": (lambda c: ReduceExploit(f"touch {c}"), "asks for posix.system"),
    "real object with __setstate__": (lambda c: SetstateExploit(python_code(c)),
                                      "asks for test_hardening.SetstateExploit"),
    "BUILD on a loader stand-in": (lambda c: Build(Global("torch._utils", "_rebuild_tensor_v2"), {}),
                                   "tries to modify"),
    "BUILD sets OrderedDict.__init__": (
        lambda c: Build(Global("collections", "OrderedDict"), (None, {"__init__": Global("os", "system")})),
        "asks for os.system"),
    "BUILD sets OrderedDict.__init__ to an allowed callable": (
        lambda c: Build(Global("collections", "OrderedDict"), (None, {"__init__": Global("builtins", "set")})),
        "corrupt checkpoint"),
    "BUILD on a tensor": (lambda c: Build(existing_tensor("generator"), {"__class__": Global("builtins", "set")}),
                          "corrupt checkpoint"),
    "INST opcode (protocol 0)": (lambda c: Raw(b"(" + unicode_op(f"touch {c}") + b"ios\nsystem\n"),
                                 "asks for os.system"),
    "OBJ opcode": (lambda c: Raw(b"(cos\nsystem\n" + unicode_op(f"touch {c}") + b"o"), "asks for os.system"),
    "STACK_GLOBAL opcode (protocol 4)": (
        lambda c: Raw(unicode_op("os") + unicode_op("system") + b"\x93" + unicode_op(f"touch {c}") + b"\x85R"),
        "asks for os.system"),
    "EXT1 code registered for os.system": (
        lambda c: Raw(b"\x82" + bytes([EXT_CODE]) + unicode_op(f"touch {c}") + b"\x85R"), "asks for os.system"),
    "persistent id with os.system as storage type": (
        lambda c: Raw(b"(" + unicode_op("storage") + b"cos\nsystem\n" + unicode_op("0")
                      + unicode_op("cpu") + b"K\x01tQ"), "asks for os.system"),
    "persistent id that is not a storage": (
        lambda c: Raw(b"(" + unicode_op("module") + unicode_op("os") + unicode_op("system") + b"tQ"),
        "unexpected persistent id"),
}


@pytest.fixture
def ext_registered(monkeypatch):
    """Register EXT_CODE -> os.system, as a hostile process environment might have it."""
    monkeypatch.setitem(copyreg._extension_registry, ("os", "system"), EXT_CODE)
    monkeypatch.setitem(copyreg._inverted_registry, EXT_CODE, ("os", "system"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_code_payload_in_state_dict_is_refused_and_never_runs(corpus, ext_registered, name, fmt):
    build, fragment = PAYLOADS[name]
    path = write_with(fmt, corpus.path(f"evil.{fmt}.pth.tar"), "generator", "evil", build(corpus.canary))
    outcome = corpus.run("code payload", f"{name} ({fmt})", checkpoint=path)
    assert_refused(outcome, fragment)


def test_refused_module_is_never_imported(corpus, monkeypatch):
    # Refusing os.system proves nothing if the loader imported the module first: use one with a canary.
    corpus.path("fomm_hardening_canary.py", f"open({str(corpus.canary)!r}, 'w').close()\nboom = print\n".encode())
    monkeypatch.syspath_prepend(str(corpus.dir))
    path = write_with("zip", corpus.path("evil.pth.tar"), "kp_detector", "evil",
                      Call(Global("fomm_hardening_canary", "boom"), "hi"))
    assert_refused(corpus.run("code payload", "module with import side effect (zip)", checkpoint=path),
                   "fomm_hardening_canary.boom")
    assert "fomm_hardening_canary" not in sys.modules


# ----------------------------------------------------------------------------
# 4. Tensors and storages that lie about their size, type or place
# ----------------------------------------------------------------------------

def first_tensor(section="kp_detector"):
    """(key, storage key, element count) of the first tensor of a forged state dict."""
    markers, _ = valid_markers()
    key = next(iter(markers[section]))
    storage = markers[section][key].args[0]
    return key, storage.key, storage.numel


def existing_tensor(section):
    """Another tensor on the storage of the first tensor of `section` (shared, as views are)."""
    _, storage_key, numel = first_tensor(section)
    return tensor(Storage(storage_key, numel), 0, (numel,), (1,))


def view(offset=0, size=None, stride=None, type_name="FloatStorage"):
    """A tensor replacing the first kp_detector tensor, on its storage, with the given view."""
    _, storage_key, numel = first_tensor()
    return tensor(Storage(storage_key, numel, type_name), offset, size or (numel,), stride or (1,))


def rebuild_v3(dtype):
    """_rebuild_tensor_v3 (untyped storage + explicit dtype) on the first kp_detector tensor's bytes."""
    _, storage_key, numel = first_tensor()
    return Call(Global("torch._utils", "_rebuild_tensor_v3"), Storage(storage_key, 4 * numel, "UntypedStorage"),
                0, (numel,), (1,), False, collections.OrderedDict(), dtype)


def numel():
    return first_tensor()[2]


# name -> (formats, tensor replacing the first kp_detector tensor, extra storages, fragment)
TENSOR_LIES = {
    "persistent id names a missing storage": (
        FORMATS, lambda: tensor(Storage("9999", numel()), 0, (numel(),), (1,)), [], "'9999'"),
    "offset past the storage": (FORMATS, lambda: view(offset=numel(), size=(1,)), [], "reaches element"),
    "size past the storage": (FORMATS, lambda: view(size=(numel() + 1,)), [], "reaches element"),
    "stride past the storage": (FORMATS, lambda: view(size=(2,), stride=(numel(),)), [], "reaches element"),
    "negative size": (FORMATS, lambda: view(size=(-1,)), [], "non-negative integer"),
    "size is a string": (FORMATS, lambda: view(size=("64",)), [], "non-negative integer"),
    "65 dimensions": (FORMATS, lambda: view(size=(1,) * 65, stride=(1,) * 65), [], "bad tensor size"),
    "declares 10^12 elements, holds 16": (
        FORMATS, lambda: tensor(Storage("big", 10**12), 0, (10**12,), (1,)), [("big", 10**12, bytes(64))],
        "4000000000000 bytes"),
    "expands one element to 10^12 (stride 0)": (
        FORMATS, lambda: view(size=(10**6, 10**6), stride=(0, 0)), [], "expand"),
    "unknown storage type ComplexFloatStorage": (
        FORMATS, lambda: view(type_name="ComplexFloatStorage"), [], "torch.ComplexFloatStorage"),
    "unknown storage type QInt8Storage": (FORMATS, lambda: view(type_name="QInt8Storage"), [], "torch.QInt8Storage"),
    "unknown dtype torch.complex64": (FORMATS, lambda: rebuild_v3(Global("torch", "complex64")), [],
                                      "torch.complex64"),
    "dtype slot holds a number": (FORMATS, lambda: rebuild_v3(7), [], "not a torch dtype"),
    "storage key climbs out (../)": (
        ["zip"], lambda: tensor(Storage("../../0", numel()), 0, (numel(),), (1,)), [], "bad storage key"),
}

CASES_BY_FORMAT = [(name, fmt) for name, (formats, *_) in TENSOR_LIES.items() for fmt in formats]


@pytest.mark.parametrize("name,fmt", CASES_BY_FORMAT)
def test_tensor_that_lies_about_its_storage_is_refused(corpus, name, fmt):
    _, build, extra_storages, fragment = TENSOR_LIES[name]
    lie = build()
    key, storage_key, _ = first_tensor()
    # Keep the replaced tensor's storage only if the lie still uses it: an orphan is refused on its own.
    storages = [s for s in valid_markers()[1] if s[0] != storage_key or lie.args[0].key == storage_key]
    path = write_with(fmt, corpus.path(f"lie.{fmt}.pth.tar"), "kp_detector", key, lie,
                      storages=storages + extra_storages, replace=True)
    start = time.perf_counter()
    outcome = corpus.run("tensor lies", f"{name} ({fmt})", checkpoint=path)
    assert_refused(outcome, fragment)
    assert time.perf_counter() - start < 5, "refused only after doing the work"


@pytest.mark.parametrize("fmt", FORMATS)
def test_many_stride0_views_are_refused_before_gigabytes(corpus, fmt):
    # Each view of one float as 64 MiB passes the per-tensor expansion limit; together they need 64 GiB.
    markers, storages = valid_markers()
    views = {f"view{i}": tensor(Storage("one", 1), 0, (1 << 24,), (0,)) for i in range(1000)}
    planted = {**markers, "kp_detector": collections.OrderedDict(markers["kp_detector"], **views)}
    path = write_format(fmt, corpus.path(f"views.{fmt}.pth.tar"), planted, storages + [("one", 1, bytes(4))])
    start = time.perf_counter()
    assert_refused(corpus.run("tensor lies", f"1000 stride-0 views of one element ({fmt})", checkpoint=path),
                   "more than a file of its size can hold")
    assert time.perf_counter() - start < 10


def test_deflated_storage_bomb_is_refused_before_inflating(corpus):
    # torch.save stores members uncompressed; a re-zipped file with a deflated storage of zeros
    # inflates ~1000x. 320 MiB from a ~0.3 MB member: above what the file size allows.
    markers, storages = valid_markers()
    numel = 80 << 20
    bomb = tensor(Storage("bomb", numel), 0, (numel,), (1,))
    path = write_zip(corpus.path("bomb.pth.tar"), {**markers, "kp_detector": insert_after(
        markers["kp_detector"], middle_key(markers["kp_detector"]), "bomb", bomb)}, storages)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/bomb", "w", force_zip64=True) as member:
            zeros = bytes(1 << 22)
            for _ in range(numel * 4 // len(zeros)):
                member.write(zeros)
    start = time.perf_counter()
    assert_refused(corpus.run("tensor lies", "deflated 320 MiB storage of zeros (zip)", checkpoint=path),
                   "more than a file of its size can hold")
    assert time.perf_counter() - start < 5


# name -> zip member names added to a valid zip checkpoint (from the canary path), fragment
ZIP_NAMES = {
    "member named archive/../../<canary>": (lambda c: ["archive/" + "../" * 12 + str(c).lstrip("/")],
                                           "escapes the archive"),
    "absolute member name": (lambda c: [str(c)], "escapes the archive"),
    "backslash ..\\ member name": (lambda c: ["archive\\..\\..\\canary"], "escapes the archive"),
    "second data.pkl in another folder": (lambda c: ["other/data.pkl"], "2 data.pkl members"),
}


@pytest.mark.parametrize("name", list(ZIP_NAMES))
def test_zip_member_names_that_climb_out_are_refused(corpus, name):
    names, fragment = ZIP_NAMES[name]
    markers, storages = valid_markers()
    path = write_zip(corpus.path("names.pth.tar"), markers, storages,
                     extra=[(member, b"x") for member in names(corpus.canary)])
    assert_refused(corpus.run("zip names", name, checkpoint=path), fragment)


# ----------------------------------------------------------------------------
# 5. The same kind of files through --loadwithtorch (torch.load(weights_only=True), then numpy copies)
# ----------------------------------------------------------------------------

def nested_list(depth):
    """A list nested `depth` deep, written as opcodes (a Python object that deep cannot be pickled):
    `depth` EMPTY_LISTs, then APPENDs folding each into the one below."""
    return Raw(b"]" * depth + b"a" * (depth - 1))


def shared_list_bomb(depth):
    """[[x, x], [x, x]]... `depth` times over, each level the same object twice: 2**depth leaves,
    a pickle of a few hundred bytes (the pickler writes each repeat as a memo reference)."""
    bomb = [1.0]
    for _ in range(depth):
        bomb = [bomb, bomb]
    return bomb


# name -> (value planted in the generator state dict (from the canary path), extra storages, fragment)
TORCH_PATH = {
    "os.system payload": (lambda c: Call(Global("os", "system"), f"touch {c}"), [], "weights_only"),
    "1000 stride-0 views of one element": (
        lambda c: Call(Global("collections", "OrderedDict"),
                     [(f"v{i}", tensor(Storage("one", 1), 0, (1 << 24,), (0,))) for i in range(1000)]),
        [("one", 1, bytes(4))], "more than a file of its size can hold"),
    "list nested 5000 deep": (lambda c: nested_list(5000), [], "nested too deeply"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(TORCH_PATH))
def test_loadwithtorch_refuses_in_one_line(corpus, name, fmt):
    pytest.importorskip("torch")
    build, extra_storages, fragment = TORCH_PATH[name]
    path = write_with(fmt, corpus.path(f"t.{fmt}.pth.tar"), "generator", "evil", build(corpus.canary),
                      storages=valid_markers()[1] + extra_storages)
    outcome = corpus.run("--loadwithtorch", f"{name} ({fmt})", checkpoint=path, extra=["--loadwithtorch"])
    assert_refused(outcome, fragment)


def test_loadwithtorch_converts_a_shared_reference_once(tmp_path):
    # 2**64 leaves if every reference were followed; the conversion keeps the sharing instead.
    pytest.importorskip("torch")
    path = write_format("zip", tmp_path / "bomb.pth.tar", {"bomb": shared_list_bomb(64)})
    start = time.perf_counter()
    bomb = torch_file.load_with_torch(path)["bomb"]
    assert time.perf_counter() - start < 5
    assert bomb[0] is bomb[1]


# ----------------------------------------------------------------------------
# 6. Damaged real checkpoints: truncation, bit flips, wrong files, wrong model
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def fixture_bytes(fmt):
    return load_fixture(FIXTURE).checkpoint(fmt).read_bytes()


def truncation_offsets(fmt):
    """Cuts at the edges of every part of the file, plus seeded random ones."""
    size = len(fixture_bytes(fmt))
    rng = random.Random(f"truncate-{fmt}")
    edges = {1, 2, 3, 8, 16, 30, 64, 257, 1000, 4096, size // 2, size - 100, size - 22, size - 1}
    return sorted(edges | {rng.randrange(1, size) for _ in range(8)})


@pytest.mark.parametrize("fmt,cut", [(fmt, cut) for fmt in FORMATS for cut in truncation_offsets(fmt)])
def test_truncated_checkpoint_is_refused(corpus, fmt, cut):
    path = corpus.path("cut.pth.tar", fixture_bytes(fmt)[:cut])
    outcome = corpus.run("truncated", f"{fmt}, first {cut} of {len(fixture_bytes(fmt))} bytes", checkpoint=path)
    assert_refused(outcome)


def structure_offsets(fmt):
    """Byte offsets where a flip hits structure rather than weight values.

    Legacy: the opcodes of the main pickle (a flip in raw float data is just another weight, which
    torch.load accepts too). Zip: the data.pkl member, its header included.
    """
    data = fixture_bytes(fmt)
    if fmt == "legacy":
        stream = io.BytesIO(data)
        for _ in range(3):  # magic, protocol version, sys_info
            for _ in pickletools.genops(stream):
                pass
        return [position for _, _, position in pickletools.genops(stream)]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    return list(range(info.header_offset, info.header_offset + 30 + name_length + extra_length + info.compress_size))


FLIPS_PER_FORMAT = 16


@functools.lru_cache(maxsize=None)
def flips(fmt):
    """FLIPS_PER_FORMAT seeded (offset, bit) pairs in the structure of the fixture checkpoint."""
    rng = random.Random(f"flip-{fmt}")
    offsets = structure_offsets(fmt)
    return [(rng.choice(offsets), rng.randrange(8)) for _ in range(FLIPS_PER_FORMAT)]


# A flip can turn a protocol-0 string opcode's text into an escape sequence pickle warns about.
@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
@pytest.mark.parametrize("fmt,index", [(fmt, i) for fmt in FORMATS for i in range(FLIPS_PER_FORMAT)])
def test_bit_flip_is_refused_or_still_a_valid_checkpoint(corpus, fmt, index):
    offset, bit = flips(fmt)[index]
    data = bytearray(fixture_bytes(fmt))
    data[offset] ^= 1 << bit
    path = corpus.path("flipped.pth.tar", bytes(data))
    outcome = corpus.run("bit flip", f"{fmt}, byte {offset} bit {bit}", checkpoint=path)
    if outcome.code == 0:  # the flip left a well-formed file (e.g. another valid opcode): a normal run
        assert_converted(outcome, corpus.out / "result.mp4")
    else:
        assert_refused(outcome)


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# name -> (file contents, or None for no file, fragment)
NOT_CHECKPOINTS = {
    "missing file": (None, "--checkpoint"),  # named with its flag, before TensorFlow loads
    "empty file": (b"", "empty file"),
    "PNG renamed .pth.tar": (png_bytes(np.zeros((8, 8, 3), np.uint8)), "not a PyTorch checkpoint"),
    "text file": (b"model weights go here\n", "not a PyTorch checkpoint"),
    "plain pickle without torch's magic": (pickle.dumps({"generator": {}}, protocol=2), "magic number"),
    "zip without data.pkl": (None, "data.pkl"),
}


@pytest.mark.parametrize("name", list(NOT_CHECKPOINTS))
def test_file_that_is_not_a_checkpoint_is_refused(corpus, name):
    data, fragment = NOT_CHECKPOINTS[name]
    path = corpus.path("model.pth.tar", data)
    if name == "zip without data.pkl":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("photos/cat.jpg", b"meow")
    assert_refused(corpus.run("not a checkpoint", name, checkpoint=path), fragment)


def test_directory_as_checkpoint_is_refused(corpus):
    assert_refused(corpus.run("not a checkpoint", "a directory", checkpoint=corpus.dir), "--checkpoint", "is a directory")


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_of_another_config_names_key_and_both_shapes(corpus, fmt):
    other = load_fixture(OTHER_MODEL).checkpoint(fmt)
    outcome = corpus.run("wrong model", f"{OTHER_MODEL} checkpoint, {FIXTURE} config ({fmt})", checkpoint=other)
    assert_refused(outcome)
    match = re.search(r"\]: (\S+) has shape (\[[\d, ]+\]) but the config needs (\[[\d, ]+\])", outcome.message)
    assert match and match.group(2) != match.group(3), outcome.message
    key, got = match.group(1), match.group(2)
    section = "kp_detector" if "[kp_detector]" in outcome.message else "generator"
    assert list(torch_file.read_checkpoint(other)[section][key].shape) == json.loads(got)


# Values a pickle can hold that are not tensors, where a state dict must have tensors. The reader
# returns them faithfully; checkpoint_loader.load_state_dicts refuses them.
NOT_TENSORS = {
    "ragged list as a state-dict entry": ("extra", [[1.0, 2.0], [3.0]]),
    "integer key in a state dict": (7, [1.0]),
}


@pytest.mark.parametrize("name", list(NOT_TENSORS))
def test_state_dict_entry_that_is_not_a_tensor_is_refused(corpus, name):
    key, value = NOT_TENSORS[name]
    path = write_with("legacy", corpus.path("junk.pth.tar"), "kp_detector", key, value)
    assert_refused(corpus.run("not a tensor", name, checkpoint=path), "not a tensor")


# ----------------------------------------------------------------------------
# 7. Broken media, and media to convert
# ----------------------------------------------------------------------------

def ffmpeg(*args):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def audio_only_mp4(corpus):
    path = corpus.path("audio_only.mp4")
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "0.5", str(path))
    return path


def truncated_driving(corpus, fraction):
    data = (corpus.fixture.dir / "driving.mp4").read_bytes()
    return corpus.path(f"cut{fraction}.mp4", data[:int(len(data) * fraction)])


def png_header_only(width, height):
    """A PNG declaring width x height pixels, with no pixel data: decoders check the size first."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def folder(corpus, name):
    path = corpus.path(name)
    path.mkdir()
    return path


def unwritable_folder(corpus):
    """A folder no file can be created in: read-only permissions, or /proc for root (who ignores them)."""
    if os.geteuid() == 0:
        return Path("/proc")
    readonly = folder(corpus, "readonly")
    readonly.chmod(0o555)
    return readonly


# name -> (CLI inputs made in the corpus workspace, fragment)
BROKEN_MEDIA = {
    "missing source image": (lambda c: {"source": c.path("missing.png")}, "no such file"),
    "missing driving video": (lambda c: {"driving": c.path("missing.mp4")}, "no such file"),
    "zero-byte mp4": (lambda c: {"driving": c.path("empty.mp4", b"")}, "not a readable video"),
    "mp4 cut to 10%": (lambda c: {"driving": truncated_driving(c, 0.1)}, "not a readable video"),
    "mp4 cut to 50%": (lambda c: {"driving": truncated_driving(c, 0.5)}, "not a readable video"),
    "mp4 cut to 90% (index lost)": (lambda c: {"driving": truncated_driving(c, 0.9)}, "not a readable video"),
    "text file named .mp4": (lambda c: {"driving": c.path("notes.mp4", b"not a video\n")}, "not a readable video"),
    "mp4 with only an audio stream": (lambda c: {"driving": audio_only_mp4(c)}, "no video stream"),
    "video stream with no frames": (
        lambda c: {"driving": c.path("no_frames.mp4", b"YUV4MPEG2 W64 H64 F10:1 Ip A1:1 C420jpeg\n")},
        "has no frames"),
    "directory as driving video": (lambda c: {"driving": folder(c, "clips")}, "is a directory"),
    "text file named .png": (lambda c: {"source": c.path("notes.png", b"not an image\n")}, "not a readable image"),
    "zero-byte png": (lambda c: {"source": c.path("empty.png", b"")}, "not a readable image"),
    "png cut in half": (lambda c: {"source": c.path("half.png", (c.fixture.dir / "source.png").read_bytes()[:2000])},
                        "not a readable image"),
    "png declaring 30000x30000 pixels (decompression bomb)": (
        lambda c: {"source": c.path("bomb.png", png_header_only(30000, 30000))}, "decompression bomb"),
    "unwritable output directory": (lambda c: {"output": unwritable_folder(c) / "result.mp4"}, "cannot write"),
    "output would overwrite the source image": (
        lambda c: {"source": c.path("src.png", (c.fixture.dir / "source.png").read_bytes()),
                   "output": c.dir / "src.png"}, "overwrite the source image"),
}


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning")
@pytest.mark.parametrize("name", list(BROKEN_MEDIA))
def test_broken_media_is_refused(corpus, name):
    inputs, fragment = BROKEN_MEDIA[name]
    assert_refused(corpus.run("broken media", name, **inputs(corpus)), fragment)


def source_pixels(corpus):
    return np.asarray(Image.open(corpus.fixture.dir / "source.png").convert("RGB"))


def save_image(corpus, name, image):
    path = corpus.path(name)
    image.save(path)
    return path


# name -> source image made from the fixture's source pixels
CONVERTED_SOURCES = {
    "grayscale png": lambda c, rgb: save_image(c, "gray.png", Image.fromarray(rgb).convert("L")),
    "RGBA png": lambda c, rgb: save_image(c, "rgba.png", Image.fromarray(rgb).convert("RGBA")),
    "palette png": lambda c, rgb: save_image(c, "palette.png", Image.fromarray(rgb).convert("P")),
    "16-bit grayscale png": lambda c, rgb: save_image(
        c, "gray16.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)),
    "1x1 image": lambda c, rgb: save_image(c, "dot.png", Image.fromarray(rgb[:1, :1])),
    "source 1536x1024 for a 64x64 frame": lambda c, rgb: save_image(
        c, "huge.png", Image.fromarray(rgb).resize((1536, 1024))),
}


@pytest.mark.parametrize("name", list(CONVERTED_SOURCES))
def test_unusual_source_image_is_converted_not_rejected(corpus, name):
    source = CONVERTED_SOURCES[name](corpus, source_pixels(corpus))
    outcome = corpus.run("converted media", name, source=source)
    assert_converted(outcome, corpus.out / "result.mp4")
    assert sum(1 for _ in imageio.get_reader(corpus.out / "result.mp4")) == 1


# ----------------------------------------------------------------------------
# 8. Configs missing a key or holding the wrong type
# ----------------------------------------------------------------------------

def without(*path):
    def edit(config):
        parent = functools.reduce(lambda d, k: d[k], path[:-1], config)
        del parent[path[-1]]
    return edit


def setting(value, *path):
    def edit(config):
        functools.reduce(lambda d, k: d[k], path[:-1], config)[path[-1]] = value
    return edit


MP = "model_params"
# name -> (edit of the fixture config, key the message must name)
BAD_CONFIGS = {
    "no model_params": (without(MP), "'model_params'"),
    "no common_params": (without(MP, "common_params"), "'model_params.common_params'"),
    "common_params is null": (setting(None, MP, "common_params"), "'model_params.common_params'"),
    "no kp_detector_params": (without(MP, "kp_detector_params"), "'model_params.kp_detector_params'"),
    "generator_params is a list": (setting([1, 2], MP, "generator_params"), "'model_params.generator_params'"),
    "no dense_motion_params": (without(MP, "generator_params", "dense_motion_params"), "dense_motion_params"),
    "no num_kp": (without(MP, "common_params", "num_kp"), "num_kp"),
    "num_kp is a string": (setting("ten", MP, "common_params", "num_kp"), "num_kp"),
    "num_kp is 0": (setting(0, MP, "common_params", "num_kp"), "num_kp"),
    "num_kp is true": (setting(True, MP, "common_params", "num_kp"), "num_kp"),
    "temperature is a string": (setting("hot", MP, "kp_detector_params", "temperature"), "temperature"),
    "scale_factor is negative": (setting(-0.5, MP, "kp_detector_params", "scale_factor"), "scale_factor"),
    "block_expansion is 4.5": (setting(4.5, MP, "generator_params", "block_expansion"), "block_expansion"),
    "estimate_jacobian is a string": (setting("no", MP, "common_params", "estimate_jacobian"), "estimate_jacobian"),
    "estimate_occlusion_map is a number": (
        setting(2, MP, "generator_params", "estimate_occlusion_map"), "estimate_occlusion_map"),
    "no frame_shape": (without("dataset_params", "frame_shape"), "frame_shape"),
    "frame_shape of two numbers": (setting([64, 64], "dataset_params", "frame_shape"), "frame_shape"),
    "frame_shape channels differ from num_channels": (setting([64, 64, 4], "dataset_params", "frame_shape"),
                                                      "frame_shape"),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_config_missing_a_key_or_with_a_wrong_type_names_the_key(corpus, name):
    edit, key = BAD_CONFIGS[name]
    config = yaml.safe_load(corpus.fixture.config_path.read_text())
    edit(config)
    path = corpus.path("config.yaml", yaml.safe_dump(config).encode())
    assert_refused(corpus.run("config", name, config=path), key)


@pytest.mark.parametrize("name,text", [("not YAML", "model_params: [unclosed\n"), ("binary garbage", "\x00\xff")])
def test_unreadable_config_is_refused(corpus, name, text):
    path = corpus.path("config.yaml", text.encode("latin-1"))
    assert_refused(corpus.run("config", name, config=path), "config.yaml")


# ----------------------------------------------------------------------------
# 9. Real processes: exit codes, hostile checkpoints, Ctrl-C
# ----------------------------------------------------------------------------

class RealRun:
    """`python run.py ...` in its own process group (as a shell runs it), stderr collected as it comes."""

    def __init__(self, args):
        # An interactive shell starts run.py with SIGINT at its default; a harness run in the background
        # (nohup, `cmd &`) passes SIGINT ignored, and Python then keeps ignoring it. Start as a terminal would.
        self.process = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.started = time.monotonic()
        self._stderr = b""
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self):
        while chunk := os.read(self.process.stderr.fileno(), 1 << 14):
            self._stderr += chunk

    def frames_done(self):
        """Frames the progress bar has counted so far."""
        counts = re.findall(rb"(\d+)/\d+ \[", self._stderr)
        return int(counts[-1]) if counts else 0

    def ctrl_c(self):
        """What a terminal does on Ctrl-C: SIGINT to the whole process group (ffmpeg children too)."""
        with contextlib.suppress(ProcessLookupError):  # it may have ended a moment ago
            os.killpg(self.process.pid, signal.SIGINT)

    def finish(self, timeout=120):
        """(exit code, stderr lines) once the process has ended."""
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join()
        self.process.stderr.close()
        return self.process.returncode, stderr_lines(self._stderr.decode(errors="replace"))


def long_driving_video(path, frames=2000):
    """A 64x64 test pattern long enough that a run is still writing when it is interrupted."""
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-frames:v", str(frames),
           "-pix_fmt", "yuv420p", str(path))
    return path


def record_real(case, code, lines, out_dir, canary):
    outcome = Outcome("real process", case, code, lines, sorted(p.name for p in out_dir.iterdir()),
                      not canary.exists())
    RESULTS.append(outcome)
    return outcome


def png_bytes_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Start every real-process case at once (each pays TensorFlow's import), interrupt, collect.

    Cases: a hostile checkpoint; Ctrl-C while an mp4 is being written; Ctrl-C while PNG frames
    replacing an earlier run's are being written; Ctrl-C while Python is still importing.
    Returns {case: (Outcome, frames written when interrupted)} and the earlier run's frames after.
    """
    root = tmp_path_factory.mktemp("real")
    fx = load_fixture(FIXTURE)
    canary = root / "canary"
    long_clip = long_driving_video(root / "long.mp4")
    hostile = write_with("legacy", root / "evil.pth.tar", "generator", "evil",
                         Call(Global("os", "system"), f"touch {canary}"))
    folders = {name: root / name for name in ("hostile", "sigint-mp4", "sigint-png", "sigint-import")}
    for folder in folders.values():
        folder.mkdir()
    earlier_frames = folders["sigint-png"] / "frames"
    earlier_frames.mkdir()
    (earlier_frames / "frame_00000.png").write_bytes(png_bytes(np.full((4, 4, 3), 7, np.uint8)))
    before = png_bytes_of(earlier_frames)

    def start(checkpoint, output, driving):
        return RealRun(["--config", str(fx.config_path), "--source_image", str(fx.dir / "source.png"),
                        "--checkpoint", str(checkpoint), "--driving_video", str(driving), "--output", str(output),
                        "--batchsize", "1"])

    runs = {
        "hostile": start(hostile, folders["hostile"] / "r.mp4", fx.dir / "driving.mp4"),
        "sigint-mp4": start(fx.checkpoint(), folders["sigint-mp4"] / "r.mp4", long_clip),
        "sigint-png": start(fx.checkpoint(), f"{earlier_frames}/", long_clip),
        "sigint-import": start(fx.checkpoint(), folders["sigint-import"] / "r.mp4", long_clip),
    }
    written = interrupt_when_ready(runs, folders)
    results = {}
    for name, real in runs.items():
        code, lines = real.finish()
        results[name] = (record_real(name, code, lines, folders[name], canary), written.get(name))
    results["earlier frames kept"] = png_bytes_of(earlier_frames) == before
    return results


def frames_on_disk(folder):
    """PNG frames already in the temporary folder of a run writing into `folder`/frames/."""
    return len(list(folder.glob("frames.tmp*/frame_*.png")))


def interrupt_when_ready(runs, folders, deadline=300):
    """Ctrl-C each sigint-* run at its moment; returns {name: frames written when interrupted}.

    sigint-import: 1.5 s in, while Python imports TensorFlow. sigint-mp4: once the progress
    bar has counted 3 frames sent to the encoder. sigint-png: once 3 frames are on disk in the
    temporary folder. So both of those are interrupted in the middle of writing their output.
    """
    waiting = {"sigint-import", "sigint-mp4", "sigint-png"}
    written = {}
    started = time.monotonic()
    while waiting and time.monotonic() - started < deadline:
        for name in sorted(waiting):
            real = runs[name]
            if real.process.poll() is not None:  # ended by itself: the test reports how
                waiting.discard(name)
                continue
            if name == "sigint-import":
                count, ready = 0, time.monotonic() - real.started > 1.5
            elif name == "sigint-png":
                count = frames_on_disk(folders[name])
                ready = count >= 3
            else:
                count = real.frames_done()
                ready = count >= 3
            if ready:
                real.ctrl_c()
                written[name] = count
                waiting.discard(name)
        time.sleep(0.02)
    return written


def test_real_process_refuses_hostile_checkpoint_in_one_line(real_runs):
    outcome, _ = real_runs["hostile"]
    assert_refused(outcome, "asks for os.system")


@pytest.mark.parametrize("output", ["mp4", "png"])
def test_ctrl_c_while_writing_exits_130_and_leaves_no_partial_output(real_runs, output):
    outcome, written = real_runs[f"sigint-{output}"]
    assert written is not None and written >= 3, "not interrupted while writing"
    assert outcome.code == 130 and not outcome.traceback, outcome
    assert outcome.lines == ["interrupted: no output written"], outcome.lines
    if output == "mp4":
        assert outcome.leftovers == [], outcome.leftovers  # neither the video nor its temporary file
    else:
        assert outcome.leftovers == ["frames"], outcome.leftovers  # no temporary folder beside it
        assert real_runs["earlier frames kept"], "the earlier run's frames were touched"


def test_ctrl_c_while_importing_exits_130_without_traceback(real_runs):
    outcome, _ = real_runs["sigint-import"]
    assert outcome.code == 130 and outcome.lines == ["interrupted: no output written"], outcome
    assert outcome.leftovers == []

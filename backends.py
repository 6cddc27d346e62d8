"""The heavy runtimes (TensorFlow + Keras, LiteRT, onnxruntime), imported in one place and quietly.

TensorFlow's native code writes start-up lines straight to file descriptor 2 while it loads
(`WARNING: All log messages before absl::InitializeLog() ...`, `I0000 ... port.cc:153] oneDNN custom
operations are on ...`, `cpu_feature_guard.cc ...`), and LiteRT prints `INFO: Created TensorFlow Lite
XNNPACK delegate for CPU.` when it builds an interpreter. `TF_CPP_MIN_LOG_LEVEL` does not reach the
absl lines, and turning oneDNN off would change speed, so those windows run with descriptor 2
pointed at a scratch file instead. What they wrote is shown when the window fails (minus the known
start-up lines) or always with verbosity "verbose" (`--verbose`, or FOMM_VERBOSE=1 in the
environment).

Nothing here imports TensorFlow at module import time: `import backends` is free.
"""
import contextlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
import types

VERBOSITIES = ("quiet", "normal", "verbose")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own INFO/WARNING lines (not absl's)

# Lines the runtimes print on every start; anything else captured is replayed when a window fails.
START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} [\d:. ]+\s+\d+ \S+:\d+\] "
    r"|INFO: Created TensorFlow Lite XNNPACK delegate"
    r"|To enable the following instructions: .*rebuild TensorFlow)")

_verbosity = "verbose" if os.environ.get("FOMM_VERBOSE") == "1" else "normal"
_threads = None  # None: every core (each runtime's default)
_import_lock = threading.RLock()  # a thread that finds faces and one that loads the model may both import
_runtime = None  # saved_model_runtime()'s namespace, once imported
_whole = None  # the tensorflow module, once tensorflow() has imported and configured it


def set_verbosity(level):
    """'quiet' (errors only), 'normal' (our messages and progress) or 'verbose' (also the runtimes' lines)."""
    global _verbosity
    if level not in VERBOSITIES:
        raise ValueError(f"verbosity must be one of {VERBOSITIES}, got {level!r}")
    _verbosity = level


def verbosity():
    return _verbosity


def set_threads(count):
    """Threads each runtime may use for one operation (--threads; a Ray worker's CPUs), set before it loads.

    TensorFlow fixes its thread pools when it initialises, so this must come before the first
    `tensorflow()` that runs an op; LiteRT and onnxruntime read it when a model is loaded.
    """
    global _threads
    _threads = count
    with _import_lock:
        loaded = _runtime or sys.modules.get("tensorflow")
        if loaded is not None:
            _apply_tensorflow_threads(loaded)


def threads():
    """The thread count for LiteRT and onnxruntime: --threads, else one per core."""
    return _threads or os.cpu_count()


def _apply_tensorflow_threads(tf):
    if _threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(_threads)
        tf.config.threading.set_inter_op_parallelism_threads(_threads)
    except RuntimeError:  # already initialised: too late to change, keep the first setting
        pass


@contextlib.contextmanager
def native_output_hidden():
    """Run the block with file descriptor 2 pointed at a scratch file (unless verbose).

    On an exception the captured lines that are not start-up noise are written to the real stderr,
    so a runtime's own explanation of a failure is never lost.
    """
    if _verbosity == "verbose":
        yield
        return
    with _window:
        yield from _hidden_window()


# One window at a time, process-wide: descriptor 2 is the process's, and two threads that each saved and
# restored it (run.py --crop detects on one while the model loads on the other) could leave it pointing
# at a closed scratch file. Windows are short (an import, a model load, a first call), so one waits.
_window = threading.RLock()


def terminal():
    """Hold this while printing a line for the user: it waits for another thread's window to end, so
    the line reaches the real stderr instead of that window's scratch file."""
    return _window


def _hidden_window():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            saved = None
            sink.seek(0)
            _replay(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            if saved is not None:
                _restore(saved)


def _restore(saved):
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _replay(text):
    kept = [line for line in text.splitlines() if line.strip() and not START_UP_NOISE.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)


def tensorflow():
    """`import tensorflow` (and Keras), without its start-up lines; returns the tensorflow module.

    After `saved_model_runtime()` this completes that import: TensorFlow's __init__ runs in the module
    object already in sys.modules."""
    global _whole
    with _import_lock:
        if _whole is None:  # also where someone else imported it (tf2onnx, a notebook): configured once here
            with native_output_hidden(), _ipython_unimportable():
                tf = _whole_tensorflow()
                import keras  # noqa: F401  (its import prints through TensorFlow's logger too)

                _configure_tensorflow(tf)
            _whole = tf
    return _whole


def saved_model_runtime():
    """What running a SavedModel takes from TensorFlow, without `import tensorflow`'s public API modules.

    `import tensorflow` spends most of its time in the API modules its __init__ imports (tf.data,
    tf.distribute, feature columns, Keras): 2.7-3.0 s here, where what tf.saved_model.load and a
    signature call need imports in 1.2-1.4 s. The savedmodel target and the direct target's model cache
    call SavedModels and nothing else, so they import that much: the package is registered in
    sys.modules without running its __init__ (a _DeferredTensorFlow), the modules below are imported from
    it, and the first attribute anyone reads from the package, or a `tensorflow()` call, runs the __init__
    after all. Returns a namespace with the tf.* names those callers use: saved_model, constant, float32,
    __version__, config. The module paths are TensorFlow's internal ones (tested for the TensorFlow
    requirements.txt allows); where one is missing this falls back to the whole import.
    """
    global _runtime
    with _import_lock:
        if _runtime is None:
            with native_output_hidden():
                _runtime = _tensorflow_parts()
                _configure_tensorflow(_runtime)
    return _runtime


class _DeferredTensorFlow(types.ModuleType):
    """sys.modules["tensorflow"] while only saved_model_runtime()'s modules are imported from it."""

    def __getattr__(self, name):
        tensorflow()  # any public name (tf.keras, tf.__version__): the whole import, then the name
        return getattr(self, name)


def _whole_tensorflow():
    tf = sys.modules.get("tensorflow")
    if not isinstance(tf, _DeferredTensorFlow):
        import tensorflow as tf
        return tf
    tf.__class__ = types.ModuleType  # first: an attribute the __init__ reads before setting must not recurse here
    tf.__spec__.loader.exec_module(tf)
    return tf


def _tensorflow_parts():
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")
        if spec is None:
            raise ImportError("No module named 'tensorflow'")
        package = _DeferredTensorFlow("tensorflow")
        package.__spec__, package.__loader__, package.__file__ = spec, spec.loader, spec.origin
        package.__path__, package.__package__ = list(spec.submodule_search_locations), "tensorflow"
        sys.modules["tensorflow"] = package
    try:
        from tensorflow.python import tf2

        tf2.enable()  # TensorFlow's __init__ does this first: eager execution is on only if it precedes eager.context
        from tensorflow._api.v2 import config, saved_model
        from tensorflow.python.framework import constant_op, dtypes, versions
        from tensorflow.python.platform import tf_logging
    except (ImportError, AttributeError):  # another TensorFlow's layout: the public module has the same names
        return tensorflow()
    return types.SimpleNamespace(saved_model=saved_model, config=config, constant=constant_op.constant,
                                 float32=dtypes.float32, get_logger=tf_logging.get_logger,
                                 __version__=versions.__version__)


def _configure_tensorflow(tf):
    """Quiet loggers, --threads and Grappler's setting, before the runtime initialises; `tf` is the module
    or saved_model_runtime()'s namespace."""
    if _verbosity != "verbose":
        tf.get_logger().setLevel("ERROR")  # "WARNING:tensorflow:..." from tracing and saving
        _quiet_absl_python_logging()
    _apply_tensorflow_threads(tf)
    if not keeps_graph_rewrites(tf):
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def keeps_graph_rewrites(tf, flags=None):
    """Whether TensorFlow keeps Grappler's graph rewrites: only on a GPU or a CPU with AMX.

    Elsewhere they are off. On vox-256 they cost each model function's first call 0.3-0.6 s (direct and
    savedmodel, float32 and bfloat16) and bought no steady-state speed on the AVX-512 CPU without AMX
    where that was measured (README, Performance): the convolutions dominate, and oneDNN's own graph
    pass still runs. AMX makes the convolutions several times faster, so the bias and activation
    fusions Grappler adds may pay there; on a GPU its layout rewrites do."""
    import precision

    flags = precision.cpu_flags() if flags is None else flags
    return any(flag.startswith("amx") for flag in flags) or bool(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def _ipython_unimportable():
    """Keras imports IPython, when it is installed, only to display things in a notebook: 0.3 s of every
    start-up outside one. Within the block `import IPython` fails as if it were not installed (a None entry
    in sys.modules), unless IPython is already running; afterwards it imports normally again."""
    if "IPython" in sys.modules:
        yield
        return
    sys.modules["IPython"] = None
    try:
        yield
    finally:
        if "IPython" in sys.modules and sys.modules["IPython"] is None:
            del sys.modules["IPython"]


def _quiet_absl_python_logging():
    """absl-py's Python logger prints 'WARNING:absl:...' when SavedModels are saved or loaded."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def tflite_interpreter_class():
    """LiteRT's Interpreter (ai_edge_litert), else TensorFlow's tf.lite.Interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        tensorflow()
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter

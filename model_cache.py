"""The direct target's model cache: build the Keras models once, then load them traced from disk.

Building the direct target's models (Keras build, weight assignment, the fused inference rewrites, the
first trace) takes seconds at full size; loading the same functions as one SavedModel takes a fraction
of that. A cache entry is those functions as two SavedModels (protobufs and variables checkpoints: nothing
in them is unpickled), the generator's apart so that it loads on a thread while the run reads its inputs
and finds its keypoints, plus `manifest.json`, which holds the entry's key and the size and sha256 of
every file.

The key is everything the traced graph depends on: the checkpoint's size, mtime and inode plus a digest
of the tensors actually read from it (the reader reads only the kp_detector and generator storages, so
this hashes a third of a published checkpoint, not all of it), the parsed model config, a digest of the
model code and the options that change the graph (--prescale, --device, --precision). The TensorFlow
version that wrote the entry is in its manifest: an entry from another version is rebuilt (a status line
says so), so the key, and the check of every file's digest (`ModelCache.verify`), need no TensorFlow and
run.py does them on a thread while TensorFlow imports.

An entry whose manifest does not match its files is rebuilt with a one-line warning. Writers build into
a temporary folder inside the cache folder and rename it into place, so readers never see half an entry
and concurrent writers are safe: when the rename finds the entry already there, another process won,
and its entry is kept.

The folder: $FOMM_CACHE_DIR, else $XDG_CACHE_HOME/first-order-model-tf, else ~/.cache/first-order-model-tf.
This module imports TensorFlow only when it loads or saves an entry (run.py --clear_cache stays light).
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import backends  # free: TensorFlow itself imports only when an entry is loaded or saved
import export_files
import utils

ENV_VAR = "FOMM_CACHE_DIR"
FOLDER_NAME = "first-order-model-tf"
# bump when the entry layout changes (2: the TensorFlow version moved from the key to the manifest; 3: the
# generator's own SavedModel)
FORMAT = 3
MANIFEST = "manifest.json"
SAVED_MODEL = "model"  # kp_detector, process_kp_driving, source_encoder
GENERATOR_SAVED_MODEL = "generator"  # generator_cached: most of the weights, loaded on a thread (ModelCache.load)
TEMP_PREFIX = ".tmp-"  # entries being written (or left by a killed writer); --clear_cache removes them
TRASH_PREFIX = ".trash-"  # a corrupt entry moved aside before it is deleted
# The files whose code the traced graph comes from: any change to them invalidates every entry.
CODE_FILES = ("modules.py", "animate.py", "checkpoint_loader.py", "torch_file.py", "model_config.py",
              "model_cache.py")
# The signatures of an entry: animate.direct_modules' modules but the plain generator, whose outputs the
# source_encoder + generator_cached pair gives (animate.generator_from_pair); tracing it would add seconds.
# {SavedModel folder: its signatures}
SAVED_MODELS = {SAVED_MODEL: ("kp_detector", "process_kp_driving", "source_encoder"),
                GENERATOR_SAVED_MODEL: ("generator_cached",)}
MODULES = tuple(name for names in SAVED_MODELS.values() for name in names)
_HERE = os.path.dirname(os.path.abspath(__file__))
_CHUNK = 1 << 22


def cache_folder():
    """Where entries live: $FOMM_CACHE_DIR, else the user's cache directory's first-order-model-tf/."""
    if os.environ.get(ENV_VAR):
        return os.path.abspath(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, FOLDER_NAME)


# --------------------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------------------

def checkpoint_identity(path):
    """What says the checkpoint file is the one the entry was built from, without reading it again."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def tensors_digest(state_dicts):
    """sha256 of the tensors read from the checkpoint ({entry: {key: array}}), names and shapes included."""
    digest = hashlib.sha256()
    for entry in sorted(state_dicts):
        for key in sorted(state_dicts[entry]):
            array = state_dicts[entry][key]
            digest.update(f"{entry}/{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(memoryview(array).cast("B") if array.flags.c_contiguous else array.tobytes())
    return digest.hexdigest()


def code_digest():
    """sha256 of the model code (CODE_FILES): another version of the code may trace another graph."""
    digest = hashlib.sha256()
    for name in CODE_FILES:
        with open(os.path.join(_HERE, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def cache_key(config, checkpoint_path, state_dicts, prescale=False, device=None, precision="float32"):
    """The entry's key: a JSON-able dict of everything the traced models depend on but the TensorFlow
    version (which the manifest holds, so that the key needs no TensorFlow)."""
    key = {"format": FORMAT,
           "checkpoint": {**checkpoint_identity(checkpoint_path), "tensors_sha256": tensors_digest(state_dicts)},
           "config": dataclasses.asdict(config),
           "code_sha256": code_digest(),
           "options": {"prescale": bool(prescale), "device": device, "precision": precision}}
    return json.loads(json.dumps(key))  # as the manifest will read back (tuples become lists)


def entry_name(key):
    """The entry's folder name: a digest of its key, so each key has one place."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# Files of an entry: their digests, the folder's size
# --------------------------------------------------------------------------------------------------

def file_sha256(path):
    """The file's sha256, read through one reused buffer: no new 4 MB allocation per chunk, which on the
    thread run.py verifies entries on would grow that thread's malloc arena and the process's peak RSS."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def entry_files(folder):
    """Relative paths of the files of an entry's SavedModels, sorted."""
    return sorted(os.path.relpath(os.path.join(parent, name), folder)
                  for saved_model in SAVED_MODELS for parent, _, names in os.walk(os.path.join(folder, saved_model))
                  for name in names)


def describe_files(folder):
    """{relative path: {'size', 'sha256'}} of an entry's SavedModels' files: what the manifest records."""
    return {path: {"size": os.path.getsize(os.path.join(folder, path)),
                   "sha256": file_sha256(os.path.join(folder, path))} for path in entry_files(folder)}


def folder_size(path):
    """Bytes of the files under `path` (0 when it does not exist)."""
    return sum(os.path.getsize(os.path.join(parent, name))
               for parent, _, names in os.walk(path) for name in names
               if not os.path.islink(os.path.join(parent, name)))


def megabytes(size):
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


class CorruptEntry(Exception):
    """An entry that cannot be trusted: its manifest, key or files do not match."""


def check_manifest(folder, key):
    """The entry's manifest, after checking it is ours, for this key, and lists every file there with the
    right size. Raises CorruptEntry saying what is wrong."""
    try:
        with open(os.path.join(folder, MANIFEST), "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError) as err:
        raise CorruptEntry(f"unreadable manifest ({err.__class__.__name__})") from None
    if (not isinstance(manifest, dict) or manifest.get("key") != key or not isinstance(manifest.get("files"), dict)
            or not isinstance(manifest.get("tensorflow"), str)):
        raise CorruptEntry("its manifest is for another key")
    recorded = manifest["files"]
    if sorted(recorded) != entry_files(folder):
        raise CorruptEntry("files missing or added")
    for path, described in recorded.items():
        if os.path.getsize(os.path.join(folder, path)) != described.get("size"):
            raise CorruptEntry(f"{path} has the wrong size")
    return manifest


def check_digests(folder, recorded):
    """Raise CorruptEntry unless every file's sha256 is the recorded one."""
    for path, described in recorded.items():
        if file_sha256(os.path.join(folder, path)) != described.get("sha256"):
            raise CorruptEntry(f"{path} does not match its digest")


# --------------------------------------------------------------------------------------------------
# Saving and loading the models
# --------------------------------------------------------------------------------------------------

def save_modules(tf_modules, folder):
    """The SAVED_MODELS under `folder`: each holds its modules' functions as signatures named after them, and
    each of their variables once (source_encoder's 1.5 MB are generator_cached's too, saved in both)."""
    tf = backends.tensorflow()
    for saved_model, names in SAVED_MODELS.items():
        root = tf.Module()
        variables = {}
        for name in names:
            for variable in tf_modules[name].export_root()._vars:
                variables.setdefault(id(variable), variable)
        root._vars = list(variables.values())
        tf.saved_model.save(root, os.path.join(folder, saved_model),
                            signatures={name: tf_modules[name].concrete_function() for name in names})


@dataclasses.dataclass
class Verified:
    """What `ModelCache.verify` found for a key: no entry (path None), a sound one, or a corrupt one."""
    key: dict
    path: str = None
    tensorflow: str = None  # the version that wrote the entry
    problem: str = None  # why the entry cannot be trusted


class ModelCache:
    """The cache folder: `verify` then `load` an entry for a key, `store` built modules under it, `clear` it all.

    `warn` and `status` print one line each (run.py's warning: and status lines).
    """

    def __init__(self, folder=None, warn=print, status=print):
        self.folder = folder or cache_folder()
        self.warn = warn
        self.status = status

    def entry_path(self, key):
        return os.path.join(self.folder, entry_name(key))

    def verify(self, key):
        """Verified: whether an entry for `key` exists and every file of it has its recorded size and sha256
        (0.3-0.4 s for vox-256's 330 MB). Reads and hashes files only, without TensorFlow and without
        printing: run.py runs it on a thread while TensorFlow imports."""
        path = self.entry_path(key)
        if not os.path.isdir(path):
            return Verified(key)
        try:
            manifest = check_manifest(path, key)
            check_digests(path, manifest["files"])
        except CorruptEntry as err:
            return Verified(key, path, problem=str(err))
        except OSError as err:
            return Verified(key, path, problem=f"{err.__class__.__name__} while reading it")
        return Verified(key, path, tensorflow=manifest["tensorflow"])

    def load(self, verified):
        """{module name: numpy callable} from a verified entry, or None when there is none, it was corrupt
        (removed with a warning) or written by another TensorFlow (removed with a status line); the caller
        then rebuilds it. TensorFlow parses only files `verify` has checked."""
        if verified.path is None:
            return None
        if verified.problem is not None:
            return self.discard(verified.path, verified.problem)
        version = backends.saved_model_runtime().__version__
        if verified.tensorflow != version:
            self.status(f"model cache entry {verified.path} was written by TensorFlow {verified.tensorflow}; "
                        f"rebuilding it for {version}")
            self.remove(verified.path)
            return None
        generator = utils.LoadedOnThread(self.load_generator, verified.path, name="cache-generator")
        try:
            return {**self.load_saved_model(verified.path, SAVED_MODEL), "generator_cached": generator}
        except Exception as err:  # noqa: BLE001 (any failure to load an entry means: rebuild it, never trust it)
            return self.discard(verified.path, self.why_unloadable(err))

    @staticmethod
    def load_saved_model(path, saved_model):
        calls = export_files.savedmodel_calls(os.path.join(path, saved_model))
        if set(calls) != set(SAVED_MODELS[saved_model]):
            raise CorruptEntry(f"{saved_model}: signatures {sorted(calls)} instead of {list(SAVED_MODELS[saved_model])}")
        return calls

    @staticmethod
    def why_unloadable(err):
        return err if isinstance(err, CorruptEntry) else f"{err.__class__.__name__} while loading"

    def load_generator(self, path):
        """generator_cached's call, loaded on a thread while the run goes on (its first call waits). Too late
        to rebuild by then: a failure (the files' digests passed) removes the entry and ends the run with
        one line, and the next run rebuilds it."""
        try:
            return self.load_saved_model(path, GENERATOR_SAVED_MODEL)["generator_cached"]
        except Exception as err:  # noqa: BLE001
            self.remove(path)
            raise utils.UserError(f"model cache entry {path} could not be loaded ({self.why_unloadable(err)}); "
                                  f"it is removed, so the next run rebuilds it") from err

    def discard(self, path, reason):
        """Warn that an entry is corrupt and remove it, for the caller to rebuild; returns None."""
        self.warn(f"model cache entry {path} is corrupt ({reason}); rebuilding it")
        self.remove(path)

    def store(self, key, tf_modules):
        """Save built modules as the entry for `key`; a failure to write is a warning, never the run's end."""
        path = self.entry_path(key)
        temp = None
        try:
            os.makedirs(self.folder, exist_ok=True)
            temp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.folder)
            save_modules(tf_modules, temp)
            manifest = {"key": key, "tensorflow": backends.tensorflow().__version__, "files": describe_files(temp)}
            with open(os.path.join(temp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
            self.put_in_place(temp, path)
        except OSError as err:
            self.warn(f"could not write the model cache in {self.folder} ({err.strerror or err}); the next run builds the models again")
            return
        finally:
            if temp is not None and os.path.isdir(temp):
                shutil.rmtree(temp, ignore_errors=True)
        self.status(f"model cache: wrote {megabytes(folder_size(path))} to {path}; the cache folder holds "
                    f"{megabytes(folder_size(self.folder))} (python run.py --clear_cache empties it)")

    @staticmethod
    def put_in_place(temp, path):
        """Rename the finished entry into place; when another process got there first, keep theirs."""
        try:
            os.rename(temp, path)
        except OSError:
            if not os.path.isdir(path):
                raise

    def remove(self, path):
        """Delete an entry: renamed aside first, so no reader ever sees half of it."""
        trash = os.path.join(self.folder, TRASH_PREFIX + os.path.basename(path) + f"-{os.getpid()}")
        try:
            os.rename(path, trash)
        except OSError:
            return  # already gone (another process removed or replaced it)
        shutil.rmtree(trash, ignore_errors=True)

    def clear(self):
        """Delete every entry (and leftovers of interrupted writers); returns the bytes freed."""
        if not os.path.isdir(self.folder):
            return 0
        freed = 0
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            if os.path.isdir(path) and (is_entry_name(name) or name.startswith((TEMP_PREFIX, TRASH_PREFIX))):
                freed += folder_size(path)
                shutil.rmtree(path, ignore_errors=True)
        return freed


def is_entry_name(name):
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def direct_models(config, state_dicts, checkpoint_path, verified, cache, prescale=False, precision="float32"):
    """(animate.Models for the direct target, write_entry): the models from the cache when `verified` (the
    cache's `verify` of this run's key, which run.py does while TensorFlow imports) found a sound entry,
    else built (animate.direct_modules) with `write_entry()` to store them for the next run (None after
    a hit). The caller writes the entry once its outputs are written, so a cold run's first frame
    does not wait for the SavedModel to be saved."""
    import animate

    calls = cache.load(verified)
    if calls is not None:
        return animate.models_from_calls(calls, config.estimate_jacobian, prescale,
                                         calls["generator_cached"].wait), None
    tf_modules = animate.direct_modules(config, state_dicts, checkpoint_path, prescale, precision)
    models = animate.models_from_calls(animate.numpy_calls(tf_modules), config.estimate_jacobian, prescale,
                                       tf_modules.wait)
    return models, lambda: cache.store(verified.key, tf_modules)

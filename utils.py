"""What every CLI shares: the one-line error (UserError, ArgumentParser), model paths,
output naming, and the one atomic-write helper (a temporary name beside the destination, renamed
when complete).

Nothing here imports TensorFlow, imageio or scikit-image: run.py checks a user's input with it
before anything heavy loads. Media, datasets, exports and the visualizer have modules of their own.
"""
import argparse
import contextlib
import os
import shutil
import sys
import tempfile

import backends


REPO_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = "vox"  # --model when none is given, as in the seed CLI
EXAMPLE_SOURCE = os.path.join("example", "source.png")  # the seed CLI's default inputs, inside the repository
EXAMPLE_DRIVING = os.path.join("example", "driving.mp4")


# ----------------------------------------------------------------------------
# 1. Errors
# ----------------------------------------------------------------------------

class UserError(Exception):
    """A bad input, reported by the CLI as one line with exit code 1.

    The message is collapsed onto one line here, so that no caller can leak a
    multi-line library error (ffmpeg and imageio both produce those) to the user.
    """

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (exit code 2), like every other error of the CLIs."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def print_error(error):
    """How every CLI reports a bad input: `error: <one line>` on stderr (the caller exits with 1)."""
    to_stderr(f"error: {' '.join(str(error).split())}")


def to_stderr(line):
    """Print a line for the user on stderr, never into another thread's backends.native_output_hidden window."""
    with backends.terminal():
        print(line, file=sys.stderr, flush=True)


_warnings_sink = None  # a list while collected_warnings() runs


def warn(message):
    if _warnings_sink is not None:
        _warnings_sink.append(message)
    elif backends.verbosity() != "quiet":
        to_stderr(f"warning: {message}")


@contextlib.contextmanager
def collected_warnings():
    """Collect warn() messages instead of printing them: a Ray worker hands its job's to the driver."""
    global _warnings_sink
    outer, _warnings_sink = _warnings_sink, []
    try:
        yield _warnings_sink
    finally:
        _warnings_sink = outer


def note(message):
    """A default standing in for something the user did not give, said once."""
    if backends.verbosity() != "quiet":
        to_stderr(f"note: {message}")


def status(message):
    """What a command is doing before its progress bar can say it."""
    if backends.verbosity() != "quiet":
        to_stderr(f"{message}...")


def inform(message):
    """A status line that is not a step in progress (what the model cache wrote)."""
    if backends.verbosity() != "quiet":
        to_stderr(message)


def say(message):
    """A result line (what was written, metrics), on stdout."""
    if backends.verbosity() != "quiet":
        print(message, flush=True)


class LoadedOnThread:
    """What `load(*args)` returns, made on a thread of its own: a callable, which this one then stands for
    (a generator's SavedModel), or any value (animate.direct_modules' generator modules, built).

    `wait()` and the first call wait for the load, and every call goes to its result, so the caller goes
    on while it loads (run.py: the first job's inputs and source keypoints while the generator's weights
    load). A load that failed raises its error at every call, and at every `wait()`.
    """

    def __init__(self, load, *args, name="load"):
        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._future = pool.submit(load, *args)
        pool.shutdown(wait=False)

    def wait(self):
        """load's result, once loaded; the load's exception if it failed."""
        return self._future.result()

    def __call__(self, *args, **kwargs):
        return self.wait()(*args, **kwargs)


def first_line(error):
    """The first non-empty line of an exception's text, for short error messages."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def os_reason(error):
    """Why an OSError happened ("Permission denied"), without the file names it carries:
    those are often our temporary names, which mean nothing to the user."""
    return error.strerror or first_line(error)


def require_file(path, what, flag=None):
    """Raise UserError unless `path` is an existing regular file; the message names `flag` when given."""
    name = path if flag is None else f"{flag} {path}"
    if not os.path.exists(path):
        raise UserError(f"{name}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{name}: is a directory, not {what}")



# ----------------------------------------------------------------------------
# 2. Model paths (configs themselves: model_config.py)
# ----------------------------------------------------------------------------

def short_repr(value, limit=40):
    """repr() of a value from a user's file, cut short for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def model_paths(model, config=None, checkpoint=None):
    """Resolve (config_path, checkpoint_path) for `--model NAME`.

    `NAME` maps to `config/NAME-256.yaml` and `checkpoint/NAME-cpk.pth.tar`
    inside the repository (the folder of this file), whatever the current
    directory is. An explicit `config` / `checkpoint` path wins over the name.
    Only the config's existence is checked here, to list the known model names
    in the error; the checkpoint is checked by whoever loads it (exported
    targets never need it).
    """
    if model is None and (config is None or checkpoint is None):
        raise UserError("--model is required unless both --config and --checkpoint are given")
    if config is None:
        config = os.path.join(REPO_DIR, "config", f"{model}-256.yaml")
        if not os.path.isfile(config):
            raise UserError(f"{config}: no config for model '{model}' "
                            f"(known models: {', '.join(known_models()) or 'none'})")
    if checkpoint is None:
        checkpoint = os.path.join(REPO_DIR, "checkpoint", f"{model}-cpk.pth.tar")
    return str(config), str(checkpoint)


def checkpoint_for_config(config_path):
    """The checkpoint that goes with `X/NAME-256.yaml` by the published naming rule, or None.

    `X/NAME-cpk.pth.tar` beside the config wins, then the repository's `checkpoint/NAME-cpk.pth.tar`;
    a config named otherwise, or whose checkpoint is in neither place, has none.
    """
    stem = os.path.splitext(os.path.basename(str(config_path)))[0]
    if not stem.endswith("-256"):
        return None
    name = f"{stem[:-len('-256')]}-cpk.pth.tar"
    for candidate in (os.path.join(os.path.dirname(str(config_path)), name), os.path.join(REPO_DIR, "checkpoint", name)):
        if os.path.isfile(candidate):
            return candidate
    return None


def published_checkpoint_missing(checkpoint_path):
    """The message for a `checkpoint/NAME-cpk.pth.tar` that is not there yet: where to get it."""
    return (f"{checkpoint_path}: no such file; download the published checkpoint into checkpoint/ "
            f"(see checkpoint/README.md), or give --config and --checkpoint")


def known_models():
    """Model names that have a `config/NAME-256.yaml`, sorted."""
    suffix = "-256.yaml"
    config_dir = os.path.join(REPO_DIR, "config")
    names = os.listdir(config_dir) if os.path.isdir(config_dir) else []
    return sorted(name[:-len(suffix)] for name in names if name.endswith(suffix))



# ----------------------------------------------------------------------------
# 3. Output naming
# ----------------------------------------------------------------------------

DEFAULT_OUTPUT = os.path.join("output", "result")


def output_path(output, source_image, driving_video, mode, dontappend):
    """The path run.py writes to, from `--output` (default `output/result`).

    Rules, in order:
      * a name ending in '/' or naming an existing directory is a folder of PNG
        frames and is returned with a trailing '/';
      * a name with an extension (`.mp4`, `.gif`, ...) is used as given;
      * a name without one gets `_<mode>.mp4` appended (`output/result` ->
        `output/result_animate.mp4`), unless `dontappend`, in which case it is
        used as given and written as mp4.
    Writing over `source_image` or `driving_video` is refused with UserError,
    since the render would destroy its own input.
    """
    output = str(output) if output else DEFAULT_OUTPUT
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        path = output.rstrip("/" + os.sep) + "/"
    elif os.path.splitext(output)[1] or dontappend:
        path = output
    else:
        path = f"{output}_{mode}.mp4"
    for role, input_path in (("source image", source_image), ("driving video", driving_video)):
        if input_path is not None and _same_path(path, input_path):
            raise UserError(f"{path}: output would overwrite the {role}")
    return path


def visualizer_path(output):
    """Where --visualizer writes beside an output: a.mp4 -> a_visualizer.mp4, frames/ -> frames_visualizer/."""
    if output.endswith("/"):
        return output.rstrip("/") + "_visualizer/"
    root, extension = os.path.splitext(output)
    return f"{root}_visualizer{extension}"


def _same_path(first, second):
    return os.path.realpath(first.rstrip("/" + os.sep) or "/") == os.path.realpath(str(second))



# ----------------------------------------------------------------------------
# 4. Atomic writes: a temporary name beside the destination, renamed when complete
# ----------------------------------------------------------------------------

def make_parent(path):
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise UserError(f"{path}: cannot create the folder {parent} ({os_reason(err)})") from err


def make_temp(path, is_dir):
    """A new, uniquely named file or folder beside `path`, with normal permissions.

    Its name is `<name>.tmp<random><extension>`: beside the destination so the
    final rename stays on one filesystem (atomic), and keeping the extension so
    ffmpeg and Pillow pick the right format.
    """
    parent, name = os.path.split(os.path.abspath(path))
    extension = "" if is_dir else os.path.splitext(name)[1]
    try:
        if is_dir:
            temp = tempfile.mkdtemp(prefix=f"{name}.tmp", dir=parent)
        else:
            handle, temp = tempfile.mkstemp(prefix=f"{name}.tmp", suffix=extension, dir=parent)
            os.close(handle)
    except OSError as err:
        raise UserError(f"{path}: cannot write there ({os_reason(err)})") from err
    # mkstemp/mkdtemp create private (0600/0700) entries; the result should
    # have the permissions any other new file gets.
    os.chmod(temp, (0o777 if is_dir else 0o666) & ~current_umask())
    return temp


def write_atomically(path, data):
    """Write bytes (or text, as UTF-8) to `path`: under a temporary name beside it, renamed when complete,
    so a reader never sees half a file and a failure leaves the previous file as it was."""
    make_parent(path)
    temp = make_temp(path, is_dir=False)
    try:
        with open(temp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def swap_in_dir(temp, dest):
    """Put the finished folder `temp` at `dest`. A folder cannot replace another atomically, so an existing
    `dest` is renamed aside first and deleted once the new one is in place."""
    if not os.path.exists(dest):
        os.rename(temp, dest)
        return
    old = make_temp(dest, is_dir=True)
    os.rmdir(old)
    os.rename(dest, old)
    os.rename(temp, dest)
    shutil.rmtree(old)


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask

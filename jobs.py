"""Batch runs (--datamode dataset, --jobs FILE.csv): their job list, results, completion records, failure logs.

A batch is many outputs. One bad input fails its own job only; a crashed or interrupted run, started
again, skips the outputs that are complete and were made with the same model and options (a small
record beside each output says so), and the in-process and Ray paths (cluster.py) write the same
files. TensorFlow-free, like everything run.prepare() uses.
"""
import contextlib
import csv
import glob
import hashlib
import json
import os
import shutil
import traceback
from dataclasses import dataclass, field, replace
from typing import Callable

import animate
import media
import utils

CSV_COLUMNS = ("source_image", "driving_video", "output")
RECORD_SUFFIX = ".done.json"  # `.<output name>.done.json`, hidden beside the output
LOG_SUFFIX = ".error.log"  # `<output>.error.log`, beside the output, while its job fails


@dataclass
class Job:
    """One driving clip rendered to one output; no source (None, and no `open_source`) means the clip's
    own first frame is the source (reconstruction).

    `open_driving()` opens the clip (a media.Clip) and `open_source()` reads the source only when the
    job's turn comes, so that a batch's inputs are read one job at a time, by whichever process
    renders it, and a bad one fails only its own job. Everything here pickles by reference, for Ray.
    """
    name: str
    open_driving: Callable
    source: object  # float32 [H, W, 3], or None
    output: str
    motion: animate.Motion = animate.Motion()
    driving_path: str = None
    source_path: str = None
    open_source: Callable = None  # reads `source` lazily (batch jobs)
    photo: object = None  # --crop: the full-resolution photo (uint8) the animated faces are pasted into
    faces: list = None  # --crop: [(source crop float32 [H, W, 3], faces.CropBox in the photo)], left to right
    key: str = None  # batch jobs: the fingerprint of model, options and inputs their completion record holds

    def with_source(self):
        """This job with its source read (a UserError if the image is missing or unreadable)."""
        if self.open_source is None:
            return self
        return replace(self, source=self.open_source(), open_source=None)


def read_source(path, frame_shape):
    """A batch job's source image, preprocessed as demo.py does."""
    utils.require_file(path, "an image", "source_image")
    return media.preprocess_frame(media.decode_image(path), frame_shape)


def first_frame(path, frame_shape):
    """A dataset job's source: the first frame of a dataset video, as the original PairedDataset."""
    with media.open_dataset_clip(path, frame_shape) as clip:
        for frame in clip:
            return frame
    raise utils.UserError(f"{path}: no frames")


@dataclass
class Result:
    """What one job left: frames written (and reconstruction's per-frame L1), or the one-line error."""
    name: str
    output: str
    frames: int = 0
    losses: list = field(default_factory=list)
    error: str = None
    log: str = None  # the failure's traceback file
    warnings: list = field(default_factory=list)  # said while a Ray worker rendered it, for the driver to print
    resumed: bool = False  # complete from an earlier run, not rendered again

    @property
    def ok(self):
        return self.error is None


@dataclass(frozen=True)
class CsvRow:
    line: int
    source_image: str  # None with --mode reconstruction
    driving_video: str
    output: str


def read_jobs_csv(path, needs_source=True):
    """The rows of a --jobs file: a header naming CSV_COLUMNS, then one job per row.

    Relative paths are resolved against the CSV's folder, so the file travels with its inputs. A
    malformed file (columns missing, an empty cell, two rows writing one output) is a UserError now; a
    row whose image or video is missing or broken fails only its own job, when its turn comes.
    """
    utils.require_file(path, "a CSV file of jobs", "--jobs")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise utils.UserError(f"--jobs {path}: the first line must name the columns "
                                      f"{','.join(CSV_COLUMNS)} (missing: {', '.join(missing)})")
            rows = [_csv_row(path, reader.line_num, row, folder, needs_source) for row in reader
                    if any((value or "").strip() for value in row.values())]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise utils.UserError(f"--jobs {path}: unreadable ({utils.first_line(err)})") from err
    if not rows:
        raise utils.UserError(f"--jobs {path}: no jobs (only a header)")
    _check_unique_outputs(path, rows)
    return rows


def _csv_row(path, line, row, folder, needs_source):
    cells = {column: (row.get(column) or "").strip() for column in CSV_COLUMNS}
    required = CSV_COLUMNS if needs_source else CSV_COLUMNS[1:]
    empty = [column for column in required if not cells[column]]
    if empty:
        raise utils.UserError(f"--jobs {path}, line {line}: no {' or '.join(empty)}")

    def resolved(value):
        return os.path.join(folder, os.path.expanduser(value)) if value else None

    output = resolved(cells["output"]) + ("/" if cells["output"].endswith("/") else "")
    return CsvRow(line, resolved(cells["source_image"]) if needs_source else None,
                  resolved(cells["driving_video"]), output)


def _check_unique_outputs(path, rows):
    seen = {}
    for row in rows:
        key = os.path.normpath(row.output)
        if key in seen:
            raise utils.UserError(f"--jobs {path}: lines {seen[key]} and {row.line} both write {row.output}")
        seen[key] = row.line


# --------------------------------------------------------------------------------------------------
# Completion records: an output is skipped on a re-run only if it is the one this model and options made
# --------------------------------------------------------------------------------------------------

def fingerprint(options):
    """A digest of everything that changes a job's pixels (model files, flags, inputs): JSON-able values."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_identity(path):
    """(size, mtime in ns) of a file, None when absent: a changed input or model file changes the key."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def record_path(output):
    parent, name = os.path.split(output.rstrip("/" + os.sep))
    return os.path.join(parent, f".{name}{RECORD_SUFFIX}")


def completed(name, output, key):
    """A Result for `output` when its record says this key made it and the output is still that file."""
    try:
        with open(record_path(output), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or record.get("output") != _output_state(output):
        return None
    return Result(name, output, int(record.get("frames", 0)), list(record.get("losses", [])), resumed=True)


def write_record(result, key):
    """Written after the output is in place, so a run killed between the two redoes the job."""
    record = {"key": key, "frames": result.frames, "losses": result.losses, "output": _output_state(result.output)}
    utils.write_atomically(record_path(result.output), json.dumps(record))


def _output_state(output):
    """What a complete output looks like now: a file's size and mtime, a frame folder's names and sizes."""
    path = output.rstrip("/" + os.sep)
    if os.path.isdir(path):
        return sorted([entry.name, entry.stat().st_size] for entry in os.scandir(path) if entry.is_file())
    return file_identity(path)


# --------------------------------------------------------------------------------------------------
# Failures: one line on the terminal, the traceback in a log beside the output
# --------------------------------------------------------------------------------------------------

def report_failure(result):
    """The terminal's one line for a failed job."""
    utils.print_error(f"{result.name}: {result.error}" + (f" (traceback in {result.log})" if result.log else ""))


def log_path(output):
    return output.rstrip("/" + os.sep) + LOG_SUFFIX


def write_failure_log(output, name, error):
    """The failed job's traceback (the terminal shows one line); returns the log's path."""
    path = log_path(output)
    text = f"job {name} -> {output}\n" + "".join(traceback.format_exception(error))
    try:
        utils.write_atomically(path, text)
    except (OSError, utils.UserError):
        return None  # the output's folder is not writable: the one line on the terminal still says why
    return path


def clear_failure_log(output):
    """A job that succeeds on a later run leaves no stale log behind."""
    with contextlib.suppress(OSError):
        os.remove(log_path(output))


def remove_partial(*outputs):
    """Delete what a killed or interrupted job left under temporary names beside its outputs.

    Outputs are written as `<name>.tmp<random>...` and renamed when complete (utils.make_temp); a worker
    killed with -9 never renames, so its temporaries are removed by whoever learns of its death.
    """
    for output in outputs:
        path = output.rstrip("/" + os.sep)
        parent, name = os.path.split(path)
        for temp in glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + ".tmp*")) + \
                glob.glob(os.path.join(glob.escape(parent), "." + glob.escape(name) + RECORD_SUFFIX + ".tmp*")):
            with contextlib.suppress(OSError):
                shutil.rmtree(temp) if os.path.isdir(temp) else os.remove(temp)


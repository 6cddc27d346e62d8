"""The inference pipeline, independent of where the three models run (direct, SavedModel, TF Lite).

Source keypoints once; then per batch of driving frames: kp_detector, process_kp_driving (relative
motion, the original's normalize_kp), generator. The caller supplies a `Models` whose three callables
take and return numpy arrays keyed by the SPEC signature names.

Built on that pipeline: per-frame outputs with keypoints (for the visualizer), reconstruction and its
L1 (the original reconstruction.py), the best start frame (the original demo.py's --find_best_frame,
with the model's own keypoints) and per-stage timing (run.py --profile).
"""
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, replace
from collections.abc import Mapping
from typing import Callable, Iterable, Iterator

import numpy as np


@dataclass
class Models:
    """The three exported modules of one model, as callables over numpy arrays.

    kp_detector(img=[B,H,W,C]) -> {'value', 'jacobian'?};
    process_kp_driving(kp_driving=..., kp_driving_initial=..., kp_source=..., use_relative_jacobian=,
    adapt_movement_scale=) -> {'value', 'jacobian'?}; generator(source_image=[1,H,W,C], kp_driving=...,
    kp_source=...) -> {'prediction', ...}. Jacobian arguments are named `<kp name>_jacobian`.
    With `prescale`, kp_detector also returns 'source_image_scaled' and the generator takes it.

    Optional, used together when both are given: source_encoder(source_image=) -> {'source_features',
    'source_image_scaled'} runs the generator's source-only work once per video, and
    generator_cached(source_image=, source_features=, source_image_scaled=, kp_driving=..., kp_source=...)
    does the rest per batch, with the generator's outputs.

    `stage(name)` is a context manager around work done once per video (the source's encoding, the
    best start frame's search); run.py --profile's `timed_models` times it as one stage, and
    otherwise it does nothing.

    `wait()` returns once every module is loaded or built, some of them on a thread (run.py waits in batch
    runs), and raises what made one fail; a module's first call waits for it alike.
    """
    kp_detector: Callable
    process_kp_driving: Callable
    generator: Callable
    estimate_jacobian: bool
    prescale: bool = False
    source_encoder: Callable = None
    generator_cached: Callable = None
    stage: Callable = contextlib.nullcontext
    wait: Callable = lambda: None  # noqa: E731

    @property
    def cached(self):
        """Whether the generator's source-only work can run once per video (source_encoder + generator_cached)."""
        return self.source_encoder is not None and self.generator_cached is not None


def jacobian_key(name):
    """The signatures' name of a keypoint set's jacobians: kp_source -> kp_source_jacobian."""
    return f"{name}_jacobian"


def kp_arguments(kp, name):
    """{'value', 'jacobian'} -> {name: value, name_jacobian: jacobian} as the signatures want them."""
    args = {name: kp["value"]}
    if "jacobian" in kp:
        args[jacobian_key(name)] = kp["jacobian"]
    return args


def kp_from_arguments(arguments, name):
    """The inverse of kp_arguments: {'value', 'jacobian' (when there)} from signature inputs."""
    kp = {"value": arguments[name]}
    if jacobian_key(name) in arguments:
        kp["jacobian"] = arguments[jacobian_key(name)]
    return kp


def batches(frames: Iterable[np.ndarray], batch_size: int, first_size=None) -> Iterator[np.ndarray]:
    """Group a stream of [H, W, C] frames into [b, H, W, C] arrays of at most batch_size (the first one of
    at most `first_size`, when given)."""
    batch, size = [], first_size or batch_size
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch)
            batch, size = [], batch_size
    if batch:
        yield np.stack(batch)


def pad_batch(batch, batch_size):
    """Repeat the last frame so a short final batch fits a static batch size."""
    missing = batch_size - len(batch)
    if missing <= 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])


@dataclass(frozen=True)
class Motion:
    """How the driving keypoints move the source: the original normalize_kp's three options."""
    relative: bool = False  # use_relative_movement: follow the motion since the initial driving frame
    adapt: bool = False  # adapt_movement_scale: scale it by the source's and driver's convex-hull areas
    relative_jacobian: bool = True  # use_relative_jacobian: with relative motion, the jacobian too (demo.py)


@dataclass(frozen=True)
class Batching:
    """Driving frames per model call; `exact` pads every batch to `size` (static-batch exports)."""
    size: int = 1
    exact: bool = False


class Animator:
    """Animates one source image; feed it driving batches in order.

    Relative motion is measured from `kp_driving_initial` ({'value', 'jacobian'?}, batch of one) when
    given, else from the first driving frame, as the original.
    """

    def __init__(self, models: Models, source_image, motion=Motion(), batching=Batching(), kp_driving_initial=None):
        self.models = models
        self.motion = motion
        self.batching = batching
        self.source = np.asarray(source_image, np.float32)[None]  # [1, H, W, C]
        with models.stage("source encoding"):
            self.kp_source, self.source_scaled = self.source_keypoints()
            self.source_encoded = models.source_encoder(source_image=self.source) if models.cached else None
        self.kp_driving_initial = kp_driving_initial

    def source_keypoints(self):
        """Source keypoints, and with prescale the downscaled source the generator reuses.

        A kp_detector with a static batch size only takes full batches, so with exact_batch the
        source is repeated to the batch size and the first result kept. The generator takes the
        source as a batch of one whatever the batch size, so it is never tiled there.
        """
        source = pad_batch(self.source, self.batching.size) if self.batching.exact else self.source
        out = {k: np.asarray(v)[:1] for k, v in self.models.kp_detector(img=source).items()}
        scaled = out.pop("source_image_scaled", None)
        return out, scaled if self.models.prescale else None

    def driving_keypoints(self, driving):
        """Keypoints detected in a batch of driving frames."""
        return {k: v for k, v in self.models.kp_detector(img=driving).items() if k in ("value", "jacobian")}

    def followed_keypoints(self, kp_driving):
        """Keypoints the generator should follow for detected driving keypoints (relative motion or as is)."""
        if self.kp_driving_initial is None:
            self.kp_driving_initial = {k: v[:1] for k, v in kp_driving.items()}
        if not self.motion.relative:
            return kp_driving
        return self.models.process_kp_driving(
            **kp_arguments(kp_driving, "kp_driving"),
            **kp_arguments(self.kp_driving_initial, "kp_driving_initial"),
            **kp_arguments(self.kp_source, "kp_source"),
            use_relative_jacobian=np.float32(1.0 if self.motion.relative_jacobian else 0.0),
            adapt_movement_scale=np.float32(1.0 if self.motion.adapt else 0.0))

    def animate_batch(self, driving):
        """[b, H, W, C] driving frames -> generator outputs for those b frames, plus the keypoint values
        detected ('kp_driving') and followed ('kp_norm'), [b, K, 2] each."""
        count = len(driving)
        if self.batching.exact:
            driving = pad_batch(driving, self.batching.size)
        kp_driving = self.driving_keypoints(np.asarray(driving, np.float32))
        kp_norm = self.followed_keypoints(kp_driving)
        out = self.generate(kp_norm)
        out = {**out, "kp_driving": kp_driving["value"], "kp_norm": kp_norm["value"]}
        return {k: np.asarray(v)[:count] for k, v in out.items()}

    def generate(self, kp_norm):
        """Generator outputs for the followed keypoints; from the encoded source when the models allow it."""
        keypoints = {**kp_arguments(kp_norm, "kp_driving"), **kp_arguments(self.kp_source, "kp_source")}
        if self.source_encoded is not None:
            return self.models.generator_cached(source_image=self.source, **self.source_encoded, **keypoints)
        scaled = {} if self.source_scaled is None else {"source_image_scaled": self.source_scaled}
        return self.models.generator(source_image=self.source, **scaled, **keypoints)


def animate(models: Models, source_image, driving_frames: Iterable[np.ndarray], relative=False, adapt=False,
            batch_size=1, exact_batch=False) -> Iterator[np.ndarray]:
    """Yield predicted frames [H, W, C] float32 in [0, 1], one per driving frame, streaming."""
    animator = Animator(models, source_image, Motion(relative, adapt), Batching(batch_size, exact_batch))
    for driving in batches(driving_frames, batch_size):
        yield from animator.animate_batch(driving)["prediction"]


GENERATOR_MODULES = ("generator", "source_encoder", "generator_cached")


def direct_modules(config, state_dicts, where="checkpoint", prescale=False, precision="float32") -> "DirectModules":
    """The direct target's tf.Modules, {name: modules.SignatureModule}: kp_detector, process_kp_driving,
    generator and the source_encoder + generator_cached pair, all built and traced in this process.

    One loaded generator serves the three generator modules. From a checkpoint's tensors they are built,
    and the pair traced, on a thread, while this one builds the keypoint modules and the caller runs
    them; reading one of them waits for it (DirectModules). state_dicts None keeps random weights
    (benchmark.py), all built here. precision 'bfloat16' runs the generator's heavy convolutions in
    bfloat16 (modules.load_generator's section 6 blocks); keypoints stay float32. This is the expensive
    step (Keras build, weight assignment, fused rewrites, first traces) that model_cache saves.
    """
    import modules
    import utils

    build = (config, state_dicts, where, prescale, precision)
    if state_dicts is not None:
        generator = utils.LoadedOnThread(generator_modules, *build, name="build-generator").wait
    else:
        built = generator_modules(*build)
        generator = lambda: built  # noqa: E731
    keypoints = {"kp_detector": modules.build_module("kp_detector", config, state_dicts, where, prescale=prescale),
                 "process_kp_driving": modules.build_module("process_kp_driving", config)}
    return DirectModules(keypoints, generator)


def generator_modules(config, state_dicts, where, prescale, precision) -> dict:
    """direct_modules' GENERATOR_MODULES, over one fused generator, the pair traced."""
    import modules

    generator = modules.load_generator(config, state_dicts, where, precision)
    built = {"generator": modules.GeneratorModule(generator, prescale=prescale),
             "source_encoder": modules.SourceEncoderModule(generator),
             "generator_cached": modules.CachedGeneratorModule(generator)}
    for name in ("source_encoder", "generator_cached"):
        built[name].concrete_function()  # traced here: on a thread, while the keypoints run
    return built


class DirectModules(Mapping):
    """direct_modules' {name: module}: the keypoint modules, and GENERATOR_MODULES from `generator()`
    (a utils.LoadedOnThread's wait, or their dict at hand), which reading one of them waits for."""

    def __init__(self, keypoints, generator):
        self.keypoints = keypoints
        self.generator = generator

    def __getitem__(self, name):
        return self.generator()[name] if name in GENERATOR_MODULES else self.keypoints[name]

    def __iter__(self):
        return iter((*self.keypoints, *GENERATOR_MODULES))

    def __len__(self):
        return len(self.keypoints) + len(GENERATOR_MODULES)

    def wait(self):
        """Once the generator's modules are built; raises what made their build fail."""
        self.generator()


def models_from_calls(calls: dict, estimate_jacobian, prescale=False, wait=lambda: None) -> Models:
    """Models over {module name: callable} as direct_modules (or a cached SavedModel's signatures) name them;
    `wait`: Models.wait.

    Without a 'generator' (the model cache keeps only the pair), the generator is the pair run in turn.
    """
    generator = calls.get("generator") or generator_from_pair(calls["source_encoder"], calls["generator_cached"])
    return Models(calls["kp_detector"], calls["process_kp_driving"], generator, estimate_jacobian, prescale,
                  source_encoder=calls["source_encoder"], generator_cached=calls["generator_cached"], wait=wait)


def generator_from_pair(source_encoder, generator_cached):
    """The generator's call made of the source_encoder + generator_cached pair, which give its outputs.

    A prescale generator's `source_image_scaled` is not needed: the encoder downscales the source alike.
    """
    def generator(source_image, source_image_scaled=None, **keypoints):
        encoded = source_encoder(source_image=source_image)
        return generator_cached(source_image=source_image, **encoded, **keypoints)

    return generator


def numpy_calls(tf_modules: dict) -> dict:
    """{name: module} -> {name: callable taking and returning numpy arrays}. Each module is looked up at
    its call, so that a DirectModules' generator is waited for only when first run."""
    def numpy_call(name):
        return lambda **kwargs: {k: v.numpy() for k, v in tf_modules[name](**kwargs).items()}

    return {name: numpy_call(name) for name in tf_modules}


def direct_models(config, state_dicts, where="checkpoint", prescale=False, precision="float32") -> Models:
    """Models for the direct target: the Keras models wrapped in their tf.Modules, in this process
    (run.py goes through model_cache, which builds them with direct_modules on a miss)."""
    tf_modules = direct_modules(config, state_dicts, where, prescale, precision)
    return models_from_calls(numpy_calls(tf_modules), config.estimate_jacobian, prescale, tf_modules.wait)


# --------------------------------------------------------------------------------------------------
# Per-frame outputs: what the visualizer and the reconstruction metrics need
# --------------------------------------------------------------------------------------------------

def animate_frames(models: Models, source_image, driving_frames: Iterable[np.ndarray], motion=Motion(),
                   batching=Batching(), kp_driving_initial=None) -> Iterator[tuple]:
    """Yield (driving frame, outputs) per driving frame, streaming.

    `outputs` holds that frame's generator outputs ('prediction' and, unless the generator was built
    prediction-only, 'mask', 'occlusion_map', 'deformed') and the keypoint values [K, 2]
    'kp_source', 'kp_driving' (detected) and 'kp_norm' (followed by the generator).
    """
    animator = Animator(models, source_image, motion, batching, kp_driving_initial)
    kp_source = animator.kp_source["value"][0]
    # The first frame alone, so it is written (and the progress bar starts) without waiting for a whole
    # batch; a static batch size (exact_batch) pads every batch anyway.
    first_size = batching.size if batching.exact else 1
    for driving in batches(driving_frames, batching.size, first_size):
        out = animator.animate_batch(driving)
        for index, frame in enumerate(driving):
            yield frame, {"kp_source": kp_source, **{k: v[index] for k, v in out.items()}}


# --------------------------------------------------------------------------------------------------
# Reconstruction (the original reconstruction.py)
# --------------------------------------------------------------------------------------------------

def reconstruct_frames(models: Models, frames: Iterable[np.ndarray], batching=Batching()):
    """Reconstruct a video from its own first frame, as the original reconstruction.py.

    Frame 0 is the source and every frame, frame 0 included, drives it with absolute keypoints.
    Yields (real frame, outputs) like `animate_frames`.
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        return
    yield from animate_frames(models, first, itertools.chain([first], frames), Motion(relative=False), batching)


def reconstruction_l1(prediction, frame):
    """Mean absolute difference of a prediction and the real frame, both float in [0, 1].

    reconstruction.py's per-frame loss, `torch.abs(out['prediction'] - driving).mean()`; its reported
    number is the mean over every frame of every video.
    """
    return float(np.mean(np.abs(np.asarray(prediction, np.float64) - np.asarray(frame, np.float64))))


# --------------------------------------------------------------------------------------------------
# Best start frame (the original demo.py's --find_best_frame, with the model's own keypoints)
# --------------------------------------------------------------------------------------------------

def frame_keypoints(models: Models, frames: Iterable[np.ndarray], batching=Batching()):
    """Yield kp_detector's {'value' [K, 2], 'jacobian' [K, 2, 2]?} for each frame, streaming."""
    for batch in batches(frames, batching.size):
        images = pad_batch(batch, batching.size) if batching.exact else batch
        out = models.kp_detector(img=np.asarray(images, np.float32))
        kp = {k: np.asarray(out[k]) for k in ("value", "jacobian") if k in out}
        for index in range(len(batch)):
            yield {k: v[index] for k, v in kp.items()}


def convex_hull_area(points) -> float:
    """Area of the convex hull of [N, 2] points (Andrew's monotone chain, then the shoelace formula).

    Equals scipy's `ConvexHull(points).volume`; 0 for fewer than three points or collinear ones.
    """
    ordered = sorted(map(tuple, np.asarray(points, np.float64)))

    def half_hull(sequence):
        hull = []
        for point in sequence:
            # Pop while the last two hull points and this one do not turn counter-clockwise.
            while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) <= 0:
                hull.pop()
            hull.append(point)
        return hull[:-1]

    hull = np.array(half_hull(ordered) + half_hull(reversed(ordered)))
    if len(hull) < 3:
        return 0.0
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _cross(origin, a, b):
    """z of (a - origin) x (b - origin): positive for a counter-clockwise turn."""
    return (a[0] - origin[0]) * (b[1] - origin[1]) - (a[1] - origin[1]) * (b[0] - origin[0])


def normalized_pose(kp_value):
    """[K, 2] keypoints centred on their mean and divided by the square root of their hull's area.

    demo.py's find_best_frame normalises face landmarks this way so that position and size do not
    count, only the pose. A degenerate (zero-area) hull is left unscaled rather than divided by zero.
    """
    kp = np.asarray(kp_value, np.float64)
    kp = kp - kp.mean(axis=0, keepdims=True)
    area = convex_hull_area(kp)
    return kp / np.sqrt(area) if area > 0 else kp


def pose_distance(pose_a, pose_b):
    """demo.py's find_best_frame distance: the sum of squared differences of two normalised poses."""
    return float(((pose_a - pose_b) ** 2).sum())


def find_best_frame(models: Models, source_image, driving_frames: Iterable[np.ndarray], batching=Batching()):
    """(index, keypoints) of the driving frame whose pose is closest to the source's.

    The original demo.py compares face-alignment landmarks; this compares the model's own keypoints,
    so it needs no extra package and works for any domain. Ties go to the earliest frame, as there.
    Streams the frames; raises ValueError when there are none.

    The keypoints ({'value', 'jacobian'?}, batch of one) are the `kp_driving_initial` to animate with.
    demo.py animates frames index..end forward and index..0 backward, both relative to frame `index`,
    and writes `backward[::-1] + forward[1:]`: every frame once, in driving order. A prediction
    depends only on its own frame, the source and frame `index`, so one pass in driving order with
    that `kp_driving_initial` gives the same frames while streaming.
    """
    with models.stage("best frame"):
        kp_source = next(frame_keypoints(models, [source_image], batching))
        source_pose = normalized_pose(kp_source["value"])
        best = None
        for index, kp in enumerate(frame_keypoints(models, driving_frames, batching)):
            distance = pose_distance(source_pose, normalized_pose(kp["value"]))
            if best is None or distance < best[0]:
                best = (distance, index, kp)
    if best is None:
        raise ValueError("no driving frames")
    _, index, kp = best
    return index, {k: v[None] for k, v in kp.items()}


def keypoints_at(models: Models, driving_frames: Iterable[np.ndarray], index, batching=Batching()):
    """Keypoints ({'value', 'jacobian'?}, batch of one) of driving frame `index`, for `--best_frame`.

    Decodes the frames up to `index` only. Raises IndexError naming the frame count when the video
    is shorter.
    """
    with models.stage("best frame"):
        count, frame = 0, None
        for count, frame in enumerate(itertools.islice(driving_frames, index + 1), start=1):
            pass
        if count <= index:
            raise IndexError(f"frame {index} is out of range: the video has {count} frames (0-{count - 1})")
        kp = next(frame_keypoints(models, [frame], batching))
    return {k: v[None] for k, v in kp.items()}


# --------------------------------------------------------------------------------------------------
# Per-stage timing (run.py --profile)
# --------------------------------------------------------------------------------------------------

# Stages run.py --profile shows per frame; any other stage (load models, source encoding, best frame)
# runs once per run or per video and is shown as a total.
PER_FRAME_STAGES = ("kp_detector", "process_kp_driving", "generator", "decode", "crop+resize", "encode", "paste",
                    "visualizer")


class Timings:
    """Wall time and calls per stage, and run.py --profile's table of them.

    A stage timed while another one is being timed is part of that one and not counted on its own:
    the kp_detector call on the source is source encoding, not one more kp_detector batch.
    """

    def __init__(self):
        self.seconds = {}
        self.calls = {}
        # The stage being timed now, per thread: run.py --crop finds faces on a thread of its own while
        # the model loads, and both are stages.
        self._local = threading.local()

    @property
    def _open(self):
        return getattr(self._local, "open", None)

    @_open.setter
    def _open(self, stage):
        self._local.open = stage

    def add(self, stage, seconds, calls=1):
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.calls[stage] = self.calls.get(stage, 0) + calls

    @contextlib.contextmanager
    def stage(self, name, calls=1):
        """Time the block as `calls` calls of `name` (unless it runs inside another stage)."""
        if self._open is not None:
            yield
            return
        self._open, start = name, time.perf_counter()
        try:
            yield
        finally:
            self._open = None
            self.add(name, time.perf_counter() - start, calls)

    def timed(self, stage, function):
        """`function` wrapped so each call is timed as a call of `stage`."""
        def call(*args, **kwargs):
            with self.stage(stage):
                return function(*args, **kwargs)

        return call

    def timed_iter(self, stage, iterable):
        """Yield from `iterable`, timing the making of each item (e.g. decoding a frame) as a call of
        `stage`; the last look, which finds no item, adds its time but no call."""
        iterator = iter(iterable)
        while True:
            with self.stage(stage, calls=0):
                item = next(iterator, _END)
            if item is _END:
                return
            self.add(stage, 0.0)  # one call per item, counted once it has come
            yield item

    def summary(self, frames, total_seconds):
        """The table: totals for the once-per-run-or-video stages, and ms per output frame as well for the
        per-frame ones; each stage's calls and share of the run."""
        per_frame = sorted((s for s in self.seconds if s in PER_FRAME_STAGES), key=self.seconds.get, reverse=True)
        once = [s for s in self.seconds if s not in PER_FRAME_STAGES]
        other = max(total_seconds - sum(self.seconds.values()), 0.0)

        def row(name, calls, seconds, ms_per_frame=""):
            return (f"  {name:<26}{calls:>6}{seconds:>10.3f}{ms_per_frame:>10}"
                    f"{seconds / max(total_seconds, 1e-9):>8.1%}")

        return "\n".join([
            f"profile: {frames} frames in {total_seconds:.2f} s ({frames / max(total_seconds, 1e-9):.1f} frames/s)",
            f"  {'once per run or video':<26}{'calls':>6}{'total s':>10}{'':>10}{'share':>8}",
            *(row(s, self.calls[s], self.seconds[s]) for s in once),
            row("other (imports, setup)", "", other),
            f"  {'per frame':<26}{'calls':>6}{'total s':>10}{'ms/frame':>10}{'share':>8}",
            *(row(s, self.calls[s], self.seconds[s], f"{1000 * self.seconds[s] / max(frames, 1):.1f}")
              for s in per_frame)])


_END = object()  # timed_iter's mark for an iterator's end


# Module -> the stage run.py --profile counts it under: the cached generator's per-batch half counts as
# "generator", so the table compares like with like whichever runs; its source half is source encoding.
PROFILE_STAGES = {"kp_detector": "kp_detector", "process_kp_driving": "process_kp_driving", "generator": "generator",
                  "source_encoder": "source encoding", "generator_cached": "generator"}


def timed_models(models: Models, timings: Timings, stages=None) -> Models:
    """The same Models with each module's calls timed under its stage.

    With the default PROFILE_STAGES (run.py --profile) the once-per-video work is timed as its own
    stages too; benchmark.py passes every module under its own name and times modules only.
    """
    once_per_video = {"stage": timings.stage} if stages is None else {}
    stages = PROFILE_STAGES if stages is None else stages
    return replace(models, **once_per_video,
                   **{field: timings.timed(stage, getattr(models, field)) for field, stage in stages.items()
                      if getattr(models, field, None) is not None})

"""The inference pipeline, independent of where the three models run (direct, SavedModel, TF Lite).

Source keypoints once; then per batch of driving frames: kp_detector, process_kp_driving (relative
motion, the original's normalize_kp), generator. The caller supplies a `Models` whose three callables
take and return numpy arrays keyed by the SPEC signature names.
"""
from dataclasses import dataclass
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
    """
    kp_detector: Callable
    process_kp_driving: Callable
    generator: Callable
    estimate_jacobian: bool
    prescale: bool = False


def kp_arguments(kp, name):
    """{'value', 'jacobian'} -> {name: value, name_jacobian: jacobian} as the signatures want them."""
    args = {name: kp["value"]}
    if "jacobian" in kp:
        args[f"{name}_jacobian"] = kp["jacobian"]
    return args


def batches(frames: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Group a stream of [H, W, C] frames into [b, H, W, C] arrays of at most batch_size."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def pad_batch(batch, batch_size):
    """Repeat the last frame so a short final batch fits a static batch size."""
    missing = batch_size - len(batch)
    if missing <= 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])


class Animator:
    """Animates one source image; feed it driving batches in order."""

    def __init__(self, models: Models, source_image, relative=False, adapt=False, batch_size=1, exact_batch=False):
        self.models = models
        self.relative = relative
        self.adapt = adapt
        self.batch_size = batch_size
        self.exact_batch = exact_batch
        self.source = np.asarray(source_image, np.float32)[None]  # [1, H, W, C]
        self.kp_source, self.source_scaled = self.source_keypoints()
        self.kp_driving_initial = None

    def source_keypoints(self):
        """Source keypoints, and with prescale the downscaled source the generator reuses.

        A kp_detector with a static batch size only takes full batches, so with exact_batch the
        source is repeated to the batch size and the first result kept. The generator takes the
        source as a batch of one whatever the batch size, so it is never tiled there.
        """
        source = pad_batch(self.source, self.batch_size) if self.exact_batch else self.source
        out = {k: np.asarray(v)[:1] for k, v in self.models.kp_detector(img=source).items()}
        scaled = out.pop("source_image_scaled", None)
        return out, scaled if self.models.prescale else None

    def driving_keypoints(self, driving):
        """Keypoints the generator should follow for a batch of driving frames."""
        kp_driving = {k: v for k, v in self.models.kp_detector(img=driving).items() if k in ("value", "jacobian")}
        if self.kp_driving_initial is None:
            self.kp_driving_initial = {k: v[:1] for k, v in kp_driving.items()}
        if not self.relative:
            return kp_driving
        return self.models.process_kp_driving(
            **kp_arguments(kp_driving, "kp_driving"),
            **kp_arguments(self.kp_driving_initial, "kp_driving_initial"),
            **kp_arguments(self.kp_source, "kp_source"),
            use_relative_jacobian=np.float32(1.0),
            adapt_movement_scale=np.float32(1.0 if self.adapt else 0.0))

    def animate_batch(self, driving):
        """[b, H, W, C] driving frames -> generator outputs for those b frames."""
        count = len(driving)
        if self.exact_batch:
            driving = pad_batch(driving, self.batch_size)
        kp_norm = self.driving_keypoints(np.asarray(driving, np.float32))
        scaled = {} if self.source_scaled is None else {"source_image_scaled": self.source_scaled}
        out = self.models.generator(source_image=self.source, **scaled, **kp_arguments(kp_norm, "kp_driving"),
                                    **kp_arguments(self.kp_source, "kp_source"))
        return {k: np.asarray(v)[:count] for k, v in out.items()}


def animate(models: Models, source_image, driving_frames: Iterable[np.ndarray], relative=False, adapt=False,
            batch_size=1, exact_batch=False) -> Iterator[np.ndarray]:
    """Yield predicted frames [H, W, C] float32 in [0, 1], one per driving frame, streaming."""
    animator = Animator(models, source_image, relative, adapt, batch_size, exact_batch)
    for driving in batches(driving_frames, batch_size):
        yield from animator.animate_batch(driving)["prediction"]


def direct_models(config, state_dicts, where="checkpoint", prescale=False) -> Models:
    """Models for the direct target: the Keras models wrapped in their tf.Modules, in this process."""
    import modules

    kp_detector = modules.build_kp_detector(config, state_dicts, where, prescale=prescale)
    generator = modules.build_generator(config, state_dicts, where, prescale=prescale)
    process = modules.build_process_kp_driving(config)

    def numpy_call(module):
        return lambda **kwargs: {k: v.numpy() for k, v in module(**kwargs).items()}

    return Models(numpy_call(kp_detector), numpy_call(process), numpy_call(generator), config.estimate_jacobian,
                  prescale)

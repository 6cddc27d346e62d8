"""A config file, parsed and validated once: the model's shape (ModelConfig) and the run parameters.

The original's YAML (`config/*-256.yaml`) holds `model_params` (the networks), `dataset_params`
(frame_shape, root_dir, pairs_list), `animate_params`, `reconstruction_params` and
`visualizer_params`. `load(path)` checks every key inference reads, naming the file and the key on
a mistake (utils.UserError), and returns one frozen `Config`; nothing downstream validates again.
TensorFlow-free: run.py checks a user's config before TensorFlow loads.
"""
import math
import numbers
from dataclasses import dataclass

import yaml

import utils


@dataclass(frozen=True)
class KPDetectorConfig:
    block_expansion: int
    max_features: int
    num_blocks: int
    temperature: float
    scale_factor: float = 1.0
    single_jacobian_map: bool = False
    pad: int = 0


@dataclass(frozen=True)
class DenseMotionConfig:
    block_expansion: int
    max_features: int
    num_blocks: int
    scale_factor: float = 1.0
    kp_variance: float = 0.01


@dataclass(frozen=True)
class GeneratorConfig:
    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    estimate_occlusion_map: bool = False
    dense_motion: DenseMotionConfig = None


@dataclass(frozen=True)
class ModelConfig:
    frame_shape: tuple  # (H, W, C)
    num_kp: int
    num_channels: int
    estimate_jacobian: bool
    kp_detector: KPDetectorConfig
    generator: GeneratorConfig

    @property
    def height(self):
        return self.frame_shape[0]

    @property
    def width(self):
        return self.frame_shape[1]


@dataclass(frozen=True)
class Config:
    """One config file: the model and the parameters of the original's run modes (plain mappings)."""
    path: str
    model: ModelConfig
    dataset_params: dict
    animate_params: dict
    reconstruction_params: dict
    visualizer_params: dict
    raw: dict  # the whole YAML mapping, for the original's own constructors (benchmark.py, fixtures)

    @property
    def frame_shape(self):
        return self.model.frame_shape


# The model_params entries inference reads, as the original's YAML spells them:
# (dotted key under model_params, kind, required). A typo is reported with the file and key instead
# of surfacing as a TensorFlow error.
MODEL_PARAMS = (
    ("common_params.num_kp", "size", True),
    ("common_params.num_channels", "size", True),
    ("common_params.estimate_jacobian", "flag", False),
    ("kp_detector_params.temperature", "positive number", True),
    ("kp_detector_params.block_expansion", "size", True),
    ("kp_detector_params.max_features", "size", True),
    ("kp_detector_params.num_blocks", "size", True),
    ("kp_detector_params.scale_factor", "positive number", False),
    ("kp_detector_params.single_jacobian_map", "flag", False),
    ("kp_detector_params.pad", "padding", False),
    ("generator_params.block_expansion", "size", True),
    ("generator_params.max_features", "size", True),
    ("generator_params.num_down_blocks", "count", True),
    ("generator_params.num_bottleneck_blocks", "count", True),
    ("generator_params.estimate_occlusion_map", "flag", False),
    ("generator_params.dense_motion_params.block_expansion", "size", True),
    ("generator_params.dense_motion_params.max_features", "size", True),
    ("generator_params.dense_motion_params.num_blocks", "size", True),
    ("generator_params.dense_motion_params.scale_factor", "positive number", False),
    ("generator_params.dense_motion_params.kp_variance", "positive number", False),
)

_KIND_TEXT = {
    "size": "a positive integer",
    "count": "a non-negative integer",
    "positive number": "a positive number",
    "flag": "true or false",
    "padding": "a non-negative integer or a list of them",
}


def load(path):
    """Read, check and parse a config file; UserError naming the file and the key at fault."""
    path = str(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise utils.UserError(f"{path}: not a config (expected a YAML mapping, got {type(raw).__name__})")
    if not isinstance(raw.get("model_params"), dict):
        raise utils.UserError(f"{path}: missing 'model_params'")
    dataset_params = raw.get("dataset_params")
    if not isinstance(dataset_params, dict) or "frame_shape" not in dataset_params:
        raise utils.UserError(f"{path}: missing 'dataset_params.frame_shape'")
    if not _is_frame_shape(dataset_params["frame_shape"]):
        raise utils.UserError(f"{path}: 'dataset_params.frame_shape' must be [height, width, channels] "
                              f"of positive integers, got {utils.short_repr(dataset_params['frame_shape'])}")
    _check_model_params(path, raw["model_params"])
    model = _model_config(raw["model_params"], tuple(dataset_params["frame_shape"]))
    if model.frame_shape[2] != model.num_channels:
        raise utils.UserError(f"{path}: 'dataset_params.frame_shape' {list(model.frame_shape)} must end with "
                              f"num_channels ({model.num_channels})")
    return Config(path, model, dataset_params, _mapping(raw, "animate_params"), _mapping(raw, "reconstruction_params"),
                  _mapping(raw, "visualizer_params"), raw)


def _read_yaml(path):
    utils.require_file(path, "a config file")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise utils.UserError(f"{path}: cannot read config ({utils.first_line(err)})") from err
    except yaml.YAMLError as err:
        raise utils.UserError(f"{path}: not valid YAML ({_describe_yaml_error(err)})") from err


def _mapping(raw, key):
    """A run-mode section, {} when absent (the original's defaults then apply where it is read)."""
    return raw.get(key) if isinstance(raw.get(key), dict) else {}


def _model_config(params, frame_shape):
    """ModelConfig from model_params already checked by _check_model_params (unknown keys ignored)."""
    common = params["common_params"]
    generator = dict(params["generator_params"])
    dense = generator.pop("dense_motion_params")
    kp_detector = dict(params["kp_detector_params"])
    if isinstance(kp_detector.get("pad"), list):
        kp_detector["pad"] = kp_detector["pad"][0]  # the original's nn.Conv2d takes the first value
    return ModelConfig(
        frame_shape=frame_shape,
        num_kp=common["num_kp"],
        num_channels=common["num_channels"],
        estimate_jacobian=bool(common.get("estimate_jacobian", False)),
        kp_detector=_known_fields(KPDetectorConfig, kp_detector),
        generator=_known_fields(GeneratorConfig, generator,
                                dense_motion=_known_fields(DenseMotionConfig, dense)),
    )


def _known_fields(cls, params, **extra):
    return cls(**{key: value for key, value in params.items() if key in cls.__dataclass_fields__}, **extra)


def _check_model_params(path, model_params):
    """UserError naming the first MODEL_PARAMS entry that is missing or of the wrong kind."""
    for key, kind, required in MODEL_PARAMS:
        *sections, name = key.split(".")
        parent, where = model_params, "model_params"
        for section in sections:
            where = f"{where}.{section}"
            if section not in parent:
                raise utils.UserError(f"{path}: missing '{where}'")
            if not isinstance(parent[section], dict):
                raise utils.UserError(f"{path}: '{where}' must be a mapping, got {utils.short_repr(parent[section])}")
            parent = parent[section]
        if name not in parent:
            if required:
                raise utils.UserError(f"{path}: missing '{where}.{name}'")
            continue
        if not _is_kind(parent[name], kind):
            raise utils.UserError(f"{path}: '{where}.{name}' must be {_KIND_TEXT[kind]}, "
                                  f"got {utils.short_repr(parent[name])}")


def _is_kind(value, kind):
    """Whether a YAML value fits one of the MODEL_PARAMS kinds."""
    if kind == "flag":
        return isinstance(value, bool)
    if kind == "padding" and isinstance(value, list):
        return len(value) > 0 and all(_is_kind(v, "count") for v in value)
    # bool is an int subclass, but `num_kp: true` is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if kind == "positive number":
        return math.isfinite(value) and value > 0
    minimum = 1 if kind == "size" else 0
    return isinstance(value, int) and value >= minimum


def _describe_yaml_error(err):
    """'line N: problem' from a PyYAML error, whose own str() spans several lines."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or utils.first_line(err)
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def _is_frame_shape(value):
    # bool is an int subclass; `[True, True, 3]` is a typo, not a shape.
    return (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))

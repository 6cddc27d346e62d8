"""Map the original's checkpoints onto the Keras models: the port map, then the loaders.

A declarative walk over the original's module tree: one ``port_weight(keras_variable, torch_key,
layout)`` per tensor, every Keras variable filled once and every checkpoint tensor used (a missing,
unused or misshapen tensor is a one-line CheckpointError naming the key and both shapes). Torch stores
conv kernels OIHW and Keras wants HWIO; the transposes live in ``_LAYOUTS`` and nowhere else.

The fused inference models (modules.py section 5) are built straight from a state dict: their builders
take each tensor with ``WeightPorter.take`` (the same checks, in the same order as the walk here), so no
faithful model is built first. ``read_*_weights`` runs the walk backwards: a built faithful model's
weights as the state dict that would fill it, to fuse a model that was not loaded from a checkpoint.

Reading the ``torch.save`` file itself (without PyTorch, without running code) is torch_file's job.
"""
import numpy as np

from torch_file import CheckpointError, load_with_torch, read_checkpoint

__all__ = ["CheckpointError", "WeightPorter", "load_state_dicts", "load_kp_detector_weights", "load_generator_weights",
           "read_kp_detector_weights", "read_generator_weights"]

# keras_array = torch_array.transpose(perm)
_LAYOUTS = {
    "conv": (2, 3, 1, 0),  # nn.Conv2d weight [O, I, kh, kw] -> Conv2D kernel [kh, kw, I, O]
    "depthwise": (2, 3, 0, 1),  # depthwise weight [C, 1, kh, kw] -> DepthwiseConv2D kernel [kh, kw, C, 1]
    None: None,
}

# Tensors the checkpoint holds that inference never reads.
_IGNORED_SUFFIXES = (".num_batches_tracked",)


class WeightPorter:
    """Fills Keras variables from one torch state dict; every variable once, every tensor used."""

    def __init__(self, state_dict, where):
        self.state = state_dict
        self.where = where
        self.used = set()
        self.filled = {}

    def take(self, key, shape, layout=None):
        """The tensor `key`, checked against the Keras `shape` it must fill, in Keras layout, float32, once."""
        perm = _LAYOUTS[layout]
        expected = tuple(shape) if perm is None else tuple(shape[perm.index(axis)] for axis in range(len(perm)))
        if key not in self.state:
            raise CheckpointError(f"{self.where}: missing key {key} (the config needs shape {list(expected)})")
        value = np.asarray(self.state[key])
        if tuple(value.shape) != expected:
            raise CheckpointError(f"{self.where}: {key} has shape {list(value.shape)} but the config needs "
                                  f"{list(expected)}")
        if key in self.used:
            raise CheckpointError(f"{self.where}: {key} fills two weights")
        self.used.add(key)
        # C order, as a Keras variable reads back: the fused weights computed from it keep NumPy's order
        # of operations whichever way the tensor arrived.
        return np.ascontiguousarray(value if perm is None else value.transpose(perm), dtype=np.float32)

    def port_weight(self, variable, key, layout=None):
        if id(variable) in self.filled:
            raise CheckpointError(f"{self.where}: {key} and {self.filled[id(variable)]} fill the same variable")
        variable.assign(self.take(key, tuple(variable.shape), layout))
        self.filled[id(variable)] = key

    def finish(self, model=None):
        """Fail on any checkpoint tensor left unused, or any variable of `model` (when given) left unfilled."""
        if model is not None:
            unfilled = [v.path for v in model.variables if id(v) not in self.filled]
            if unfilled:
                raise CheckpointError(f"{self.where}: no checkpoint tensor for {unfilled[0]} "
                                      f"({len(unfilled)} unfilled variables)")
        unused = sorted(k for k in self.state if k not in self.used and not k.endswith(_IGNORED_SUFFIXES))
        if unused:
            shape = list(np.shape(self.state[unused[0]]))
            raise CheckpointError(f"{self.where}: unexpected key {unused[0]} with shape {shape} "
                                  f"({len(unused)} unused tensors; does the config match the checkpoint?)")


class WeightReader:
    """The port walk run backwards: a built model's variables as the state dict that would fill them."""

    def __init__(self):
        self.state = {}

    def port_weight(self, variable, key, layout=None):
        perm = _LAYOUTS[layout]
        value = np.asarray(variable)
        self.state[key] = value if perm is None else value.transpose(np.argsort(perm))


def _conv_layer(layer):
    # modules.conv2d wraps non-'same' padding as Sequential([ZeroPadding2D, Conv2D]).
    return layer.layers[-1] if hasattr(layer, "layers") else layer


def port_conv(porter, layer, prefix):
    conv = _conv_layer(layer)
    porter.port_weight(conv.kernel, f"{prefix}.weight", "conv")
    porter.port_weight(conv.bias, f"{prefix}.bias")


def port_batch_norm(porter, layer, prefix):
    porter.port_weight(layer.gamma, f"{prefix}.weight")
    porter.port_weight(layer.beta, f"{prefix}.bias")
    porter.port_weight(layer.moving_mean, f"{prefix}.running_mean")
    porter.port_weight(layer.moving_variance, f"{prefix}.running_var")


def port_conv_block(porter, block, prefix):
    """SameBlock2d / DownBlock2d / UpBlock2d: conv + norm."""
    port_conv(porter, block.conv, f"{prefix}.conv")
    port_batch_norm(porter, block.norm, f"{prefix}.norm")


def port_res_block(porter, block, prefix):
    port_batch_norm(porter, block.norm1, f"{prefix}.norm1")
    port_conv(porter, block.conv1, f"{prefix}.conv1")
    port_batch_norm(porter, block.norm2, f"{prefix}.norm2")
    port_conv(porter, block.conv2, f"{prefix}.conv2")


def port_hourglass(porter, hourglass, prefix):
    for i, block in enumerate(hourglass.encoder.down_blocks):
        port_conv_block(porter, block, f"{prefix}.encoder.down_blocks.{i}")
    for i, block in enumerate(hourglass.decoder.up_blocks):
        port_conv_block(porter, block, f"{prefix}.decoder.up_blocks.{i}")


def port_anti_alias(porter, layer, prefix):
    porter.port_weight(layer.conv.kernel, f"{prefix}.weight", "depthwise")


def port_kp_detector(porter, model):
    if model.scale_factor != 1:
        port_anti_alias(porter, model.down, "down")
    port_hourglass(porter, model.predictor, "predictor")
    port_conv(porter, model.kp, "kp")
    if model.estimate_jacobian:
        port_conv(porter, model.jacobian, "jacobian")


def port_dense_motion(porter, net, prefix):
    if net.scale_factor != 1:
        port_anti_alias(porter, net.down, f"{prefix}.down")
    port_hourglass(porter, net.hourglass, f"{prefix}.hourglass")
    port_conv(porter, net.mask, f"{prefix}.mask")
    if net.occlusion is not None:
        port_conv(porter, net.occlusion, f"{prefix}.occlusion")


def port_generator(porter, model):
    port_dense_motion(porter, model.dense_motion_network, "dense_motion_network")
    port_conv_block(porter, model.first, "first")
    for i, block in enumerate(model.down_blocks):
        port_conv_block(porter, block, f"down_blocks.{i}")
    for i, block in enumerate(model.up_blocks):
        port_conv_block(porter, block, f"up_blocks.{i}")
    for i, block in enumerate(model.bottleneck):
        port_res_block(porter, block, f"bottleneck.r{i}")
    port_conv(porter, model.final, "final")


# The top-level entries inference uses; the discriminator and optimizer state are never read.
_MODEL_ENTRIES = ("kp_detector", "generator")


def load_state_dicts(path, use_torch=False):
    """{'kp_detector': state_dict, 'generator': state_dict} of a FOMM checkpoint (other entries ignored).

    The torch-free reader reads only the tensors of those two entries (about a third of a published
    checkpoint, the rest being discriminator and optimizer state); torch.load reads everything.
    """
    checkpoint = load_with_torch(path) if use_torch else read_checkpoint(path, keep=_MODEL_ENTRIES)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a FOMM checkpoint (top level is {type(checkpoint).__name__}, not a dict)")
    for name in _MODEL_ENTRIES:
        if not isinstance(checkpoint.get(name), dict):
            raise CheckpointError(f"{path}: not a FOMM checkpoint (no '{name}' state dict)")
        for key, value in checkpoint[name].items():
            if not isinstance(key, str) or not isinstance(value, np.ndarray):
                raise CheckpointError(f"{path}: not a FOMM checkpoint ('{name}' entry {key!r:.60} is a "
                                      f"{type(value).__name__}, not a tensor)")
    return {name: checkpoint[name] for name in _MODEL_ENTRIES}


def _port_all(model, state_dict, port, where):
    porter = WeightPorter(state_dict, where)
    port(porter, model)
    porter.finish(model)


def load_kp_detector_weights(model, state_dicts, where):
    """Fill a built modules.KPDetector from load_state_dicts(...)['kp_detector']."""
    _port_all(model, state_dicts["kp_detector"], port_kp_detector, f"{where} [kp_detector]")


def load_generator_weights(model, state_dicts, where):
    """Fill a built modules.OcclusionAwareGenerator from load_state_dicts(...)['generator']."""
    _port_all(model, state_dicts["generator"], port_generator, f"{where} [generator]")


def _read_all(model, port):
    reader = WeightReader()
    port(reader, model)
    return reader.state


def read_kp_detector_weights(model):
    """A built modules.KPDetector's weights as the state dict that would fill it (load_state_dicts' form)."""
    return _read_all(model, port_kp_detector)


def read_generator_weights(model):
    """A built modules.OcclusionAwareGenerator's weights as the state dict that would fill it."""
    return _read_all(model, port_generator)

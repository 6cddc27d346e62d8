"""Fixture checkpoints (written by torch.save) load torch-free, in both formats, into every Keras weight."""
import numpy as np
import pytest

import checkpoint_loader
import torch_file
import modules

from conftest import FIXTURE_NAMES, load_fixture


def flatten(state_dicts):
    return {f"{part}.{key}": value for part, sd in state_dicts.items() for key, value in sd.items()}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_legacy_and_zip_formats_read_identically(name):
    fx = load_fixture(name)
    legacy = flatten(checkpoint_loader.load_state_dicts(fx.checkpoint("legacy")))
    zipped = flatten(checkpoint_loader.load_state_dicts(fx.checkpoint("zip")))
    assert legacy.keys() == zipped.keys()
    for key in legacy:
        assert legacy[key].dtype == zipped[key].dtype
        np.testing.assert_array_equal(legacy[key], zipped[key], err_msg=key)


def test_training_state_is_ignored():
    # tests/make_fixtures.py keeps the optimizer states in the zero_order fixture, as published files have them
    fx = load_fixture("zero_order")
    raw = torch_file.read_checkpoint(fx.checkpoint())
    assert {"discriminator", "optimizer_generator", "epoch"} <= set(raw)  # what the published files carry
    assert set(checkpoint_loader.load_state_dicts(fx.checkpoint())) == {"kp_detector", "generator"}


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_loadwithtorch_reads_the_same_tensors(fmt):
    pytest.importorskip("torch")
    fx = load_fixture(FIXTURE_NAMES[0])
    ours = flatten(checkpoint_loader.load_state_dicts(fx.checkpoint(fmt)))
    torch_loaded = flatten(checkpoint_loader.load_state_dicts(fx.checkpoint(fmt), use_torch=True))
    assert ours.keys() == torch_loaded.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], torch_loaded[key], err_msg=key)


def fresh_models(fx):
    config = fx.config()
    return modules.create_kp_detector(config), modules.create_generator(config)


def test_every_keras_weight_is_filled_from_the_checkpoint():
    fx = load_fixture(FIXTURE_NAMES[0])
    state = checkpoint_loader.load_state_dicts(fx.checkpoint())
    kp_detector, generator = fresh_models(fx)
    checkpoint_loader.load_kp_detector_weights(kp_detector, state, "fixture")
    checkpoint_loader.load_generator_weights(generator, state, "fixture")
    bn = generator.first.norm
    np.testing.assert_array_equal(bn.moving_mean.numpy(), state["generator"]["first.norm.running_mean"])
    kernel = generator.final.kernel.numpy()
    np.testing.assert_array_equal(kernel, state["generator"]["final.weight"].transpose(2, 3, 1, 0))


def test_missing_key_is_named():
    fx = load_fixture(FIXTURE_NAMES[0])
    state = checkpoint_loader.load_state_dicts(fx.checkpoint())
    del state["generator"]["final.bias"]
    _, generator = fresh_models(fx)
    with pytest.raises(checkpoint_loader.CheckpointError, match=r"missing key final\.bias"):
        checkpoint_loader.load_generator_weights(generator, state, "fixture")


def test_unused_key_is_named():
    fx = load_fixture(FIXTURE_NAMES[0])
    state = checkpoint_loader.load_state_dicts(fx.checkpoint())
    state["kp_detector"]["extra.weight"] = np.zeros((3, 3), np.float32)
    kp_detector, _ = fresh_models(fx)
    with pytest.raises(checkpoint_loader.CheckpointError, match=r"unexpected key extra\.weight with shape \[3, 3\]"):
        checkpoint_loader.load_kp_detector_weights(kp_detector, state, "fixture")


def test_shape_mismatch_names_key_and_both_shapes():
    fx = load_fixture(FIXTURE_NAMES[0])
    state = checkpoint_loader.load_state_dicts(fx.checkpoint())
    weight = state["kp_detector"]["kp.weight"]
    state["kp_detector"]["kp.weight"] = weight[:-1]
    kp_detector, _ = fresh_models(fx)
    wrong, right = list(weight[:-1].shape), list(weight.shape)
    with pytest.raises(checkpoint_loader.CheckpointError,
                       match=rf"kp\.weight has shape \[{', '.join(map(str, wrong))}\] but the config needs "
                             rf"\[{', '.join(map(str, right))}\]"):
        checkpoint_loader.load_kp_detector_weights(kp_detector, state, "fixture")


# The fused models run.py runs are built straight from the checkpoint's tensors (modules.fused_*_from),
# without a faithful model; benchmarks fuse a faithful model through the state dict its weights make.

def fused_weights(model):
    return [(variable.path, variable.numpy()) for variable in model.variables]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fused_models_from_the_checkpoint_equal_those_fused_from_its_faithful_models(name):
    fx = load_fixture(name)
    config, state = fx.config(), checkpoint_loader.load_state_dicts(fx.checkpoint())
    kp_detector, generator = fresh_models(fx)
    checkpoint_loader.load_kp_detector_weights(kp_detector, state, "fixture")
    checkpoint_loader.load_generator_weights(generator, state, "fixture")
    pairs = ((modules.fused_kp_detector_from(config, state), modules.fused_kp_detector(kp_detector)),
             (modules.fused_generator_from(config, state), modules.fused_generator(generator)))
    for direct, via_faithful in pairs:
        direct, via_faithful = fused_weights(direct), fused_weights(via_faithful)
        assert [path for path, _ in direct] == [path for path, _ in via_faithful]
        for (path, ours), (_, theirs) in zip(direct, via_faithful):
            assert ours.tobytes() == theirs.tobytes(), path


def broken_state(mutation):
    """A fixture's state dicts with one tensor removed, added or cut short, and the section it is in."""
    state = checkpoint_loader.load_state_dicts(load_fixture(FIXTURE_NAMES[0]).checkpoint())
    if mutation == "missing":
        del state["generator"]["final.bias"]
        return state, "generator"
    if mutation == "unused":
        state["kp_detector"]["extra.weight"] = np.zeros((3, 3), np.float32)
        return state, "kp_detector"
    state["generator"]["dense_motion_network.mask.weight"] = state["generator"]["dense_motion_network.mask.weight"][:-1]
    return state, "generator"


@pytest.mark.parametrize("mutation", ["missing", "unused", "misshapen"])
def test_fused_builders_refuse_a_checkpoint_as_the_faithful_loader_does(mutation):
    state, section = broken_state(mutation)
    config = load_fixture(FIXTURE_NAMES[0]).config()
    kp_detector, generator = fresh_models(load_fixture(FIXTURE_NAMES[0]))
    load_faithful = {"kp_detector": lambda: checkpoint_loader.load_kp_detector_weights(kp_detector, state, "fixture"),
                     "generator": lambda: checkpoint_loader.load_generator_weights(generator, state, "fixture")}
    build_fused = {"kp_detector": modules.fused_kp_detector_from, "generator": modules.fused_generator_from}
    with pytest.raises(checkpoint_loader.CheckpointError) as faithful_error:
        load_faithful[section]()
    with pytest.raises(checkpoint_loader.CheckpointError) as fused_error:
        build_fused[section](config, state, "fixture")
    assert str(fused_error.value) == str(faithful_error.value)


def test_fused_layers_let_go_of_the_arrays_they_were_built_from():
    # A Keras layer keeps its initializers: a modules.Holding still holding its array would keep a second
    # copy of every weight alive (peak RSS of a full-size model grows by its size).
    import gc

    fx = load_fixture(FIXTURE_NAMES[0])
    state = checkpoint_loader.load_state_dicts(fx.checkpoint())
    models = modules.fused_kp_detector_from(fx.config(), state), modules.fused_generator_from(fx.config(), state)
    holding = [obj for obj in gc.get_objects() if type(obj) is modules.Holding and obj.value is not None]
    assert models and holding == []

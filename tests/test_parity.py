"""Parity with the original PyTorch code, per module and end to end.

Every reference number here was written by tests/make_fixtures.py running the original
AliaksandrSiarohin/first-order-model code (torch, CPU) on the fixture checkpoints. SPEC bounds:
keypoints within 1e-4, predictions within 2e-3 max abs, uint8 frames identical on >= 99.9% of pixels
and never more than one level off.
"""
import functools

import pytest

from conftest import (INTERMEDIATE_TOL, KP_TOL, PREDICTION_TOL, assert_frames_match, fixture_models, load_fixture,
                      max_abs, nchw_to_nhwc)


def run_kp_detector(fixture, images):
    _, kp_detector, _ = fixture_models(fixture.name)
    return {k: v.numpy() for k, v in kp_detector(nchw_to_nhwc(images)).items()}


def test_kp_detector_matches_original(fixture):
    for images, prefix in (("source", "kp_source"), ("driving", "kp_driving")):
        ours = run_kp_detector(fixture, fixture.ref[images])
        reference = fixture.kp(prefix)
        assert set(ours) == set(reference)
        for key in reference:
            assert max_abs(ours[key], reference[key]) <= KP_TOL, (prefix, key)


@pytest.mark.parametrize("relative,adapt", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_process_kp_driving_matches_normalize_kp(fixture, relative, adapt):
    # What the pipeline does with detected driving keypoints (animate.Animator.followed_keypoints): with
    # relative movement, the process_kp_driving module of the direct target (modules.process_kp_driving
    # in its fixed signature), measured from the first driving frame; without, the keypoints as detected.
    import animate
    import modules

    config = fixture.config()
    process = modules.build_module("process_kp_driving", config)
    kp_source = fixture.kp("kp_source")
    models = animate.Models(kp_detector=lambda img: dict(kp_source),
                            process_kp_driving=lambda **kw: {k: v.numpy() for k, v in process(**kw).items()},
                            generator=None, estimate_jacobian=config.estimate_jacobian)
    animator = animate.Animator(models, nchw_to_nhwc(fixture.ref["source"])[0],
                                animate.Motion(relative=bool(relative), adapt=bool(adapt)))
    ours = animator.followed_keypoints(fixture.kp("kp_driving"))
    reference = fixture.kp(f"norm_{relative}{adapt}")
    assert set(ours) == set(reference)
    for key in reference:
        assert max_abs(ours[key], reference[key]) <= KP_TOL, key


@functools.lru_cache(maxsize=None)
def _generator_outputs(name):
    fixture = load_fixture(name)
    _, _, generator = fixture_models(name)
    out = generator(nchw_to_nhwc(fixture.ref["source"]), fixture.generator_kp_driving(), fixture.kp("kp_source"))
    return {k: v.numpy() for k, v in out.items()}


def generator_outputs(fixture):
    """Our generator on the reference inputs (computed once per fixture; several tests read it)."""
    return _generator_outputs(fixture.name)


def test_generator_prediction_matches_original(fixture):
    ours = generator_outputs(fixture)
    assert max_abs(ours["prediction"], nchw_to_nhwc(fixture.ref["prediction"])) <= PREDICTION_TOL


@pytest.mark.parametrize("key", ["deformation", "sparse_deformed", "mask", "occlusion_map", "deformed"])
def test_generator_intermediates_match_original(fixture, key):
    ours = generator_outputs(fixture)
    if key not in fixture.ref:
        assert key not in ours, f"{key} produced but the original has none for this config"
        return
    reference = fixture.ref[key] if key == "deformation" else nchw_to_nhwc(fixture.ref[key])
    assert max_abs(ours[key], reference) <= INTERMEDIATE_TOL


def test_fused_models_match_original(fixture):
    # What run.py runs: BN folded, sub-pixel upsampling, row-split final conv, source encoded once.
    import checkpoint_loader
    import modules

    config = fixture.config()
    state = checkpoint_loader.load_state_dicts(fixture.checkpoint("legacy"))
    kp_detector = modules.load_kp_detector(config, state)
    generator = modules.load_generator(config, state)
    for images, prefix in (("source", "kp_source"), ("driving", "kp_driving")):
        ours = kp_detector(nchw_to_nhwc(fixture.ref[images]))
        for key, reference in fixture.kp(prefix).items():
            assert max_abs(ours[key], reference) <= KP_TOL, (prefix, key)
    source = nchw_to_nhwc(fixture.ref["source"])
    encoded = modules.SourceEncoderModule(generator)(source_image=source)
    dense_motion = generator.dense_motion_network.motion_from_scaled(
        encoded["source_image_scaled"], fixture.generator_kp_driving(), fixture.kp("kp_source"))
    ours = generator.transform_and_decode(source, encoded["source_features"], dense_motion)
    assert max_abs(ours["prediction"], nchw_to_nhwc(fixture.ref["prediction"])) <= PREDICTION_TOL


@functools.lru_cache(maxsize=None)
def _direct_models_from_zip(name):
    """The direct target's models, loaded from the zip-format checkpoint (the other tests use legacy)."""
    import animate
    import checkpoint_loader

    fixture = load_fixture(name)
    return animate.direct_models(fixture.config(), checkpoint_loader.load_state_dicts(fixture.checkpoint("zip")))


@pytest.mark.parametrize("relative,key", [(True, "frames"), (False, "frames_absolute")])
def test_pipeline_frames_equal_originals_demo(fixture, relative, key):
    import animate
    import media

    models = _direct_models_from_zip(fixture.name)
    frames = list(nchw_to_nhwc(fixture.ref["driving"]))
    predictions = animate.animate(models, nchw_to_nhwc(fixture.ref["source"])[0], frames,
                                  relative=relative, adapt=relative, batch_size=4)
    assert_frames_match([media.to_uint8(p) for p in predictions], fixture.ref[key])


@pytest.mark.parametrize("height,width,kernel_size", [(2, 2, 2), (4, 4, 3), (3, 5, 2), (6, 6, 3)])
def test_small_images_run_the_conv_as_a_matmul_of_their_patches(height, width, kernel_size):
    """The fused blocks' matmul form of a 'valid' conv (used at 4 x 4 pixels and below) equals tf.nn.conv2d."""
    import numpy as np
    import tensorflow as tf

    import modules

    rng = np.random.default_rng(height * 10 + width)
    x = tf.constant(rng.standard_normal((3, height, width, 5)), tf.float32)
    kernel = tf.constant(rng.standard_normal((kernel_size, kernel_size, 5, 7)), tf.float32)
    expected = tf.nn.conv2d(x, kernel, 1, "VALID").numpy()
    ours = modules.valid_conv_as_matmul(x, kernel).numpy()
    assert ours.shape == expected.shape and max_abs(ours, expected) <= 1e-5
    assert modules.is_small_image(x) == (height * width <= 16)


def test_batch_norm_folds_in_float64_and_rounds_once_to_float32():
    """fold_batch_norm's kernel is float64(kernel) * (gamma / sqrt(var + eps)) rounded once to float32, to
    the bit (it computes that a buffer at a time, never holding a float64 copy of the kernel)."""
    import numpy as np

    import modules

    rng = np.random.default_rng(7)
    kernel = (rng.standard_normal((3, 3, 40, 24)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(24).astype(np.float32) for _ in range(3))
    var = rng.random(24).astype(np.float32) + 0.1
    folded_kernel, folded_bias = modules.fold_batch_norm(kernel, bias, (gamma, beta, mean, var))
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + modules.TORCH_BATCH_NORM_EPSILON)
    expected = (kernel.astype(np.float64) * scale).astype(np.float32)
    assert folded_kernel.dtype == np.float32 and folded_kernel.shape == kernel.shape
    np.testing.assert_array_equal(folded_kernel.view(np.uint32), expected.view(np.uint32))
    assert not np.array_equal(folded_kernel, (kernel * scale.astype(np.float32)))  # float32 arithmetic differs
    np.testing.assert_array_equal(folded_bias, ((bias - mean.astype(np.float64)) * scale + beta).astype(np.float32))


def test_winograd_generator_matches_original(fixture, monkeypatch):
    # The TF Lite files' generator (build.winograd_for_tflite); the fixtures' 16-channel bottlenecks pass a
    # lowered threshold (the published configs' 256 pass the real one).
    import checkpoint_loader
    import modules

    monkeypatch.setattr(modules, "WINOGRAD_MIN_CHANNELS", 1)
    config = fixture.config()
    state = checkpoint_loader.load_state_dicts(fixture.checkpoint("legacy"))
    generator = modules.load_generator(config, state, winograd=True)
    assert all(isinstance(block, modules.WinogradResBlock) for block in generator.bottleneck)
    out = generator(nchw_to_nhwc(fixture.ref["source"]), fixture.generator_kp_driving(), fixture.kp("kp_source"))
    assert max_abs(out["prediction"], nchw_to_nhwc(fixture.ref["prediction"])) <= PREDICTION_TOL
    for key in ("deformed", "mask", "occlusion_map"):
        if key in fixture.ref:
            assert max_abs(out[key], nchw_to_nhwc(fixture.ref[key])) <= INTERMEDIATE_TOL, key


@pytest.mark.parametrize("height,width", [(8, 8), (7, 9), (5, 4), (2, 3)])
def test_winograd_conv_is_a_same_conv_no_less_exact_than_tensorflows(height, width):
    """winograd_conv against the float64 conv: odd sizes (a zero row or column added, then cropped) included,
    and its float32 error no larger than twice tf.nn.conv2d's on the same float32 inputs."""
    import numpy as np
    import tensorflow as tf

    import modules

    rng = np.random.default_rng(height * 10 + width)
    x = rng.standard_normal((2, height, width, 24)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 24, 7)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    exact = tf.nn.conv2d(x.astype(np.float64), kernel.astype(np.float64), 1, "SAME").numpy() + bias
    direct = tf.nn.conv2d(x, kernel, 1, "SAME").numpy() + bias
    ours = modules.winograd_conv(tf.constant(x), tf.constant(modules.winograd_kernel(kernel)), tf.constant(bias)).numpy()
    assert ours.shape == exact.shape
    assert max_abs(ours, exact) <= max(2 * max_abs(direct, exact), 1e-5)
    assert max_abs(ours, exact) <= 1e-4

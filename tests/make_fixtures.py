"""Generate the PyTorch reference fixtures (and the demo example) for the TF port.

The original First Order Motion Model (AliaksandrSiarohin/first-order-model) is
imported at run time from the directory named by the FOMM_ORIGINAL environment
variable; none of its code lives in this repository.

For every fixture in FIXTURES this script

1. renders a short synthetic clip (smooth rotation / translation / zoom plus a
   local "jaw" warp) of an image that ships with scikit-image,
2. briefly trains a tiny original model on pairs of clip frames
   (L1 between the generator's prediction and the driving frame),
3. saves tests/fixtures/<name>/{config.yaml, legacy.pth.tar, zip.pth.tar},
4. writes the inputs source.png and driving.mp4 (sizes != frame_shape on purpose),
5. reloads the legacy checkpoint into fresh original modules (exactly like the
   original demo.py) and records every intermediate result in reference.npz,
   with a description of each key in expected.json.

With --example it also writes example/{source.png, driving.mp4, demo-256.yaml,
demo-cpk.pth.tar}: a 256x256 talking-head-like clip and a small model trained on it.

Usage (from the repository root):

    FOMM_ORIGINAL=/path/to/first-order-model python tests/make_fixtures.py
    FOMM_ORIGINAL=... python tests/make_fixtures.py --only vox wide
    FOMM_ORIGINAL=... python tests/make_fixtures.py --example        # fixtures + example
    FOMM_ORIGINAL=... python tests/make_fixtures.py --only example   # example only

Everything is seeded per fixture, so reruns (also with --only) reproduce the same files.
"""

import argparse
import copy
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import time
import types
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import imageio
import numpy as np
import scipy.ndimage
import yaml
from scipy.spatial import ConvexHull
from skimage import data as skdata
from skimage import img_as_float, img_as_ubyte
from skimage.filters import gaussian
from skimage.transform import resize

# The original prints a tqdm bar per animation; keep the log readable.
os.environ.setdefault('TQDM_DISABLE', '1')

import torch  # noqa: E402  (after the environment tweak above)
import torch.nn.functional as F  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / 'tests' / 'fixtures'
EXAMPLE_DIR = REPO_ROOT / 'example'

DRIVING_FPS = 10
LEARNING_RATE = 1e-3
BATCH_SIZE = 2


# ----------------------------------------------------------------------------
# Importing the original
# ----------------------------------------------------------------------------

def _stub_module(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _import_or_stub(name, **attributes):
    """Import `name`; if that fails (a training-only dependency such as sklearn,
    pandas, matplotlib or ffmpeg-python is missing) register a harmless stub.
    The stubbed names are never called on the inference path we use."""
    try:
        __import__(name)
    except ImportError as error:
        print(f'  note: stubbing module {name!r} ({error})')
        _stub_module(name, **attributes)


# Top-level names of the original that the TF port (or anything else) may also use.
ORIGINAL_TOP_LEVEL = ('modules', 'animate', 'demo', 'sync_batchnorm', 'frames_dataset', 'logger', 'augmentation')


def _pin_original_on_path(root):
    """Make the original's top-level names resolve to `root`.

    The original's `modules/` has no __init__.py, i.e. it is a namespace
    package, and Python prefers a plain module of the same name anywhere on
    sys.path (this repository's own modules.py when run from its root). So
    drop anything already imported under those names and register `modules`
    as an explicit package rooted in the original."""
    for name in list(sys.modules):
        if name.split('.')[0] in ORIGINAL_TOP_LEVEL:
            del sys.modules[name]
    sys.path.insert(0, str(root))
    package = importlib.util.module_from_spec(
        importlib.machinery.ModuleSpec('modules', None, is_package=True))
    package.__path__ = [str(root / 'modules')]
    sys.modules['modules'] = package


def import_original():
    """Return the original's classes/functions, imported from $FOMM_ORIGINAL."""
    root = os.environ.get('FOMM_ORIGINAL')
    if not root or not (Path(root) / 'modules' / 'generator.py').is_file():
        sys.exit('Set FOMM_ORIGINAL to a checkout of AliaksandrSiarohin/first-order-model.')
    root = Path(root).resolve()
    _pin_original_on_path(root)

    # animate.py imports the dataset and logger (sklearn, pandas, torchvision,
    # matplotlib); demo.py imports ffmpeg-python for audio copying only.
    # frames_dataset itself is needed (FramesDataset, read_video: the dataset references); its
    # training-only imports are stubbed when missing.
    for name, attributes in (('sklearn', {}), ('sklearn.model_selection', {'train_test_split': None}),
                             ('pandas', {}), ('augmentation', {'AllAugmentationTransform': None})):
        _import_or_stub(name, **attributes)
    _import_or_stub('frames_dataset', PairedDataset=None, DatasetRepeater=None, FramesDataset=None)
    _import_or_stub('logger', Logger=None, Visualizer=None)
    _import_or_stub('ffmpeg', Error=Exception)

    from modules.generator import OcclusionAwareGenerator
    from modules.keypoint_detector import KPDetector
    from modules.discriminator import MultiScaleDiscriminator
    from animate import normalize_kp
    from frames_dataset import FramesDataset
    import demo

    return types.SimpleNamespace(
        root=root,
        OcclusionAwareGenerator=OcclusionAwareGenerator,
        KPDetector=KPDetector,
        MultiScaleDiscriminator=MultiScaleDiscriminator,
        normalize_kp=normalize_kp,
        make_animation=demo.make_animation,
        load_checkpoints=demo.load_checkpoints,
        FramesDataset=FramesDataset,
    )


# ----------------------------------------------------------------------------
# Synthetic clips
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """A crop of a scikit-image picture plus a point that gets a local warp."""
    image: str            # name of the skimage.data function
    center_xy: tuple      # crop centre, source pixels
    crop_hw: tuple        # crop size, source pixels (aspect = output aspect)
    warp_xy: tuple        # centre of the local warp, source pixels
    warp_sigma: float     # radius of the local warp, source pixels
    warp_amplitude: float  # max displacement of the local warp, source pixels


SCENES = {
    # Astronaut's head and shoulders; the local warp opens the "jaw".
    'face': Scene('astronaut', (225, 135), (250, 250), (222, 150), 26.0, 9.0),
    'cat': Scene('chelsea', (240, 150), (260, 260), (262, 240), 30.0, 10.0),
    'cup': Scene('coffee', (290, 185), (330, 330), (290, 150), 45.0, 12.0),
    # Flag, face and shuttle in one strip with aspect 64:288.
    'strip': Scene('astronaut', (256, 120), (104, 468), (222, 150), 26.0, 8.0),
}


@dataclass(frozen=True)
class Pose:
    angle_deg: float = 0.0
    shift_x: float = 0.0   # fraction of crop width
    shift_y: float = 0.0   # fraction of crop height
    zoom: float = 1.0
    jaw: float = 0.0       # 0 (closed) .. 1 (fully open)


def pose_at(t, strength=1.0):
    """Smooth periodic motion, t in [0, 1); every term is neutral at t = 0 so a
    clip starting at t = 0 starts in the neutral pose."""
    two_pi = 2 * np.pi
    return Pose(
        angle_deg=strength * 7.0 * np.sin(two_pi * t),
        shift_x=strength * 0.06 * np.sin(two_pi * t + 0.3) - strength * 0.06 * np.sin(0.3),
        shift_y=strength * 0.04 * np.sin(2 * two_pi * t),
        zoom=1.0 + strength * 0.06 * np.sin(two_pi * t) * np.cos(two_pi * t),
        jaw=0.5 - 0.5 * np.cos(3 * two_pi * t),
    )


def random_pose(rng, strength=1.0):
    """Independent random pose parameters within the range pose_at() spans, so
    the demo model sees combinations the trajectory does not contain."""
    return Pose(
        angle_deg=strength * rng.uniform(-7.0, 7.0),
        shift_x=strength * rng.uniform(-0.08, 0.08),
        shift_y=strength * rng.uniform(-0.04, 0.04),
        zoom=1.0 + strength * rng.uniform(-0.04, 0.04),
        jaw=rng.uniform(0.0, 1.0),
    )


@lru_cache(maxsize=None)
def _blurred_picture(image_name, sigma):
    picture = img_as_float(getattr(skdata, image_name)())
    if sigma > 0:
        # Pre-filter so that sampling it at a lower resolution does not alias.
        picture = gaussian(picture, sigma=sigma, channel_axis=-1, preserve_range=True)
    return picture


def render_frame(scene, pose, out_hw):
    """Render `scene` in `pose` at `out_hw`; float64 RGB in [0, 1].

    Resolution independent: the same scene/pose at another size is the same picture.
    """
    out_h, out_w = out_hw
    crop_h, crop_w = scene.crop_hw
    sigma = round(max(0.0, (crop_h / out_h - 1) / 2), 2)
    picture = _blurred_picture(scene.image, sigma)

    rows, cols = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    # Output pixel -> offset from the crop centre, in source pixels.
    px = ((cols + 0.5) / out_w - 0.5) * crop_w - pose.shift_x * crop_w
    py = ((rows + 0.5) / out_h - 0.5) * crop_h - pose.shift_y * crop_h
    # The scene moves by p = zoom * R(angle) q + shift; invert that for q.
    angle = np.deg2rad(pose.angle_deg)
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    qx = (cos_a * px + sin_a * py) / pose.zoom
    qy = (-sin_a * px + cos_a * py) / pose.zoom

    # Local warp: pull the region below warp_xy downwards (a jaw opening). For
    # a small displacement, subtracting it is a good enough inverse.
    wx = scene.warp_xy[0] - scene.center_xy[0]
    wy = scene.warp_xy[1] - scene.center_xy[1]
    distance2 = (qx - wx) ** 2 + (qy - wy) ** 2
    bump = np.exp(-distance2 / (2 * scene.warp_sigma ** 2))
    below = 1 / (1 + np.exp(-(qy - wy) / (0.2 * scene.warp_sigma)))
    qy = qy - pose.jaw * scene.warp_amplitude * bump * below

    coords = [qy + scene.center_xy[1], qx + scene.center_xy[0]]
    channels = [scipy.ndimage.map_coordinates(picture[..., c], coords, order=1, mode='nearest')
                for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def render_clip(scene, times, out_hw, strength=1.0):
    return np.stack([render_frame(scene, pose_at(t, strength), out_hw) for t in times])


# ----------------------------------------------------------------------------
# Fixture definitions
# ----------------------------------------------------------------------------

# Generator intermediates (float32) are stored for the first G driving frames; the uint8 frames for all T.
GENERATOR_FRAMES = 2
# Fixtures whose checkpoints also carry the optimizer states, as the published checkpoints do.
TRAINING_STATE_FIXTURES = {'zero_order'}


@dataclass(frozen=True)
class FixtureSpec:
    name: str
    scene: str
    base_config: str       # original config the YAML is derived from
    frame_shape: tuple
    model_params: dict
    steps: int
    covers: str


def model_params(num_kp, estimate_jacobian, occlusion, kp_scale, dense_scale,
                 kp_channels=(4, 16), dense_channels=(4, 16), generator_channels=(8, 16),
                 bottleneck_blocks=1, **kp_extra):
    """A small FOMM model_params section (same keys as the original configs)."""
    return {
        'common_params': {'num_kp': num_kp, 'num_channels': 3, 'estimate_jacobian': estimate_jacobian},
        'kp_detector_params': {
            'temperature': 0.1, 'block_expansion': kp_channels[0], 'max_features': kp_channels[1],
            'scale_factor': kp_scale, 'num_blocks': 3, **kp_extra},
        'generator_params': {
            'block_expansion': generator_channels[0], 'max_features': generator_channels[1],
            'num_down_blocks': 2, 'num_bottleneck_blocks': bottleneck_blocks,
            'estimate_occlusion_map': occlusion,
            'dense_motion_params': {
                'block_expansion': dense_channels[0], 'max_features': dense_channels[1],
                'num_blocks': 3, 'scale_factor': dense_scale}},
        # Saved only (inference never uses it); tiny so the fixtures stay small.
        'discriminator_params': {'scales': [1], 'block_expansion': 4, 'max_features': 8,
                                 'num_blocks': 2, 'sn': True},
    }


FIXTURES = {spec.name: spec for spec in [
    FixtureSpec('vox', 'face', 'vox-256.yaml', (96, 96, 3),
                model_params(10, True, True, 0.25, 0.25, kp_channels=(8, 32), dense_channels=(8, 32),
                             bottleneck_blocks=2),
                steps=200, covers='first-order, occlusion, scale_factor 0.25, 10 keypoints, kp pad 0'),
    FixtureSpec('zero_order', 'cat', 'vox-256.yaml', (64, 64, 3),
                model_params(5, False, False, 0.5, 0.5),
                steps=200, covers='no jacobians, no occlusion map, scale_factor 0.5'),
    FixtureSpec('mgif', 'cup', 'mgif-256.yaml', (64, 64, 3),
                model_params(6, True, True, 0.25, 0.25, single_jacobian_map=True, pad=3),
                steps=200, covers='single_jacobian_map, kp_detector pad 3'),
    FixtureSpec('wide', 'strip', 'vox-256.yaml', (64, 288, 3),
                model_params(5, True, True, 0.25, 0.25),
                steps=400, covers='non-square frame wider than 256 (H=64, W=288), first-order'),
    FixtureSpec('scale1', 'face', 'vox-256.yaml', (64, 64, 3),
                model_params(4, True, True, 1, 1),
                steps=200, covers='scale_factor 1 everywhere: deform_input resizes deformation/occlusion'),
]}

# Clip times: the model trains on a grid of TRAIN_FRAMES times; the fixture's
# source and driving frames are rendered at times that are not on that grid.
TRAIN_FRAMES = 24
SOURCE_TIME = 0.43
DRIVING_TIMES = (0.02, 0.19, 0.36, 0.52, 0.69, 0.86)


def build_config(spec, original_root):
    """Full FOMM-style config: the original's YAML with our shapes and model."""
    with open(original_root / 'config' / spec.base_config) as f:
        config = yaml.safe_load(f)
    dataset = config['dataset_params']
    dataset['root_dir'] = f'data/fixture-{spec.name}'
    dataset['frame_shape'] = list(spec.frame_shape)
    if 'crop_param' in dataset.get('augmentation_params', {}):
        dataset['augmentation_params']['crop_param']['size'] = list(spec.frame_shape[:2])
    config['model_params'] = copy.deepcopy(spec.model_params)
    train = config['train_params']
    train.update(num_epochs=1, num_repeats=spec.steps, batch_size=BATCH_SIZE, lr_generator=LEARNING_RATE,
                 lr_discriminator=LEARNING_RATE, lr_kp_detector=LEARNING_RATE)
    return config


def write_yaml(config, path):
    with open(path, 'w') as f:
        yaml.safe_dump(config, f, sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------
# Models, training, checkpoints
# ----------------------------------------------------------------------------

def build_models(original, config):
    params = config['model_params']
    generator = original.OcclusionAwareGenerator(**params['generator_params'], **params['common_params'])
    kp_detector = original.KPDetector(**params['kp_detector_params'], **params['common_params'])
    discriminator = original.MultiScaleDiscriminator(**params['discriminator_params'], **params['common_params'])
    return generator, kp_detector, discriminator


def to_tensor(frames):
    """[N, H, W, 3] float -> [N, 3, H, W] float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2).contiguous()


def batchnorm_drift(module):
    """Mean |running_mean| and |running_var - 1| over all BatchNorm layers
    (0 and 0 for untouched defaults)."""
    means, variances = [], []
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            means.append(layer.running_mean.abs().mean().item())
            variances.append((layer.running_var - 1).abs().mean().item())
    return float(np.mean(means)), float(np.mean(variances))


def multiscale_l1(prediction, target, scales):
    """L1 at several resolutions (scales=(1,) is the plain L1 of the brief)."""
    loss = 0
    for scale in scales:
        if scale == 1:
            loss = loss + (prediction - target).abs().mean()
        else:
            loss = loss + (F.avg_pool2d(prediction, int(1 / scale)) - F.avg_pool2d(target, int(1 / scale))).abs().mean()
    return loss


def eval_l1(generator, kp_detector, clip, pairs):
    """Reconstruction L1 in eval mode (what inference will see)."""
    generator.eval()
    kp_detector.eval()
    with torch.no_grad():
        source, driving = clip[pairs[:, 0]], clip[pairs[:, 1]]
        out = generator(source, kp_source=kp_detector(source), kp_driving=kp_detector(driving))
        value = (out['prediction'] - driving).abs().mean().item()
    generator.train()
    kp_detector.train()
    return value


def train_models(generator, kp_detector, discriminator, clip, steps, seed, scales=(1,),
                 lr_schedule=None, log_every=50):
    """Train in train mode on random (source, driving) frame pairs of `clip`.

    Generator + keypoint detector minimise L1(prediction, driving); the
    discriminator gets a few LSGAN updates (real driving vs detached prediction)
    only so its weights and Adam state look like a real checkpoint's.
    """
    rng = np.random.default_rng(seed)
    optimizers = {
        'generator': torch.optim.Adam(generator.parameters(), lr=LEARNING_RATE, betas=(0.5, 0.999)),
        'kp_detector': torch.optim.Adam(kp_detector.parameters(), lr=LEARNING_RATE, betas=(0.5, 0.999)),
        'discriminator': torch.optim.Adam(discriminator.parameters(), lr=LEARNING_RATE, betas=(0.5, 0.999)),
    }
    probe_pairs = rng.integers(0, len(clip), size=(4, 2))
    initial = eval_l1(generator, kp_detector, clip, probe_pairs)
    generator.train(), kp_detector.train(), discriminator.train()
    train_l1 = []
    for step in range(steps):
        if lr_schedule is not None:
            for optimizer in optimizers.values():
                optimizer.param_groups[0]['lr'] = lr_schedule(step)
        pairs = rng.integers(0, len(clip), size=(BATCH_SIZE, 2))
        source, driving = clip[pairs[:, 0]], clip[pairs[:, 1]]

        out = generator(source, kp_source=kp_detector(source), kp_driving=kp_detector(driving))
        loss = multiscale_l1(out['prediction'], driving, scales)
        optimizers['generator'].zero_grad()
        optimizers['kp_detector'].zero_grad()
        loss.backward()
        optimizers['generator'].step()
        optimizers['kp_detector'].step()
        train_l1.append((out['prediction'] - driving).abs().mean().item())

        if step % 10 == 0:
            real = discriminator({'prediction_1': driving})['prediction_map_1']
            fake = discriminator({'prediction_1': out['prediction'].detach()})['prediction_map_1']
            d_loss = ((1 - real) ** 2).mean() + (fake ** 2).mean()
            optimizers['discriminator'].zero_grad()
            d_loss.backward()
            optimizers['discriminator'].step()

        if log_every and (step + 1) % log_every == 0:
            print(f'    step {step + 1:4d}/{steps}  train L1 (last {log_every}) '
                  f'{np.mean(train_l1[-log_every:]):.4f}', flush=True)

    final = eval_l1(generator, kp_detector, clip, probe_pairs)
    stats = {'initial_eval_l1': initial, 'final_eval_l1': final,
             'first_train_l1': train_l1[0], 'last10_train_l1': float(np.mean(train_l1[-10:]))}
    return optimizers, stats


def save_checkpoint(generator, kp_detector, discriminator, optimizers, epoch, path, legacy):
    """Same dict layout as the published *.pth.tar checkpoints. optimizers=None
    leaves out the Adam states (the demo never reads them; they triple the size)."""
    checkpoint = {
        'generator': generator.state_dict(),
        'kp_detector': kp_detector.state_dict(),
        'discriminator': discriminator.state_dict(),
    }
    if optimizers is not None:
        for name in ('generator', 'kp_detector', 'discriminator'):
            checkpoint[f'optimizer_{name}'] = optimizers[name].state_dict()
    checkpoint['epoch'] = epoch
    if legacy:
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(checkpoint, path)


# ----------------------------------------------------------------------------
# Inputs (files the TF demo reads)
# ----------------------------------------------------------------------------

def scaled_size(frame_hw, factor):
    """frame size * factor, rounded to a multiple of 16 (the mp4 writer's block)."""
    return tuple(int(round(side * factor / 16)) * 16 for side in frame_hw)


def write_mp4(frames, path, fps):
    with imageio.get_writer(path, fps=fps) as writer:
        for frame in frames:
            writer.append_data(img_as_ubyte(frame))


def write_inputs(spec, scene, directory):
    frame_hw = spec.frame_shape[:2]
    source_hw = scaled_size(frame_hw, 1.5)
    driving_hw = scaled_size(frame_hw, 2.0)
    imageio.imwrite(directory / 'source.png', img_as_ubyte(render_frame(scene, pose_at(SOURCE_TIME), source_hw)))
    write_mp4(render_clip(scene, DRIVING_TIMES, driving_hw), directory / 'driving.mp4', DRIVING_FPS)
    return source_hw, driving_hw


# ----------------------------------------------------------------------------
# Reference outputs from the original
# ----------------------------------------------------------------------------

def _decoded_frames(reader):
    """Every frame `reader` decodes, in order; a RuntimeError (a damaged tail) ends the clip there."""
    frames, iterator = [], iter(reader)
    while True:
        try:
            frames.append(next(iterator))
        except (StopIteration, RuntimeError):
            return frames


def read_inputs_like_demo(source_path, driving_path, frame_hw):
    """(source [H, W, 3], driving frames [H, W, 3] each, fps) prepared as the original demo.py
    prepares its inputs: imageio's v2 readers, the clip's frame rate from the reader's metadata, and
    skimage's resize to frame_hw (floats in [0, 1]) with any channel past RGB dropped."""
    def to_model_size(image):
        return resize(image, frame_hw)[..., :3]

    with imageio.get_reader(driving_path) as reader:
        fps = reader.get_meta_data()['fps']
        frames = _decoded_frames(reader)
    return to_model_size(imageio.imread(source_path)), [to_model_size(frame) for frame in frames], fps


def zero_order_animation(original, source_image, driving_video, generator, kp_detector, relative, adapt):
    """demo.make_animation for models without jacobians: the original passes
    use_relative_jacobian=relative, which KeyErrors on 'jacobian'; the only
    change here is use_relative_jacobian=False."""
    with torch.no_grad():
        predictions = []
        source = torch.tensor(source_image[np.newaxis].astype(np.float32)).permute(0, 3, 1, 2)
        driving = torch.tensor(np.array(driving_video)[np.newaxis].astype(np.float32)).permute(0, 4, 1, 2, 3)
        kp_source = kp_detector(source)
        kp_driving_initial = kp_detector(driving[:, :, 0])
        for frame_idx in range(driving.shape[2]):
            kp_driving = kp_detector(driving[:, :, frame_idx])
            kp_norm = original.normalize_kp(kp_source=kp_source, kp_driving=kp_driving,
                                            kp_driving_initial=kp_driving_initial, use_relative_movement=relative,
                                            use_relative_jacobian=False, adapt_movement_scale=adapt)
            out = generator(source, kp_source=kp_source, kp_driving=kp_norm)
            predictions.append(np.transpose(out['prediction'].data.cpu().numpy(), [0, 2, 3, 1])[0])
    return predictions


def animate_frames(original, source_image, driving_video, generator, kp_detector, first_order, relative, adapt):
    if first_order:
        predictions = original.make_animation(source_image, driving_video, generator, kp_detector,
                                              relative=relative, adapt_movement_scale=adapt, cpu=True)
    else:
        predictions = zero_order_animation(original, source_image, driving_video, generator, kp_detector,
                                           relative, adapt)
    return np.stack([img_as_ubyte(frame) for frame in predictions])


def numpy_kp(kp_list, key):
    return np.concatenate([kp[key].numpy() for kp in kp_list]).astype(np.float32)


def generator_with_deformation(generator, source, kp_source, kp_driving):
    """generator(...) outputs plus the dense 'deformation', which the original
    computes in its dense motion network but does not return; a forward hook
    picks it up from that same call."""
    captured = {}
    hook = generator.dense_motion_network.register_forward_hook(
        lambda module, inputs, output: captured.update(deformation=output['deformation']))
    try:
        out = generator(source, kp_source=kp_source, kp_driving=kp_driving)
    finally:
        hook.remove()
    return {**out, **captured}


def compute_reference(original, directory, config):
    """Run the original exactly as demo.py does and collect every intermediate."""
    frame_hw = tuple(config['dataset_params']['frame_shape'][:2])
    first_order = config['model_params']['common_params']['estimate_jacobian']
    source_image, driving_video, fps = read_inputs_like_demo(directory / 'source.png',
                                                             directory / 'driving.mp4', frame_hw)
    # demo.load_checkpoints: fresh modules from the YAML, torch.load, load_state_dict, eval().
    generator, kp_detector = original.load_checkpoints(str(directory / 'config.yaml'),
                                                       str(directory / 'legacy.pth.tar'), cpu=True)
    ref = {}
    with torch.no_grad():
        # Same tensor construction as demo.make_animation.
        source = torch.tensor(source_image[np.newaxis].astype(np.float32)).permute(0, 3, 1, 2)
        driving = torch.tensor(np.array(driving_video)[np.newaxis].astype(np.float32)).permute(0, 4, 1, 2, 3)
        ref['source'] = source.numpy()
        ref['driving'] = driving[0].permute(1, 0, 2, 3).numpy()

        kp_source = kp_detector(source)
        kp_driving_initial = kp_detector(driving[:, :, 0])
        # One frame at a time, as make_animation does.
        kp_driving = [kp_detector(driving[:, :, i]) for i in range(driving.shape[2])]
        kp_keys = ['value', 'jacobian'] if first_order else ['value']
        for key in kp_keys:
            ref[f'kp_source_{key}'] = kp_source[key].numpy()
            ref[f'kp_driving_{key}'] = numpy_kp(kp_driving, key)
        ref['area_source'] = np.float64(ConvexHull(kp_source['value'][0].numpy()).volume)
        ref['area_driving_initial'] = np.float64(ConvexHull(kp_driving_initial['value'][0].numpy()).volume)

        normalized = {}
        for rel in (0, 1):
            for adapt in (0, 1):
                normalized[rel, adapt] = [
                    original.normalize_kp(kp_source=kp_source, kp_driving=kp, kp_driving_initial=kp_driving_initial,
                                          adapt_movement_scale=bool(adapt), use_relative_movement=bool(rel),
                                          use_relative_jacobian=bool(rel) and first_order)
                    for kp in kp_driving]
                for key in kp_keys:
                    ref[f'norm_{rel}{adapt}_{key}'] = numpy_kp(normalized[rel, adapt], key)

        outputs = [generator_with_deformation(generator, source, kp_source, kp) for kp in normalized[1, 1]]
        predictions = np.concatenate([out['prediction'].numpy() for out in outputs])
        # Float intermediates for the first frames only: image-sized float32 arrays barely compress and
        # the uint8 frames below already cover every frame.
        for key in ['prediction', 'mask', 'sparse_deformed', 'deformation', 'occlusion_map', 'deformed']:
            if key in outputs[0]:
                ref[key] = np.concatenate([out[key].numpy() for out in outputs[:GENERATOR_FRAMES]]).astype(np.float32)

    ref['frames'] = animate_frames(original, source_image, driving_video, generator, kp_detector,
                                   first_order, relative=True, adapt=True)
    ref['frames_absolute'] = animate_frames(original, source_image, driving_video, generator, kp_detector,
                                            first_order, relative=False, adapt=False)
    # The per-frame generator calls above must reproduce make_animation exactly.
    same = np.array_equal(ref['frames'], np.stack([img_as_ubyte(p) for p in predictions.transpose(0, 2, 3, 1)]))
    if not same:
        raise RuntimeError('prediction and make_animation frames disagree')
    return ref, fps


KEY_DESCRIPTIONS = {
    'source': '[1,3,H,W] float32: source.png after demo.py preprocessing (imageio.imread, '
              'skimage resize to frame_shape[:2], [..., :3]), NCHW as fed to the model',
    'driving': '[T,3,H,W] float32: driving.mp4 frames (imageio.get_reader) after the same preprocessing',
    'kp_source_value': '[1,K,2] kp_detector(source)["value"], (x, y) in [-1, 1]',
    'kp_source_jacobian': '[1,K,2,2] kp_detector(source)["jacobian"] (first-order models only)',
    'kp_driving_value': '[T,K,2] kp_detector(driving frame t)["value"], one frame per call',
    'kp_driving_jacobian': '[T,K,2,2] kp_detector(driving frame t)["jacobian"] (first-order only)',
    'area_source': 'float64 scalar: scipy ConvexHull(kp_source_value[0]).volume',
    'area_driving_initial': 'float64 scalar: ConvexHull(kp_driving_value[0]).volume',
    'norm_{rel}{adapt}_value': '[T,K,2] animate.normalize_kp(kp_source, kp_driving, kp_driving_initial, '
                               'adapt_movement_scale=adapt, use_relative_movement=rel, '
                               'use_relative_jacobian=rel (False for zero-order models))["value"]',
    'norm_{rel}{adapt}_jacobian': '[T,K,2,2] same call, ["jacobian"] (first-order only)',
    'prediction': '[G,3,H,W] generator(source, kp_source, kp_driving=norm_11[:G])["prediction"], G = the first '
                  f'{GENERATOR_FRAMES} driving frames',
    'mask': '[G,K+1,h,w] same call, dense-motion softmax mask (h,w = frame size * dense scale_factor)',
    'sparse_deformed': '[G,K+1,3,h,w] same call, source warped by each sparse motion',
    'deformation': '[G,h,w,2] same call, dense backward deformation grid (x, y)',
    'occlusion_map': '[G,1,h,w] same call (only when estimate_occlusion_map)',
    'deformed': '[G,3,H,W] same call, source warped by the (resized) deformation',
    'frames': '[T,H,W,3] uint8: img_as_ubyte of demo.make_animation(relative=True, adapt_movement_scale=True, '
              'cpu=True), i.e. exactly the frames demo.py writes (zero-order: the same loop with '
              'use_relative_jacobian=False)',
    'frames_absolute': '[T,H,W,3] uint8: same with relative=False, adapt_movement_scale=False',
    'dataset_animation_prediction': '[T,3,H,W] float32: the original animate.py loop on the dataset pair '
                                    'expected.json names, with its normalization_params (use_relative_jacobian '
                                    'False)',
    'frames_best_{k}': '[T,H,W,3] uint8: demo.py --best_frame k --relative --adapt_scale: make_animation '
                       'forward from frame k and backward from it to frame 0, joined as demo.py does',
}


def described_keys(ref):
    """KEY_DESCRIPTIONS restricted to what this fixture's reference.npz holds."""
    present = {re.sub(r'^frames_best_\d+$', 'frames_best_{k}', re.sub(r'^norm_\d\d_', 'norm_{rel}{adapt}_', key))
               for key in ref}
    return {key: text for key, text in KEY_DESCRIPTIONS.items() if key in present}


def write_expected_json(directory, spec, config, ref, fps, sizes, train_stats):
    params = config['model_params']
    meta = {
        'fixture': spec.name,
        'covers': spec.covers,
        'frame_shape': list(spec.frame_shape),
        'num_kp': params['common_params']['num_kp'],
        'estimate_jacobian': params['common_params']['estimate_jacobian'],
        'estimate_occlusion_map': params['generator_params']['estimate_occlusion_map'],
        'T': int(ref['driving'].shape[0]),
        'fps': fps,
        'source_png_hw': list(sizes[0]),
        'driving_mp4_hw': list(sizes[1]),
        'torch_version': torch.__version__,
        'checkpoints': {'legacy.pth.tar': 'torch.save(..., _use_new_zipfile_serialization=False)',
                        'zip.pth.tar': 'torch.save default (zip) format, same contents'},
        'training': {'steps': spec.steps, 'batch_size': BATCH_SIZE, 'lr': LEARNING_RATE,
                     'loss': 'L1(prediction, driving)', **train_stats},
        'keys': described_keys(ref),
        'shapes': {key: list(np.shape(value)) for key, value in ref.items()},
    }
    with open(directory / 'expected.json', 'w') as f:
        json.dump(meta, f, indent=2)
        f.write('\n')


# ----------------------------------------------------------------------------
# Extra references: dataset modes (reconstruction.py, animate.py) and demo.py's best frame
# ----------------------------------------------------------------------------

# Fixtures that also get a small dataset and the references of the original's dataset modes.
EXTRAS_FIXTURES = ('vox',)
# The dataset: one video per FramesDataset layout in test/, one in train/ (so the predefined split is used).
DATASET_VIDEOS = {
    'test/a_frames': ('folder', (0.05, 0.31, 0.58, 0.77)),
    'test/b.mp4': ('mp4', (0.12, 0.27, 0.44, 0.63, 0.91)),
    'test/c.png': ('strip', (0.08, 0.50, 0.83)),
    'train/d.png': ('strip', (0.2, 0.7)),
}
# animate.py's normalization_params for the dataset-animate reference: relative motion and movement
# scale, but the driving jacobians as detected (use_relative_jacobian False, which run.py must honour).
ANIMATE_NORMALIZATION = {'use_relative_movement': True, 'use_relative_jacobian': False, 'adapt_movement_scale': True}
ANIMATE_PAIR = ('c.png', 'a_frames')  # (driving, source): the source is the first frame of a_frames
BEST_FRAME = 3  # demo.py --best_frame on the fixture's driving.mp4 (frames 0..5)


def write_dataset(scene, root, frame_hw):
    """The fixture dataset at `root` in the three layouts FramesDataset reads, frames of frame_shape size."""
    for name, (layout, times) in DATASET_VIDEOS.items():
        frames = render_clip(scene, times, frame_hw, strength=0.8)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if layout == 'folder':
            path.mkdir(exist_ok=True)
            for index, frame in enumerate(frames):
                imageio.imwrite(path / f'{index:03d}.png', img_as_ubyte(frame))
        elif layout == 'mp4':
            write_mp4(frames, path, DRIVING_FPS)
        else:  # frames side by side, as FramesDataset's read_video un-concatenates them
            imageio.imwrite(path, img_as_ubyte(np.concatenate(list(frames), axis=1)))


def original_reconstruction(original, dataset, generator, kp_detector):
    """{video name: per-frame L1} by the loop of the original reconstruction.py (its Visualizer and file
    writing left out): source = frame 0, kp_source once, every frame drives with absolute keypoints."""
    losses = {}
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            video = torch.tensor(item['video'][np.newaxis])  # [1, C, T, H, W], as the DataLoader gives it
            kp_source = kp_detector(video[:, :, 0])
            frame_losses = []
            for frame_idx in range(video.shape[2]):
                source = video[:, :, 0]
                driving = video[:, :, frame_idx]
                kp_driving = kp_detector(driving)
                out = generator(source, kp_source=kp_source, kp_driving=kp_driving)
                frame_losses.append(float(torch.abs(out['prediction'] - driving).mean().cpu().numpy()))
            losses[item['name']] = frame_losses
    return losses


def original_dataset_animation(original, dataset, generator, kp_detector, driving_name, source_name):
    """Predictions [T, 3, H, W] of one (driving, source) pair by the loop of the original animate.py
    with ANIMATE_NORMALIZATION as its animate_params.normalization_params."""
    by_name = {name: index for index, name in enumerate(dataset.videos)}
    driving_video = torch.tensor(dataset[by_name[driving_name]]['video'][np.newaxis])
    source_frame = torch.tensor(dataset[by_name[source_name]]['video'][np.newaxis])[:, :, 0]
    predictions = []
    with torch.no_grad():
        kp_source = kp_detector(source_frame)
        kp_driving_initial = kp_detector(driving_video[:, :, 0])
        for frame_idx in range(driving_video.shape[2]):
            kp_driving = kp_detector(driving_video[:, :, frame_idx])
            kp_norm = original.normalize_kp(kp_source=kp_source, kp_driving=kp_driving,
                                            kp_driving_initial=kp_driving_initial, **ANIMATE_NORMALIZATION)
            predictions.append(generator(source_frame, kp_source=kp_source, kp_driving=kp_norm)['prediction'].numpy())
    return np.concatenate(predictions).astype(np.float32)


def original_best_frame_animation(original, directory, config, generator, kp_detector, index):
    """demo.py with --best_frame index (relative, adapt_scale): animate forward from the driving frame
    `index` and backward from it to frame 0, and join the two as demo.py does."""
    frame_hw = tuple(config['dataset_params']['frame_shape'][:2])
    source_image, driving_video, _ = read_inputs_like_demo(directory / 'source.png', directory / 'driving.mp4',
                                                           frame_hw)
    driving_forward = driving_video[index:]
    driving_backward = driving_video[:(index + 1)][::-1]
    forward = original.make_animation(source_image, driving_forward, generator, kp_detector, relative=True,
                                      adapt_movement_scale=True, cpu=True)
    backward = original.make_animation(source_image, driving_backward, generator, kp_detector, relative=True,
                                       adapt_movement_scale=True, cpu=True)
    predictions = backward[::-1] + forward[1:]
    return np.stack([img_as_ubyte(frame) for frame in predictions])


def make_extras(original, spec):
    """Add the dataset and best-frame references to an existing fixture (its checkpoint is not touched)."""
    if original.FramesDataset is None:
        sys.exit('the original frames_dataset.py did not import; its FramesDataset is needed for the dataset '
                 'references')
    directory = FIXTURES_DIR / spec.name
    with open(directory / 'config.yaml') as f:
        config = yaml.safe_load(f)
    frame_shape = tuple(config['dataset_params']['frame_shape'])
    root = directory / 'dataset'
    write_dataset(SCENES[spec.scene], root, frame_shape[:2])
    generator, kp_detector = original.load_checkpoints(str(directory / 'config.yaml'),
                                                       str(directory / 'legacy.pth.tar'), cpu=True)
    dataset = original.FramesDataset(str(root), frame_shape=frame_shape, is_train=False)
    losses = original_reconstruction(original, dataset, generator, kp_detector)
    ref = dict(np.load(directory / 'reference.npz'))
    ref['dataset_animation_prediction'] = original_dataset_animation(original, dataset, generator, kp_detector,
                                                                     *ANIMATE_PAIR)
    ref[f'frames_best_{BEST_FRAME}'] = original_best_frame_animation(original, directory, config, generator,
                                                                     kp_detector, BEST_FRAME)
    np.savez_compressed(directory / 'reference.npz', **ref)
    meta = json.loads((directory / 'expected.json').read_text())
    meta['reconstruction'] = {
        'dataset': 'dataset/ (test split: a_frames/ PNG folder, b.mp4, c.png strip)',
        'l1_per_frame': losses,
        'mean_l1': float(np.mean([loss for video in losses.values() for loss in video])),
        'how': 'reconstruction.py loop on FramesDataset(dataset, is_train=False); mean over every frame of '
               'every video, as its printed "Reconstruction loss"'}
    meta['dataset_animation'] = {'driving': ANIMATE_PAIR[0], 'source': ANIMATE_PAIR[1],
                                 'normalization_params': ANIMATE_NORMALIZATION}
    meta['best_frame'] = BEST_FRAME
    meta['keys'] = described_keys(ref)
    meta['shapes'] = {key: list(np.shape(value)) for key, value in ref.items()}
    with open(directory / 'expected.json', 'w') as f:
        json.dump(meta, f, indent=2)
        f.write('\n')
    print(f'  [{spec.name}] extras: reconstruction mean L1 {meta["reconstruction"]["mean_l1"]:.6f} over '
          f'{len(losses)} videos; dataset animation {ref["dataset_animation_prediction"].shape}; '
          f'best frame {BEST_FRAME}', flush=True)


# ----------------------------------------------------------------------------
# Drivers
# ----------------------------------------------------------------------------

def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def stable_seed(name):
    return zlib.crc32(name.encode())


def make_fixture(original, spec):
    started = time.time()
    print(f'[{spec.name}] {spec.covers}', flush=True)
    seed_everything(stable_seed(spec.name))
    directory = FIXTURES_DIR / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    scene = SCENES[spec.scene]
    config = build_config(spec, original.root)
    write_yaml(config, directory / 'config.yaml')

    clip = to_tensor(render_clip(scene, np.arange(TRAIN_FRAMES) / TRAIN_FRAMES, spec.frame_shape[:2]))
    generator, kp_detector, discriminator = build_models(original, config)
    optimizers, stats = train_models(generator, kp_detector, discriminator, clip, spec.steps,
                                     seed=stable_seed(spec.name))
    drift = batchnorm_drift(generator) + batchnorm_drift(kp_detector)
    print(f'  L1 (eval mode) initial {stats["initial_eval_l1"]:.4f} -> final {stats["final_eval_l1"]:.4f}; '
          f'train L1 first {stats["first_train_l1"]:.4f} last10 {stats["last10_train_l1"]:.4f}; '
          f'BN drift gen mean/var {drift[0]:.3f}/{drift[1]:.3f} kp {drift[2]:.3f}/{drift[3]:.3f}', flush=True)
    # Optimizer states triple a checkpoint's size; one fixture carries them to test that they are ignored.
    training_state = optimizers if spec.name in TRAINING_STATE_FIXTURES else None
    for legacy, filename in ((True, 'legacy.pth.tar'), (False, 'zip.pth.tar')):
        save_checkpoint(generator, kp_detector, discriminator, training_state, spec.steps, directory / filename,
                        legacy)

    sizes = write_inputs(spec, scene, directory)
    ref, fps = compute_reference(original, directory, config)
    np.savez_compressed(directory / 'reference.npz', **ref)
    write_expected_json(directory, spec, config, ref, fps, sizes, stats)
    if spec.name in EXTRAS_FIXTURES:
        make_extras(original, spec)
    print(f'  wrote {directory.relative_to(REPO_ROOT)} ({dir_size(directory) / 1e6:.2f} MB) '
          f'in {time.time() - started:.0f}s', flush=True)
    return stats


# ---- example ----------------------------------------------------------------

EXAMPLE_SIZE = (256, 256)
EXAMPLE_FRAMES = 40
EXAMPLE_FPS = 25
EXAMPLE_STEPS = 600    # ~5-10 min on 2 busy CPU cores
EXAMPLE_POOL = 160     # random-pose frames to train on
EXAMPLE_MODEL = model_params(10, True, True, 0.25, 0.25, kp_channels=(16, 64), dense_channels=(16, 64),
                             generator_channels=(8, 32), bottleneck_blocks=2)
EXAMPLE_MODEL['kp_detector_params']['num_blocks'] = 4
EXAMPLE_MODEL['generator_params']['dense_motion_params']['num_blocks'] = 4


def example_config(original_root):
    with open(original_root / 'config' / 'vox-256.yaml') as f:
        config = yaml.safe_load(f)
    config['dataset_params']['root_dir'] = 'example'
    config['model_params'] = copy.deepcopy(EXAMPLE_MODEL)
    config['train_params'].update(num_epochs=1, num_repeats=EXAMPLE_STEPS, batch_size=BATCH_SIZE,
                                  lr_generator=LEARNING_RATE, lr_discriminator=LEARNING_RATE,
                                  lr_kp_detector=LEARNING_RATE)
    return config


def make_example(original):
    started = time.time()
    print('[example] 256x256 demo model', flush=True)
    seed_everything(stable_seed('example'))
    EXAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    scene = SCENES['face']
    config = example_config(original.root)
    write_yaml(config, EXAMPLE_DIR / 'demo-256.yaml')

    # Inputs: neutral source, then a clip that starts neutral, so relative mode lines up.
    source = render_frame(scene, Pose(), EXAMPLE_SIZE)
    imageio.imwrite(EXAMPLE_DIR / 'source.png', img_as_ubyte(source))
    driving = render_clip(scene, np.arange(EXAMPLE_FRAMES) / EXAMPLE_FRAMES, EXAMPLE_SIZE)
    write_mp4(driving, EXAMPLE_DIR / 'driving.mp4', EXAMPLE_FPS)

    rng = np.random.default_rng(stable_seed('example-poses'))
    pool = [render_frame(scene, random_pose(rng), EXAMPLE_SIZE) for _ in range(EXAMPLE_POOL)]
    clip = to_tensor(np.concatenate([np.stack(pool), driving[::2]]))
    print(f'  rendered inputs and {len(clip)} training frames in {time.time() - started:.0f}s', flush=True)

    generator, kp_detector, discriminator = build_models(original, config)

    def schedule(step):  # constant, then a lower rate so BN stats / weights settle
        return LEARNING_RATE if step < 0.7 * EXAMPLE_STEPS else LEARNING_RATE * 0.2

    optimizers, stats = train_models(generator, kp_detector, discriminator, clip, EXAMPLE_STEPS,
                                     seed=stable_seed('example'), scales=(1, 0.5, 0.25),
                                     lr_schedule=schedule, log_every=100)
    print(f'  L1 (eval mode) initial {stats["initial_eval_l1"]:.4f} -> final {stats["final_eval_l1"]:.4f}', flush=True)
    # Without optimizer states, to stay small: demo.load_checkpoints reads only the two models.
    save_checkpoint(generator, kp_detector, discriminator, None, EXAMPLE_STEPS,
                    EXAMPLE_DIR / 'demo-cpk.pth.tar', legacy=True)

    # Sanity check through the original demo path: does the animation follow the driving video?
    source_image, driving_video, _ = read_inputs_like_demo(EXAMPLE_DIR / 'source.png', EXAMPLE_DIR / 'driving.mp4',
                                                           EXAMPLE_SIZE)
    generator, kp_detector = original.load_checkpoints(str(EXAMPLE_DIR / 'demo-256.yaml'),
                                                       str(EXAMPLE_DIR / 'demo-cpk.pth.tar'), cpu=True)
    frames = animate_frames(original, source_image, driving_video, generator, kp_detector, True, True, True)
    driving_u8 = np.stack([img_as_ubyte(f) for f in driving_video]).astype(np.float64)
    animated_l1 = np.abs(frames - driving_u8).mean() / 255
    static_l1 = np.abs(img_as_ubyte(source_image).astype(np.float64)[None] - driving_u8).mean() / 255
    print(f'  demo L1 to driving: animated {animated_l1:.4f} vs static source {static_l1:.4f}', flush=True)
    imageio.imwrite('/tmp/fomm_example_check.png',
                    np.concatenate([np.concatenate([img_as_ubyte(driving_video[i]), frames[i]], axis=0)
                                    for i in (0, 10, 20, 30)], axis=1))
    print(f'  wrote example/ in {time.time() - started:.0f}s', flush=True)
    return stats


def dir_size(path):
    return sum(p.stat().st_size for p in Path(path).rglob('*') if p.is_file())


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', nargs='+', metavar='NAME', choices=list(FIXTURES) + ['example'],
                        help='build only these fixtures ("example" = the example only)')
    parser.add_argument('--example', action='store_true', help='also build example/')
    parser.add_argument('--extras-only', action='store_true',
                        help=f'only (re)write the dataset and best-frame references of {", ".join(EXTRAS_FIXTURES)} '
                             'from their existing checkpoints (no training)')
    parser.add_argument('--random-checkpoint', nargs=2, metavar=('CONFIG', 'OUT'),
                        help='only write an untrained (random-init) legacy checkpoint of the original for CONFIG '
                             'to OUT, e.g. a full-size config/vox-256.yaml for timing; nothing else is built')
    return parser.parse_args()


def write_random_checkpoint(original, config_path, out_path):
    """A full-size model as the original initialises it, saved like the published files (for benchmarks)."""
    with open(config_path) as f:
        config = yaml.safe_load(f)
    generator, kp_detector, discriminator = build_models(original, config)
    models = {'generator': generator, 'kp_detector': kp_detector, 'discriminator': discriminator}
    save_checkpoint(generator, kp_detector, discriminator, zero_step_adam(models), 0, out_path, legacy=True)
    print(f'wrote {out_path} ({Path(out_path).stat().st_size / 1e6:.1f} MB, random init, legacy format, '
          'with Adam states)')


def zero_step_adam(models):
    """Adam state dicts for every parameter, laid out as torch.optim.Adam's state_dict() (two moments and a
    step per parameter: the published checkpoints' optimizer_* entries, two thirds of their bytes, which a
    loader should skip). Written out directly: torch.optim imports torch._dynamo, which trips over the
    modules import_original() stubs."""
    class StateDict:
        def __init__(self, model):
            parameters = list(model.parameters())
            self.state = {index: {'step': torch.tensor(1.0), 'exp_avg': torch.zeros_like(p),
                                  'exp_avg_sq': torch.zeros_like(p)} for index, p in enumerate(parameters)}
            self.groups = [{'lr': 2e-4, 'betas': (0.5, 0.999), 'eps': 1e-8, 'weight_decay': 0,
                            'amsgrad': False, 'params': list(range(len(parameters)))}]

        def state_dict(self):
            return {'state': self.state, 'param_groups': self.groups}

    return {name: StateDict(model) for name, model in models.items()}


def main():
    args = parse_args()
    warnings.filterwarnings('ignore', category=UserWarning)   # grid_sample/meshgrid default-arg notices
    warnings.filterwarnings('ignore', category=DeprecationWarning)  # imageio.imread (v2 API, as demo.py)
    started = time.time()
    original = import_original()
    if args.random_checkpoint:
        write_random_checkpoint(original, *args.random_checkpoint)
        return
    if args.extras_only:
        for name in EXTRAS_FIXTURES:
            make_extras(original, FIXTURES[name])
        return
    names = args.only if args.only else list(FIXTURES)
    results = {}
    for name in names:
        if name in FIXTURES:
            results[name] = make_fixture(original, FIXTURES[name])
    if args.example or 'example' in names:
        results['example'] = make_example(original)

    print('\nsummary (eval-mode L1 initial -> final):')
    for name, stats in results.items():
        print(f'  {name:11s} {stats["initial_eval_l1"]:.4f} -> {stats["final_eval_l1"]:.4f}')
    if FIXTURES_DIR.exists():
        print(f'tests/fixtures total {dir_size(FIXTURES_DIR) / 1e6:.2f} MB')
    print(f'total time {time.time() - started:.0f}s')


if __name__ == '__main__':
    main()

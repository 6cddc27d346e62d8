"""The First Order Motion Model in TensorFlow / Keras 3, NHWC, inference only.

Reads top-down, like the paper:
  1. numerics that mimic PyTorch (coordinate grid, grid sample, interpolation, anti-alias downsampling)
  2. building blocks (Down/Up/Same/Res blocks, Hourglass)
  3. the three networks (KPDetector, DenseMotionNetwork + OcclusionAwareGenerator, ProcessKpDriving)
  4. tf.Module wrappers with fixed signatures, and build_module: config + checkpoint -> module
  5. inference rewrites: fused replacements for the blocks of sections 2-3 (BatchNorm folded into its
     conv, nearest-up + conv as one sub-pixel conv, the generator's final conv split by rows, and for
     the TF Lite files the bottleneck's convs as Winograd's), built straight from a checkpoint's tensors
     (no faithful model first), and the source cache (source_encoder + generator_cached)
  6. reduced precision: the fused generator with its heavy convolutions in bfloat16 (--precision bfloat16)

Sections 1-3 are the original's computation and nothing else; what run.py runs is section 5's fused
models, equal to it up to float32 rounding (tests/test_parity.py runs both).

Layer and attribute names follow the original's `modules/` so a torch parameter name such as
`dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight` maps to one attribute path here
(see checkpoint_loader.py). Layouts differ from the original only by NCHW -> NHWC:
mask [B, h, w, K+1], occlusion_map [B, h, w, 1], sparse_deformed [B, K+1, h, w, C].

Every op converts to TF Lite builtins: no einsum, no matrix inverse, no implicit batch matmul
broadcasting.
"""
import functools
import hashlib
import itertools

import numpy as np

import animate
import backends
import checkpoint_loader
import utils
from model_config import ModelConfig

tf = backends.tensorflow()  # quietly: TensorFlow's native start-up lines never reach the user
import keras  # noqa: E402  (imported with TensorFlow above)


# --------------------------------------------------------------------------------------------------
# 1. Numerics that mimic PyTorch
# --------------------------------------------------------------------------------------------------

def make_coordinate_grid(height, width):
    """[-1, 1] x [-1, 1] meshgrid, [h, w, 2] with (x, y) last, computed in float32 in torch's order."""
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)
    x = 2 * (x / np.float32(width - 1)) - 1
    y = 2 * (y / np.float32(height - 1)) - 1
    xx = np.broadcast_to(x[None, :], (height, width))
    yy = np.broadcast_to(y[:, None], (height, width))
    return np.stack([xx, yy], axis=-1).astype(np.float32)


def grid_sample(image, grid, image_index):
    """F.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False) in NHWC.

    image: [N, H, W, C]; grid: [M, h, w, 2] of (x, y) in [-1, 1]; image_index: [M] int32, which
    image each grid samples (so one source image serves many grids without being tiled).
    Returns [M, h, w, C]. Corners outside the image contribute zero, as in torch.
    """
    shape = tf.shape(image)
    height, width, channels = shape[1], shape[2], shape[3]
    flat = tf.reshape(image, [-1, channels])  # [N*H*W, C]
    base = tf.reshape(image_index * height * width, [-1, 1, 1])  # [M, 1, 1]

    # Unnormalise exactly as torch: ((coord + 1) * size - 1) / 2.
    ix = ((grid[..., 0] + 1) * tf.cast(width, tf.float32) - 1) / 2
    iy = ((grid[..., 1] + 1) * tf.cast(height, tf.float32) - 1) / 2
    x0 = tf.floor(ix)
    y0 = tf.floor(iy)
    x1 = x0 + 1
    y1 = y0 + 1
    corners = (
        (x0, y0, (x1 - ix) * (y1 - iy)),  # north-west
        (x1, y0, (ix - x0) * (y1 - iy)),  # north-east
        (x0, y1, (x1 - ix) * (iy - y0)),  # south-west
        (x1, y1, (ix - x0) * (iy - y0)),  # south-east
    )
    out = None
    for cx, cy, weight in corners:
        inside = tf.cast((cx >= 0) & (cx <= tf.cast(width - 1, tf.float32))
                         & (cy >= 0) & (cy <= tf.cast(height - 1, tf.float32)), tf.float32)
        xi = tf.clip_by_value(tf.cast(cx, tf.int32), 0, width - 1)
        yi = tf.clip_by_value(tf.cast(cy, tf.int32), 0, height - 1)
        values = tf.gather(flat, base + yi * width + xi)  # [M, h, w, C]
        term = values * tf.expand_dims(weight * inside, -1)
        out = term if out is None else out + term
    return out


def resize_bilinear(x, height, width):
    """F.interpolate(mode='bilinear', align_corners=False) without antialiasing, NHWC."""
    return tf.image.resize(x, (height, width), method="bilinear", antialias=False)


def kp2gaussian(kp_value, height, width, kp_variance):
    """Gaussian around each keypoint: kp [B, K, 2] -> [B, h, w, K]."""
    grid = tf.constant(make_coordinate_grid(height, width))[None, :, :, None, :]  # [1, h, w, 1, 2]
    mean = kp_value[:, None, None, :, :]  # [B, 1, 1, K, 2]
    diff = grid - mean
    return tf.exp(-0.5 * tf.reduce_sum(diff * diff, axis=-1) / kp_variance)


def invert_2x2(m):
    """Inverse of [..., 2, 2] matrices in closed form (TF Lite has no MatrixInverse)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    return tf.stack([tf.stack([d, -b], -1), tf.stack([-c, a], -1)], -2) / det[..., None, None]


def matmul_2x2(a, b):
    """a @ b for [..., 2, 2] with broadcasting over leading dims, as plain multiply-adds."""
    rows = []
    for i in range(2):
        rows.append(tf.stack([a[..., i, 0] * b[..., 0, j] + a[..., i, 1] * b[..., 1, j] for j in range(2)], -1))
    return tf.stack(rows, -2)


class AntiAliasInterpolation2d(keras.layers.Layer):
    """Band-limited downsampling: gaussian blur then keep every (1/scale)-th pixel.

    The gaussian kernel is a weight (the original stores it as the buffer `down.weight`), so it is
    loaded from the checkpoint like every other tensor. The blur + stride is one strided depthwise
    conv after torch's asymmetric (ka, kb) padding, identical to conv-then-slice.
    """

    def __init__(self, channels, scale, **kwargs):
        super().__init__(**kwargs)
        sigma = (1 / scale - 1) / 2
        self.kernel_size = 2 * round(sigma * 4) + 1
        self.ka = self.kernel_size // 2
        self.kb = self.ka - 1 if self.kernel_size % 2 == 0 else self.ka
        self.stride = int(1 / scale)
        self.conv = keras.layers.DepthwiseConv2D(self.kernel_size, strides=self.stride, padding="valid",
                                                 use_bias=False, name="weight")
        self.conv.build((None, None, None, channels))
        self.conv.kernel.assign(self.gaussian_kernel(channels, self.kernel_size, sigma))

    @staticmethod
    def gaussian_kernel(channels, size, sigma):
        """The original's default kernel, [k, k, C, 1]; a checkpoint's buffer replaces it."""
        grid = np.arange(size, dtype=np.float32)
        mean = (size - 1) / 2
        g = np.exp(-(grid - mean) ** 2 / (2 * sigma ** 2))
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        return np.tile(kernel[:, :, None, None], (1, 1, channels, 1)).astype(np.float32)

    def call(self, x):
        x = tf.pad(x, [[0, 0], [self.ka, self.kb], [self.ka, self.kb], [0, 0]])
        return self.conv(x)


# --------------------------------------------------------------------------------------------------
# 2. Building blocks
# --------------------------------------------------------------------------------------------------

def conv2d(filters, kernel_size, padding, name="conv", **conv_options):
    """nn.Conv2d(kernel_size, padding) as a Keras layer (or pad + conv for non-'same' padding).
    conv_options go to the Conv2D (section 5 passes initializers holding the checkpoint's weights)."""
    if 2 * padding == kernel_size - 1:
        return keras.layers.Conv2D(filters, kernel_size, padding="same", name=name, **conv_options)
    return keras.Sequential([keras.layers.ZeroPadding2D(padding, name="pad"),
                             keras.layers.Conv2D(filters, kernel_size, padding="valid", name=name, **conv_options)],
                            name=name)


TORCH_BATCH_NORM_EPSILON = 1e-5  # nn.BatchNorm2d's default


def batch_norm(name="norm", **norm_options):
    """nn.BatchNorm2d in eval mode: torch's epsilon, running statistics from the checkpoint."""
    return keras.layers.BatchNormalization(epsilon=TORCH_BATCH_NORM_EPSILON, name=name, **norm_options)


class ResBlock2d(keras.layers.Layer):
    """Residual block, resolution preserved: BN -> ReLU -> conv -> BN -> ReLU -> conv, plus the input."""

    def __init__(self, features, kernel_size=3, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.norm1 = batch_norm("norm1")
        self.conv1 = conv2d(features, kernel_size, padding, "conv1")
        self.norm2 = batch_norm("norm2")
        self.conv2 = conv2d(features, kernel_size, padding, "conv2")

    def call(self, x):
        out = self.conv1(tf.nn.relu(self.norm1(x, training=False)))
        out = self.conv2(tf.nn.relu(self.norm2(out, training=False)))
        return out + x


class UpBlock2d(keras.layers.Layer):
    """Decoder block: nearest x2 upsampling (F.interpolate(scale_factor=2)) -> conv -> BN -> ReLU."""

    def __init__(self, out_features, kernel_size=3, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.up = keras.layers.UpSampling2D(2, interpolation="nearest", name="up")
        self.conv = conv2d(out_features, kernel_size, padding)
        self.norm = batch_norm()

    def call(self, x):
        return tf.nn.relu(self.norm(self.conv(self.up(x)), training=False))


class DownBlock2d(keras.layers.Layer):
    """Encoder block: conv -> BN -> ReLU -> 2x2 average pool."""

    def __init__(self, out_features, kernel_size=3, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.conv = conv2d(out_features, kernel_size, padding)
        self.norm = batch_norm()
        self.pool = keras.layers.AveragePooling2D(2, name="pool")

    def call(self, x):
        return self.pool(tf.nn.relu(self.norm(self.conv(x), training=False)))


class SameBlock2d(keras.layers.Layer):
    """conv -> BN -> ReLU, resolution preserved."""

    def __init__(self, out_features, kernel_size=3, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.conv = conv2d(out_features, kernel_size, padding)
        self.norm = batch_norm()

    def call(self, x):
        return tf.nn.relu(self.norm(self.conv(x), training=False))


def _level_width(block_expansion, max_features, level):
    """Channels at `level` of a stack that doubles them per level up to max_features (hourglass, generator)."""
    return min(max_features, block_expansion * (2 ** level))


class Encoder(keras.layers.Layer):
    """Hourglass encoder: returns the input and every down block's output (for the skips)."""

    def __init__(self, block_expansion, num_blocks, max_features, **kwargs):
        super().__init__(**kwargs)
        self.down_blocks = [DownBlock2d(_level_width(block_expansion, max_features, i + 1), name=f"down_{i}")
                            for i in range(num_blocks)]

    def call(self, x):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(keras.layers.Layer):
    """Hourglass decoder: up block, then concatenate the matching encoder output (channels last)."""

    def __init__(self, block_expansion, num_blocks, max_features, **kwargs):
        super().__init__(**kwargs)
        self.up_blocks = [UpBlock2d(_level_width(block_expansion, max_features, i), name=f"up_{n}")
                          for n, i in enumerate(reversed(range(num_blocks)))]

    def call(self, skips):
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = tf.concat([block(out), skips.pop()], axis=-1)
        return out


class Hourglass(keras.layers.Layer):
    """U-Net style hourglass; output has block_expansion + in_features channels."""

    def __init__(self, block_expansion, in_features, num_blocks, max_features, **kwargs):
        super().__init__(**kwargs)
        self.encoder = Encoder(block_expansion, num_blocks, max_features, name="encoder")
        self.decoder = Decoder(block_expansion, num_blocks, max_features, name="decoder")
        self.out_filters = block_expansion + in_features

    def call(self, x):
        return self.decoder(self.encoder(x))


# --------------------------------------------------------------------------------------------------
# 3. The networks
# --------------------------------------------------------------------------------------------------

def gaussian2kp(heatmap, height, width):
    """Keypoint positions as the expectation of each heatmap over the [-1, 1] grid (Sec. 3.1).

    heatmap: [B, h*w, K], each keypoint's softmax over the h*w pixels. Returns {'value': [B, K, 2]}.
    """
    grid = tf.constant(make_coordinate_grid(height, width).reshape(-1, 2))  # [hw, 2]
    return {"value": tf.matmul(heatmap, grid, transpose_a=True)}  # [B, K, 2]


class KPDetector(keras.Model):
    """Keypoints and the jacobian near each keypoint from an image (Sec. 3.1)."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        params = config.kp_detector
        self.set_settings(config)
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(config.num_channels, self.scale_factor, name="down")
        self.predictor = Hourglass(params.block_expansion, config.num_channels, params.num_blocks,
                                   params.max_features, name="predictor")
        self.kp = conv2d(config.num_kp, 7, params.pad, name="kp")
        self.jacobian = None
        if self.estimate_jacobian:
            self.jacobian = conv2d(4 * self.num_jacobian_maps, 7, params.pad, name="jacobian")

    def set_settings(self, config: ModelConfig):
        """The config values call() reads (the fused detector of section 5 sets them the same way)."""
        params = config.kp_detector
        self.config = config
        self.temperature = params.temperature
        self.scale_factor = params.scale_factor
        self.estimate_jacobian = config.estimate_jacobian
        self.num_jacobian_maps = 1 if params.single_jacobian_map else config.num_kp

    def downsample(self, image):
        """The image the hourglass sees (also what --prescale reuses in dense motion)."""
        return self.down(image) if self.scale_factor != 1 else image

    def call(self, image):
        feature_map = self.predictor(self.downsample(image))
        prediction = self.kp(feature_map)  # [B, h, w, K]
        batch = tf.shape(prediction)[0]
        # Static h*w (not -1): with a dynamic batch, two unknown dims make TF Lite fall back to a Flex
        # StridedSlice for the heatmap[..., None] below.
        hm_height, hm_width = prediction.shape[1], prediction.shape[2]
        num_kp = self.config.num_kp
        heatmap = tf.nn.softmax(tf.reshape(prediction, [batch, hm_height * hm_width, num_kp]) / self.temperature,
                                axis=1)  # [B, hw, K]
        out = gaussian2kp(heatmap, hm_height, hm_width)

        if self.jacobian is not None:
            jacobian_map = tf.reshape(self.jacobian(feature_map),
                                      [batch, hm_height * hm_width, self.num_jacobian_maps, 4])  # [B, hw, J, 4]
            jacobian = tf.reduce_sum(heatmap[..., None] * jacobian_map, axis=1)  # [B, K, 4]
            out["jacobian"] = tf.reshape(jacobian, [batch, num_kp, 2, 2])
        return out


class DenseMotionNetwork(keras.layers.Layer):
    """Dense motion (Sec. 3.2) from the sparse motions of kp_source and kp_driving: masks that blend
    K+1 local transforms, and the occlusion map."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        params = config.generator.dense_motion
        self.set_settings(config)
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(config.num_channels, self.scale_factor, name="down")
        in_features = (config.num_kp + 1) * (config.num_channels + 1)
        self.hourglass = Hourglass(params.block_expansion, in_features, params.num_blocks, params.max_features,
                                   name="hourglass")
        self.mask = conv2d(config.num_kp + 1, 7, 3, name="mask")
        self.occlusion = conv2d(1, 7, 3, name="occlusion") if config.generator.estimate_occlusion_map else None

    def set_settings(self, config: ModelConfig):
        """The config values call() reads (the fused network of section 5 sets them the same way)."""
        self.num_kp = config.num_kp
        self.kp_variance = config.generator.dense_motion.kp_variance
        self.scale_factor = config.generator.dense_motion.scale_factor

    def create_heatmap_representations(self, height, width, kp_driving, kp_source):
        """Eq 6. in the paper H_k(z): [B, h, w, K+1], background channel first."""
        heatmap = (kp2gaussian(kp_driving["value"], height, width, self.kp_variance)
                   - kp2gaussian(kp_source["value"], height, width, self.kp_variance))
        zeros = tf.zeros_like(heatmap[..., :1])
        return tf.concat([zeros, heatmap], axis=-1)

    def create_sparse_motions(self, height, width, kp_driving, kp_source):
        """Eq 4. in the paper T_{s<-d}(z): [B, K+1, h, w, 2], identity first."""
        identity = tf.constant(make_coordinate_grid(height, width))[None, None]  # [1, 1, h, w, 2]
        coordinates = identity - kp_driving["value"][:, :, None, None, :]  # [B, K, h, w, 2]
        if "jacobian" in kp_driving:
            jacobian = matmul_2x2(kp_source["jacobian"], invert_2x2(kp_driving["jacobian"]))  # [B, K, 2, 2]
            # Each entry is sliced at rank 4, then broadcast over [h, w]: slicing a [B, K, 1, 1, 2, 2]
            # tensor is a 6-D STRIDED_SLICE, which TF Lite's int8 calibration kernels refuse (1-D to 5-D).
            j = [[jacobian[:, :, row, col][:, :, None, None] for col in range(2)] for row in range(2)]  # [B, K, 1, 1]
            cx, cy = coordinates[..., 0], coordinates[..., 1]
            coordinates = tf.stack([j[0][0] * cx + j[0][1] * cy, j[1][0] * cx + j[1][1] * cy], axis=-1)
        driving_to_source = coordinates + kp_source["value"][:, :, None, None, :]
        batch = tf.shape(driving_to_source)[0]
        identity = tf.tile(identity, [batch, 1, 1, 1, 1])
        return tf.concat([identity, driving_to_source], axis=1)

    def create_deformed_source_image(self, source_image, sparse_motions):
        """Eq 7. in the paper \\hat{T}_{s<-d}(z): the source warped by each sparse motion, [B, K+1, h, w, C].

        One source image [1, ...] serves every driving frame of the batch without being tiled.
        """
        shape = tf.shape(sparse_motions)
        batch, height, width = shape[0], shape[2], shape[3]
        num_sources = tf.shape(source_image)[0]
        grids = tf.reshape(sparse_motions, [-1, height, width, 2])  # [B*(K+1), h, w, 2]
        image_index = (tf.range(batch * (self.num_kp + 1)) // (self.num_kp + 1)) % num_sources
        deformed = grid_sample(source_image, grids, image_index)
        return tf.reshape(deformed, [batch, self.num_kp + 1, height, width, source_image.shape[-1]])

    def downsample(self, image):
        """The source at the resolution dense motion works at."""
        return self.down(image) if self.scale_factor != 1 else image

    def call(self, source_image, kp_driving, kp_source):
        return self.motion_from_scaled(self.downsample(source_image), kp_driving, kp_source)

    def motion_from_scaled(self, source_image, kp_driving, kp_source):
        """The dense motion from the source already at dense motion's resolution (see downsample)."""
        height, width, channels = source_image.shape[1], source_image.shape[2], source_image.shape[3]

        heatmap = self.create_heatmap_representations(height, width, kp_driving, kp_source)  # [B, h, w, K+1]
        sparse_motion = self.create_sparse_motions(height, width, kp_driving, kp_source)  # [B, K+1, h, w, 2]
        sparse_deformed = self.create_deformed_source_image(source_image, sparse_motion)  # [B, K+1, h, w, C]

        # Channel order of the original's view(bs, -1, h, w): per keypoint [heatmap, C colour channels].
        per_kp = tf.concat([heatmap[..., None], tf.transpose(sparse_deformed, [0, 2, 3, 1, 4])], axis=-1)
        batch = tf.shape(per_kp)[0]
        hourglass_input = tf.reshape(per_kp, [batch, height, width, (self.num_kp + 1) * (channels + 1)])
        prediction = self.hourglass(hourglass_input)

        mask = tf.nn.softmax(self.mask(prediction), axis=-1)  # [B, h, w, K+1]
        motions = tf.transpose(sparse_motion, [0, 2, 3, 1, 4])  # [B, h, w, K+1, 2]
        deformation = tf.reduce_sum(motions * mask[..., None], axis=3)  # [B, h, w, 2]
        out = {"sparse_deformed": sparse_deformed, "mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = tf.sigmoid(self.occlusion(prediction))  # [B, h, w, 1]
        return out


class OcclusionAwareGenerator(keras.Model):
    """The source image transformed by the motion the keypoints induce: encoder -> features warped by the
    dense motion and masked by the occlusion map -> decoder. Johnson architecture."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        params = config.generator
        self.config = config
        self.dense_motion_network = DenseMotionNetwork(config, name="dense_motion_network")
        self.first = SameBlock2d(params.block_expansion, kernel_size=7, padding=3, name="first")
        width = functools.partial(_level_width, params.block_expansion, params.max_features)
        self.down_blocks = [DownBlock2d(width(i + 1), name=f"down_{i}") for i in range(params.num_down_blocks)]
        self.up_blocks = [UpBlock2d(width(params.num_down_blocks - i - 1), name=f"up_{i}")
                          for i in range(params.num_down_blocks)]
        bottleneck_width = width(params.num_down_blocks)
        self.bottleneck = [ResBlock2d(bottleneck_width, name=f"r{i}") for i in range(params.num_bottleneck_blocks)]
        self.final = conv2d(config.num_channels, 7, 3, name="final")

    def encode_source(self, source_image):
        """Encoding (downsampling) part: source features [S, h, w, F], independent of the driving frame."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        return out

    @staticmethod
    def deform_input(inp, deformation):
        """Warp inp [S, H, W, C] by deformation [B, h, w, 2] (resized bilinearly to H, W if needed)."""
        height, width = inp.shape[1], inp.shape[2]
        if deformation.shape[1] != height or deformation.shape[2] != width:
            deformation = resize_bilinear(deformation, height, width)
        image_index = tf.range(tf.shape(deformation)[0]) % tf.shape(inp)[0]
        return grid_sample(inp, deformation, image_index)

    def final_image(self, features):
        """The last up block's features -> the predicted image: final 7x7 conv and sigmoid."""
        return tf.sigmoid(self.final(features))

    def call(self, source_image, kp_driving, kp_source):
        dense_motion = self.dense_motion_network(source_image, kp_driving, kp_source)
        return self.transform_and_decode(source_image, self.encode_source(source_image), dense_motion)

    def transform_and_decode(self, source_image, source_features, dense_motion):
        """Transforming the feature representation according to deformation and occlusion, then the
        decoding part: the outputs of call()."""
        deformation = dense_motion["deformation"]
        out = self.deform_input(source_features, deformation)
        if "occlusion_map" in dense_motion:
            occlusion_map = dense_motion["occlusion_map"]
            if occlusion_map.shape[1] != out.shape[1] or occlusion_map.shape[2] != out.shape[2]:
                occlusion_map = resize_bilinear(occlusion_map, out.shape[1], out.shape[2])
            out = out * occlusion_map
        result = dict(dense_motion)
        result["deformed"] = self.deform_input(source_image, deformation)

        # Decoding part
        for block in self.bottleneck:
            out = block(out)
        for block in self.up_blocks:
            out = block(out)
        result["prediction"] = self.final_image(out)
        return result


def convex_hull_area(points):
    """Area of the 2-D convex hull of each point set, [N, K, 2] -> [N], in-graph (scipy's ConvexHull.volume).

    Edge i->j is a hull edge (counter-clockwise) when every point lies strictly to its left or on the
    segment i..j itself; the shoelace sum over those edges is the area. Collinear points in the middle
    of an edge are thus covered once; duplicate points count once (only the first copy opens edges);
    a degenerate (collinear) set gives 0. The K^3 test is tiny for K ~ 10 and has no control flow.
    """
    p_i = points[:, :, None, None, :]  # [N, K, 1, 1, 2] edge start
    p_j = points[:, None, :, None, :]  # [N, 1, K, 1, 2] edge end
    p_k = points[:, None, None, :, :]  # [N, 1, 1, K, 2] tested point
    edge = p_j - p_i
    rel = p_k - p_i
    cross = edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]  # [N, K, K, K]
    dot = edge[..., 0] * rel[..., 0] + edge[..., 1] * rel[..., 1]
    edge_len2 = edge[..., 0] * edge[..., 0] + edge[..., 1] * edge[..., 1]  # [N, K, K, 1]
    rel_len2 = rel[..., 0] * rel[..., 0] + rel[..., 1] * rel[..., 1]
    # Angular tolerance so float32 rounding does not turn a collinear point into an outside one.
    tolerance = 1e-5 * tf.sqrt(edge_len2 * rel_len2)
    left = tf.cast(cross > tolerance, tf.float32)
    on_segment = (tf.cast(tf.abs(cross) <= tolerance, tf.float32) * tf.cast(dot >= 0, tf.float32)
                  * tf.cast(dot <= edge_len2, tf.float32))
    all_ok = tf.reduce_min(tf.maximum(left, on_segment), axis=-1)  # [N, K, K]

    num = points.shape[1]
    same = tf.reduce_min(tf.cast(tf.equal(points[:, :, None, :], points[:, None, :, :]), tf.float32), axis=-1)
    earlier = tf.constant(np.tril(np.ones((num, num), np.float32), -1))  # [k, m] = 1 where m < k
    first_copy = 1 - tf.reduce_max(same * earlier, axis=-1)  # [N, K]
    valid = (all_ok * tf.cast(edge_len2[..., 0] > 0, tf.float32)
             * first_copy[:, :, None] * first_copy[:, None, :])
    x, y = points[..., 0], points[..., 1]
    shoelace = x[:, :, None] * y[:, None, :] - x[:, None, :] * y[:, :, None]  # [N, K(i), K(j)]
    return tf.abs(0.5 * tf.reduce_sum(valid * shoelace, axis=[1, 2]))


def process_kp_driving(kp_driving, kp_driving_initial, kp_source, use_relative_jacobian, adapt_movement_scale):
    """The original's normalize_kp with relative movement on (Sec. 4, relative motion transfer).

    use_relative_jacobian and adapt_movement_scale are float scalars (0 or 1) so one graph serves
    every combination. The movement scale is sqrt(source hull area) / sqrt(initial driving hull area),
    from the first item of each batch, as the original does.
    """
    source_area = convex_hull_area(kp_source["value"][:1])[0]
    driving_area = convex_hull_area(kp_driving_initial["value"][:1])[0]
    scale = tf.where(adapt_movement_scale > 0.5, tf.sqrt(source_area) / tf.sqrt(driving_area), 1.0)
    value = (kp_driving["value"] - kp_driving_initial["value"]) * scale + kp_source["value"]
    out = {"value": value}
    if "jacobian" in kp_driving:
        relative = matmul_2x2(matmul_2x2(kp_driving["jacobian"], invert_2x2(kp_driving_initial["jacobian"])),
                              kp_source["jacobian"])
        out["jacobian"] = tf.where(use_relative_jacobian > 0.5, relative, kp_driving["jacobian"])
    return out


# --------------------------------------------------------------------------------------------------
# 4. tf.Module wrappers with fixed signatures, and the build step
# --------------------------------------------------------------------------------------------------

# process_kp_driving's two float flags, in the order of build.py's --hardcode XY.
HARDCODE_FLAGS = ("use_relative_jacobian", "adapt_movement_scale")


def _kp_specs(config, batch, prefix):
    specs = [tf.TensorSpec([batch, config.num_kp, 2], tf.float32, name=prefix)]
    if config.estimate_jacobian:
        specs.append(tf.TensorSpec([batch, config.num_kp, 2, 2], tf.float32, name=animate.jacobian_key(prefix)))
    return specs


def _track_raw_variables(module, *layers):
    # A tf.Module that only holds a Keras 3 model exports its variables without initial values to
    # TF Lite (VAR_HANDLE ops, garbage outputs); tracking the raw tf.Variables makes them constants.
    # Only the variables of `layers` are saved, so a module that runs part of a model names that part.
    module._vars = [v.value for layer in layers for v in layer.variables]


def weights_digest(model):
    """sha256 (16 hex digits) of a model's weights: tells whether two exports came from the same weights."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()[:16]


def parse_hardcode(hardcode):
    """--hardcode 'XY' -> {'use_relative_jacobian': float(X), 'adapt_movement_scale': float(Y)}; None -> {}."""
    if hardcode is None:
        return {}
    if len(hardcode) != 2 or set(hardcode) - {"0", "1"}:
        raise utils.UserError(f"--hardcode takes two digits 0/1 (use_relative_jacobian, adapt_movement_scale), "
                          f"got {hardcode!r}")
    return {name: float(digit) for name, digit in zip(HARDCODE_FLAGS, hardcode)}


def check_prescale(config: ModelConfig):
    """--prescale reuses kp_detector's downscaled image in dense motion: both must downscale alike."""
    kp_scale = config.kp_detector.scale_factor
    dense_scale = config.generator.dense_motion.scale_factor
    if kp_scale != dense_scale:
        raise utils.UserError(f"--prescale needs kp_detector_params.scale_factor ({kp_scale}) equal to "
                          f"dense_motion_params.scale_factor ({dense_scale})")


class SignatureModule(tf.Module):
    """A tf.Module whose `signature_function` is a tf.function with a fixed input signature.

    The signature depends on the config and the build options (frame shape, jacobians, prescale,
    hardcoded flags), so subclasses build their TensorSpecs in __init__ (spec names are the SPEC's
    signature names) and implement `compute(inputs: dict) -> dict`. The tf.function takes the inputs
    positionally in spec order; calling the module takes them by name, like the exported signature.
    """

    def _set_signature(self, specs):
        self.input_specs = tuple(specs)
        # No AutoGraph: the model code has no Python control flow on tensors, so converting the source of
        # every function it calls (seconds of a cold start) would give the same graph.
        self.signature_function = tf.function(self._call_positional, input_signature=list(self.input_specs),
                                              autograph=False)

    @property
    def input_names(self):
        return [spec.name for spec in self.input_specs]

    def _call_positional(self, *tensors):
        return self.compute(dict(zip(self.input_names, tensors)))

    def __call__(self, **inputs):
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise TypeError(f"{self.name}: unexpected inputs {unknown}; the signature takes {self.input_names}")
        return self.signature_function(*[inputs[name] for name in self.input_names])

    def concrete_function(self):
        """The traced signature function: what SavedModel serves as `serving_default`."""
        return self.signature_function.get_concrete_function()

    def export_root(self):
        """The object to hand to tf.saved_model.save: only the raw variables the function captures.

        Saving the module itself would also save the Keras model it holds, and Keras 3 traces a
        one-input default signature for every model it saves, which fails for the generator.
        """
        root = tf.Module()
        root._vars = list(getattr(self, "_vars", []))
        return root


def _scaled_image_spec(down_layer, frame_shape, name):
    """TensorSpec [1, h, w, C] of what `down_layer` (an AntiAliasInterpolation2d, or None) makes of a frame."""
    if down_layer is None:
        return tf.TensorSpec([1, *frame_shape], tf.float32, name=name)
    shape = down_layer(tf.zeros([1, *frame_shape])).shape
    return tf.TensorSpec(shape, tf.float32, name=name)


def _generator_outputs(result, prediction_only):
    keys = ("prediction",) if prediction_only else ("prediction", "mask", "occlusion_map", "deformed")
    return {k: result[k] for k in keys if k in result}


class KPDetectorModule(SignatureModule):
    """img [B, H, W, C] -> value [B, K, 2], jacobian [B, K, 2, 2].

    With prescale it also returns `source_image_scaled`, the anti-aliased downscaled image the
    hourglass saw, for a prescale generator to reuse instead of downscaling the source again.
    """

    def __init__(self, model: KPDetector, batch_size=None, prescale=False):
        super().__init__(name="kp_detector")
        self.model = model
        self.config = model.config
        self.prescale = prescale
        _track_raw_variables(self, model)
        self._set_signature([tf.TensorSpec([batch_size, *self.config.frame_shape], tf.float32, name="img")])

    def compute(self, inputs):
        out = dict(self.model(inputs["img"]))
        if self.prescale:
            out["source_image_scaled"] = self.model.downsample(inputs["img"])
        return out


class ProcessKpDrivingModule(SignatureModule):
    """Relative keypoints for the generator (the original's normalize_kp), all in-graph.

    `hardcode` ('XY', see parse_hardcode) bakes use_relative_jacobian and adapt_movement_scale in
    as constants and drops them from the inputs.
    """

    def __init__(self, config: ModelConfig, batch_size=None, hardcode=None):
        super().__init__(name="process_kp_driving")
        self.config = config
        self.hardcoded = parse_hardcode(hardcode)
        specs = (_kp_specs(config, batch_size, "kp_driving") + _kp_specs(config, 1, "kp_driving_initial")
                 + _kp_specs(config, 1, "kp_source"))
        if not self.hardcoded:
            specs += [tf.TensorSpec([], tf.float32, name=flag) for flag in HARDCODE_FLAGS]
        self._set_signature(specs)

    def compute(self, inputs):
        flags = [inputs[flag] if flag in inputs else tf.constant(self.hardcoded[flag]) for flag in HARDCODE_FLAGS]
        return process_kp_driving(animate.kp_from_arguments(inputs, "kp_driving"),
                                  animate.kp_from_arguments(inputs, "kp_driving_initial"),
                                  animate.kp_from_arguments(inputs, "kp_source"), *flags)


class GeneratorModule(SignatureModule):
    """source_image [1, H, W, C] + keypoints -> prediction [B, H, W, C] (+ mask, occlusion_map, deformed).

    One source image drives a batch of B driving keypoints without being tiled. With prescale the
    dense motion network takes `source_image_scaled` (kp_detector's prescale output) instead of
    downscaling the source itself.
    """

    def __init__(self, model: OcclusionAwareGenerator, batch_size=None, prediction_only=False, prescale=False):
        super().__init__(name="generator")
        self.model = model
        self.config = model.config
        self.prediction_only = prediction_only
        self.prescale = prescale
        _track_raw_variables(self, model)
        specs = [tf.TensorSpec([1, *self.config.frame_shape], tf.float32, name="source_image")]
        if prescale:
            specs.append(_scaled_image_spec(getattr(model.dense_motion_network, "down", None),
                                            self.config.frame_shape, "source_image_scaled"))
        specs += _kp_specs(self.config, batch_size, "kp_driving") + _kp_specs(self.config, 1, "kp_source")
        self._set_signature(specs)

    def compute(self, inputs):
        source = inputs["source_image"]
        dense_motion_network = self.model.dense_motion_network
        scaled = inputs["source_image_scaled"] if self.prescale else dense_motion_network.downsample(source)
        dense_motion = dense_motion_network.motion_from_scaled(scaled, animate.kp_from_arguments(inputs, "kp_driving"),
                                                               animate.kp_from_arguments(inputs, "kp_source"))
        result = self.model.transform_and_decode(source, self.model.encode_source(source), dense_motion)
        return _generator_outputs(result, self.prediction_only)


def _zero_kp(config, batch):
    kp = {"value": tf.zeros([batch, config.num_kp, 2])}
    if config.estimate_jacobian:
        kp["jacobian"] = tf.eye(2, batch_shape=[batch, config.num_kp])
    return kp


def create_kp_detector(config: ModelConfig) -> KPDetector:
    """A built (variables created) but untrained KPDetector: the original's computation."""
    model = KPDetector(config, name="kp_detector")
    model(tf.zeros([1, *config.frame_shape]))
    return model


def create_generator(config: ModelConfig) -> OcclusionAwareGenerator:
    """A built (variables created) but untrained OcclusionAwareGenerator: the original's computation."""
    model = OcclusionAwareGenerator(config, name="generator")
    model(tf.zeros([1, *config.frame_shape]), _zero_kp(config, 1), _zero_kp(config, 1))
    return model


def load_kp_detector(config: ModelConfig, state_dicts=None, where="checkpoint") -> KPDetector:
    """The fused KPDetector (section 5), built straight from checkpoint_loader.load_state_dicts(path)'s
    tensors (None: from a randomly initialised faithful model, for benchmarks)."""
    if state_dicts is None:
        return fused_kp_detector(create_kp_detector(config))
    return fused_kp_detector_from(config, state_dicts, where)


def load_generator(config: ModelConfig, state_dicts=None, where="checkpoint",
                   precision="float32", winograd=False) -> OcclusionAwareGenerator:
    """The fused OcclusionAwareGenerator (section 5), built straight from load_state_dicts(path)'s tensors
    (None: from a randomly initialised faithful model, for benchmarks). precision 'bfloat16' gives it
    section 6's bfloat16 convolutions (all of BFLOAT16_PARTS), built block by block. `winograd`: the
    float32 bottleneck's convs as WinogradConv (build_fused_generator)."""
    parts = BFLOAT16_PARTS if precision == "bfloat16" else ()
    if state_dicts is None:
        return fused_generator(create_generator(config), parts, winograd)
    return fused_generator_from(config, state_dicts, where, parts, winograd)


def build_module(name, config: ModelConfig, state_dicts=None, where="checkpoint", static_batch_size=None,
                 hardcode=None, prescale=False, prediction_only=False, precision="float32",
                 winograd=False) -> SignatureModule:
    """The one build step: config + load_state_dicts(path) (None: random weights) -> the SignatureModule
    `name` (one of build.MODULES) with fused weights; the options are build.build_options'. precision
    'bfloat16' gives the generator modules section 6's bfloat16 convolutions (others stay float32);
    `winograd` their bottleneck's as Winograd's (load_generator)."""
    if name == "process_kp_driving":
        return ProcessKpDrivingModule(config, static_batch_size, hardcode)
    if prescale:
        check_prescale(config)
    if name == "kp_detector":
        return KPDetectorModule(load_kp_detector(config, state_dicts, where), static_batch_size, prescale)
    generator = load_generator(config, state_dicts, where, precision, winograd)
    if name == "generator":
        return GeneratorModule(generator, static_batch_size, prediction_only, prescale)
    if name == "source_encoder":
        return SourceEncoderModule(generator)
    if name == "generator_cached":
        return CachedGeneratorModule(generator, static_batch_size, prediction_only)
    raise ValueError(f"unknown module {name!r}")


# --------------------------------------------------------------------------------------------------
# 5. Inference rewrites: fused models built straight from a checkpoint's tensors, and the source cache
# --------------------------------------------------------------------------------------------------
# Each rewrite equals the faithful computation up to float32 rounding (tests/test_parity.py runs both).
# The fused models are built from a state dict (load_state_dicts' form): each builder takes its tensors
# through checkpoint_loader.WeightPorter, in the order and with the checks of the faithful port walk, and
# computes the fused weights in NumPy, so run.py never builds a faithful model first. A faithful model
# (random weights, benchmarks) is fused through the state dict its weights make (fused_kp_detector).

def fold_batch_norm(kernel, bias, norm):
    """(kernel, bias) of a conv with the eval-mode BatchNorm that follows it folded in, float32.

    norm: the BatchNorm's (gamma, beta, running mean, running variance). BN(conv(x)) = conv(x) * s +
    (beta - mean * s) with s = gamma / sqrt(var + eps) per output channel, so kernel * s and
    (bias - mean) * s + beta give the same result in one op. Computed in float64: the folded conv
    equals conv-then-BN up to float32 rounding.
    """
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in norm)
    scale = gamma / np.sqrt(var + TORCH_BATCH_NORM_EPSILON)
    # [kh, kw, I, O] * [O] in float64, rounded to float32, a buffer at a time: the same bits as a float64
    # copy of the kernel times scale, cast, at a fifteenth of the time (no 8-byte copy of 19M weights)
    kernel = np.multiply(kernel, scale, dtype=np.float64, casting="same_kind",
                         out=np.empty(np.shape(kernel), np.float32))
    bias = ((np.asarray(bias, np.float64) - mean) * scale + beta).astype(np.float32)
    return kernel, bias


class Holding(keras.initializers.Initializer):
    """Initializer of a variable created holding a given array: no random draw to write over, one copy.

    It lets go of the array once it has filled its variable: the layer keeps its initializers (in its
    config), and holding on would keep a second copy of every weight alive.
    """

    def __init__(self, value, dtype=np.float32):
        self.value = np.asarray(value, dtype)

    def __call__(self, shape, dtype=None):
        value, self.value = self.value, None
        if value is None or tuple(shape) != value.shape:
            raise ValueError(f"Holding: asked for a {tuple(shape)} variable, holds "
                             f"{'nothing (already used)' if value is None else value.shape}")
        return value


def new_weight(layer, name, value):
    """A non-trainable weight of `layer` (created in its __init__) holding `value` as float32."""
    value = np.asarray(value, np.float32)
    return layer.add_weight(name=name, shape=value.shape, initializer=Holding(value), trainable=False)


def conv_holding(kernel, bias, padding, name="conv"):
    """A built conv2d() layer holding kernel [kh, kw, I, O] and bias [O]."""
    layer = conv2d(kernel.shape[3], kernel.shape[0], padding, name,
                   kernel_initializer=Holding(kernel), bias_initializer=Holding(bias))
    layer.build((None, None, None, kernel.shape[2]))
    return layer


def batch_norm_holding(norm, name="norm"):
    """A built batch_norm() layer holding norm = (gamma, beta, running mean, running variance)."""
    gamma, beta, mean, var = norm
    layer = batch_norm(name, gamma_initializer=Holding(gamma), beta_initializer=Holding(beta),
                       moving_mean_initializer=Holding(mean), moving_variance_initializer=Holding(var))
    layer.build((None, None, None, len(gamma)))
    return layer


# Which rows of a 3x3 kernel land on each of the two rows of a 2x2 kernel when the 3x3 conv runs on a
# nearest-x2-upsampled input: output row 2i + a reads upsampled rows 2i+a-1 .. 2i+a+1, which are input
# rows (i-1, i, i) for a = 0 and (i, i, i+1) for a = 1.
_UPSAMPLED_TAPS = {0: np.array([[1, 0, 0], [0, 1, 1]], np.float64), 1: np.array([[1, 1, 0], [0, 0, 1]], np.float64)}


def upsampled_conv_kernel(kernel):
    """[3, 3, I, O] kernel of 'nearest x2 upsampling then 3x3 conv' -> [2, 2, I, 4*O] sub-pixel kernel.

    Each output phase (a, b) (row parity, column parity) is a 2x2 conv of the low-resolution input
    whose taps are sums of the 3x3 taps: 16 instead of 36 multiply-adds per output pixel, same result
    up to rounding. Phases are stacked along the output channels in (a, b) order, the order
    tf.nn.depth_to_space interleaves them back into pixels.
    """
    kernel = np.asarray(kernel)
    in_channels, out_channels = kernel.shape[2:]
    phases = np.empty((2, 2, in_channels, 4, out_channels), np.float32)  # [p, q, I, phase (a, b), O]
    for a, b, p, q in itertools.product((0, 1), repeat=4):
        rows, cols = np.flatnonzero(_UPSAMPLED_TAPS[a][p]), np.flatnonzero(_UPSAMPLED_TAPS[b][q])
        # Summed in float64 and rounded once: the sum of these 1 to 4 float32 taps, correctly rounded.
        phases[p, q, :, 2 * a + b] = sum(kernel[i, j].astype(np.float64) for i in rows for j in cols)
    return phases.reshape(2, 2, in_channels, 4 * out_channels)


def upsampled_conv_relu(x, kernel, bias):
    """relu(conv3x3(nearest_upsample_x2(x))) with 'same' padding, from upsampled_conv_kernel's kernel.

    [B, h, w, I] -> [B, 2h, 2w, O]. The ReLU comes before the phases are interleaved, so that
    converters fuse it into the conv.
    """
    height, width = x.shape[1], x.shape[2]
    out_channels = kernel.shape[-1] // 4
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])  # the upsampled image's zero border, at low resolution
    out = tf.nn.relu(valid_conv(padded, kernel) + bias)  # [B, h+1, w+1, 4*O]
    # Phase (a, b) reads input rows i-1+a, i+a: its window starts a rows (b columns) further.
    phases = [out[:, a:a + height, b:b + width, (2 * a + b) * out_channels:(2 * a + b + 1) * out_channels]
              for a in (0, 1) for b in (0, 1)]
    return tf.nn.depth_to_space(tf.concat(phases, axis=-1), 2)


# At 4 x 4 pixels and below a conv is weight-bound: oneDNN reorders the whole kernel into its blocked
# layout at every call (the weights are variables) for a handful of output pixels. The hourglasses'
# lowest levels (up to 2048 channels at 4 x 4 and 2 x 2) run 2-3.6x faster as one matmul over their
# patches, measured alone at batch 4; larger images keep the conv, which is as fast or faster there.
SMALL_IMAGE_PIXELS = 16


def is_small_image(x):
    return x.shape[1] * x.shape[2] <= SMALL_IMAGE_PIXELS


def valid_conv_as_matmul(x, kernel):
    """conv2d(x, kernel, 1, 'VALID') as one matmul: the kh x kw shifted views of x side by side in
    the channel axis (kernel's row-major tap order) times the kernel as a [kh*kw*I, O] matrix. The same
    multiply-adds; slices, a concat and a matmul keep it to TF Lite builtins."""
    kh, kw, in_channels, out_channels = kernel.shape
    height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = tf.concat([x[:, i:i + height, j:j + width, :] for i in range(kh) for j in range(kw)], axis=-1)
    out = tf.matmul(tf.reshape(patches, [-1, kh * kw * in_channels]),
                    tf.reshape(kernel, [kh * kw * in_channels, out_channels]))
    return tf.reshape(out, [tf.shape(x)[0], height, width, out_channels])


def valid_conv(x, kernel):
    """conv2d(x, kernel, 1, 'VALID'), as a matmul over patches on small images (SMALL_IMAGE_PIXELS)."""
    return valid_conv_as_matmul(x, kernel) if is_small_image(x) else tf.nn.conv2d(x, kernel, 1, "VALID")


def row_split_kernel(kernel):
    """[kh, kw, I, O] -> [1, kw, I, kh*O]: the kernel's rows side by side as groups of output channels."""
    kh, kw, in_channels, out_channels = kernel.shape
    return np.transpose(np.asarray(kernel), (1, 2, 0, 3)).reshape(1, kw, in_channels, kh * out_channels)


def row_split_conv(x, kernel, bias, kernel_height):
    """A 'same' kh x kw conv from its row_split_kernel: a 1 x kw conv, then its row groups summed, each
    shifted by its row. The same multiply-adds, but a kh times wider GEMM: for the generator's final
    3-channel conv that runs ~2.5x faster than the narrow one."""
    height = x.shape[1]
    out_channels = kernel.shape[-1] // kernel_height
    rows = tf.nn.conv2d(x, kernel, 1, "SAME")  # [B, H, W, kh*O]
    half = kernel_height // 2
    rows = tf.pad(rows, [[0, 0], [half, half], [0, 0], [0, 0]])
    return tf.add_n([rows[:, r:r + height, :, r * out_channels:(r + 1) * out_channels]
                     for r in range(kernel_height)]) + bias


class FoldedSameBlock(keras.layers.Layer):
    """SameBlock2d with its BatchNorm folded into the conv: conv -> ReLU. kernel, bias: fold_batch_norm's."""

    def __init__(self, kernel, bias, name):
        super().__init__(name=name)
        self.conv = conv_holding(kernel, bias, kernel.shape[0] // 2)

    def call(self, x):
        return tf.nn.relu(self.conv(x))


class FoldedDownBlock(FoldedSameBlock):
    """DownBlock2d with its BatchNorm folded into the conv: conv -> ReLU -> 2x2 average pool; on small
    images the 3x3 conv runs as valid_conv_as_matmul of the zero-padded input."""

    def __init__(self, kernel, bias, name):
        super().__init__(kernel, bias, name)
        self.pool = keras.layers.AveragePooling2D(2, name="pool")

    def call(self, x):
        return self.pool(tf.nn.relu(self.same_conv(x)))

    def same_conv(self, x):
        conv = self.conv  # a Conv2D, or ZeroPadding2D + Conv2D (a Sequential) where 'same' does not fit
        if is_small_image(x) and not isinstance(conv, keras.Sequential) and conv.kernel_size == (3, 3):
            return valid_conv_as_matmul(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), conv.kernel) + conv.bias
        return conv(x)


class SubPixelUpBlock(keras.layers.Layer):
    """UpBlock2d as one sub-pixel conv: BatchNorm folded (kernel, bias: fold_batch_norm's of its 3x3 conv),
    then nearest x2 upsampling + 3x3 conv as a 2x2 conv of the low-resolution input
    (upsampled_conv_kernel), 2.25x fewer multiply-adds."""

    def __init__(self, kernel, bias, name):
        super().__init__(name=name)
        self.kernel = new_weight(self, "kernel", upsampled_conv_kernel(kernel))
        self.bias = new_weight(self, "bias", np.tile(bias, 4))

    def call(self, x):
        return upsampled_conv_relu(x, self.kernel, self.bias)


class FoldedResBlock(keras.layers.Layer):
    """ResBlock2d with norm2 folded into conv1 (conv1: fold_batch_norm's (kernel, bias)). norm1 stays:
    it follows the residual sum, not a conv, and a ReLU separates it from conv1."""

    def __init__(self, norm1, conv1, conv2, name):
        super().__init__(name=name)
        self.norm1 = batch_norm_holding(norm1, "norm1")
        self.conv1 = self.make_conv(*conv1, "conv1")
        self.conv2 = self.make_conv(*conv2, "conv2")

    @staticmethod
    def make_conv(kernel, bias, name):
        return conv_holding(kernel, bias, 1, name)

    def call(self, x):
        out = self.conv1(tf.nn.relu(self.norm1(x, training=False)))
        return self.conv2(tf.nn.relu(out)) + x


# Winograd F(2x2, 3x3) (Lavin & Gray, 2016): a 'same' 3x3 conv computed a 2x2 output tile at a time from a
# 4x4 input tile, as 16 products of transformed inputs and transformed kernels, 2.25x fewer multiply-adds.
# Y = A^T [(G g G^T) * (B^T d B)] A per tile; B^T and A^T hold only 0 and +-1, so the input and output
# transforms are adds. The products are 16 1x1 convs (GEMMs every runtime runs fast). Measured alone on
# the generator's bottleneck conv (256 -> 256 channels at 64 x 64, batch 4): 16.7-17.8 ms/frame against
# 24.9-26.3 on TF Lite (XNNPACK), 18-20 against 22-24 on TensorFlow; its error against float64 is
# smaller than the direct conv's (the kernel transform is exact in float64, rounded once). Only the TF
# Lite files use it (build.py): on TensorFlow the whole generator gained 0-10% per frame, within noise,
# and its 60-odd ops per conv made the first trace ~1 s longer and a SavedModel's first call 0.2 s.
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
# Below this many input channels the transforms cost more than the multiply-adds they save (44 -> 128 at
# 64 x 64 ran 10% slower on TF Lite, 128 -> 256 at 32 x 32 1.7x faster).
WINOGRAD_MIN_CHANNELS = 128


def winograd_kernel(kernel):
    """[3, 3, I, O] -> [4, 4, 1, 1, I, O]: G g G^T for every (I, O) pair, in float64, rounded once; the
    two unit axes make each [1, 1, I, O] slice a 1x1 conv kernel."""
    transformed = np.einsum("ai,ijco,bj->abco", WINOGRAD_G, np.asarray(kernel, np.float64), WINOGRAD_G)
    return transformed[:, :, None, None].astype(np.float32)


def winograd_transform_in(d0, d1, d2, d3):
    """B^T applied along one axis: the 4 rows (or columns) of an input tile -> 4 transformed ones."""
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def winograd_transform_out(m0, m1, m2, m3):
    """A^T applied along one axis: 4 transformed rows (or columns) -> the tile's 2 output ones."""
    return [m0 + m1 + m2, m1 - m2 - m3]


def winograd_conv(x, kernel, bias):
    """conv2d(x, g, 1, 'SAME') + bias from kernel = winograd_kernel(g); [B, H, W, I] -> [B, H, W, O].

    Tile (t, u) reads padded rows 2t..2t+3: rows of parity i % 2 from row pair t + i // 2. space_to_depth
    puts each parity in its own channel block, so every tile row and column is a plain slice (strided
    slices would run outside XNNPACK). An odd H or W gets one more zero row or column, cropped after.
    """
    height, width, in_channels = x.shape[1], x.shape[2], x.shape[3]
    tile_rows, tile_cols = (height + 1) // 2, (width + 1) // 2
    padded = tf.pad(x, [[0, 0], [1, 1 + height % 2], [1, 1 + width % 2], [0, 0]])
    pairs = tf.nn.space_to_depth(padded, 2)  # [B, tile_rows + 1, tile_cols + 1, 4I], block 2a+b: parities (a, b)
    half = 2 * in_channels  # the even rows' blocks, then the odd rows'
    row_taps = [pairs[:, offset:offset + tile_rows, :, parity * half:(parity + 1) * half]
                for offset in (0, 1) for parity in (0, 1)]  # tile rows 0, 1, 2, 3
    products = []  # [i][j]: the (i, j) product, [B, tile_rows, tile_cols, O]
    for i, rows in enumerate(winograd_transform_in(*row_taps)):
        col_taps = [rows[:, :, offset:offset + tile_cols, parity * in_channels:(parity + 1) * in_channels]
                    for offset in (0, 1) for parity in (0, 1)]
        products.append([tf.nn.conv2d(tile, kernel[i, j], 1, "VALID")
                         for j, tile in enumerate(winograd_transform_in(*col_taps))])
    by_column = [winograd_transform_out(*(products[i][j] for i in range(4))) for j in range(4)]  # [j][a]
    # phase (a, b): output row a, column b of every tile, at channel block 2a + b for depth_to_space
    phases = [phase for a in (0, 1) for phase in winograd_transform_out(*(by_column[j][a] for j in range(4)))]
    out = tf.nn.depth_to_space(tf.concat(phases, axis=-1), 2)
    if height % 2 or width % 2:
        out = out[:, :height, :width]
    return out + bias


class WinogradConv(keras.layers.Layer):
    """A 'same' 3x3 conv (kernel [3, 3, I, O], bias [O]) run as winograd_conv."""

    def __init__(self, kernel, bias, name):
        super().__init__(name=name)
        self.kernel = new_weight(self, "kernel", winograd_kernel(kernel))
        self.bias = new_weight(self, "bias", bias)

    def call(self, x):
        return winograd_conv(x, self.kernel, self.bias)


class WinogradResBlock(FoldedResBlock):
    """FoldedResBlock (same arguments) with both convs run as WinogradConv."""

    make_conv = staticmethod(WinogradConv)


class RowSplitConv(keras.layers.Layer):
    """A 'same' conv run as row_split_conv (the generator's final 7x7 conv: 3 output channels make a
    narrow, slow GEMM)."""

    def __init__(self, kernel, bias, name):
        super().__init__(name=name)
        self.kernel_height = kernel.shape[0]
        self.kernel = new_weight(self, "kernel", row_split_kernel(kernel))
        self.bias = new_weight(self, "bias", bias)

    def call(self, x):
        return row_split_conv(x, self.kernel, self.bias, self.kernel_height)


# The fused networks run the faithful classes' own call(): each is initialised as a plain Keras layer,
# not by the faithful __init__ (which would create blocks from the config), with the faithful network's
# settings and the layers the builders below made. They are built when made (every variable exists):
# `built = True` spares Keras a symbolic trace of call() to look for variables before the first real
# one, a trace it would otherwise repeat at every level of nesting.

class FusedEncoder(Encoder):
    def __init__(self, down_blocks):
        keras.layers.Layer.__init__(self, name="encoder")
        self.down_blocks = list(down_blocks)
        self.built = True


class FusedDecoder(Decoder):
    def __init__(self, up_blocks):
        keras.layers.Layer.__init__(self, name="decoder")
        self.up_blocks = list(up_blocks)
        self.built = True


class FusedHourglass(Hourglass):
    """An hourglass of the given blocks (fused_hourglass's; section 6 passes bfloat16 ones)."""

    def __init__(self, down_blocks, up_blocks, out_filters, name):
        keras.layers.Layer.__init__(self, name=name)
        self.encoder = FusedEncoder(down_blocks)
        self.decoder = FusedDecoder(up_blocks)
        self.out_filters = out_filters
        self.built = True


class FusedKPDetector(KPDetector):
    def __init__(self, config: ModelConfig, predictor, kp, jacobian=None, down=None):
        keras.Model.__init__(self, name="kp_detector")
        self.set_settings(config)
        if down is not None:
            self.down = down
        self.predictor = predictor
        self.kp = kp
        self.jacobian = jacobian
        self.built = True


class FusedDenseMotionNetwork(DenseMotionNetwork):
    def __init__(self, config: ModelConfig, hourglass, mask, occlusion=None, down=None):
        keras.layers.Layer.__init__(self, name="dense_motion_network")
        self.set_settings(config)
        if down is not None:
            self.down = down
        self.hourglass = hourglass
        self.mask = mask
        self.occlusion = occlusion
        self.built = True


class FusedGenerator(OcclusionAwareGenerator):
    def __init__(self, config: ModelConfig, dense_motion_network, first, down_blocks, up_blocks, bottleneck, final):
        keras.Model.__init__(self, name="generator")
        self.config = config
        self.dense_motion_network = dense_motion_network
        self.first = first
        self.down_blocks = list(down_blocks)
        self.up_blocks = list(up_blocks)
        self.bottleneck = list(bottleneck)
        self.final = final
        self.built = True


# The builders: the faithful port walk's keys (checkpoint_loader.port_*) in its order, each tensor checked
# against the shape the config gives it (channels followed block to block, as Keras infers them when it
# builds the faithful model).

def take_conv(porter, prefix, kernel_size, in_channels, out_channels):
    """(kernel [kh, kw, I, O], bias [O]) of the checkpoint's nn.Conv2d `prefix`."""
    kernel = porter.take(f"{prefix}.weight", (kernel_size, kernel_size, in_channels, out_channels), "conv")
    return kernel, porter.take(f"{prefix}.bias", (out_channels,))


def take_batch_norm(porter, prefix, channels):
    """(gamma, beta, running mean, running variance) of the checkpoint's nn.BatchNorm2d `prefix`."""
    return tuple(porter.take(f"{prefix}.{name}", (channels,))
                 for name in ("weight", "bias", "running_mean", "running_var"))


def take_folded(porter, prefix, kernel_size, in_channels, out_channels):
    """fold_batch_norm's (kernel, bias) of a Same/Down/UpBlock2d `prefix` (its conv, then its norm)."""
    conv = take_conv(porter, f"{prefix}.conv", kernel_size, in_channels, out_channels)
    return fold_batch_norm(*conv, take_batch_norm(porter, f"{prefix}.norm", out_channels))


def fused_res_block(porter, prefix, features, name, block_type=FoldedResBlock):
    norm1 = take_batch_norm(porter, f"{prefix}.norm1", features)
    conv1 = take_conv(porter, f"{prefix}.conv1", 3, features, features)
    norm2 = take_batch_norm(porter, f"{prefix}.norm2", features)
    conv2 = take_conv(porter, f"{prefix}.conv2", 3, features, features)
    return block_type(norm1, fold_batch_norm(*conv1, norm2), conv2, name)


def fused_anti_alias(porter, prefix, channels, scale):
    """AntiAliasInterpolation2d holding the checkpoint's kernel (a small depthwise one, assigned as the
    faithful loader does)."""
    layer = AntiAliasInterpolation2d(channels, scale, name="down")
    layer.conv.kernel.assign(porter.take(f"{prefix}.weight", tuple(layer.conv.kernel.shape), "depthwise"))
    return layer


def fused_hourglass(porter, prefix, block_expansion, in_features, num_blocks, max_features, name, bfloat16=False):
    """Hourglass(...) with folded down blocks and sub-pixel up blocks (in bfloat16: section 6's)."""
    down_block, up_block, _ = block_types(bfloat16)
    skips, channels, down_blocks = [], in_features, []
    for i in range(num_blocks):
        width = _level_width(block_expansion, max_features, i + 1)
        kernel, bias = take_folded(porter, f"{prefix}.encoder.down_blocks.{i}", 3, channels, width)
        down_blocks.append(down_block(kernel, bias, name=f"down_{i}"))
        skips.append(channels)
        channels = width
    up_blocks = []
    for n, level in enumerate(reversed(range(num_blocks))):
        width = _level_width(block_expansion, max_features, level)
        kernel, bias = take_folded(porter, f"{prefix}.decoder.up_blocks.{n}", 3, channels, width)
        up_blocks.append(up_block(kernel, bias, name=f"up_{n}"))
        channels = width + skips.pop()  # the up block's output concatenated with the encoder's at that level
    return FusedHourglass(down_blocks, up_blocks, channels, name)


def build_fused_kp_detector(config: ModelConfig, porter) -> FusedKPDetector:
    params = config.kp_detector
    down = None
    if params.scale_factor != 1:
        down = fused_anti_alias(porter, "down", config.num_channels, params.scale_factor)
    predictor = fused_hourglass(porter, "predictor", params.block_expansion, config.num_channels, params.num_blocks,
                                params.max_features, "predictor")
    features = predictor.out_filters
    kp = conv_holding(*take_conv(porter, "kp", 7, features, config.num_kp), params.pad, "kp")
    jacobian = None
    if config.estimate_jacobian:
        maps = 1 if params.single_jacobian_map else config.num_kp
        jacobian = conv_holding(*take_conv(porter, "jacobian", 7, features, 4 * maps), params.pad, "jacobian")
    return FusedKPDetector(config, predictor, kp, jacobian, down)


def build_fused_dense_motion(config: ModelConfig, porter, prefix, bfloat16_parts=()) -> FusedDenseMotionNetwork:
    params = config.generator.dense_motion
    down = None
    if params.scale_factor != 1:
        down = fused_anti_alias(porter, f"{prefix}.down", config.num_channels, params.scale_factor)
    in_features = (config.num_kp + 1) * (config.num_channels + 1)
    hourglass = fused_hourglass(porter, f"{prefix}.hourglass", params.block_expansion, in_features, params.num_blocks,
                                params.max_features, "hourglass", "dense_motion" in bfloat16_parts)
    features = hourglass.out_filters
    mask = conv_holding(*take_conv(porter, f"{prefix}.mask", 7, features, config.num_kp + 1), 3, "mask")
    occlusion = None
    if config.generator.estimate_occlusion_map:
        occlusion = conv_holding(*take_conv(porter, f"{prefix}.occlusion", 7, features, 1), 3, "occlusion")
    return FusedDenseMotionNetwork(config, hourglass, mask, occlusion, down)


def build_fused_generator(config: ModelConfig, porter, bfloat16_parts=(), winograd=False) -> FusedGenerator:
    """The fused generator; the `bfloat16_parts` (of BFLOAT16_PARTS) get section 6's bfloat16 blocks, made
    straight from the checkpoint's arrays: no float32 variables are created for them. With `winograd`, a
    float32 bottleneck of at least WINOGRAD_MIN_CHANNELS runs its convs as WinogradConv."""
    unknown = set(bfloat16_parts) - set(BFLOAT16_PARTS)
    if unknown:
        raise ValueError(f"unknown bfloat16 parts {sorted(unknown)}; choose from {', '.join(BFLOAT16_PARTS)}")
    params = config.generator
    width = functools.partial(_level_width, params.block_expansion, params.max_features)
    down_block, _, _ = block_types("encoder" in bfloat16_parts)
    _, up_block, _ = block_types("decoder" in bfloat16_parts)
    _, _, res_block = block_types("bottleneck" in bfloat16_parts)
    dense_motion_network = build_fused_dense_motion(config, porter, "dense_motion_network", bfloat16_parts)
    first = FoldedSameBlock(*take_folded(porter, "first", 7, config.num_channels, params.block_expansion), name="first")
    channels, down_blocks = params.block_expansion, []
    for i in range(params.num_down_blocks):
        kernel, bias = take_folded(porter, f"down_blocks.{i}", 3, channels, width(i + 1))
        down_blocks.append(down_block(kernel, bias, name=f"down_{i}"))
        channels = width(i + 1)
    bottleneck_width = channels  # the residual blocks keep it
    if winograd and res_block is FoldedResBlock and bottleneck_width >= WINOGRAD_MIN_CHANNELS:
        res_block = WinogradResBlock
    up_blocks = []
    for i in range(params.num_down_blocks):
        out_channels = width(params.num_down_blocks - i - 1)
        kernel, bias = take_folded(porter, f"up_blocks.{i}", 3, channels, out_channels)
        up_blocks.append(up_block(kernel, bias, name=f"up_{i}"))
        channels = out_channels
    bottleneck = [fused_res_block(porter, f"bottleneck.r{i}", bottleneck_width, f"r{i}", res_block)
                  for i in range(params.num_bottleneck_blocks)]
    final = RowSplitConv(*take_conv(porter, "final", 7, channels, config.num_channels), name="final")
    return FusedGenerator(config, dense_motion_network, first, down_blocks, up_blocks, bottleneck, final)


def _build_checked(build, config, state_dict, where, *options):
    porter = checkpoint_loader.WeightPorter(state_dict, where)
    model = build(config, porter, *options)
    porter.finish()  # every tensor used
    return model


def fused_kp_detector_from(config: ModelConfig, state_dicts, where="checkpoint") -> FusedKPDetector:
    """The KPDetector run.py runs, from load_state_dicts(path): its hourglass with BatchNorms folded and
    sub-pixel up blocks."""
    return _build_checked(build_fused_kp_detector, config, state_dicts["kp_detector"], f"{where} [kp_detector]")


def fused_generator_from(config: ModelConfig, state_dicts, where="checkpoint", bfloat16_parts=(),
                         winograd=False) -> FusedGenerator:
    """The OcclusionAwareGenerator run.py runs, from load_state_dicts(path): BatchNorms folded, sub-pixel up
    blocks (in its dense motion hourglass too), the final conv split by rows; `bfloat16_parts` and
    `winograd` as build_fused_generator's."""
    return _build_checked(build_fused_generator, config, state_dicts["generator"], f"{where} [generator]",
                          bfloat16_parts, winograd)


def fused_kp_detector(faithful: KPDetector) -> FusedKPDetector:
    """fused_kp_detector_from a built faithful KPDetector's weights."""
    weights = {"kp_detector": checkpoint_loader.read_kp_detector_weights(faithful)}
    return fused_kp_detector_from(faithful.config, weights, "faithful model")


def fused_generator(faithful: OcclusionAwareGenerator, bfloat16_parts=(), winograd=False) -> FusedGenerator:
    """fused_generator_from a built faithful OcclusionAwareGenerator's weights."""
    weights = {"generator": checkpoint_loader.read_generator_weights(faithful)}
    return fused_generator_from(faithful.config, weights, "faithful model", bfloat16_parts, winograd)


class SourceEncoderModule(SignatureModule):
    """source_image [1, H, W, C] -> source_features [1, h, w, F] (the generator's first + down blocks) and
    source_image_scaled (the source as dense motion sees it).

    That is the generator's work which depends on the source alone (about a fifth of it at vox-256):
    run once per video, it feeds CachedGeneratorModule for every batch.
    """

    def __init__(self, model: OcclusionAwareGenerator):
        super().__init__(name="source_encoder")
        self.model = model
        self.config = model.config
        dense_motion = model.dense_motion_network
        downsampling = [dense_motion.down] if dense_motion.scale_factor != 1 else []
        _track_raw_variables(self, model.first, *model.down_blocks, *downsampling)
        self._set_signature([tf.TensorSpec([1, *self.config.frame_shape], tf.float32, name="source_image")])

    def compute(self, inputs):
        source = inputs["source_image"]
        return {"source_features": self.model.encode_source(source),
                "source_image_scaled": self.model.dense_motion_network.downsample(source)}


class CachedGeneratorModule(SignatureModule):
    """GeneratorModule for a source already run through SourceEncoderModule: same outputs, a fifth less work.

    Inputs: source_image [1, H, W, C] (warped into `deformed`), SourceEncoderModule's source_features and
    source_image_scaled, kp_driving [B, ...] and kp_source [1, ...] as GeneratorModule's.
    """

    def __init__(self, model: OcclusionAwareGenerator, batch_size=None, prediction_only=False):
        super().__init__(name="generator_cached")
        self.model = model
        self.config = model.config
        self.prediction_only = prediction_only
        _track_raw_variables(self, model)
        source_spec = tf.TensorSpec([1, *self.config.frame_shape], tf.float32, name="source_image")
        encoded = tf.function(SourceEncoderModule(model).compute, autograph=False).get_concrete_function(
            {"source_image": source_spec}).structured_outputs  # shapes by tracing, without running the encoder
        specs = [source_spec] + [tf.TensorSpec(encoded[name].shape, tf.float32, name=name)
                                 for name in ("source_image_scaled", "source_features")]
        specs += _kp_specs(self.config, batch_size, "kp_driving") + _kp_specs(self.config, 1, "kp_source")
        self._set_signature(specs)

    def compute(self, inputs):
        dense_motion = self.model.dense_motion_network.motion_from_scaled(
            inputs["source_image_scaled"], animate.kp_from_arguments(inputs, "kp_driving"),
            animate.kp_from_arguments(inputs, "kp_source"))
        result = self.model.transform_and_decode(inputs["source_image"], inputs["source_features"], dense_motion)
        return _generator_outputs(result, self.prediction_only)


# --------------------------------------------------------------------------------------------------
# 6. Reduced precision: the fused generator with its heavy convolutions in bfloat16 (--precision bfloat16)
# --------------------------------------------------------------------------------------------------
# Only convolutions that sit between float32 tensors drop to bfloat16: each block casts its input
# down and its output back up, so keypoints, process_kp_driving, the coordinate grids, the heatmaps,
# grid sampling, the softmax masks and the final image conv stay float32, and the bottleneck's
# residual sum stays float32 so that rounding does not accumulate along its twelve blocks.
# BFLOAT16_PARTS names the regions; the measured cost of each is in the README (Precision).

BFLOAT16_PARTS = ("bottleneck", "decoder", "dense_motion", "encoder")


def bfloat16_weight(layer, name, value):
    """A non-trainable bfloat16 weight of `layer` holding `value` (rounded from float32).

    The variable is created holding the rounded tensor: a zero-filled variable assigned over would add
    a third copy to the peak memory of the build.
    """
    rounded = tf.cast(np.asarray(value, np.float32), tf.bfloat16)
    return layer.add_weight(name=name, shape=rounded.shape, trainable=False, dtype="bfloat16",
                            initializer=Holding(rounded.numpy(), rounded.dtype.as_numpy_dtype))


def batch_norm_affine(norm):
    """(scale, shift) float32 of an eval-mode BatchNorm, norm = (gamma, beta, running mean, running
    variance): norm(x) = x * scale + shift."""
    gamma, beta, mean, var = (np.asarray(np.asarray(w, np.float32), np.float64) for w in norm)
    scale = gamma / np.sqrt(var + TORCH_BATCH_NORM_EPSILON)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def check_same_padding(kernel, padding, name):
    """The bfloat16 convs pad 'same': refuse a conv whose padding would not keep the size."""
    if 2 * padding != kernel.shape[0] - 1:
        raise ValueError(f"{name}: the bfloat16 rewrite needs 'same' padding")


class Bfloat16ResBlock(keras.layers.Layer):
    """FoldedResBlock (same arguments) with both convs in bfloat16; the residual stream (input and sum)
    stays float32."""

    def __init__(self, norm1, conv1, conv2, name):
        super().__init__(name=name)
        scale, shift = batch_norm_affine(norm1)
        self.scale, self.shift = new_weight(self, "scale", scale), new_weight(self, "shift", shift)
        (kernel1, bias1), (kernel2, bias2) = conv1, conv2
        for kernel in (kernel1, kernel2):
            check_same_padding(kernel, 1, name)  # FoldedResBlock's padding
        self.kernel1, self.bias1 = bfloat16_weight(self, "kernel1", kernel1), bfloat16_weight(self, "bias1", bias1)
        self.kernel2, self.bias2 = bfloat16_weight(self, "kernel2", kernel2), bfloat16_weight(self, "bias2", bias2)

    def call(self, x):
        out = tf.cast(tf.nn.relu(x * self.scale + self.shift), tf.bfloat16)
        out = tf.nn.relu(tf.nn.conv2d(out, self.kernel1, 1, "SAME") + self.bias1)
        out = tf.nn.conv2d(out, self.kernel2, 1, "SAME") + self.bias2
        return x + tf.cast(out, tf.float32)


class Bfloat16SubPixelUpBlock(keras.layers.Layer):
    """SubPixelUpBlock (same arguments: the folded 3x3 kernel and bias) in bfloat16, float32 in and out."""

    def __init__(self, kernel, bias, name):
        super().__init__(name=name)
        # Rounded from the float32 values SubPixelUpBlock would hold, so both round alike.
        self.kernel = bfloat16_weight(self, "kernel", np.asarray(upsampled_conv_kernel(kernel), np.float32))
        self.bias = bfloat16_weight(self, "bias", np.tile(np.asarray(bias, np.float32), 4))

    def call(self, x):
        return tf.cast(upsampled_conv_relu(tf.cast(x, tf.bfloat16), self.kernel, self.bias), tf.float32)


class Bfloat16DownBlock(keras.layers.Layer):
    """FoldedDownBlock (same arguments; conv -> ReLU -> 2x2 average pool) in bfloat16, float32 in and out."""

    def __init__(self, kernel, bias, name):
        super().__init__(name=name)
        check_same_padding(kernel, kernel.shape[0] // 2, name)  # FoldedDownBlock's padding
        self.kernel, self.bias = bfloat16_weight(self, "kernel", kernel), bfloat16_weight(self, "bias", bias)

    def call(self, x):
        out = tf.nn.relu(tf.nn.conv2d(tf.cast(x, tf.bfloat16), self.kernel, 1, "SAME") + self.bias)
        return tf.cast(tf.nn.avg_pool2d(out, 2, 2, "VALID"), tf.float32)


def block_types(bfloat16):
    """(down, up, residual) block classes of the fused builders, float32 or bfloat16; each takes the same
    arrays, so a bfloat16 part is built without float32 variables."""
    if bfloat16:
        return Bfloat16DownBlock, Bfloat16SubPixelUpBlock, Bfloat16ResBlock
    return FoldedDownBlock, SubPixelUpBlock, FoldedResBlock
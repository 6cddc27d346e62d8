// Animate a photo with a driving video in the browser, with the TF.js graph models that
// `python build.py --model NAME --tfjs --nolite` writes to js/<model>/<module>/.
//
// The pipeline is animate.py's: source keypoints once; per batch of driving frames kp_detector ->
// process_kp_driving (relative motion from the first driving frame, optionally adapted to the
// keypoints' convex-hull areas) -> generator. Each module's signature.json names its inputs and
// says which graph tensor holds each output (converted graphs keep only the first output's name).
//
// URL parameters (all optional) preset the form: model, backend (webgl | wasm | cpu), source,
// driving (URLs), fps, frames (0: all), batch, relative, adapt (0/1), models (where js/ is).
// Without them the page picks the backend from the WebGL renderer and the fps from the video.
// Test mode, for automation: report=NAME runs at once and POSTs the predictions (float32, base64),
// timings and the backend used to /report/NAME (serve_web.py --results DIR stores them). For exact
// inputs, source and driving may be raw little-endian float32 files (*.f32, [N,H,W,3] at the
// model's frame shape, values in [0,1]) or, for driving, a folder URL ending in '/' holding
// frame_00000.png, frame_00001.png, ... (run.py's frame naming).
'use strict';

const params = new URLSearchParams(location.search);
const MODELS_BASE = new URL(params.get('models') || '../js/', location.href).href;
const WASM_DIR = new URL('../node_modules/@tensorflow/tfjs-backend-wasm/dist/', location.href).href;
const DEFAULT_SOURCE = '../example/source.png';
const DEFAULT_DRIVING = '../example/driving.mp4';
const MODULES = ['kp_detector', 'process_kp_driving', 'generator'];
const REPORT_NAME = params.get('report');

// Must precede the wasm backend's initialisation; tf is missing when node_modules is (see main()).
if (typeof tf !== 'undefined' && tf.wasm) tf.wasm.setWasmPaths(WASM_DIR);

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------------
// Models: load the three graph models with their signatures, run one module by signature names
// ------------------------------------------------------------------------------------------------

async function useBackend(name) {
  const ok = await tf.setBackend(name);
  await tf.ready();
  if (!ok || tf.getBackend() !== name) {
    throw new Error(`the ${name} backend is not available in this browser: pick another one`);
  }
}

/** A module's signature and model.json, read before any weights so the page can say how much is to load. */
async function readModule(model, module) {
  const dir = `${MODELS_BASE}${encodeURIComponent(model)}/${module}/`;
  const response = await fetch(`${dir}signature.json`);
  if (!response.ok) {
    throw new Error(`no TF.js export of model "${model}" (${module}): build it with ` +
                    `python build.py --model ${model} --tfjs --nolite`);
  }
  const signature = await response.json();
  const modelJson = await (await fetchOk(`${dir}model.json`)).json();
  return { name: module, dir, signature, modelJson };
}

async function loadModule({ name, dir, signature, modelJson }, onBytes) {
  const load = async () => {
    const artifacts = await loadArtifacts(dir, modelJson, onBytes);
    return tf.getBackend() === 'wasm' ? unfuseWideBiases(artifacts) : artifacts;
  };
  const graph = await tf.loadGraphModel({ load });
  return { name, graph, signature };
}

const DTYPE_BYTES = { float32: 4, int32: 4, float16: 2, uint16: 2, int16: 2, uint8: 1, int8: 1, bool: 1 };

/** Bytes of a model's weight shards, from the shapes and (quantised) dtypes its manifest lists. */
function weightBytes(modelJson) {
  const weights = modelJson.weightsManifest.flatMap((group) => group.weights);
  return weights.reduce((sum, weight) => sum + weight.shape.reduce((count, size) => count * size, 1) *
    (DTYPE_BYTES[(weight.quantization || weight).dtype] || 0), 0);
}

/** The weight shards of model.json, one at a time. TF.js's own loader requests every shard
 *  before reading any, which deadlocks over HTTP/1.1 (six connections per server) once a model has
 *  more multi-megabyte shards than connections: vox-256's generator has 61. */
async function loadArtifacts(dir, modelJson, onBytes) {
  const weightSpecs = [];
  const weightData = [];
  for (const group of modelJson.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const path of group.paths) {
      const shard = await (await fetchOk(new URL(path, dir).href)).arrayBuffer();
      weightData.push(shard);
      onBytes(shard.byteLength);
    }
  }
  const { weightsManifest, ...artifacts } = modelJson;
  return { ...artifacts, weightSpecs, weightData };
}

/** tfjs-backend-wasm's FusedConv2D takes only a rank-1 bias, but the converter fuses other additions
 *  into it too: a residual block's skip connection ([B, H, W, C], vox-256's bottleneck) and Keras's
 *  [1, 1, 1, C] bias of a single-filter conv (dense motion's occlusion). For wasm, such a node
 *  becomes the Conv2D, AddV2 and activation it was fused from; the other backends run it as it is. */
function unfuseWideBiases(artifacts) {
  const rankOne = new Set(artifacts.weightSpecs.filter((spec) => spec.shape.length === 1).map((spec) => spec.name));
  const isWide = (node) => node.op === '_FusedConv2D' && fusedOps(node)[0] === 'BiasAdd' &&
    !rankOne.has(nodeName(node.input[2]));
  const nodes = artifacts.modelTopology.node;
  artifacts.modelTopology.node = nodes.flatMap((node) => (isWide(node) ? unfused(node) : [node]));
  return artifacts;
}

const nodeName = (input) => input.replace(/^\^/, '').split(':')[0];

function fusedOps(node) {
  return ((node.attr.fused_ops && node.attr.fused_ops.list.s) || []).map((name) => atob(name));
}

/** The nodes a _FusedConv2D(BiasAdd[, activation]) stands for; the last one keeps its name. */
function unfused(node) {
  const [, activation, ...rest] = fusedOps(node);
  if (rest.length || ['Prelu', 'LeakyRelu'].includes(activation)) {
    throw new Error(`${node.name}: cannot unfuse ${fusedOps(node).join('+')} for the wasm backend`);
  }
  const { fused_ops: ops, num_args: args, epsilon, leakyrelu_alpha: alpha, ...convAttr } = node.attr;
  const type = { T: node.attr.T };
  const conv = { name: `${node.name}/unfused_conv`, op: 'Conv2D', input: node.input.slice(0, 2), attr: convAttr };
  const add = { name: activation ? `${node.name}/unfused_add` : node.name, op: 'AddV2',
                input: [conv.name, node.input[2]], attr: type };
  return activation ? [conv, add, { name: node.name, op: activation, input: [add.name], attr: type }] : [conv, add];
}

/** The three modules; onProgress(bytes loaded, bytes in all) after each weight shard. */
async function loadModels(model, onProgress) {
  const read = await Promise.all(MODULES.map((module) => readModule(model, module)));
  const total = read.reduce((sum, module) => sum + weightBytes(module.modelJson), 0);
  let bytes = 0;
  onProgress(bytes, total);
  const onBytes = (count) => onProgress((bytes += count), total);
  const modules = await Promise.all(read.map((module) => loadModule(module, onBytes)));
  return Object.fromEntries(modules.map((module) => [module.name, module]));
}

function hasInput(module, name) {
  return module.signature.inputs.some((input) => input.name === name);
}

function hasOutput(module, name) {
  return module.signature.outputs.some((output) => output.name === name);
}

/** Run `module` on feed {input name: tensor}; returns {name: tensor} for the `wanted` output names.
 *  Inputs the signature lacks are ignored (e.g. the flags of a --hardcode build); asking only for
 *  the wanted outputs lets TF.js skip the rest of the graph (the generator's 'deformed'). */
function execute(module, feed, wanted) {
  const inputs = {};
  for (const { name } of module.signature.inputs) {
    if (!(name in feed)) throw new Error(`${module.name}: no value for its input ${name}`);
    inputs[name] = feed[name];
  }
  const tensors = wanted.map((name) => {
    const output = module.signature.outputs.find((candidate) => candidate.name === name);
    if (!output) throw new Error(`${module.name} has no output ${name}`);
    return output.tensor;
  });
  const result = module.graph.execute(inputs, tensors);
  const list = Array.isArray(result) ? result : [result];
  return Object.fromEntries(wanted.map((name, i) => [name, list[i]]));
}

/** [height, width] of the frames the models were exported for. */
function frameShape(models) {
  const shape = models.generator.signature.inputs.find((input) => input.name === 'source_image').shape;
  return [shape[1], shape[2]];
}

/** The batch size baked in by --staticbatchsize, or null for the default dynamic batch. */
function staticBatchSize(models) {
  const size = models.kp_detector.signature.inputs[0].shape[0];
  return size > 0 ? size : null;
}

// ------------------------------------------------------------------------------------------------
// The pipeline (animate.py's Animator)
// ------------------------------------------------------------------------------------------------

/** {value, jacobian?} -> {name: value, name_jacobian: jacobian}, as the signatures name them. */
function keypointFeed(kp, name) {
  const feed = { [name]: kp.value };
  if (kp.jacobian) feed[`${name}_jacobian`] = kp.jacobian;
  return feed;
}

function firstRows(kp, count) {
  return Object.fromEntries(Object.entries(kp).map(([key, tensor]) => [key, tensor.slice(0, count)]));
}

/** Repeat the last frame so a short batch fits a static batch size. */
function padBatch(batch, size) {
  const missing = size - batch.shape[0];
  if (missing <= 0) return batch;
  const last = batch.slice(batch.shape[0] - 1, 1);
  return tf.concat([batch, tf.tile(last, [missing, 1, 1, 1])]);
}

class Animator {
  /** source: [1, H, W, 3] tensor. Keeps its keypoints and, after the first batch, the initial
   *  driving keypoints until dispose(). */
  constructor(models, source, { relative, adapt }) {
    this.models = models;
    this.source = source;
    this.relative = relative;
    this.adapt = adapt;
    this.batchSize = staticBatchSize(models);
    this.kpDrivingInitial = null;
    [this.kpSource, this.sourceScaled] = tf.tidy(() => this.sourceKeypoints());
  }

  detect(images) {
    const module = this.models.kp_detector;
    const wanted = ['value', 'jacobian', 'source_image_scaled'].filter((name) => hasOutput(module, name));
    return execute(module, { img: this.batchSize ? padBatch(images, this.batchSize) : images }, wanted);
  }

  sourceKeypoints() {
    const { source_image_scaled: scaled, ...kp } = firstRows(this.detect(this.source), 1);
    return [kp, hasInput(this.models.generator, 'source_image_scaled') ? scaled : null];
  }

  /** Keypoints the generator follows: relative motion from the first driving frame, or as detected. */
  followedKeypoints(kpDriving) {
    if (!this.kpDrivingInitial) {
      this.kpDrivingInitial = Object.fromEntries(
        Object.entries(firstRows(kpDriving, 1)).map(([key, tensor]) => [key, tf.keep(tensor)]));
    }
    if (!this.relative) return kpDriving;
    const module = this.models.process_kp_driving;
    const feed = {
      ...keypointFeed(kpDriving, 'kp_driving'),
      ...keypointFeed(this.kpDrivingInitial, 'kp_driving_initial'),
      ...keypointFeed(this.kpSource, 'kp_source'),
      use_relative_jacobian: tf.scalar(1, 'float32'),
      adapt_movement_scale: tf.scalar(this.adapt ? 1 : 0, 'float32'),
    };
    return execute(module, feed, ['value', 'jacobian'].filter((name) => hasOutput(module, name)));
  }

  /** [b, H, W, 3] driving frames -> [b, H, W, 3] predictions. */
  animateBatch(driving) {
    return tf.tidy(() => {
      const { source_image_scaled: ignored, ...kpDriving } = this.detect(driving);  // tidy disposes it
      const kpNorm = this.followedKeypoints(kpDriving);
      const feed = {
        source_image: this.source,
        ...keypointFeed(kpNorm, 'kp_driving'),
        ...keypointFeed(this.kpSource, 'kp_source'),
      };
      if (this.sourceScaled) feed.source_image_scaled = this.sourceScaled;
      const { prediction } = execute(this.models.generator, feed, ['prediction']);
      return prediction.slice(0, driving.shape[0]);
    });
  }

  dispose() {
    const kept = [this.source, this.sourceScaled, ...Object.values(this.kpSource),
                  ...Object.values(this.kpDrivingInitial || {})];
    tf.dispose(kept.filter(Boolean));
  }
}

// ------------------------------------------------------------------------------------------------
// Inputs: pixels as float32 [H, W, 3] in [0, 1], from images, videos, PNG folders and raw files
// ------------------------------------------------------------------------------------------------

const scratch = document.createElement('canvas');
const scratchContext = scratch.getContext('2d', { willReadFrequently: true });

/** Draw an image, bitmap or video frame stretched to width x height (as run.py resizes) and read it back. */
function pixelsOf(image, width, height) {
  scratch.width = width;
  scratch.height = height;
  scratchContext.imageSmoothingQuality = 'high';
  scratchContext.drawImage(image, 0, 0, width, height);
  const rgba = scratchContext.getImageData(0, 0, width, height).data;
  const rgb = new Float32Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i] / 255;
    rgb[j + 1] = rgba[i + 1] / 255;
    rgb[j + 2] = rgba[i + 2] / 255;
  }
  return rgb;
}

function isRaw(input) {
  return /\.f32$/i.test(typeof input === 'string' ? new URL(input, location.href).pathname : input.name);
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  return response;
}

/** Decode an image without colour management, so PNG values reach the model unchanged. */
async function decodeImage(input) {
  const blob = typeof input === 'string' ? await (await fetchOk(input)).blob() : input;
  try {
    return await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch (error) {
    throw new Error(`${typeof input === 'string' ? input : input.name}: not an image this browser can decode`);
  }
}

/** A raw float32 file [N, H, W, 3] -> N frames of H*W*3 values. */
async function readRawFrames(input, height, width) {
  const buffer = typeof input === 'string' ? await (await fetchOk(input)).arrayBuffer() : await input.arrayBuffer();
  const frameLength = height * width * 3;
  if (buffer.byteLength === 0 || buffer.byteLength % (frameLength * 4) !== 0) {
    throw new Error(`raw float32 input is ${buffer.byteLength} bytes, ` +
                    `not a whole number of ${height}x${width}x3 float32 frames`);
  }
  const values = new Float32Array(buffer);
  return Array.from({ length: values.length / frameLength },
                    (_, i) => values.subarray(i * frameLength, (i + 1) * frameLength));
}

async function readSource(input, height, width) {
  if (isRaw(input)) return (await readRawFrames(input, height, width))[0];
  const bitmap = await decodeImage(input);
  const pixels = pixelsOf(bitmap, width, height);
  bitmap.close();
  return pixels;
}

/** A driving clip: `count` frames, `read(i)` the pixels of frame i. */
async function openClip(input, fps, height, width) {
  if (isRaw(input)) {
    const frames = await readRawFrames(input, height, width);
    return { count: frames.length, read: async (i) => frames[i], close() {} };
  }
  if (typeof input === 'string' && input.endsWith('/')) return openFrameFolder(input, height, width);
  return openVideo(input, fps, height, width);
}

async function openFrameFolder(url, height, width) {
  const frameUrl = (i) => new URL(`frame_${String(i).padStart(5, '0')}.png`, new URL(url, location.href)).href;
  let count = 0;
  while ((await fetch(frameUrl(count), { method: 'HEAD' })).ok) count += 1;
  if (count === 0) throw new Error(`${url}: no frame_00000.png there`);
  return {
    count,
    async read(i) {
      const bitmap = await decodeImage(frameUrl(i));
      const pixels = pixelsOf(bitmap, width, height);
      bitmap.close();
      return pixels;
    },
    close() {},
  };
}

/** The next `event` of a media element, or a rejection on its next 'error'. */
function once(media, event) {
  return new Promise((resolve, reject) => {
    const settle = (callback) => () => {
      media.removeEventListener(event, onEvent);
      media.removeEventListener('error', onError);
      callback();
    };
    const onEvent = settle(resolve);
    const onError = settle(() => reject(new Error('the browser cannot decode this video')));
    media.addEventListener(event, onEvent);
    media.addEventListener('error', onError);
  });
}

/** A muted video element showing its first frame; close() releases it. */
async function loadVideo(input) {
  const video = document.createElement('video');
  const objectUrl = typeof input === 'string' ? null : URL.createObjectURL(input);
  video.muted = true;
  video.preload = 'auto';
  video.src = objectUrl || input;
  const close = () => {
    video.removeAttribute('src');
    video.load();
    if (objectUrl) URL.revokeObjectURL(objectUrl);
  };
  try {
    await once(video, 'loadeddata');
  } catch (error) {
    close();
    throw error;
  }
  return { video, close };
}

/** The video's own frame rate, or null where the browser cannot tell. Plays it for a few frames: the
 *  shortest step between presented frames' media times is one frame (a dropped frame only lengthens
 *  a step). Leaves the video paused. */
async function videoFps(video, frames = 8, timeoutMs = 3000) {
  if (!video.requestVideoFrameCallback) return null;
  const times = [];
  await new Promise((resolve) => {
    const onFrame = (now, { mediaTime }) => {
      times.push(mediaTime);
      if (times.length < frames) video.requestVideoFrameCallback(onFrame);
      else resolve();
    };
    video.requestVideoFrameCallback(onFrame);
    video.addEventListener('ended', resolve, { once: true });
    setTimeout(resolve, timeoutMs);
    video.play().catch(resolve);
  });
  video.pause();
  const steps = times.slice(1).map((time, i) => time - times[i]).filter((step) => step > 1e-4);
  return steps.length ? Math.round(100 / Math.min(...steps)) / 100 : null;
}

/** Frames of a video by seeking: frame i is shown from i/fps to (i+1)/fps, so seeking to its middle
 *  lands on it even where the container's timestamps are rounded. */
async function openVideo(input, fps, height, width) {
  const { video, close } = await loadVideo(input);
  if (!Number.isFinite(video.duration)) {
    close();
    throw new Error('the video does not state its duration (streamed WebM?): re-encode it, e.g. to MP4');
  }
  const count = Math.floor(video.duration * fps + 1e-3);
  return {
    count,
    async read(i) {
      const seeked = once(video, 'seeked');
      const time = Math.min((i + 0.5) / fps, video.duration);
      video.currentTime = time;
      await seeked;
      if (Math.abs(video.currentTime - time) > 0.5 / fps) {
        // A server that ignores byte ranges (python -m http.server) leaves every seek at 0.
        throw new Error('the browser cannot seek in the driving video: serve the page with serve_web.py');
      }
      return pixelsOf(video, width, height);
    },
    close,
  };
}

// ------------------------------------------------------------------------------------------------
// Output: drawing, the stored frames, WebM and zip downloads
// ------------------------------------------------------------------------------------------------

/** Show float pixels [H, W, 3] in [0, 1] on a canvas, rounded to 8 bits as run.py writes them. */
function showPixels(canvas, pixels, height, width) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  const image = context.createImageData(width, height);
  for (let i = 0, j = 0; j < pixels.length; i += 4, j += 3) {
    image.data[i] = Math.round(Math.min(Math.max(pixels[j], 0), 1) * 255);
    image.data[i + 1] = Math.round(Math.min(Math.max(pixels[j + 1], 0), 1) * 255);
    image.data[i + 2] = Math.round(Math.min(Math.max(pixels[j + 2], 0), 1) * 255);
    image.data[i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

const PREVIEW_SIDE = 256;  // the canvases' size on the page
const LETTERBOX = '#000';

/** Draw an image or video frame (width x height) on a square canvas with its aspect kept, padded:
 *  a preview for people; the model gets the frame stretched to its shape (pixelsOf). */
function drawLetterboxed(canvas, image, width, height) {
  canvas.width = canvas.height = PREVIEW_SIDE;
  const context = canvas.getContext('2d');
  context.fillStyle = LETTERBOX;
  context.fillRect(0, 0, PREVIEW_SIDE, PREVIEW_SIDE);
  const scale = PREVIEW_SIDE / Math.max(width, height);
  const [w, h] = [width * scale, height * scale];
  context.imageSmoothingQuality = 'high';
  context.drawImage(image, (PREVIEW_SIDE - w) / 2, (PREVIEW_SIDE - h) / 2, w, h);
}

function canvasPng(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Replay the frames on `canvas` at fps while MediaRecorder records it: the recording's timestamps
 *  are wall-clock, so recording while the model runs would give the model's speed, not the video's. */
async function recordWebm(canvas, pngFrames, fps) {
  const type = ['video/webm;codecs=vp9', 'video/webm;codecs=vp8', 'video/webm']
    .find((candidate) => MediaRecorder.isTypeSupported(candidate));
  if (!type) throw new Error('this browser cannot record WebM; download the PNG frames instead');
  const stream = canvas.captureStream(0);
  const [track] = stream.getVideoTracks();
  const recorder = new MediaRecorder(stream, { mimeType: type });
  const chunks = [];
  recorder.ondataavailable = (event) => chunks.push(event.data);
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  recorder.start();
  const context = canvas.getContext('2d');
  for (const png of pngFrames) {
    const bitmap = await createImageBitmap(png);
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    track.requestFrame();
    await sleep(1000 / fps);
  }
  recorder.stop();
  await stopped;
  track.stop();
  return new Blob(chunks, { type: 'video/webm' });
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** A zip of stored (uncompressed) files: PNGs are compressed already, so no deflate is needed. */
function zipStored(files) {
  const now = new Date();
  const dosTime = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
  const dosDate = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const { name, bytes } of files) {
    const nameBytes = new TextEncoder().encode(name);
    const crc = crc32(bytes);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(10, dosTime, true);
    local.setUint16(12, dosDate, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, bytes.length, true);
    local.setUint32(22, bytes.length, true);
    local.setUint16(26, nameBytes.length, true);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);
    entry.setUint16(6, 20, true);
    entry.setUint16(12, dosTime, true);
    entry.setUint16(14, dosDate, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, bytes.length, true);
    entry.setUint32(24, bytes.length, true);
    entry.setUint16(28, nameBytes.length, true);
    entry.setUint32(42, offset, true);
    parts.push(local, nameBytes, bytes);
    central.push(entry, nameBytes);
    offset += 30 + nameBytes.length + bytes.length;
  }
  const centralSize = central.reduce((size, part) => size + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: 'application/zip' });
}

function download(blob, filename) {
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ------------------------------------------------------------------------------------------------
// One run: settings -> frames on the canvases, progress, stored results
// ------------------------------------------------------------------------------------------------

let loaded = { key: null, models: null, bytes: 0 };
let stopRequested = false;
let lastRun = null;

async function modelsFor(backend, model) {
  const key = `${backend}/${model}`;
  if (loaded.key !== key) {
    if (loaded.models) Object.values(loaded.models).forEach((module) => module.graph.dispose());
    loaded = { key: null, models: null, bytes: 0 };
    await useBackend(backend);
    let total = 0;
    const onProgress = (bytes, all) => {
      total = all;
      showLoading(`model ${model} on ${backend}`, bytes, all);
    };
    loaded = { key, models: await loadModels(model, onProgress), bytes: total };
  }
  return loaded.models;
}

const megabytes = (bytes) => (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0);

function showLoading(what, bytes, total) {
  $('progress').max = total || 1;
  $('progress').value = bytes;
  const percent = total ? ` (${Math.floor((100 * bytes) / total)}%)` : '';
  $('progress-text').textContent = `loading ${what}: ${megabytes(bytes)} of ${megabytes(total)} MB${percent}`;
}

function showProgress(done, count, seconds) {
  $('progress').max = count;
  $('progress').value = done;
  const speed = seconds > 0 ? `, ${(done / seconds).toFixed(2)} fps` : '';
  $('progress-text').textContent = `frame ${done}/${count}${speed} (${tf.getBackend()})`;
}

function showMessage(text, isError = false) {
  $('message').textContent = text;
  $('message').classList.toggle('error', isError);
}

/** Animate with `settings`; returns what test mode reports. Frames are drawn as each batch ends. */
async function run(settings) {
  const timings = { started: performance.now() };
  showMessage('');
  $('progress-text').textContent = `loading model ${settings.model} on ${settings.backend}…`;
  const models = await modelsFor(settings.backend, settings.model);
  const [height, width] = frameShape(models);
  timings.load_s = (performance.now() - timings.started) / 1000;
  $('progress-text').textContent = `model loaded (${megabytes(loaded.bytes)} MB): first frames on ${settings.backend}…`;

  const sourcePixels = await readSource(settings.source, height, width);
  if (isRaw(settings.source)) showPixels($('source-canvas'), sourcePixels, height, width);  // else previewSource's
  const clip = await openClip(settings.driving, settings.fps, height, width);
  const count = settings.frames > 0 ? Math.min(settings.frames, clip.count) : clip.count;
  if (count === 0) throw new Error('the driving video has no frames');
  const batchSize = staticBatchSize(models) || settings.batch;

  const sourceStarted = performance.now();
  const animator = new Animator(models, tf.tensor4d(sourcePixels, [1, height, width, 3]), settings);
  await animator.kpSource.value.data();  // source keypoints are ready: time them apart from the frames
  timings.source_s = (performance.now() - sourceStarted) / 1000;

  const frameLength = height * width * 3;
  const predictions = settings.keepPredictions ? new Float32Array(count * frameLength) : null;
  const pngFrames = [];
  const batches = [];
  const framesStarted = performance.now();
  showMessage('');
  try {
    for (let start = 0; start < count && !stopRequested; start += batchSize) {
      const batchStarted = performance.now();
      const size = Math.min(batchSize, count - start);
      const driving = new Float32Array(size * frameLength);
      for (let i = 0; i < size; i += 1) driving.set(await clip.read(start + i), i * frameLength);
      const drivingTensor = tf.tensor4d(driving, [size, height, width, 3]);
      const prediction = animator.animateBatch(drivingTensor);
      const values = await prediction.data();
      tf.dispose([drivingTensor, prediction]);
      batches.push({ frames: size, seconds: (performance.now() - batchStarted) / 1000 });
      if (predictions) predictions.set(values, start * frameLength);
      for (let i = 0; i < size; i += 1) {
        showPixels($('driving-canvas'), driving.subarray(i * frameLength, (i + 1) * frameLength), height, width);
        showPixels($('result-canvas'), values.subarray(i * frameLength, (i + 1) * frameLength), height, width);
        pngFrames.push(await canvasPng($('result-canvas')));
        showProgress(start + i + 1, count, (performance.now() - framesStarted) / 1000);
      }
    }
  } finally {
    animator.dispose();
    clip.close();
  }
  const done = pngFrames.length;
  timings.frames_s = (performance.now() - framesStarted) / 1000;
  lastRun = { pngFrames, fps: settings.fps, model: settings.model };
  return {
    model: settings.model, backend: tf.getBackend(), requested_backend: settings.backend, fps: settings.fps,
    frame_shape: [height, width], frames: done, batch_size: batchSize, model_bytes: loaded.bytes,
    timings: { load_s: timings.load_s, source_s: timings.source_s, frames_s: timings.frames_s,
               fps: done / timings.frames_s, batches },
    prediction: predictions && {
      shape: [done, height, width, 3], data: base64(predictions.subarray(0, done * frameLength)),
    },
  };
}

function base64(array) {
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// ------------------------------------------------------------------------------------------------
// The form: settings from URL parameters and controls; model names from the js/ folder listing
// ------------------------------------------------------------------------------------------------

/** Model names in js/, read from the server's folder listing (empty when it gives none). */
async function builtModels() {
  try {
    const response = await fetch(MODELS_BASE);
    if (!response.ok) return [];
    const page = new DOMParser().parseFromString(await response.text(), 'text/html');
    return [...page.querySelectorAll('a[href$="/"]')]
      .map((link) => decodeURIComponent(link.getAttribute('href').slice(0, -1)))
      .filter((name) => name && !name.includes('/') && !name.startsWith('.'));
  } catch (error) {
    return [];
  }
}

function defaultModel(names) {
  return ['vox', 'demo'].find((name) => names.includes(name)) || names[0] || 'vox';
}

// Chromium's SwiftShader, Mesa's llvmpipe/softpipe, Windows' Microsoft Basic Render Driver.
const SOFTWARE_RENDERER = /swiftshader|llvmpipe|softpipe|software|basic render/i;

/** The WebGL renderer's name (the GPU's, where the browser tells), or null without WebGL. */
function webglRenderer() {
  const gl = document.createElement('canvas').getContext('webgl');
  if (!gl) return null;
  const info = gl.getExtension('WEBGL_debug_renderer_info');
  const renderer = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
  const context = gl.getExtension('WEBGL_lose_context');
  if (context) context.loseContext();  // browsers cap live WebGL contexts; TF.js makes its own
  return renderer;
}

/** [backend, why]: the URL's choice, else webgl on a GPU and wasm where WebGL is missing or runs in
 *  software, which is ~10x slower than wasm (demo model: 0.13 vs 1.27 frames/s on SwiftShader). */
function chooseBackend() {
  if (params.has('backend')) return [params.get('backend'), 'set in the URL'];
  const renderer = webglRenderer();
  if (!renderer) return ['wasm', 'this browser has no WebGL'];
  if (SOFTWARE_RENDERER.test(renderer)) {
    return ['wasm', `WebGL renders in software here, ~10x slower than wasm (${renderer})`];
  }
  return ['webgl', `WebGL runs on a GPU (${renderer})`];
}

function showBackendChoice(backend, why) {
  const line = `Backend ${backend}: ${why}.`;
  $('backend-choice').textContent = line;
  $('backend-choice').title = line;  // the whole renderer name, where the line is cut
}

function presetForm(names) {
  $('model-names').replaceChildren(...names.map((name) => new Option(name, name)));
  $('model').value = params.get('model') || defaultModel(names);
  const [backend, why] = chooseBackend();
  $('backend').value = backend;
  showBackendChoice(backend, why);
  for (const id of ['fps', 'frames', 'batch']) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  for (const id of ['relative', 'adapt']) {
    if (params.has(id)) $(id).checked = params.get(id) !== '0';
  }
}

function readSettings() {
  const positive = (id) => {
    const value = Number($(id).value);
    if (!(value > 0)) throw new Error(`${id} must be a positive number`);
    return value;
  };
  return {
    model: $('model').value.trim(),
    backend: $('backend').value,
    source: sourceInput(),
    driving: drivingInput(),
    fps: positive('fps'),
    frames: Math.max(0, Math.floor(Number($('frames').value) || 0)),
    batch: Math.floor(positive('batch')),
    relative: $('relative').checked,
    adapt: $('adapt').checked,
    keepPredictions: Boolean(REPORT_NAME),
  };
}

const sourceInput = () => $('source-file').files[0] || params.get('source') || DEFAULT_SOURCE;
const drivingInput = () => $('driving-file').files[0] || params.get('driving') || DEFAULT_DRIVING;

/** Show the chosen photo before any model runs. */
async function previewSource() {
  const input = sourceInput();
  if (isRaw(input)) return;
  const bitmap = await decodeImage(input);
  drawLetterboxed($('source-canvas'), bitmap, bitmap.width, bitmap.height);
  bitmap.close();
}

let drivingPreviews = 0;  // a newer preview supersedes a slower older one

/** Show the driving clip's first frame and, for a video, put its own frame rate in the fps field
 *  (unless the URL sets fps; people may still change it). */
async function previewDriving() {
  const input = drivingInput();
  const preview = ++drivingPreviews;
  if (isRaw(input)) return;
  if (typeof input === 'string' && input.endsWith('/')) {
    const bitmap = await decodeImage(new URL('frame_00000.png', new URL(input, location.href)).href);
    if (preview === drivingPreviews) drawLetterboxed($('driving-canvas'), bitmap, bitmap.width, bitmap.height);
    bitmap.close();
    return;
  }
  const { video, close } = await loadVideo(input);
  try {
    // 'loadeddata' may come before the first frame is decoded, which draws black on a busy machine;
    // once a seek has finished, the frame at its time is there to draw.
    const seeked = once(video, 'seeked');
    video.currentTime = 0;
    await seeked;
    if (preview !== drivingPreviews) return;
    drawLetterboxed($('driving-canvas'), video, video.videoWidth, video.videoHeight);
    const fps = await videoFps(video);
    if (fps && preview === drivingPreviews && !params.has('fps')) $('fps').value = fps;
  } finally {
    close();
  }
}

/** Both previews; their first error is shown. */
async function previewInputs() {
  const failed = (await Promise.allSettled([previewSource(), previewDriving()]))
    .find((outcome) => outcome.status === 'rejected');
  if (failed) showError(failed.reason);
}

let previewed = Promise.resolve();  // the latest previews, for tests to await

function setRunning(running) {
  $('start').disabled = running;
  $('stop').disabled = !running;
  $('download-webm').disabled = running || !lastRun;
  $('download-zip').disabled = running || !lastRun;
}

async function animateFromForm() {
  stopRequested = false;
  setRunning(true);
  try {
    await previewed;  // the run samples the video at the fps read from it
    const result = await run(readSettings());
    const speed = Number.isFinite(result.timings.fps) ? `, ${result.timings.fps.toFixed(2)} fps` : '';
    showMessage(`Done: ${result.frames} frames${speed} on ${result.backend}.`);
    return result;
  } finally {
    setRunning(false);
  }
}

async function downloadWebm() {
  setRunning(true);
  try {
    showMessage('Recording the WebM at the video\'s frame rate…');
    download(await recordWebm($('result-canvas'), lastRun.pngFrames, lastRun.fps), `${lastRun.model}-animation.webm`);
    showMessage('');
  } catch (error) {
    showError(error);
  } finally {
    setRunning(false);
  }
}

/** The run's frames as run.py names them (frame_00000.png, ...), in one zip. */
async function framesZip(run) {
  const files = await Promise.all(run.pngFrames.map(async (png, i) => (
    { name: `frame_${String(i).padStart(5, '0')}.png`, bytes: new Uint8Array(await png.arrayBuffer()) })));
  return zipStored(files);
}

async function downloadZip() {
  download(await framesZip(lastRun), `${lastRun.model}-frames.zip`);
}

async function report(body) {
  await fetch(`/report/${encodeURIComponent(REPORT_NAME)}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
}

const showError = (error) => showMessage(error.message, true);

/** Test mode: animate at once with the URL's settings and POST what happened. */
async function runAndReport() {
  try {
    await report(await animateFromForm());
  } catch (error) {
    showError(error);
    await report({ error: error.message, backend: tf.getBackend(), requested_backend: $('backend').value });
  }
}

async function main() {
  if (typeof tf === 'undefined' || !tf.wasm) {
    showMessage('TF.js did not load: run `npm ci` in the repository, then `python serve_web.py`', true);
    if (REPORT_NAME) await report({ error: 'TF.js did not load' });
    return;
  }
  presetForm(await builtModels());
  $('controls').addEventListener('submit', (event) => {
    event.preventDefault();
    animateFromForm().catch(showError);
  });
  $('source-file').addEventListener('change', () => { previewed = previewSource().catch(showError); });
  $('driving-file').addEventListener('change', () => { previewed = previewDriving().catch(showError); });
  $('backend').addEventListener('change', () => showBackendChoice($('backend').value, 'your choice'));
  $('stop').addEventListener('click', () => { stopRequested = true; });
  $('download-webm').addEventListener('click', downloadWebm);
  $('download-zip').addEventListener('click', () => downloadZip().catch(showError));
  previewed = previewInputs();
  if (REPORT_NAME) await runAndReport();
}

main();

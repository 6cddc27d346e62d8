// Run a TF.js graph model exported by `build.py --tfjs` in Node, on the pure-JS CPU backend.
//
//   node tests/js/run_graph_model.mjs js/<model>/<module> inputs.json outputs.json
//
// inputs.json: {name: {shape: [...], data: base64 of little-endian float32}}, keyed by the
// signature's input names. outputs.json gets the same format, keyed by the signature's output
// names (from signature.json: converted models keep only the first output's name, so outputs are
// requested by the tensor names recorded at export). tests/test_exports.py compares them with
// the SavedModel's outputs.
//
// @tensorflow/tfjs-node does not install here (its postinstall downloads libtensorflow), so the
// model is loaded through a small IOHandler that reads model.json and its weight shards from disk.
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';

/** An IOHandler that loads model.json and every weight shard it lists from a local folder. */
function fileHandler(modelDir) {
  return {
    async load() {
      const modelJson = JSON.parse(await readFile(path.join(modelDir, 'model.json'), 'utf8'));
      const weightSpecs = [];
      const shards = [];
      for (const group of modelJson.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shardPath of group.paths) {
          shards.push(await readFile(path.join(modelDir, shardPath)));
        }
      }
      const weights = Buffer.concat(shards);
      return {
        modelTopology: modelJson.modelTopology,
        format: modelJson.format,
        generatedBy: modelJson.generatedBy,
        convertedBy: modelJson.convertedBy,
        signature: modelJson.signature,
        userDefinedMetadata: modelJson.userDefinedMetadata,
        weightSpecs,
        weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
      };
    },
  };
}

function decodeTensor({ shape, data }) {
  const bytes = Buffer.from(data, 'base64');
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return tf.tensor(Float32Array.from(values), shape, 'float32');
}

async function encodeTensor(tensor) {
  const values = await tensor.data();
  return { shape: tensor.shape, data: Buffer.from(values.buffer, values.byteOffset, values.byteLength).toString('base64') };
}

async function main() {
  const [modelDir, inputsPath, outputsPath] = process.argv.slice(2);
  if (!outputsPath) {
    throw new Error('usage: run_graph_model.mjs MODEL_DIR INPUTS_JSON OUTPUTS_JSON');
  }
  await tf.setBackend('cpu');
  const signature = JSON.parse(await readFile(path.join(modelDir, 'signature.json'), 'utf8'));
  const inputs = JSON.parse(await readFile(inputsPath, 'utf8'));
  const model = await tf.loadGraphModel(fileHandler(modelDir));
  const feed = {};
  for (const { name } of signature.inputs) {
    if (!(name in inputs)) throw new Error(`missing input ${name}`);
    feed[name] = decodeTensor(inputs[name]);
  }
  const tensors = model.execute(feed, signature.outputs.map((output) => output.tensor));
  const results = {};
  for (const [i, output] of signature.outputs.entries()) {
    results[output.name] = await encodeTensor(Array.isArray(tensors) ? tensors[i] : tensors);
  }
  await writeFile(outputsPath, JSON.stringify(results));
  console.log(`${modelDir}: ${signature.outputs.length} outputs, backend ${tf.getBackend()}`);
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});

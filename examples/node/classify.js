#!/usr/bin/env node
// Classify text with a latexport model.onnx from Node.js.
//
//   node classify.js MODEL_DIR --inputs inputs.json [--keep-ratio R | --keep-ratio R1,R2,...]
//   node classify.js MODEL_DIR --text "a gripping film" [--text "..."] [--keep-ratio R | --keep-ratio R1,R2,...]
//
// inputs.json holds {"input_ids": [[...]], "attention_mask": [[...]]} (plus
// "token_type_ids" for models that take them) as integer arrays [batch][seq];
// --text tokenises in Node with MODEL_DIR/tokenizer.json instead.
// --keep-ratio R runs every row at R; a comma list gives one ratio per row
// (per text); without it the file's recorded default applies.
// Prints {"logits": [[...]], "keep_ratio": R or [R1, ...], "labels": [...]} on stdout.
//
// As a library: const classifier = await Classifier.load(MODEL_DIR);
//   await classifier.classify({input_ids, attention_mask, ...}, keepRatio)
// with keepRatio undefined (the default), a number, or an array, one per row.
//
// Everything runs inside onnxruntime-node: the token scoring and dropping that
// keep_ratio drives are ordinary ONNX operators in the file, so no Python and
// no custom operators are involved.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { Tokenizer } = require('@huggingface/tokenizers');
const ort = require('onnxruntime-node');

const USAGE = 'usage: node classify.js MODEL_DIR (--inputs inputs.json | --text TEXT...) [--keep-ratio R[,R...]]';
const KEEP_RATIO = 'keep_ratio';
const METADATA_PREFIX = 'latexport.';

// A problem with what the caller passed: reported in one line, exit status 2.
class UsageError extends Error {}

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        inputs: { type: 'string' },
        text: { type: 'string', multiple: true },
        'keep-ratio': { type: 'string' },
      },
    });
  } catch (error) {
    throw new UsageError(`${firstLine(error)} ${USAGE}`);
  }
  const { positionals, values } = parsed;
  if (positionals.length !== 1) throw new UsageError(`expected one MODEL_DIR, got ${positionals.length}; ${USAGE}`);
  if ((values.inputs === undefined) === (values.text === undefined)) {
    throw new UsageError(`give either --inputs or --text; ${USAGE}`);
  }
  return {
    modelDir: positionals[0],
    inputsPath: values.inputs,
    texts: values.text,
    keepRatio: values['keep-ratio'] === undefined ? undefined : parseKeepRatio(values['keep-ratio'], '--keep-ratio'),
  };
}

// A number, or a comma list of them (one per row). The graph clamps any ratio
// itself, but a value outside (0, 1] is almost certainly a mistake (a
// percentage, a swapped argument), so say so.
function parseKeepRatio(text, source) {
  const values = text.split(',').map((item) => checkKeepRatio(item.trim() === '' ? NaN : Number(item), source, item));
  return values.length === 1 ? values[0] : values;
}

function checkKeepRatio(value, source, text = value) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > 1) {
    throw new UsageError(`${source} must be a number in (0, 1], got ${JSON.stringify(String(text))}`);
  }
  return value;
}

// The float32 keep_ratio tensor: a scalar (dims []) runs every row at one
// ratio, an array (dims [batch]) each row at its own, with the result it
// would have alone.
function keepRatioTensor(keepRatio, batch) {
  if (!Array.isArray(keepRatio)) return new ort.Tensor('float32', Float32Array.of(checkKeepRatio(keepRatio, KEEP_RATIO)), []);
  if (keepRatio.length !== batch) {
    throw new UsageError(`${KEEP_RATIO} has ${keepRatio.length} values for a batch of ${batch} rows`);
  }
  keepRatio.forEach((value) => checkKeepRatio(value, KEEP_RATIO));
  return new ort.Tensor('float32', Float32Array.from(keepRatio), [batch]);
}

// onnxruntime-node (1.30) exposes input and output names but not the model's
// custom metadata_props, so read them from the protobuf bytes directly:
// ModelProto field 14 is a repeated StringStringEntryProto {1: key, 2: value}.
// Only the top level is walked; the graph (field 7) is skipped by its length.
function readMetadataProps(modelBytes) {
  const props = {};
  for (const field of protobufFields(modelBytes)) {
    if (field.number !== 14 || field.bytes === undefined) continue;
    const entry = {};
    for (const part of protobufFields(field.bytes)) {
      if (part.bytes !== undefined) entry[part.number] = Buffer.from(part.bytes).toString('utf8');
    }
    if (entry[1] !== undefined) props[entry[1]] = entry[2] ?? '';
  }
  return props;
}

// Yields {number, bytes?, start, end} for each field of one protobuf message
// (wire format); start and end bound the whole field, tag included.
function* protobufFields(bytes) {
  let offset = 0;
  const readVarint = () => {
    // Multiplication rather than bit shifts: lengths may exceed 2^31.
    let value = 0;
    let scale = 1;
    let byte;
    do {
      if (offset >= bytes.length) throw new Error('truncated protobuf varint');
      byte = bytes[offset++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
    } while (byte & 0x80);
    return value;
  };
  while (offset < bytes.length) {
    const start = offset;
    const tag = readVarint();
    const number = Math.floor(tag / 8);
    const wireType = tag % 8;
    let payload;
    if (wireType === 0) {
      readVarint();
    } else if (wireType === 1) {
      offset += 8;
    } else if (wireType === 2) {
      const length = readVarint();
      if (offset + length > bytes.length) throw new Error('truncated protobuf field');
      payload = bytes.subarray(offset, offset + length);
      offset += length;
    } else if (wireType === 5) {
      offset += 4;
    } else {
      throw new Error(`unsupported protobuf wire type ${wireType}`);
    }
    yield { number, bytes: payload, start, end: offset };
  }
}

function encodeVarint(value) {
  const bytes = [];
  for (; value >= 128; value = Math.floor(value / 128)) bytes.push((value % 128) | 0x80);
  bytes.push(value);
  return Buffer.from(bytes);
}

// The model bytes without the initializer NAME (GraphProto field 5, a
// TensorProto whose field 8 is its name) in the graph (ModelProto field 7).
//
// keep_ratio is both a graph input and an initializer holding the file's
// default ratio, so ONNX Runtime counts it as an overridable initializer, not
// an input. onnxruntime-node has no counterpart of Python's
// get_overridable_initializers(): session.inputNames lists only input_ids,
// attention_mask (and token_type_ids), and run() feeds only the names in that
// list, so a keep_ratio in the feeds is dropped without a word (the binding's
// InferenceSessionWrap::Run, js/node/src/inference_session_wrap.cc in
// microsoft/onnxruntime; checked with onnxruntime-node 1.30). Without its
// default, keep_ratio is an ordinary input, listed in inputNames and fed on
// every call. The weights are copied once.
function withoutInitializer(modelBytes, name) {
  const parts = [];
  let removed = false;
  for (const field of protobufFields(modelBytes)) {
    if (field.number !== 7 || field.bytes === undefined) {
      parts.push(modelBytes.subarray(field.start, field.end));
      continue;
    }
    const graphParts = [];
    for (const graphField of protobufFields(field.bytes)) {
      if (graphField.number === 5 && graphField.bytes !== undefined && tensorName(graphField.bytes) === name) {
        removed = true;
      } else {
        graphParts.push(field.bytes.subarray(graphField.start, graphField.end));
      }
    }
    const graphLength = graphParts.reduce((total, part) => total + part.length, 0);
    parts.push(encodeVarint(7 * 8 + 2), encodeVarint(graphLength), ...graphParts);
  }
  return removed ? Buffer.concat(parts) : modelBytes;
}

function tensorName(tensorBytes) {
  for (const field of protobufFields(tensorBytes)) {
    if (field.number === 8 && field.bytes !== undefined) return Buffer.from(field.bytes).toString('utf8');
  }
  return undefined;
}

// What the file says about itself; {} when it is not readable as latexport metadata.
function readLatexportMetadata(modelBytes) {
  let props;
  try {
    props = readMetadataProps(modelBytes);
  } catch {
    return {};
  }
  const metadata = {};
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith(METADATA_PREFIX)) metadata[key.slice(METADATA_PREFIX.length)] = value;
  }
  return metadata;
}

// Label names: the model's own metadata first, then config.json's id2label.
function readLabelNames(modelDir, metadata) {
  if (metadata.labels !== undefined) return JSON.parse(metadata.labels);
  const configPath = path.join(modelDir, 'config.json');
  if (!fs.existsSync(configPath)) return [];
  const id2label = JSON.parse(fs.readFileSync(configPath, 'utf8')).id2label ?? {};
  return Object.keys(id2label)
    .sort((a, b) => Number(a) - Number(b))
    .map((id) => id2label[id]);
}

// Checks one [batch][seq] integer array and returns it flattened with its shape.
function flattenIntegerMatrix(name, rows) {
  if (!Array.isArray(rows) || rows.length === 0) throw new UsageError(`${name} must be a non-empty array of rows`);
  const width = Array.isArray(rows[0]) ? rows[0].length : -1;
  if (width <= 0) throw new UsageError(`${name}[0] must be a non-empty array of integers`);
  const flat = [];
  rows.forEach((row, rowIndex) => {
    if (!Array.isArray(row) || row.length !== width) {
      const expected = `an array of ${width} integers like ${name}[0]`;
      throw new UsageError(`${name}[${rowIndex}] must be ${expected} (pad the batch)`);
    }
    for (const value of row) {
      if (!Number.isSafeInteger(value)) {
        throw new UsageError(`${name}[${rowIndex}] holds ${JSON.stringify(value)}, not an integer`);
      }
      flat.push(value);
    }
  });
  return { flat, dims: [rows.length, width] };
}

// Builds the int64 tensors the model declares, checked so that a mistake is
// reported by name instead of as an ONNX Runtime failure deep in the graph.
function buildTokenTensors(inputs, tokenInputNames, metadata) {
  if (inputs === null || typeof inputs !== 'object' || Array.isArray(inputs)) {
    throw new UsageError('the inputs file must hold a JSON object of named [batch][seq] arrays');
  }
  const missing = tokenInputNames.filter((name) => !(name in inputs));
  if (missing.length > 0) {
    throw new UsageError(`the inputs file lacks ${missing.join(', ')}; this model takes ${tokenInputNames.join(', ')}`);
  }
  const tensors = {};
  let firstShape;
  for (const name of tokenInputNames) {
    const { flat, dims } = flattenIntegerMatrix(name, inputs[name]);
    firstShape ??= { name, dims };
    if (dims[0] !== firstShape.dims[0] || dims[1] !== firstShape.dims[1]) {
      throw new UsageError(`${name} is ${dims.join('x')} but ${firstShape.name} is ${firstShape.dims.join('x')}`);
    }
    tensors[name] = { flat, dims };
  }
  checkTokenValues(tensors, metadata);
  const feed = {};
  for (const [name, { flat, dims }] of Object.entries(tensors)) {
    feed[name] = new ort.Tensor('int64', BigInt64Array.from(flat, BigInt), dims);
  }
  return feed;
}

function checkTokenValues(tensors, metadata) {
  const [batch, width] = tensors.attention_mask?.dims ?? [0, 0];
  const mask = tensors.attention_mask?.flat ?? [];
  if (mask.some((value) => value !== 0 && value !== 1)) throw new UsageError('attention_mask must hold only 0 and 1');
  for (let row = 0; row < batch; row++) {
    if (!mask.slice(row * width, (row + 1) * width).includes(1)) {
      throw new UsageError(`attention_mask[${row}] is all padding`);
    }
  }
  const maxLength = Number(metadata.max_length);
  if (Number.isInteger(maxLength) && width > maxLength) {
    throw new UsageError(`sequence length ${width} exceeds the model's maximum of ${maxLength}`);
  }
  const vocabSize = Number(metadata.vocab_size);
  const ids = tensors.input_ids?.flat ?? [];
  if (Number.isInteger(vocabSize) && ids.some((id) => id < 0 || id >= vocabSize)) {
    throw new UsageError(`input_ids must lie in [0, ${vocabSize})`);
  }
}

// --text: tokenise with the model's own tokenizer.json (a pure-JS port of
// Hugging Face tokenizers), padded to the longest text like latexport's Python
// runtime, and returned in the same shape an inputs file has.
function encodeTexts(modelDir, texts, metadata) {
  texts.forEach((text, index) => {
    if (text.trim() === '') throw new UsageError(`--text number ${index + 1} is empty`);
  });
  const tokenizerPath = path.join(modelDir, 'tokenizer.json');
  const configPath = path.join(modelDir, 'tokenizer_config.json');
  const tokenizer = new Tokenizer(
    readJsonFile(tokenizerPath, 'tokenizer'),
    fs.existsSync(configPath) ? readJsonFile(configPath, 'tokenizer config') : {},
  );
  const encodings = texts.map((text) => tokenizer.encode(text, { return_token_type_ids: true }));
  // Rejected rather than cut: this example has no truncation to match Python's.
  const maxLength = Number(metadata.max_length);
  encodings.forEach((encoding, index) => {
    if (encoding.ids.length > maxLength) {
      const tokens = encoding.ids.length;
      throw new UsageError(`--text number ${index + 1} is ${tokens} tokens, over the model's maximum of ${maxLength}`);
    }
  });
  // Padded positions are masked out, so the pad id only has to be a valid token.
  const padId = Number(metadata.pad_token_id ?? 0);
  const width = Math.max(...encodings.map((encoding) => encoding.ids.length));
  const padded = (values, filler) => [...values, ...Array(width - values.length).fill(filler)];
  return {
    input_ids: encodings.map((encoding) => padded(encoding.ids, padId)),
    attention_mask: encodings.map((encoding) => padded(encoding.attention_mask, 0)),
    token_type_ids: encodings.map((encoding) => padded(encoding.token_type_ids, 0)),
  };
}

function readJsonFile(filePath, what) {
  let text;
  try {
    text = fs.readFileSync(filePath, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read ${what} ${filePath} (${error.code ?? error.message})`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${what} ${filePath} is not valid JSON (${error.message})`);
  }
}

// Rows of a row-major [batch, n] tensor as plain arrays, for JSON.
function toRows(tensor) {
  const [batch, width] = tensor.dims;
  return Array.from({ length: batch }, (_, row) => Array.from(tensor.data.subarray(row * width, (row + 1) * width)));
}

// One model file, loaded once, run with any keep_ratio per call.
class Classifier {
  static async load(modelDir) {
    const modelPath = path.join(modelDir, 'model.onnx');
    if (!fs.existsSync(modelPath)) {
      throw new UsageError(`${modelPath} does not exist; convert a checkpoint first (latexport convert)`);
    }
    // Read the file once: the same bytes give the session and the metadata.
    const modelBytes = fs.readFileSync(modelPath);
    let session;
    try {
      session = await ort.InferenceSession.create(withoutInitializer(modelBytes, KEEP_RATIO), { logSeverityLevel: 3 });
    } catch (error) {
      throw new UsageError(`${modelPath} cannot be loaded; is it corrupt or truncated? (${firstLine(error)})`);
    }
    const metadata = readLatexportMetadata(modelBytes);
    if (metadata.task !== undefined && metadata.task !== 'text-classification') {
      throw new UsageError(`this model does ${metadata.task}; classify.js runs text-classification models`);
    }
    if (!session.inputNames.includes(KEEP_RATIO)) {
      throw new UsageError(`${modelPath} has no keep_ratio input; is it a latexport model?`);
    }
    return new Classifier(modelDir, session, metadata);
  }

  constructor(modelDir, session, metadata) {
    this.modelDir = modelDir;
    this.session = session;
    this.metadata = metadata;
    // Feed exactly what the session declares: token_type_ids only where the
    // model takes them; any other key in the inputs is ignored.
    this.tokenInputNames = session.inputNames.filter((name) => name !== KEEP_RATIO);
    this.labelNames = readLabelNames(modelDir, metadata);
    // The ratio `latexport tune` recorded in the file (1.0 if none), the one
    // the graph itself holds as keep_ratio's default.
    this.defaultKeepRatio =
      metadata.default_keep_ratio === undefined
        ? 1.0
        : parseKeepRatio(metadata.default_keep_ratio, "the model's latexport.default_keep_ratio");
  }

  // Token ids for TEXTS, in the shape an inputs file has.
  encode(texts) {
    return encodeTexts(this.modelDir, texts, this.metadata);
  }

  // INPUTS: named [batch][seq] integer arrays; KEEPRATIO: undefined (the
  // file's default), a number (every row) or an array (one per row).
  async classify(inputs, keepRatio = this.defaultKeepRatio) {
    const feed = buildTokenTensors(inputs, this.tokenInputNames, this.metadata);
    feed[KEEP_RATIO] = keepRatioTensor(keepRatio, feed[this.tokenInputNames[0]].dims[0]);

    const outputName = this.metadata.output_name ?? this.session.outputNames[0];
    const results = await this.session.run(feed, [outputName]);
    const logits = toRows(results[outputName]);

    // Predicted label per row, as `latexport run` prints; null for regression.
    const labels =
      this.labelNames.length === logits[0].length && this.labelNames.length > 1
        ? logits.map((row) => this.labelNames[row.indexOf(Math.max(...row))])
        : null;
    return { logits, keep_ratio: keepRatio, labels };
  }
}

async function main() {
  const { modelDir, inputsPath, texts, keepRatio } = parseCommandLine(process.argv.slice(2));
  const classifier = await Classifier.load(modelDir);
  const inputs = texts === undefined ? readJsonFile(inputsPath, 'inputs file') : classifier.encode(texts);
  const result = await classifier.classify(inputs, keepRatio);
  process.stdout.write(JSON.stringify(result) + '\n');
}

function firstLine(error) {
  return String(error?.message ?? error).trim().split('\n')[0];
}

if (require.main === module) {
  main().catch((error) => {
    // One line, no stack trace: status 2 for bad arguments or inputs, 1 otherwise.
    const usage = error instanceof UsageError;
    process.stderr.write(`classify.js: error: ${firstLine(error)}\n`);
    process.exitCode = usage ? 2 : 1;
  });
}

module.exports = { Classifier, UsageError, withoutInitializer };

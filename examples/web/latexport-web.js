// A latexport model.onnx in the browser: ONNX Runtime Web (WASM) runs the file,
// @huggingface/tokenizers tokenises with the model's own tokenizer.json, and
// every call returns the task output and which tokens each layer kept.
//
//   const model = await LatexportModel.load('model/');
//   const result = await model.run('a gripping, funny film', 0.3);
//   result.label, result.scores, result.kept[layer] (positions into result.tokens), result.modelMs
//
// The session is made from the file's bytes with two edits (onnx-bytes.js):
// - keep_ratio's default initializer is removed. The file holds keep_ratio as
//   an input with a default, which ONNX Runtime lists among the overridable
//   initializers, not the inputs, and ONNX Runtime Web refuses a feed it does
//   not list ("invalid input 'keep_ratio'"); without the default it is an
//   ordinary input, fed on every call (the file's default when none is given).
// - the kept-position taps (latexport.kept_positions_taps) become outputs.
//   ONNX Runtime returns only graph outputs, and convert hides the taps so the
//   plain file pays nothing for them. Here they cost a few int64 copies per
//   layer, a negligible part of each call (measured in examples/web/README.md).
import * as ort from 'onnxruntime-web';
import { Tokenizer } from '@huggingface/tokenizers';
import { editModel, readMetadata } from './onnx-bytes.js';

const KEEP_RATIO = 'keep_ratio';

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function fetchJson(url, optional = false) {
  const response = await fetch(url);
  if (!response.ok) {
    if (optional) return {};
    throw new Error(`${url}: HTTP ${response.status}`);
  }
  return response.json();
}

function softmax(logits) {
  const top = Math.max(...logits);
  const exps = logits.map((value) => Math.exp(value - top));
  const total = exps.reduce((sum, value) => sum + value, 0);
  return exps.map((value) => value / total);
}

export class LatexportModel {
  // BASEURL: the converted directory, served as static files (ends with '/').
  static async load(baseUrl) {
    const [modelBytes, tokenizerJson, tokenizerConfig] = await Promise.all([
      fetchBytes(`${baseUrl}model.onnx`),
      fetchJson(`${baseUrl}tokenizer.json`),
      fetchJson(`${baseUrl}tokenizer_config.json`, true),
    ]);
    const metadata = readMetadata(modelBytes);
    if (metadata.task === undefined) throw new Error(`${baseUrl}model.onnx has no latexport metadata; convert it with latexport`);
    if (!['text-classification', 'feature-extraction'].includes(metadata.task)) {
      throw new Error(`this page runs text-classification and feature-extraction models, not ${metadata.task}`);
    }
    const taps = JSON.parse(metadata.kept_positions_taps ?? '[]');
    // Threads need cross-origin isolation (serve.py sends the headers); else one thread.
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    const session = await ort.InferenceSession.create(editModel(modelBytes, { dropInitializer: KEEP_RATIO, addOutputs: taps }), {
      executionProviders: ['wasm'],
      logSeverityLevel: 3,
    });
    return new LatexportModel(session, metadata, taps, new Tokenizer(tokenizerJson, tokenizerConfig));
  }

  constructor(session, metadata, taps, tokenizer) {
    this.session = session;
    this.metadata = metadata;
    this.taps = taps;
    this.tokenizer = tokenizer;
    this.labels = JSON.parse(metadata.labels ?? '[]');
    this.maxLength = Number(metadata.max_length);
    this.defaultKeepRatio = Number(metadata.default_keep_ratio ?? '1');
    this.tokenInputNames = session.inputNames.filter((name) => name !== KEEP_RATIO);
  }

  // Token ids as latexport's Python runtime makes them. A text over the
  // model's maximum keeps its first maxLength - 1 tokens and its closing
  // special token, which is what Python's truncation gives for a
  // [CLS] ... [SEP] (or <s> ... </s>) template.
  encode(text) {
    const encoding = this.tokenizer.encode(text, { return_token_type_ids: true });
    let { ids, tokens } = encoding;
    let typeIds = encoding.token_type_ids ?? ids.map(() => 0);
    const truncated = ids.length > this.maxLength;
    if (truncated) {
      const cut = (values) => [...values.slice(0, this.maxLength - 1), values[values.length - 1]];
      [ids, tokens, typeIds] = [cut(ids), cut(tokens), cut(typeIds)];
    }
    return { ids, tokens, typeIds, truncated };
  }

  // One call on TEXT at KEEPRATIO (a number in (0, 1]; undefined: the file's default).
  async run(text, keepRatio = this.defaultKeepRatio) {
    const tokenizeStart = performance.now();
    const { ids, tokens, typeIds, truncated } = this.encode(text);
    const dims = [1, ids.length];
    const values = { input_ids: ids, attention_mask: ids.map(() => 1), token_type_ids: typeIds };
    const feed = {};
    for (const name of this.tokenInputNames) feed[name] = new ort.Tensor('int64', BigInt64Array.from(values[name], BigInt), dims);
    feed[KEEP_RATIO] = new ort.Tensor('float32', Float32Array.of(keepRatio), []);
    const modelStart = performance.now();
    const outputs = await this.session.run(feed, [this.metadata.output_name, ...this.taps]);
    const modelMs = performance.now() - modelStart;

    const output = Array.from(outputs[this.metadata.output_name].data);
    const kept = this.taps.map((tap) => Array.from(outputs[tap].data, Number).filter((position) => position >= 0));
    const result = { text, keepRatio, ids, tokens, truncated, output, kept, modelMs, tokenizeMs: modelStart - tokenizeStart };
    if (this.metadata.task === 'text-classification' && this.metadata.problem_type !== 'regression') {
      result.scores = softmax(output);
      const best = result.scores.indexOf(Math.max(...result.scores));
      result.label = this.labels[best] ?? `LABEL_${best}`;
    }
    return result;
  }
}

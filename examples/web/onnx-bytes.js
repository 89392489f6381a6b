// The two edits the page makes to model.onnx's bytes before ONNX Runtime Web
// loads them, and the file's latexport.* metadata, read straight from the
// protobuf (ONNX Runtime Web exposes neither metadata_props nor a way to add
// outputs). Wire format only: no ONNX library, and the weights are copied once.
//
// Field numbers from onnx.proto: ModelProto {7: graph, 14: metadata_props},
// GraphProto {5: initializer, 12: output}, TensorProto {8: name},
// ValueInfoProto {1: name, 2: type}, TypeProto {1: tensor_type},
// TypeProto.Tensor {1: elem_type}, StringStringEntryProto {1: key, 2: value}.

const MODEL_GRAPH = 7;
const MODEL_METADATA = 14;
const GRAPH_INITIALIZER = 5;
const GRAPH_OUTPUT = 12;
const TENSOR_NAME = 8;
const INT64 = 7;

const utf8 = new TextDecoder();
const utf8Encoder = new TextEncoder();

// Yields {number, bytes?, start, end} for each field of one message; start and
// end bound the whole field, tag included (examples/node/classify.js walks the
// same way with Node's Buffer).
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
    if (wireType === 0) readVarint();
    else if (wireType === 1) offset += 8;
    else if (wireType === 2) {
      const length = readVarint();
      if (offset + length > bytes.length) throw new Error('truncated protobuf field');
      payload = bytes.subarray(offset, offset + length);
      offset += length;
    } else if (wireType === 5) offset += 4;
    else throw new Error(`unsupported protobuf wire type ${wireType}`);
    yield { number, bytes: payload, start, end: offset };
  }
}

function varint(value) {
  const out = [];
  for (; value >= 128; value = Math.floor(value / 128)) out.push((value % 128) | 0x80);
  out.push(value);
  return Uint8Array.from(out);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function lengthDelimited(number, payload) {
  return concat([varint(number * 8 + 2), varint(payload.length), payload]);
}

// ValueInfoProto of an int64 tensor of unknown shape.
function int64ValueInfo(name) {
  const tensorType = concat([varint(1 * 8), varint(INT64)]);
  return concat([lengthDelimited(1, utf8Encoder.encode(name)), lengthDelimited(2, lengthDelimited(1, tensorType))]);
}

function fieldString(message, number) {
  for (const field of protobufFields(message)) {
    if (field.number === number && field.bytes !== undefined) return utf8.decode(field.bytes);
  }
  return undefined;
}

// The model's metadata_props whose key starts with PREFIX, prefix removed.
export function readMetadata(modelBytes, prefix = 'latexport.') {
  const metadata = {};
  for (const field of protobufFields(modelBytes)) {
    if (field.number !== MODEL_METADATA || field.bytes === undefined) continue;
    const key = fieldString(field.bytes, 1);
    if (key !== undefined && key.startsWith(prefix)) metadata[key.slice(prefix.length)] = fieldString(field.bytes, 2) ?? '';
  }
  return metadata;
}

// The model with the initializer DROPINITIALIZER removed (so that the graph input
// of that name becomes an ordinary, required input) and the int64 values
// ADDOUTPUTS declared as extra graph outputs.
export function editModel(modelBytes, { dropInitializer, addOutputs = [] }) {
  const parts = [];
  for (const field of protobufFields(modelBytes)) {
    if (field.number !== MODEL_GRAPH || field.bytes === undefined) {
      parts.push(modelBytes.subarray(field.start, field.end));
      continue;
    }
    const graphParts = [];
    for (const graphField of protobufFields(field.bytes)) {
      const dropped = graphField.number === GRAPH_INITIALIZER && graphField.bytes !== undefined
        && fieldString(graphField.bytes, TENSOR_NAME) === dropInitializer;
      if (!dropped) graphParts.push(field.bytes.subarray(graphField.start, graphField.end));
    }
    for (const name of addOutputs) graphParts.push(lengthDelimited(GRAPH_OUTPUT, int64ValueInfo(name)));
    // Header and parts side by side: the weights are copied once, into the result.
    const graphLength = graphParts.reduce((total, part) => total + part.length, 0);
    parts.push(varint(MODEL_GRAPH * 8 + 2), varint(graphLength), ...graphParts);
  }
  return concat(parts);
}

"""Which word-vectors each layer keeps, read from the file itself: onnxruntime, numpy, tokenizers.

Every converted graph computes, for each layer ``l``, the original positions of
the word-vectors still alive after it (``kept_positions.{l}``, int64
``[batch, kept_l]``, -1 in a row's surplus slots; a position is the token's
index among its row's real tokens).  ``convert`` hides them: the plain
``model.onnx`` declares the task output alone, so no caller pays for them, and
the metadata lists them (``latexport.kept_positions_taps``).

To read them, a second session is made from the file's bytes with those values
declared as graph outputs (``with_kept_positions_outputs``); the file on disk
and the plain session are untouched, so the plain call is exactly as fast as
before.  ``latexport run --show-kept`` prints the result and ``latexport
explain`` draws it; the browser page (``examples/web``) does the same edit in
JavaScript.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import onnxruntime as ort

from latexport.runtime.errors import ModelDirectoryError
from latexport.runtime.session import (
    MODEL_FILE,
    KeepRatio,
    LatencyAdjustableSession,
    check_keep_ratio,
    check_texts,
    reported_ratio,
)

# Field numbers and codes of onnx.proto (ModelProto.graph, GraphProto.output,
# ValueInfoProto.name/.type, TypeProto.tensor_type, TypeProto.Tensor.elem_type, TensorProto.INT64).
_MODEL_GRAPH, _GRAPH_OUTPUT = 7, 12
_VALUE_INFO_NAME, _VALUE_INFO_TYPE, _TYPE_TENSOR, _TENSOR_ELEM_TYPE = 1, 2, 1, 1
_INT64 = 7


def with_kept_positions_outputs(model_bytes: bytes, taps: Sequence[str]) -> bytes:
    """``model_bytes`` with the int64 values ``taps`` declared as extra graph outputs.

    Protobuf merges repeated occurrences of a message field, appending their
    repeated fields: a second ``graph`` field that holds only the new outputs,
    written after the file's bytes, adds them to the graph.  So no parser (and
    no ``onnx`` package) is needed, and the weights are not re-encoded.
    ``latexport.export.passes.with_int64_outputs`` does the same through
    ``onnx`` on the export side; a test checks that the two agree.
    """
    outputs = b"".join(_length_delimited(_GRAPH_OUTPUT, _int64_value_info(name)) for name in taps)
    return bytes(model_bytes) + _length_delimited(_MODEL_GRAPH, outputs)


def _int64_value_info(name: str) -> bytes:
    tensor_type = _varint(_TENSOR_ELEM_TYPE << 3) + _varint(_INT64)  # shape left unknown
    return _length_delimited(_VALUE_INFO_NAME, name.encode("utf-8")) + _length_delimited(
        _VALUE_INFO_TYPE, _length_delimited(_TYPE_TENSOR, tensor_type)
    )


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass
class KeptWords:
    """One text's tokens and, for each layer, the positions of those still alive after it."""

    text: str
    #: The tokenizer's pieces, special tokens included, in order (the word-vectors layer 1 gets).
    tokens: list[str]
    #: ``kept[l]``: the positions (indices into ``tokens``) alive after layer ``l``, ascending.
    kept: list[list[int]]
    keep_ratio: float
    #: The task output for this text (logits or embedding), from the same call.
    output: np.ndarray

    def kept_mask(self, layer: int) -> list[bool]:
        alive = set(self.kept[layer])
        return [position in alive for position in range(len(self.tokens))]


class KeptPositionsReader:
    """A second session on a model directory's file with the kept-position taps exposed."""

    def __init__(self, session: LatencyAdjustableSession):
        self.session = session
        self.taps = list(session.metadata.kept_positions_taps)
        if not self.taps:
            raise ModelDirectoryError(f"{session.model_dir} records no kept-position taps; convert it again")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = session.intra_op_threads
        model_bytes = (session.model_dir / MODEL_FILE).read_bytes()
        self._tapped = ort.InferenceSession(
            with_kept_positions_outputs(model_bytes, self.taps), options, providers=["CPUExecutionProvider"]
        )

    def read(self, texts: Union[str, Sequence[str]], keep_ratio: KeepRatio = None) -> list[KeptWords]:
        """Tokenise ``texts`` like the session, run once, and return each text's kept positions per layer."""
        texts = check_texts(texts)
        feed = self.session.encode(texts)
        ratio = check_keep_ratio(keep_ratio, self.session.default_keep_ratio, batch=len(texts))
        output, *taps = self._tapped.run([self.session.metadata.output_name, *self.taps], {**feed, "keep_ratio": ratio})
        encodings = self.session.tokenizer.encode_batch(texts)
        ratios = reported_ratio(ratio)
        results = []
        for row, (text, encoding) in enumerate(zip(texts, encodings)):
            length = int(feed["attention_mask"][row].sum())
            kept = [sorted(int(p) for p in layer[row] if p >= 0) for layer in taps]
            row_ratio = ratios[row] if isinstance(ratios, list) else ratios
            results.append(KeptWords(text, list(encoding.tokens[:length]), kept, row_ratio, output[row]))
        return results


def render(words: KeptWords, highlight=None) -> str:
    """One line per layer: kept tokens as they are, dropped ones as dots of the same width.

    Readable without colour; ``highlight`` (say ``click.style``'s bold) marks
    the kept tokens too where a terminal shows it.
    """
    widths = [len(token) for token in words.tokens]
    label_width = len(f"layer {len(words.kept)}")
    lines = [f"{'input':<{label_width}}  {' '.join(words.tokens)}  ({len(words.tokens)} tokens)"]
    for layer in range(len(words.kept)):
        mask = words.kept_mask(layer)
        cells = []
        for token, width, alive in zip(words.tokens, widths, mask):
            if alive:
                cells.append(highlight(token) if highlight else token)
            else:
                cells.append("·" * width)
        label = f"layer {layer + 1}"
        lines.append(f"{label:<{label_width}}  {' '.join(cells)}  ({sum(mask)} kept)")
    return "\n".join(lines)

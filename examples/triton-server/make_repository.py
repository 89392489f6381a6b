"""Write a Triton Inference Server model repository (ONNX Runtime backend) for a latexport model.

    python examples/triton-server/make_repository.py out/sst2 triton_models                  # REPO_DIR/latexport_classifier
    python examples/triton-server/make_repository.py out/sst2 triton_models --kind KIND_GPU --instance-count 2
    python examples/triton-server/make_repository.py out/sst2 triton_models --max-batch-size 32 --dynamic-batching
    tritonserver --model-repository triton_models

Writes REPO_DIR/NAME/1/model.onnx and REPO_DIR/NAME/config.pbtxt, whose
inputs, types and shapes are read from the ONNX graph itself (needs the
``onnx`` package, from ``latexport[export]``).

The one subtlety is ``keep_ratio``.  The graph declares it float32 of unknown
rank (a scalar, or one ratio per row ``[batch]``) and also holds it as an
initializer, the file's default ratio, so ONNX Runtime lists it among the
overridable initializers rather than the inputs.  What the ONNX Runtime
backend does with such an input, read in triton-inference-server/
onnxruntime_backend at commit 00fd3e8 (src/onnxruntime.cc unless named):

- Only ``optional: true`` lets the config list an initializer: the config's
  input count less its optional inputs must equal ONNX Runtime's input count,
  which leaves initializers out (lines 1409-1424 and 1662-1670); overridable
  initializers are then accepted as request inputs (1672-1680).
- ``optional`` is refused when ``max_batch_size`` > 0 (1694-1701).
- ONNX Runtime's C API reports no dims for an input of unknown rank, as for a
  scalar; for such an input the config's dims (its ``reshape`` if it has one,
  1728-1736) must all be 1 (1765-1783), and at run time the backend binds it
  as a rank-0 tensor whatever the request sent, which reads the first element
  (``SetInputTensors``, 2300-2307).
- Otherwise the config's shape after the batch dim must match the model's
  (``CompareDimsSupported``, src/onnxruntime_utils.cc 491-545), and the bound
  tensor takes the batched request shape.

Hence two layouts:

- ``max_batch_size 0`` (the default): Triton does not batch; a request carries
  a whole batch of texts and one ratio for all of them.  model.onnx is a
  byte-for-byte copy; keep_ratio is ``dims: [ 1 ]`` and ``optional: true``, so
  a client sends a one-element array, or nothing for the file's default.
- ``--max-batch-size N``: keep_ratio cannot be optional, and as declared it
  would be bound as one scalar for the whole batch.  So the copy's keep_ratio
  is re-declared as a required float32 ``[batch]`` input with no default (the
  weights and everything else are unchanged), and the config declares it
  ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``: a request of B texts sends
  ``[B, 1]``, one ratio per text; Triton core applies the reshape to each
  request (``[B]``; triton-inference-server/core src/infer_request.cc
  1184-1204 at 73aad7c) and the batcher concatenates requests, so the graph
  gets one ratio per row and each request runs at its own ratio, merged or
  not.  Core accepts an empty reshape only with batching
  (src/model_config_utils.cc 318-330).

README.md in this directory has the client side.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx

MODEL_FILE = "model.onnx"
KEEP_RATIO = "keep_ratio"
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")

#: ONNX element type -> Triton data type, for the types latexport graphs use.
TRITON_TYPES = {
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


@dataclass
class GraphTensor:
    """One graph input or output: its name, Triton data type and ONNX shape.

    ``shape`` holds -1 for a named or unknown dim, and is None when the graph
    declares no shape at all (any rank).  ``has_default``: also an initializer,
    so a caller may leave it out.
    """

    name: str
    triton_type: str
    shape: Optional[list[int]]
    has_default: bool = False

    @property
    def has_no_dims(self) -> bool:
        """Rank 0 or unknown rank: ONNX Runtime reports no dims for either, and the backend treats both as a scalar."""
        return not self.shape


def graph_tensors(values, initializers: frozenset = frozenset()) -> list[GraphTensor]:
    tensors = []
    for value in values:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in TRITON_TYPES:
            raise ValueError(f"{value.name}: ONNX type {onnx.TensorProto.DataType.Name(tensor_type.elem_type)} has no mapping here")
        shape = None
        if tensor_type.HasField("shape"):
            shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
        tensors.append(GraphTensor(value.name, TRITON_TYPES[tensor_type.elem_type], shape, value.name in initializers))
    return tensors


def graph_io(graph) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The graph's inputs, those with a default (an initializer of the same name) included, and its outputs."""
    initializers = frozenset(initializer.name for initializer in graph.initializer)
    return graph_tensors(graph.input, initializers), graph_tensors(graph.output)


def read_graph_io(model_path: Path) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """``graph_io`` of a file; the weights are not loaded."""
    return graph_io(onnx.load(str(model_path), load_external_data=False).graph)


def keep_ratio_per_row(model: onnx.ModelProto) -> None:
    """Re-declare keep_ratio as a required float32 ``[batch]`` input, the form Triton's batcher feeds.

    Its default (the initializer) goes: the backend allows no optional input
    with batching.  The batch dim is the first token input's, so the two agree.
    """
    graph = model.graph
    token_input = next(value for value in graph.input if value.name != KEEP_RATIO)
    batch_dim = token_input.type.tensor_type.shape.dim[0]
    declared = onnx.helper.make_tensor_value_info(KEEP_RATIO, onnx.TensorProto.FLOAT, [None])
    declared.type.tensor_type.shape.dim[0].CopyFrom(batch_dim)
    next(value for value in graph.input if value.name == KEEP_RATIO).CopyFrom(declared)
    kept = [initializer for initializer in graph.initializer if initializer.name != KEEP_RATIO]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def triton_dims(tensor: GraphTensor, max_batch_size: int) -> list[int]:
    """``dims`` as Triton wants them: without the batch dim when Triton batches, never empty."""
    if tensor.has_no_dims:
        return [1]  # see the module docstring: the ONNX Runtime backend turns all-1 dims into a scalar
    if max_batch_size > 0:
        if tensor.shape[0] != -1:
            raise ValueError(f"{tensor.name}: Triton batching needs a dynamic first dim, the graph has {tensor.shape}")
        return tensor.shape[1:] or [1]
    return tensor.shape


def render_tensor(tensor: GraphTensor, max_batch_size: int) -> str:
    dims = ", ".join(str(dim) for dim in triton_dims(tensor, max_batch_size))
    lines = [f'name: "{tensor.name}"', f"data_type: {tensor.triton_type}", f"dims: [ {dims} ]"]
    if max_batch_size > 0 and tensor.shape == [-1]:
        lines.append("reshape: { shape: [ ] }")  # [batch] in the graph: one value per request row
    if tensor.has_default:
        lines.append("optional: true")
    return "  {\n" + "".join(f"    {line}\n" for line in lines) + "  }"


def header_comment(model_path: Path, max_batch_size: int, dynamic_batching: bool) -> str:
    lines = [f"Generated by examples/triton-server/make_repository.py from {model_path}.", ""]
    if max_batch_size == 0:
        lines += [
            "max_batch_size 0: Triton does not batch. A request carries a whole batch of texts,",
            "input_ids etc. as [batch, sequence], and keep_ratio as a one-element FP32 array [1], one",
            "ratio for the request, or leaves keep_ratio out for the ratio recorded in the file.",
            "keep_ratio has no dims in the ONNX graph (a scalar or one per row, with a default), so the",
            "ONNX Runtime backend takes dims [ 1 ] and passes a rank-0 tensor; it must be optional",
            "because the default makes it an overridable initializer, not a plain ONNX Runtime input.",
        ]
    else:
        lines += [
            f"max_batch_size {max_batch_size}: Triton adds the leading batch dim to every input. A request of",
            "B texts sends input_ids etc. as [B, sequence] and keep_ratio as [B, 1], one ratio per text",
            "(required: the backend allows no optional input with batching). The reshape makes it [B],",
            "and 1/model.onnx declares keep_ratio as [batch] with no default, so each row runs at its",
            "own ratio.",
        ]
        if dynamic_batching:
            lines += [
                "dynamic_batching below merges requests (of equal sequence length) into one model call;",
                "each request still runs at its own keep_ratio.",
            ]
    return "\n".join(f"# {line}".rstrip() for line in lines)


def render_config(name: str, model_path: Path, inputs: list[GraphTensor], outputs: list[GraphTensor],
                  max_batch_size: int = 0, instance_count: int = 1, kind: str = "KIND_CPU",
                  dynamic_batching: bool = False) -> str:
    """config.pbtxt text for the ONNX Runtime backend."""
    sections = [
        header_comment(model_path, max_batch_size, dynamic_batching),
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(render_tensor(tensor, max_batch_size) for tensor in inputs) + "\n]",
        "output [\n" + ",\n".join(render_tensor(tensor, max_batch_size) for tensor in outputs) + "\n]",
        f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {kind}\n  }}\n]",
    ]
    if dynamic_batching:
        sections.append("dynamic_batching { }")
    return "\n".join(sections) + "\n"


def check_keep_ratio(model_path: Path, inputs: list[GraphTensor], max_batch_size: int) -> None:
    declared = [tensor for tensor in inputs if tensor.has_no_dims]
    if [tensor.name for tensor in declared] != [KEEP_RATIO] or declared[0].triton_type != "TYPE_FP32":
        raise ValueError(f"{model_path} has no float32 {KEEP_RATIO} input without dims; is it a latexport model?")
    if max_batch_size > 0 and declared[0].shape is not None:
        raise ValueError(f"{model_path} declares {KEEP_RATIO} as a scalar (an older latexport), which Triton batching "
                         "cannot feed per request; convert the checkpoint again, or use max_batch_size 0")


def make_repository(model_dir: Path, repo_dir: Path, name: str = "latexport_classifier", max_batch_size: int = 0,
                    instance_count: int = 1, kind: str = "KIND_CPU", dynamic_batching: bool = False,
                    overwrite: bool = False) -> Path:
    """Write REPO_DIR/NAME/{config.pbtxt, 1/model.onnx}; returns REPO_DIR/NAME."""
    model_path = Path(model_dir) / MODEL_FILE
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} does not exist; convert a checkpoint first (latexport convert)")
    if kind not in INSTANCE_KINDS:
        raise ValueError(f"kind must be one of {INSTANCE_KINDS}, got {kind!r}")
    if max_batch_size < 0 or instance_count < 1:
        raise ValueError("max_batch_size must be 0 or more and instance_count 1 or more")
    if dynamic_batching and max_batch_size == 0:
        raise ValueError("dynamic batching needs max_batch_size > 0")

    model = None
    inputs, outputs = read_graph_io(model_path)
    check_keep_ratio(model_path, inputs, max_batch_size)
    if max_batch_size > 0:
        model = onnx.load(str(model_path), load_external_data=False)
        keep_ratio_per_row(model)
        inputs, outputs = graph_io(model.graph)
    config = render_config(name, model_path, inputs, outputs, max_batch_size, instance_count, kind, dynamic_batching)

    model_repo = Path(repo_dir) / name
    if model_repo.exists():
        if not overwrite:
            raise FileExistsError(f"{model_repo} exists (--overwrite replaces it)")
        shutil.rmtree(model_repo)
    (model_repo / "1").mkdir(parents=True)
    if model is None:
        shutil.copyfile(model_path, model_repo / "1" / MODEL_FILE)
    else:
        onnx.save(model, str(model_repo / "1" / MODEL_FILE))
    (model_repo / "config.pbtxt").write_text(config)
    return model_repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="A latexport model directory (OUT_DIR of `latexport convert`).")
    parser.add_argument("repo_dir", type=Path, help="The Triton model repository to write into.")
    parser.add_argument("--name", default="latexport_classifier", help="Model name in the repository.")
    parser.add_argument("--max-batch-size", type=int, default=0,
                        help="0 (default): clients send whole batches and one keep_ratio [1] (optional); "
                             "N: Triton batches up to N, keep_ratio sent as [B, 1], one per text.")
    parser.add_argument("--dynamic-batching", action="store_true",
                        help="Let Triton merge requests (needs --max-batch-size); each keeps its own keep_ratio.")
    parser.add_argument("--instance-count", type=int, default=1, help="Model instances Triton runs side by side.")
    parser.add_argument("--kind", choices=INSTANCE_KINDS, default="KIND_CPU")
    parser.add_argument("--overwrite", action="store_true", help="Replace REPO_DIR/NAME if it exists.")
    args = parser.parse_args()
    try:
        model_repo = make_repository(args.model_dir, args.repo_dir, args.name, args.max_batch_size, args.instance_count,
                                     args.kind, args.dynamic_batching, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {model_repo}/config.pbtxt and {model_repo}/1/{MODEL_FILE}; serve with: "
          f"tritonserver --model-repository {args.repo_dir}")


if __name__ == "__main__":
    main()

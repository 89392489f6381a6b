"""Give a converted file another elimination profile without exporting it again.

The profile's shape, ``power``, enters the graph only as one constant per
layer: the exponent ``(l / L) ** power`` of the ``Pow`` that turns the
sanitised ``keep_ratio`` into that layer's kept fraction
(``latexport.runtime.profile``).  Everything else, weights, ACC scoring and
selection, is the same at any power.  So choosing the power is as offline as
choosing the ratio: ``tune`` tries several and keeps the best, in seconds.

The rewrite is strict.  It finds the ``Pow`` nodes fed by the sanitised
ratio, requires exactly one per layer whose exponents are, in order, those
the file's recorded profile predicts, and only then points each at a fresh
constant and updates ``latexport.profile``.  A file that does not match (an
unknown graph, a hand-edited one) is refused, never half-rewritten; the
result is written atomically.  A tuned default ratio belongs to the old
profile, so it is dropped with its tuning record (and the keep_ratio input's
default returns to 1.0).

Needs only ``onnx`` and numpy; external weight files are left where they are.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from latexport.runtime.atomic import write_bytes_atomic
from latexport.runtime.errors import LatexportError
from latexport.runtime.keep_ratio_input import set_props
from latexport.runtime.metadata import KEEP_RATIO_INPUT, PREFIX
from latexport.runtime.profile import EliminationProfile

PROFILE_KEY = PREFIX + "profile"
#: What a tuned default ratio leaves in the file; it was chosen for the old profile.
TUNED_KEYS = (PREFIX + "default_keep_ratio", PREFIX + "tuning")
EXPONENT_NAME = "latexport.profile_exponent.{layer}"
#: float32 exponents are compared as the graph stores them.
_EXPONENT_TOLERANCE = 1e-6


class ReprofileError(LatexportError):
    """The file's graph is not one whose profile latexport can rewrite."""


def profile_of(model_path: Path) -> EliminationProfile:
    """The elimination profile recorded in a converted file."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    return _recorded_profile(proto, model_path)


def reprofile(
    model_path: Path, power: float, target: Optional[Path] = None, metadata: Optional[dict[str, str]] = None
) -> EliminationProfile:
    """Rewrite ``model_path`` (or write ``target``) so that it drops tokens with ``power``.

    ``metadata``: full keys to set in the same atomic write (``tune`` records its
    choice with the new profile).  Returns the new profile.
    """
    import onnx

    model_path = Path(model_path)
    proto = onnx.load(str(model_path), load_external_data=False)
    old = _recorded_profile(proto, model_path)
    new = replace(old, power=float(power))  # the same delay: only the decay's shape changes
    layer_pows = exponent_nodes(proto.graph, old, model_path)

    replaced = {node.input[1] for _, node in layer_pows}
    exponents = new.exponents()
    for layer, node in layer_pows:
        name, exponent = EXPONENT_NAME.format(layer=layer), exponents[layer]
        stored = [i for i in proto.graph.initializer if i.name == name]
        tensor = onnx.numpy_helper.from_array(np.array(exponent, dtype=np.float32), name)
        if stored:
            stored[0].CopyFrom(tensor)
        else:
            proto.graph.initializer.append(tensor)
        node.input[1] = name
    _drop_unused(proto.graph, replaced - {EXPONENT_NAME.format(layer=layer) for layer in range(new.num_layers)})

    props = {p.key: p.value for p in proto.metadata_props}
    props[PROFILE_KEY] = new.to_json()
    for key in TUNED_KEYS:
        props.pop(key, None)
    props.update(metadata or {})
    set_props(proto, props)
    write_bytes_atomic(Path(target) if target is not None else model_path, proto.SerializeToString())
    return new


def exponent_nodes(graph, profile: EliminationProfile, model_path: Path) -> list:
    """(layer, ``Pow`` node) of every decaying layer, in layer order, checked against ``profile``.

    The layers within the profile's delay raise keep_ratio to the power 0; the
    exporter merges those identical nodes into one, and a new power leaves them
    as they are, so they are checked but not returned."""
    sanitised = _sanitised_ratio_values(graph)
    pows = [node for node in graph.node if node.op_type == "Pow" and node.input[0] in sanitised]
    constants = _constant_values(graph, {node.input[1] for node in pows})
    found = []
    for node in pows:
        value = constants.get(node.input[1])
        if value is None or value.size != 1:
            raise ReprofileError(f"{model_path}: the keep_ratio Pow {node.name!r} has no constant scalar exponent")
        found.append((float(value.reshape(())), node))
    holding = [node for value, node in found if value == 0.0]
    found = [(value, node) for value, node in found if value != 0.0]
    expected = profile.exponents()[profile.delay :]
    if len(found) != len(expected) or bool(holding) != (profile.delay > 0):
        raise ReprofileError(
            f"{model_path}: found {len(found)} keep_ratio exponents for a {profile.num_layers}-layer profile; "
            "this graph was not written by latexport convert, or was edited since"
        )
    found.sort(key=lambda pair: pair[0])
    got = [value for value, _ in found]
    if not np.allclose(got, expected, rtol=0, atol=_EXPONENT_TOLERANCE):
        raise ReprofileError(
            f"{model_path}: the graph's exponents {[round(v, 6) for v in got]} are not those of its recorded profile "
            f"(power {profile.power:g}: {[round(v, 6) for v in expected]})"
        )
    return [(profile.delay + index, node) for index, (_, node) in enumerate(found)]


def _recorded_profile(proto, model_path: Path) -> EliminationProfile:
    props = {p.key: p.value for p in proto.metadata_props}
    if PROFILE_KEY not in props:
        raise ReprofileError(f"{model_path} has no {PROFILE_KEY} metadata; convert it with latexport first")
    return EliminationProfile.from_json(props[PROFILE_KEY])


def _constant_values(graph, names: set[str]) -> dict[str, np.ndarray]:
    """The values of the constants among ``names`` (initializers or Constant nodes);
    only these are converted, not the model's weights."""
    import onnx

    values = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer if tensor.name in names}
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = onnx.numpy_helper.to_array(attribute.t)
    return values


def _constant_names(graph) -> set[str]:
    return {tensor.name for tensor in graph.initializer} | {node.output[0] for node in graph.node if node.op_type == "Constant"}


def _sanitised_ratio_values(graph) -> set[str]:
    """Values computed from keep_ratio alone (casts, the NaN guard, the clamp), before any
    other data enters: the bases of the per-layer Pow nodes."""
    constants = _constant_names(graph)
    reached = {KEEP_RATIO_INPUT}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.op_type == "Pow" or set(node.output) <= reached:
                continue
            inputs = [name for name in node.input if name]
            if inputs and any(name in reached for name in inputs) and all(
                name in reached or name in constants for name in inputs
            ):
                reached.update(node.output)
                changed = True
    return reached


def _drop_unused(graph, names: set[str]) -> None:
    """Remove the constants named ``names`` (the old exponents) that nothing reads any more."""
    used = _names_read(graph)
    unused = names - used
    keep = [node for node in graph.node if not (node.op_type == "Constant" and node.output[0] in unused)]
    del graph.node[:]
    graph.node.extend(keep)
    keep_init = [tensor for tensor in graph.initializer if tensor.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)


def _names_read(graph) -> set[str]:
    """Every value a node reads or the graph returns, inside subgraphs too (the per-layer If branches)."""
    import onnx

    read = {output.name for output in graph.output}
    for node in graph.node:
        read.update(name for name in node.input if name)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                read |= _names_read(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    read |= _names_read(subgraph)
    return read

"""The ``keep_ratio`` input as a file declares it: a scalar or one ratio per row, with a default.

A caller may feed ``keep_ratio`` as a float32 scalar (every row at that ratio)
or as ``[batch]`` (each row at its own; a row's result equals its result
alone, since every count in the graph is per row).  The graph input therefore
declares a float32 tensor of unknown rank: ONNX cannot say "rank 0 or 1", and
a declared rank would make ONNX Runtime refuse the other form.

The input is also an initializer holding the file's default ratio (the one
``tune`` recorded, else 1.0).  ONNX Runtime lists such an input among the
overridable initializers, not the required inputs, so a consumer that knows
nothing of ``keep_ratio`` (stock optimum ORTModel, a generic ONNX server)
feeds only the token inputs and gets the default; one that feeds it
overrides it per call.  ``session.get_overridable_initializers()`` lists it.

The default lives twice, in ``latexport.default_keep_ratio`` and in that
initializer; every writer of the metadata goes through ``set_props`` (or
``latexport.export.passes.set_metadata`` at conversion), which keeps the two
equal.  Needs only ``onnx`` and numpy.
"""

from __future__ import annotations

import numpy as np

from latexport.runtime.metadata import KEEP_RATIO_INPUT, PREFIX

DEFAULT_KEY = PREFIX + "default_keep_ratio"


def default_from_props(props: dict[str, str]) -> float:
    """The default ratio ``props`` record: the tuned one, else 1.0 (keep everything)."""
    return float(props.get(DEFAULT_KEY, "1.0"))


def set_props(proto, props: dict[str, str]) -> None:
    """Replace ``proto``'s metadata by ``props`` and make its keep_ratio default agree with them."""
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    declare_keep_ratio(proto.graph, default_from_props(props))


def declare_keep_ratio(graph, default: float) -> None:
    """Declare the graph's keep_ratio input as float32 of any rank, defaulting to ``default``.

    A graph without that input (a decoder step) is left as it is.
    """
    import onnx

    inputs = [value for value in graph.input if value.name == KEEP_RATIO_INPUT]
    if not inputs:
        return
    inputs[0].CopyFrom(onnx.helper.make_tensor_value_info(KEEP_RATIO_INPUT, onnx.TensorProto.FLOAT, None))
    tensor = onnx.numpy_helper.from_array(np.array(default, dtype=np.float32), KEEP_RATIO_INPUT)
    stored = [index for index, initializer in enumerate(graph.initializer) if initializer.name == KEEP_RATIO_INPUT]
    if stored:
        graph.initializer[stored[0]].CopyFrom(tensor)
    else:
        graph.initializer.append(tensor)

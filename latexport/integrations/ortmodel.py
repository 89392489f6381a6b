"""latexport models inside the Hugging Face ecosystem: optimum's ORTModel API and transformers' pipeline.

    from transformers import pipeline
    from latexport.integrations.ortmodel import LatexportModelForSequenceClassification, LatexportTextClassificationPipeline

    model = LatexportModelForSequenceClassification.from_pretrained("out/sst2")
    classifier = pipeline("text-classification", model=model, tokenizer=model.tokenizer,
                          pipeline_class=LatexportTextClassificationPipeline)
    classifier("a gripping, funny film")                   # the model's recorded default ratio
    classifier("a gripping, funny film", keep_ratio=0.3)   # per call
    classifier(["a gripping, funny film", "dull"], keep_ratio=[0.3, 1.0])   # per text
    batch = model.tokenizer(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    model(**batch, keep_ratio=torch.tensor([0.3, 1.0])).logits              # per row, directly

The model class is optimum's ``ORTModelForSequenceClassification`` (loading,
providers, ``.to("cuda")``, IO binding, ``save_pretrained``) whose ``forward``
also feeds ``keep_ratio``: a number, or one per row (a list, array or tensor of
``[batch]``; each row gets the result it gets alone at its ratio).  A stock
``pipeline(...)`` without ``pipeline_class`` works too, at ``model.keep_ratio``
(default: the recorded ratio); only the pipeline class adds the per-call
argument, because the stock text-classification pipeline hands unknown
arguments to the tokenizer.

Stock optimum needs none of this to run a converted classifier:
``optimum.onnxruntime.ORTModelForSequenceClassification.from_pretrained(OUT_DIR)``
loads it and feeds only the token inputs, and the graph runs at the ratio the
file records (``latexport tune``'s, else 1.0).  That is because ``keep_ratio``
is also an initializer holding that default, so ONNX Runtime lists it under
``session.get_overridable_initializers()``, not ``session.get_inputs()``,
where optimum (and most generic ONNX consumers) look; a caller lists it there.
For the same reason optimum's own input bookkeeping leaves ``keep_ratio`` out,
and this class adds it back.

Needs ``latexport[optimum]`` (optimum-onnx, which needs transformers<4.58); production services that
want neither use ``latexport.runtime.session``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput

from latexport.integrations.pipeline import (
    LatexportTextClassificationPipeline,
    as_keep_ratio,
)
from latexport.runtime.errors import InvalidInputError, ModelDirectoryError
from latexport.runtime.metadata import KEEP_RATIO_INPUT
from latexport.runtime.session import (
    KeepRatio,
    check_keep_ratio,
    check_token_inputs,
    read_metadata,
)


class LatexportModelForSequenceClassification(ORTModelForSequenceClassification):
    """A ``latexport convert`` directory as an optimum ORTModel; ``forward`` takes ``keep_ratio``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.latexport_metadata = read_metadata(self.session, self.path)
        if self.latexport_metadata.task != "text-classification":
            raise ModelDirectoryError(
                f"{self.path} is a {self.latexport_metadata.task} model; this class serves text-classification"
            )
        # optimum feeds and binds only what session.get_inputs() lists; keep_ratio, which has a
        # default in the file, is an overridable initializer instead, so add it to optimum's tables.
        for initializer in self.session.get_overridable_initializers():
            if initializer.name == KEEP_RATIO_INPUT and initializer.name not in self.input_names:
                self.input_names[initializer.name] = len(self.input_names)
                self.input_shapes[initializer.name] = initializer.shape
                self.input_dtypes[initializer.name] = initializer.type
        #: The ratio used when a call gives none; None means the file's recorded default.
        self.keep_ratio: Optional[float] = None
        self._tokenizer = None

    @property
    def default_keep_ratio(self) -> float:
        return self.latexport_metadata.default_keep_ratio

    @property
    def tokenizer(self):
        """The tokenizer saved beside model.onnx (``latexport convert`` always writes one)."""
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_save_dir)
        return self._tokenizer

    def forward(
        self,
        input_ids: Union[torch.Tensor, np.ndarray, None] = None,
        attention_mask: Union[torch.Tensor, np.ndarray, None] = None,
        token_type_ids: Union[torch.Tensor, np.ndarray, None] = None,
        *,
        keep_ratio: KeepRatio = None,
        return_dict: bool = True,
        **kwargs,
    ):
        """Logits at ``keep_ratio`` (else ``self.keep_ratio``, else the recorded default): a
        number, or one per row (a list, array or tensor of ``[batch]``).

        Inputs are checked like the runtime checks them (dtypes, shapes, ids in
        the vocabulary, no all-padding row) before ONNX Runtime sees them.
        """
        self._warn_on_unhandled_inputs(kwargs)
        if input_ids is None or attention_mask is None:
            raise InvalidInputError("input_ids and attention_mask are both required")
        use_torch = isinstance(input_ids, torch.Tensor)
        self.raise_on_numpy_input_io_binding(use_torch)
        names = self.latexport_metadata.input_names
        if token_type_ids is None and "token_type_ids" in names:
            token_type_ids = torch.zeros_like(input_ids) if use_torch else np.zeros_like(input_ids)
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        given = {name: value for name, value in given.items() if name in names}
        check_token_inputs(self.latexport_metadata, {name: _to_numpy(value) for name, value in given.items()})

        ratio = check_keep_ratio(as_keep_ratio(self.keep_ratio if keep_ratio is None else keep_ratio),
                                 self.default_keep_ratio, batch=len(input_ids))
        model_inputs = {
            name: (value.to(torch.int64) if use_torch else np.asarray(value, dtype=np.int64)) for name, value in given.items()
        }
        model_inputs["keep_ratio"] = torch.from_numpy(ratio).to(self.device) if use_torch else ratio

        if self.use_io_binding:
            output_shapes, output_buffers = self._prepare_io_binding(model_inputs)
            if self.device.type == "cpu":
                self.session.run_with_iobinding(self._io_binding)
            else:
                self._io_binding.synchronize_inputs()
                self.session.run_with_iobinding(self._io_binding)
                self._io_binding.synchronize_outputs()
            logits = output_buffers["logits"].view(output_shapes["logits"])
        else:
            onnx_inputs = self._prepare_onnx_inputs(use_torch, model_inputs)
            onnx_outputs = self.session.run(None, onnx_inputs)
            logits = self._prepare_onnx_outputs(use_torch, onnx_outputs)["logits"]
        if not return_dict:
            return (logits,)
        return SequenceClassifierOutput(logits=logits)


def pipeline(model_dir: Union[str, Path], provider: str = "CPUExecutionProvider", **pipeline_kwargs) -> LatexportTextClassificationPipeline:
    """``transformers.pipeline("text-classification", ...)`` for a latexport directory, with per-call keep_ratio."""
    from transformers import pipeline as transformers_pipeline

    model = LatexportModelForSequenceClassification.from_pretrained(model_dir, provider=provider)
    return transformers_pipeline(
        "text-classification",
        model=model,
        tokenizer=model.tokenizer,
        pipeline_class=LatexportTextClassificationPipeline,
        **pipeline_kwargs,
    )


def _to_numpy(value) -> np.ndarray:
    return value.numpy(force=True) if isinstance(value, torch.Tensor) else np.asarray(value)

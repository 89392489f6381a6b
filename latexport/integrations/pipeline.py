"""transformers' ``pipeline`` over a latexport file, with ``keep_ratio`` per call, and no optimum.

    from latexport.integrations.pipeline import pipeline

    classifier = pipeline("out/sst2")
    classifier("a gripping, funny film")                   # the file's recorded default ratio
    classifier("a gripping, funny film", keep_ratio=0.3)   # per call
    classifier(["a gripping, funny film", "two hours I will never get back"], keep_ratio=[0.3, 1.0])  # per text

``LatexportForSequenceClassification`` is a transformers ``PreTrainedModel``
whose ``forward`` runs ``model.onnx`` in ONNX Runtime (``LatencyAdjustableSession``),
so the pipeline machinery (tokenising, batching, labels, ``top_k``) works as
for any model, on transformers 4.57 and 5.  With a list of texts, ``keep_ratio``
may hold one ratio per text: each text then carries its ratio through the
pipeline's own batching (``batch_size``), and gets the result it gets alone at
that ratio.  optimum-onnx, whose newest release
does not import with transformers 5, is not needed; with optimum installed,
``latexport.integrations.ortmodel`` offers the ORTModel class as well.

Needs ``latexport[export]`` (torch and transformers); production services
that want neither use ``latexport.runtime.session``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, TextClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput

from latexport.runtime.errors import InvalidInputError, ModelDirectoryError
from latexport.runtime.session import KeepRatio, LatencyAdjustableSession, check_keep_ratio


class LatexportForSequenceClassification(PreTrainedModel):
    """A ``latexport convert`` text-classification directory as a transformers model."""

    config_class = PretrainedConfig
    main_input_name = "input_ids"

    def __init__(self, config: PretrainedConfig, session: LatencyAdjustableSession):
        super().__init__(config)
        self.session = session
        #: The ratio used when a call gives none; None means the file's recorded default.
        self.keep_ratio: Optional[float] = None
        # The pipeline asks the model for its device and dtype, which transformers reads off a tensor.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @classmethod
    def from_directory(cls, model_dir: Union[str, Path], provider: str = "cpu", intra_op_threads: int = 0):
        session = LatencyAdjustableSession(model_dir, provider=provider, intra_op_threads=intra_op_threads)
        if session.metadata.task != "text-classification":
            raise ModelDirectoryError(f"{model_dir} is a {session.metadata.task} model; this class serves text-classification")
        return cls(AutoConfig.from_pretrained(model_dir), session).eval()

    def _init_weights(self, module):
        """Nothing to initialise: the weights live in model.onnx."""

    def forward(
        self,
        input_ids: Union[torch.Tensor, np.ndarray, None] = None,
        attention_mask: Union[torch.Tensor, np.ndarray, None] = None,
        token_type_ids: Union[torch.Tensor, np.ndarray, None] = None,
        *,
        keep_ratio: KeepRatio = None,
        return_dict: bool = True,
        **unused,
    ):
        """Logits at ``keep_ratio`` (else ``self.keep_ratio``, else the recorded default),
        with the runtime's input checks.  ``keep_ratio``: a number, or one per row (a list,
        array or tensor of ``[batch]``)."""
        if input_ids is None or attention_mask is None:
            raise InvalidInputError("input_ids and attention_mask are both required")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {name: _to_int64(value) for name, value in given.items() if value is not None}
        if "token_type_ids" in self.session.metadata.input_names:
            feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
        else:
            feed.pop("token_type_ids", None)
        ratio = check_keep_ratio(as_keep_ratio(self.keep_ratio if keep_ratio is None else keep_ratio),
                                 self.session.default_keep_ratio, batch=len(feed["input_ids"]))
        logits = torch.from_numpy(np.ascontiguousarray(self.session.run(feed, ratio)))
        return SequenceClassifierOutput(logits=logits) if return_dict else (logits,)


@dataclass(frozen=True)
class TextAtRatio:
    """One pipeline input (a text, or a ``{"text", "text_pair"}`` dict) with its own keep_ratio."""

    text: Any
    keep_ratio: float


class LatexportTextClassificationPipeline(TextClassificationPipeline):
    """transformers' text-classification pipeline with a ``keep_ratio`` argument (the stock one
    hands unknown arguments to the tokenizer): one number per call, or one per text."""

    def __call__(self, inputs, keep_ratio: KeepRatio = None, **kwargs):
        """Classify ``inputs`` at ``keep_ratio``: a number for all of them, or, with a list of
        texts, a sequence of one ratio per text (the rest as ``TextClassificationPipeline``)."""
        per_text = as_keep_ratio(keep_ratio)
        if np.ndim(per_text) == 0:
            return super().__call__(inputs, keep_ratio=keep_ratio, **kwargs)
        if not isinstance(inputs, list) or len(inputs) != len(per_text):
            raise InvalidInputError(f"keep_ratio holds {len(per_text)} values: give a list of as many texts, one ratio per text")
        ratios = np.atleast_1d(check_keep_ratio(per_text, batch=len(inputs)))  # fail at the call, not in a batch
        return super().__call__([TextAtRatio(text, float(ratio)) for text, ratio in zip(inputs, ratios)], **kwargs)

    def check_model_type(self, supported_models):
        """Any latexport classifier will do, whatever architecture it was exported from."""

    def _sanitize_parameters(self, keep_ratio: KeepRatio = None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if keep_ratio is not None:
            check_keep_ratio(as_keep_ratio(keep_ratio))  # fail at the call, not inside a batch loop
            forward_params = {**forward_params, "keep_ratio": keep_ratio}
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs, **tokenizer_kwargs):
        if not isinstance(inputs, TextAtRatio):
            return super().preprocess(inputs, **tokenizer_kwargs)
        model_inputs = super().preprocess(inputs.text, **tokenizer_kwargs)
        # [1] per text: the pipeline's batching concatenates these 1-D tensors into [batch], one per row.
        model_inputs["keep_ratio"] = torch.tensor([inputs.keep_ratio], dtype=torch.float32)
        return model_inputs

    def _forward(self, model_inputs, keep_ratio: KeepRatio = None):
        per_text = model_inputs.pop("keep_ratio", None)
        return self.model(**model_inputs, keep_ratio=keep_ratio if per_text is None else per_text)


def pipeline(model_dir: Union[str, Path], provider: str = "cpu", **pipeline_kwargs) -> LatexportTextClassificationPipeline:
    """``transformers.pipeline("text-classification", ...)`` for a latexport directory, with per-call keep_ratio."""
    from transformers import pipeline as transformers_pipeline

    model = LatexportForSequenceClassification.from_directory(model_dir, provider=provider)
    return transformers_pipeline(
        "text-classification",
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        pipeline_class=LatexportTextClassificationPipeline,
        **pipeline_kwargs,
    )


def as_keep_ratio(value: Union[KeepRatio, torch.Tensor]) -> KeepRatio:
    """A keep_ratio as ``check_keep_ratio`` takes it: a tensor becomes a numpy array."""
    return value.numpy(force=True) if isinstance(value, torch.Tensor) else value


def _to_int64(value) -> np.ndarray:
    array = value.numpy(force=True) if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(np.int64, copy=False)

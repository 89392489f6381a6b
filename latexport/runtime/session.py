"""Run an exported model: onnxruntime, numpy and tokenizers only (no torch).

    from latexport.runtime.session import LatencyAdjustableSession
    session = LatencyAdjustableSession("out/minilm-sst2")
    session.predict(["a gripping, funny film"], keep_ratio=0.5).labels

One session may be shared by many threads: it holds no per-call state,
ONNX Runtime's ``run`` is thread-safe and the tokenizer is configured once.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

from latexport.runtime.errors import (
    InvalidInputError,
    ModelDirectoryError,
    ProviderError,
)
from latexport.runtime.metadata import PREFIX, ModelMetadata

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
TRUNCATION_MODES = ("warn", "error", "silent")

#: A number, or one per row (a sequence or a 1-D array), or None for the file's default.
KeepRatio = Union[float, np.floating, np.ndarray, Sequence[float], None]


class TruncationWarning(UserWarning):
    """An input text was longer than the model's maximum and was cut."""


@dataclass
class Prediction:
    """Classification or regression output for a batch.

    ``labels`` (argmax names) and ``scores`` (softmax) are set for
    classification; ``values`` (the single logit) for regression.
    """

    logits: np.ndarray
    labels: Optional[list[str]] = None
    scores: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None
    #: The ratio the call ran at (chosen by the budget when ``target_ms`` was given), or one per row.
    keep_ratio: Union[float, list[float], None] = None
    #: With ``target_ms``: the calibration's predicted latency of the model call.
    predicted_ms: Optional[float] = None


def check_keep_ratio(keep_ratio: KeepRatio, default: float = 1.0, batch: Optional[int] = None) -> np.ndarray:
    """A keep_ratio as the graph takes it: a float32 scalar, or, when the caller knows the
    ``batch``, one ratio per row ([batch]); every value finite and in (0, 1].

    A row's result at ratio r is the same alone, in a batch at r, or beside rows
    at other ratios (``latexport.runtime.keep_ratio_input``).
    """
    if keep_ratio is None:
        keep_ratio = default
    if isinstance(keep_ratio, (bool, np.bool_)):
        raise InvalidInputError(f"keep_ratio must be a number in (0, 1], got the boolean {keep_ratio!r}")
    if isinstance(keep_ratio, (list, tuple)):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in keep_ratio):
            raise InvalidInputError(f"keep_ratio must hold numbers in (0, 1], got {list(keep_ratio)!r}")
        keep_ratio = np.array(keep_ratio, dtype=np.float64)
    if isinstance(keep_ratio, np.ndarray):
        if not np.issubdtype(keep_ratio.dtype, np.floating):
            raise InvalidInputError(f"keep_ratio must be float, got dtype {keep_ratio.dtype}")
        if keep_ratio.ndim > 1 or keep_ratio.size == 0:
            raise InvalidInputError(f"keep_ratio must be a scalar or one value per row [batch], got shape {keep_ratio.shape}")
        if keep_ratio.ndim == 1 and keep_ratio.size > 1:
            if batch is None:
                raise InvalidInputError("one keep_ratio per row is accepted only where the batch is known")
            if keep_ratio.size != batch:
                raise InvalidInputError(f"keep_ratio has {keep_ratio.size} values for a batch of {batch} rows")
            values = keep_ratio.astype(np.float64)
        else:
            values = keep_ratio.reshape(()).astype(np.float64)
    elif isinstance(keep_ratio, numbers.Real):
        values = np.array(float(keep_ratio))
    else:
        raise InvalidInputError(f"keep_ratio must be a number in (0, 1], got {type(keep_ratio).__name__}")
    if not np.isfinite(values).all():
        raise InvalidInputError(f"keep_ratio must be finite, got {values.tolist()}")
    if not ((values > 0.0) & (values <= 1.0)).all():
        raise InvalidInputError(f"keep_ratio must be in (0, 1], got {values.tolist()}")
    return values.astype(np.float32)


def reported_ratio(keep_ratio: np.ndarray) -> Union[float, list[float]]:
    """What a result says it ran at: one number, or one per row."""
    return float(keep_ratio) if keep_ratio.ndim == 0 else [float(value) for value in keep_ratio]


def check_target_ms(target_ms) -> float:
    """A latency budget as a float: a finite, positive number of milliseconds."""
    if isinstance(target_ms, bool) or not isinstance(target_ms, numbers.Real) or not math.isfinite(target_ms) or target_ms <= 0:
        raise InvalidInputError(f"target_ms must be a positive number of milliseconds, got {target_ms!r}")
    return float(target_ms)


def choose_providers(provider: str) -> list[str]:
    if provider not in PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        hint = " (install latexport[gpu], which brings onnxruntime-gpu, on a machine with CUDA)" if provider == "cuda" else ""
        raise ProviderError(f"provider {provider!r} is not available here{hint}; available: {', '.join(available)}")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def read_metadata(session: ort.InferenceSession, path: Path) -> ModelMetadata:
    props = session.get_modelmeta().custom_metadata_map
    try:
        return ModelMetadata.from_props(props)
    except (KeyError, ValueError, TypeError) as error:
        written_by = props.get(f"{PREFIX}version")
        if written_by is not None:
            raise ModelDirectoryError(
                f"{path} was written by latexport {written_by} and this version cannot read its metadata "
                f"({type(error).__name__}: {error}); convert the checkpoint again"
            ) from error
        raise ModelDirectoryError(f"{path} is not a latexport model (its metadata lacks {error})") from error


def load_session(path: Path, providers: list[str], options: Optional[ort.SessionOptions] = None) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelDirectoryError(f"{path} does not exist; convert a checkpoint first (latexport convert)")
    try:
        return ort.InferenceSession(str(path), options or ort.SessionOptions(), providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelDirectoryError(f"{path} cannot be loaded; is it corrupt or truncated? ({first_line})") from error


class LatencyAdjustableSession:
    """A loaded model directory, ready to run at any keep_ratio per call."""

    def __init__(
        self,
        model_dir: Union[str, Path],
        provider: str = "cpu",
        intra_op_threads: int = 0,
        truncation: str = "warn",
        io_binding: Optional[bool] = None,
    ):
        """``io_binding`` (default: on for CUDA) binds inputs and the output to the
        provider's device through ONNX Runtime's IO binding, so outputs are fetched
        once per call rather than through the generic ``run`` copy path."""
        if truncation not in TRUNCATION_MODES:
            raise InvalidInputError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        if not isinstance(intra_op_threads, int) or intra_op_threads < 0:
            raise InvalidInputError(f"intra_op_threads must be 0 (all cores) or more, got {intra_op_threads!r}")
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelDirectoryError(f"{self.model_dir} is not a directory")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        self.provider = provider
        self.session = load_session(self.model_dir / MODEL_FILE, choose_providers(provider), options)
        self.metadata = read_metadata(self.session, self.model_dir / MODEL_FILE)
        self.truncation = truncation
        self.io_binding = provider == "cuda" if io_binding is None else bool(io_binding)
        self._device = "cuda" if provider == "cuda" else "cpu"
        self._tokenizer = self._load_tokenizer()
        self._intra_op_threads = intra_op_threads
        self._latency_model = None

    # --- model facts -------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def default_keep_ratio(self) -> float:
        return self.metadata.default_keep_ratio

    @property
    def max_length(self) -> int:
        return self.metadata.max_length

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` of the directory's tokenizer.json, as ``encode`` uses it."""
        return self._tokenizer

    @property
    def intra_op_threads(self) -> int:
        """The ONNX Runtime intra-op thread count this session was opened with (0: its default)."""
        return self._intra_op_threads

    # --- tokenisation --------------------------------------------------------
    def _load_tokenizer(self):
        from tokenizers import Tokenizer

        path = self.model_dir / TOKENIZER_FILE
        if not path.is_file():
            raise ModelDirectoryError(f"{path} is missing; the model directory is incomplete")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:
            raise ModelDirectoryError(f"{path} cannot be read ({error})") from error
        meta = self.metadata
        tokenizer.enable_truncation(max_length=meta.max_length)
        tokenizer.enable_padding(pad_id=meta.pad_token_id, pad_token=meta.pad_token)
        return tokenizer

    def encode(self, texts: Union[str, Sequence[str]], text_pairs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Tokenise a batch into the model's integer inputs (padded to the longest)."""
        texts = check_texts(texts, "texts")
        if text_pairs is not None:
            text_pairs = check_texts(text_pairs, "text_pairs")
            if len(text_pairs) != len(texts):
                raise InvalidInputError(f"got {len(texts)} texts but {len(text_pairs)} text_pairs")
            encodings = self._tokenizer.encode_batch(list(zip(texts, text_pairs)))
        else:
            encodings = self._tokenizer.encode_batch(texts)
        truncated = [i for i, encoding in enumerate(encodings) if encoding.overflowing]
        if truncated:
            message = f"texts {truncated} are longer than the model's {self.max_length} tokens"
            if self.truncation == "error":
                raise InvalidInputError(message)
            if self.truncation == "warn":
                warnings.warn(message + " and were truncated", TruncationWarning, stacklevel=3)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self.metadata.input_names:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return feed

    def decode(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """Token ids back to text, special tokens left out (generation)."""
        return self._tokenizer.decode_batch([list(ids) for ids in token_ids], skip_special_tokens=True)

    # --- running -------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray], keep_ratio: KeepRatio = None) -> np.ndarray:
        """Run on already-tokenised inputs; returns the raw output (logits or embedding)."""
        feed = self.check_inputs(inputs)
        feed["keep_ratio"] = check_keep_ratio(keep_ratio, self.default_keep_ratio, batch=len(feed["input_ids"]))
        if self.io_binding:
            return self._run_bound(feed)
        return self.session.run([self.metadata.output_name], feed)[0]

    def _run_bound(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One call through IO binding; a binding per call keeps the session thread-safe.

        keep_ratio is bound from host memory: it only sizes TopK, and ONNX
        Runtime copies it to wherever its consumers run.  It is bound as an
        OrtValue because ``bind_cpu_input`` cannot find an input that is also an
        initializer (the file's default, ``latexport.runtime.keep_ratio_input``).
        """
        binding = self.session.io_binding()
        for name, array in feed.items():
            if name == "keep_ratio":
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
            elif self._device == "cpu":
                binding.bind_cpu_input(name, array)
            else:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, self._device, 0))
        binding.bind_output(self.metadata.output_name, self._device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def predict(
        self,
        texts: Union[str, Sequence[str]],
        keep_ratio: KeepRatio = None,
        text_pairs: Optional[Sequence[str]] = None,
        target_ms: Optional[float] = None,
    ) -> Prediction:
        """Classify a batch at ``keep_ratio``, or at the largest ratio predicted to answer
        within ``target_ms`` milliseconds (tokenisation included) on this machine.

        A budget needs ``latexport calibrate`` to have been run on this machine;
        ``keep_ratio`` and ``target_ms`` cannot both be given.
        """
        self._check_task("text-classification")
        started = time.perf_counter()
        feed = self.encode(texts, text_pairs)
        predicted_ms = None
        if target_ms is not None:
            if keep_ratio is not None:
                raise InvalidInputError("give keep_ratio or target_ms, not both")
            keep_ratio, predicted_ms = self.keep_ratio_for_budget(feed, target_ms, spent_ms=(time.perf_counter() - started) * 1000)
        ratio = check_keep_ratio(keep_ratio, self.default_keep_ratio, batch=len(feed["input_ids"]))
        return self.prediction_from_logits(self.run(feed, ratio), reported_ratio(ratio), predicted_ms)

    def prediction_from_logits(self, logits: np.ndarray, keep_ratio: Union[float, list[float], None] = None,
                               predicted_ms: Optional[float] = None) -> Prediction:
        """Labels and softmax scores (or regression values) for raw logits of this model."""
        if self.metadata.problem_type == "regression":
            return Prediction(logits=logits, values=logits[:, 0], keep_ratio=keep_ratio, predicted_ms=predicted_ms)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
        labels = [self.labels[i] for i in logits.argmax(axis=1)]
        return Prediction(logits=logits, labels=labels, scores=scores, keep_ratio=keep_ratio, predicted_ms=predicted_ms)

    def keep_ratio_for_budget(self, inputs: Mapping[str, np.ndarray], target_ms: float, spent_ms: float = 0.0) -> tuple[float, float]:
        """The largest keep_ratio predicted to run ``inputs`` within ``target_ms - spent_ms``,
        and that prediction (``latexport/runtime/calibration.py``)."""
        target_ms = check_target_ms(target_ms)
        mask = np.asarray(inputs["attention_mask"])
        if mask.ndim != 2 or mask.shape[0] == 0:
            raise InvalidInputError(f"attention_mask must be 2-D [batch, sequence], got shape {mask.shape}")
        # Rows are padded to the longest, so the padded width is the longest row's length.
        batch, width = mask.shape
        return self.latency_model().choose_keep_ratio(batch, width, target_ms - spent_ms)

    def latency_model(self):
        """This machine's calibration (``calibration.json``), loaded and checked once."""
        if self._latency_model is None:
            from latexport.runtime.calibration import LatencyModel

            latency_model = LatencyModel.load(self.model_dir)
            latency_model.check_matches(self.metadata, self.provider, self._intra_op_threads)
            self._latency_model = latency_model
        return self._latency_model

    def embed(self, texts: Union[str, Sequence[str]], keep_ratio: KeepRatio = None, normalize: bool = False) -> np.ndarray:
        self._check_task("feature-extraction")
        embeddings = self.run(self.encode(texts), keep_ratio)
        if normalize:
            embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return embeddings

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Names, dtypes, shapes and values of tokenised inputs, with messages that name the culprit."""
        return check_token_inputs(self.metadata, inputs)

    def _check_task(self, wanted: str) -> None:
        task = self.metadata.task
        if task != wanted:
            use = {
                "text-classification": "predict()",
                "feature-extraction": "embed()",
                "text2text-generation": "latexport.runtime.generation.Seq2SeqGenerator (latexport generate)",
            }.get(task, "another method")
            raise InvalidInputError(f"this model does {task}; use {use}")


def check_token_inputs(metadata: ModelMetadata, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names, dtypes, shapes and values of tokenised inputs, with messages that name the culprit."""
    expected = [name for name in metadata.input_names if name != "keep_ratio"]
    missing = [name for name in expected if name not in inputs]
    unknown = [name for name in inputs if name not in expected and name != "keep_ratio"]
    if missing or unknown:
        raise InvalidInputError(f"inputs must be {expected}; missing {missing}, unexpected {unknown}")
    feed = {}
    shape = None
    for name in expected:
        array = np.asarray(inputs[name])
        if not np.issubdtype(array.dtype, np.integer):
            raise InvalidInputError(f"{name} must hold integers (int64), got dtype {array.dtype}")
        if array.ndim != 2:
            raise InvalidInputError(f"{name} must be 2-D [batch, sequence], got shape {array.shape}")
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise InvalidInputError(f"{name} has shape {array.shape} but {expected[0]} has {shape}")
        feed[name] = array.astype(np.int64, copy=False)
    batch, width = shape
    if batch == 0:
        raise InvalidInputError("the batch is empty")
    if width == 0:
        raise InvalidInputError("the sequences are empty (sequence length 0)")
    if width > metadata.max_length:
        raise InvalidInputError(f"sequence length {width} exceeds the model's maximum of {metadata.max_length}")
    mask = feed["attention_mask"]
    if not np.isin(mask, (0, 1)).all():
        raise InvalidInputError("attention_mask must hold only 0 and 1")
    empty_rows = np.nonzero(mask.sum(axis=1) == 0)[0]
    if empty_rows.size:
        raise InvalidInputError(f"rows {empty_rows.tolist()} of attention_mask are all padding")
    ids = feed["input_ids"]
    if ids.min() < 0 or ids.max() >= metadata.vocab_size:
        raise InvalidInputError(f"input_ids must lie in [0, {metadata.vocab_size}), got [{ids.min()}, {ids.max()}]")
    return feed


def check_texts(texts: Union[str, Sequence[str]], name: str = "texts") -> list[str]:
    """A batch of non-empty strings (one string is a batch of one), or a clear error."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise InvalidInputError(f"{name} must be a string or a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise InvalidInputError(f"{name} is an empty batch")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"{name}[{index}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInputError(f"{name}[{index}] is empty")
    return list(texts)

"""Text generation with a pruned encoder: onnxruntime, numpy and tokenizers only.

    from latexport.generation import Seq2SeqGenerator
    generator = Seq2SeqGenerator("out/flan-t5")
    generator.generate("translate English to German: the house is small", keep_ratio=0.5).texts

The encoder (``model.onnx``) runs once per prompt at the chosen keep_ratio and
returns the kept word-vectors with their mask.  The decoder graphs cross-attend
to those only: the first step builds every layer's cache (its cross-attention
keys and values are computed once, from the kept states), and each further step
appends one token to the self-attention cache.  A lower keep_ratio therefore
shortens the encoder pass and every decoding step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from latexport.errors import InvalidInputError, ModelDirectoryError
from latexport.metadata import ENCODER_MASK_OUTPUT
from latexport.runtime import KeepRatio, LatencyAdjustableSession, check_keep_ratio, choose_providers, load_session

#: A bound on generated tokens, so that a typo cannot make a call run for hours.
MAX_NEW_TOKENS_LIMIT = 4096


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; ``Sampling()`` is plain sampling from the softmax.

    ``top_k`` 0 and ``top_p`` 1.0 switch those filters off.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise InvalidInputError(f"temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise InvalidInputError(f"top_k must be a whole number >= 0, got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class Generation:
    """Generated continuations of a batch of prompts, with where the time went."""

    texts: list[str]
    #: The new tokens of each prompt, up to and including </s> when it came.
    token_ids: list[list[int]]
    keep_ratio: float
    #: Encoder word-vectors each prompt kept (after the last layer) / its length.
    kept_tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    encoder_ms: float = 0.0
    #: Encoder plus the first decoding step: the time to the first token.
    first_token_ms: float = 0.0
    total_ms: float = 0.0


class Seq2SeqGenerator:
    """A converted text2text-generation directory (``latexport convert --task text2text-generation``)."""

    def __init__(
        self, model_dir: Union[str, Path], provider: str = "cpu", intra_op_threads: int = 0, truncation: str = "warn"
    ):
        self.encoder = LatencyAdjustableSession(model_dir, provider, intra_op_threads, truncation)
        self.model_dir = self.encoder.model_dir
        settings = self.encoder.metadata.generation
        if settings is None:
            raise ModelDirectoryError(
                f"{self.model_dir} holds a {self.encoder.metadata.task} model; generation needs a conversion "
                "with --task text2text-generation"
            )
        self.settings = settings
        options = self.encoder.session.get_session_options()
        providers = choose_providers(provider)
        self.decoder = load_session(self.model_dir / settings["decoder"], providers, options)
        self.decoder_with_past = load_session(self.model_dir / settings["decoder_with_past"], providers, options)
        self._present_names = [output.name for output in self.decoder.get_outputs()][1:]
        self._self_attention_present = [output.name for output in self.decoder_with_past.get_outputs()][1:]

    @property
    def default_keep_ratio(self) -> float:
        return self.encoder.default_keep_ratio

    def encode_states(self, inputs: Mapping[str, np.ndarray], keep_ratio: KeepRatio = None) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's kept states [B, K, D] and their mask [B, K] (int64, 1 = kept)."""
        feed = self.encoder.check_inputs(inputs)
        feed["keep_ratio"] = check_keep_ratio(keep_ratio, self.default_keep_ratio)
        states, mask = self.encoder.session.run([self.encoder.metadata.output_name, ENCODER_MASK_OUTPUT], feed)
        return states, mask

    def generate_ids(
        self,
        inputs: Mapping[str, np.ndarray],
        keep_ratio: KeepRatio = None,
        max_new_tokens: int = 32,
        sampling: Optional[Sampling] = None,
        min_new_tokens: int = 0,
    ) -> Generation:
        """Greedy (or, with ``sampling``, sampled) decoding from tokenised prompts.

        </s> cannot end a continuation before ``min_new_tokens`` (benchmarks use it
        to decode a fixed number of steps)."""
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, (int, np.integer)) or not 0 <= min_new_tokens <= max_new_tokens:
            raise InvalidInputError(f"min_new_tokens must be a whole number in [0, max_new_tokens], got {min_new_tokens!r}")
        ratio = float(check_keep_ratio(keep_ratio, self.default_keep_ratio))
        rng = np.random.default_rng(sampling.seed) if sampling else None
        started = time.perf_counter()
        states, mask = self.encode_states(inputs, ratio)
        encoder_ms = (time.perf_counter() - started) * 1e3
        batch = states.shape[0]
        eos, pad = self.settings["eos_token_id"], self.settings["pad_token_id"]
        start_ids = np.full((batch, 1), self.settings["decoder_start_token_id"], dtype=np.int64)
        outputs = self.decoder.run(
            None, {"input_ids": start_ids, "encoder_hidden_states": states, "encoder_attention_mask": mask}
        )
        past = {name.replace("present.", "past_key_values."): value for name, value in zip(self._present_names, outputs[1:])}
        logits = outputs[0][:, -1]
        first_token_ms = (time.perf_counter() - started) * 1e3
        generated = np.zeros((batch, 0), dtype=np.int64)
        finished = np.zeros(batch, dtype=bool)
        for step in range(max_new_tokens):
            if step < min_new_tokens:
                logits = logits.copy()
                logits[:, eos] = -np.inf
            next_ids = next_tokens(logits, sampling, rng)
            next_ids = np.where(finished, pad, next_ids)
            generated = np.concatenate([generated, next_ids[:, None]], axis=1)
            finished |= next_ids == eos
            if finished.all() or step == max_new_tokens - 1:
                break
            outputs = self.decoder_with_past.run(
                None, {"input_ids": next_ids[:, None], "encoder_attention_mask": mask, **past}
            )
            logits = outputs[0][:, -1]
            for name, value in zip(self._self_attention_present, outputs[1:]):
                past[name.replace("present.", "past_key_values.")] = value
        total_ms = (time.perf_counter() - started) * 1e3
        token_ids = [_until_eos(row, eos) for row in generated.tolist()]
        return Generation(
            texts=[],
            token_ids=token_ids,
            keep_ratio=ratio,
            kept_tokens=mask.sum(axis=1).tolist(),
            prompt_tokens=np.asarray(inputs["attention_mask"]).sum(axis=1).tolist(),
            encoder_ms=encoder_ms,
            first_token_ms=first_token_ms,
            total_ms=total_ms,
        )

    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        keep_ratio: KeepRatio = None,
        max_new_tokens: int = 32,
        sampling: Optional[Sampling] = None,
        min_new_tokens: int = 0,
    ) -> Generation:
        """Tokenise, generate and decode; ``texts`` holds each prompt's continuation."""
        inputs = self.encoder.encode(prompts)
        result = self.generate_ids(inputs, keep_ratio, max_new_tokens, sampling, min_new_tokens)
        result.texts = self.encoder._tokenizer.decode_batch(result.token_ids, skip_special_tokens=True)
        return result


def next_tokens(logits: np.ndarray, sampling: Optional[Sampling], rng: Optional[np.random.Generator]) -> np.ndarray:
    """Argmax, or a draw after temperature, top-k and top-p (nucleus) filtering."""
    if sampling is None:
        return logits.argmax(axis=-1).astype(np.int64)
    scaled = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k:
        kth_largest = np.sort(scaled, axis=-1)[:, -min(sampling.top_k, scaled.shape[-1])]
        scaled = np.where(scaled < kth_largest[:, None], -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= sampling.top_p
        sorted_probs[outside] = 0.0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_probs, axis=-1)
        probs /= probs.sum(axis=-1, keepdims=True)
    draws = rng.random((probs.shape[0], 1))
    return np.minimum((probs.cumsum(axis=-1) < draws).sum(axis=-1), probs.shape[-1] - 1).astype(np.int64)


def check_max_new_tokens(max_new_tokens) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise InvalidInputError(f"max_new_tokens must be a whole number, got {max_new_tokens!r}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise InvalidInputError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {max_new_tokens}")
    return int(max_new_tokens)


def _until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row

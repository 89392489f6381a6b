"""Text generation with a pruned prompt pass: onnxruntime, numpy and tokenizers only.

    from latexport.runtime.generation import open_generator
    generator = open_generator("out/flan-t5")          # or a decoder-only directory
    generator.generate("translate English to German: the house is small", keep_ratio=0.5).texts

Encoder-decoder (``Seq2SeqGenerator``): the encoder (``model.onnx``) runs once
per prompt at the chosen keep_ratio and returns the kept word-vectors with
their mask.  The decoder graphs cross-attend to those only: the first step
builds every layer's cache (its cross-attention keys and values are computed
once, from the kept states), and each further step appends one token to the
self-attention cache.

Decoder-only (``CausalGenerator``): the prompt pass (``model.onnx``) drops word-
vectors layer by layer and returns the next token's logits and every layer's
key/value cache with its mask (lengths differ by layer); the decode step
(``decoder_with_past_model.onnx``) appends one token to every layer's cache.
Positions count real tokens, so prompts may be padded on either side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from latexport.runtime.errors import InvalidInputError, ModelDirectoryError
from latexport.runtime.metadata import ENCODER_MASK_OUTPUT, cache_names
from latexport.runtime.session import (
    KeepRatio,
    LatencyAdjustableSession,
    check_keep_ratio,
    choose_providers,
    load_session,
    reported_ratio,
)

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
    #: The new tokens of each prompt, up to and including the end token when it came.
    token_ids: list[list[int]]
    #: The ratio the prompt pass ran at, or one per prompt.
    keep_ratio: Union[float, list[float]]
    #: Word-vectors of each prompt that the last layer kept (encoder-decoder) or
    #: attends to (decoder-only: its cache), against the prompt's length.
    kept_tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    #: The pruned prompt pass: the encoder, or a decoder-only model's prefill.
    prompt_ms: float = 0.0
    #: Until the first new token is chosen: the time to first token.
    first_token_ms: float = 0.0
    total_ms: float = 0.0
    #: The logits the first new token was chosen from [B, vocab].
    first_logits: Optional[np.ndarray] = None


class PrunedPromptGenerator:
    """What both generators share: ``session``, the pruned prompt pass (model.onnx) with the
    tokenizer, the generation settings its metadata records, and ``generate``."""

    task: str

    def __init__(
        self, model_dir: Union[str, Path], provider: str = "cpu", intra_op_threads: int = 0, truncation: str = "warn",
        session: Optional[LatencyAdjustableSession] = None,
    ):
        self.session = session or LatencyAdjustableSession(model_dir, provider, intra_op_threads, truncation)
        self.model_dir = self.session.model_dir
        self.settings = _generation_settings(self.session, self.task)
        self._options = self.session.session.get_session_options()
        self._providers = choose_providers(provider)

    def _load_graph(self, setting: str):
        return load_session(self.model_dir / self.settings[setting], self._providers, self._options)

    @property
    def default_keep_ratio(self) -> float:
        return self.session.default_keep_ratio

    def generate_ids(self, inputs, keep_ratio=None, max_new_tokens=32, sampling=None, min_new_tokens=0) -> Generation:
        """Greedy or sampled continuation of tokenised prompts: each generator's own loop."""
        raise NotImplementedError

    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        keep_ratio: KeepRatio = None,
        max_new_tokens: int = 32,
        sampling: Optional[Sampling] = None,
        min_new_tokens: int = 0,
    ) -> Generation:
        """Tokenise, generate and decode; ``texts`` holds each prompt's continuation."""
        inputs = self.session.encode(prompts)
        result = self.generate_ids(inputs, keep_ratio, max_new_tokens, sampling, min_new_tokens)
        result.texts = self.session.decode(result.token_ids)
        return result


class Seq2SeqGenerator(PrunedPromptGenerator):
    """A converted text2text-generation directory (``latexport convert --task text2text-generation``)."""

    task = "text2text-generation"

    def __init__(
        self, model_dir: Union[str, Path], provider: str = "cpu", intra_op_threads: int = 0, truncation: str = "warn",
        session: Optional[LatencyAdjustableSession] = None,
    ):
        super().__init__(model_dir, provider, intra_op_threads, truncation, session)
        self.encoder = self.session
        self.decoder = self._load_graph("decoder")
        self.decoder_with_past = self._load_graph("decoder_with_past")
        self._present_names = [output.name for output in self.decoder.get_outputs()][1:]
        self._self_attention_present = [output.name for output in self.decoder_with_past.get_outputs()][1:]

    def encode_states(self, inputs: Mapping[str, np.ndarray], keep_ratio: KeepRatio = None) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's kept states [B, K, D] and their mask [B, K] (int64, 1 = kept)."""
        feed = self.encoder.check_inputs(inputs)
        feed["keep_ratio"] = check_keep_ratio(keep_ratio, self.default_keep_ratio, batch=len(feed["input_ids"]))
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

        The end token cannot end a continuation before ``min_new_tokens`` (benchmarks
        use it to decode a fixed number of steps)."""
        max_new_tokens, min_new_tokens = check_token_counts(max_new_tokens, min_new_tokens)
        inputs = self.encoder.check_inputs(inputs)
        ratio = check_keep_ratio(keep_ratio, self.default_keep_ratio, batch=len(inputs["input_ids"]))
        started = time.perf_counter()
        states, mask = self.encode_states(inputs, ratio)
        prompt_ms = (time.perf_counter() - started) * 1e3
        start_ids = np.full((states.shape[0], 1), self.settings["decoder_start_token_id"], dtype=np.int64)
        outputs = self.decoder.run(
            None, {"input_ids": start_ids, "encoder_hidden_states": states, "encoder_attention_mask": mask}
        )
        past = {name.replace("present.", "past_key_values."): value for name, value in zip(self._present_names, outputs[1:])}

        def step(next_ids: np.ndarray) -> np.ndarray:
            outputs = self.decoder_with_past.run(None, {"input_ids": next_ids[:, None], "encoder_attention_mask": mask, **past})
            for name, value in zip(self._self_attention_present, outputs[1:]):
                past[name.replace("present.", "past_key_values.")] = value
            return outputs[0][:, -1]

        return decode(
            outputs[0][:, -1], step, self.settings, reported_ratio(ratio), max_new_tokens, min_new_tokens, sampling, started,
            prompt_ms=prompt_ms, kept_tokens=mask.sum(axis=1).tolist(),
            prompt_tokens=np.asarray(inputs["attention_mask"]).sum(axis=1).tolist(),
        )


class CausalGenerator(PrunedPromptGenerator):
    """A converted decoder-only directory (``latexport convert --task text-generation``)."""

    task = "text-generation"

    def __init__(
        self, model_dir: Union[str, Path], provider: str = "cpu", intra_op_threads: int = 0, truncation: str = "warn",
        session: Optional[LatencyAdjustableSession] = None,
    ):
        super().__init__(model_dir, provider, intra_op_threads, truncation, session)
        self.prompt = self.session
        self.decoder_with_past = self._load_graph("decoder_with_past")
        layers = self.prompt.metadata.profile.num_layers
        self._present_names = cache_names(layers, "present")
        self._past_names = cache_names(layers, "past")

    def prefill(self, inputs: Mapping[str, np.ndarray], keep_ratio: KeepRatio = None) -> tuple[np.ndarray, dict]:
        """The pruned prompt pass: next-token logits [B, V] and the cache, keyed by the decode step's input names."""
        feed = self.prompt.check_inputs(inputs)
        feed["keep_ratio"] = check_keep_ratio(keep_ratio, self.default_keep_ratio, batch=len(feed["input_ids"]))
        logits, *cache = self.prompt.session.run(["logits", *self._present_names], feed)
        return logits, dict(zip(self._past_names, cache))

    def generate_ids(
        self,
        inputs: Mapping[str, np.ndarray],
        keep_ratio: KeepRatio = None,
        max_new_tokens: int = 32,
        sampling: Optional[Sampling] = None,
        min_new_tokens: int = 0,
    ) -> Generation:
        """Greedy (or sampled) continuation of tokenised prompts (see ``Seq2SeqGenerator.generate_ids``)."""
        max_new_tokens, min_new_tokens = check_token_counts(max_new_tokens, min_new_tokens)
        inputs = self.prompt.check_inputs(inputs)
        ratio = check_keep_ratio(keep_ratio, self.default_keep_ratio, batch=len(inputs["input_ids"]))
        longest = int(inputs["attention_mask"].sum(axis=1).max())
        if longest + max_new_tokens > self.prompt.max_length:
            raise InvalidInputError(
                f"a {longest}-token prompt plus {max_new_tokens} new tokens exceeds the model's maximum of "
                f"{self.prompt.max_length} positions"
            )
        started = time.perf_counter()
        logits, cache = self.prefill(inputs, ratio)
        prompt_ms = (time.perf_counter() - started) * 1e3
        positions = np.asarray(inputs["attention_mask"]).sum(axis=1, keepdims=True).astype(np.int64)

        def step(next_ids: np.ndarray) -> np.ndarray:
            nonlocal positions
            outputs = self.decoder_with_past.run(None, {"input_ids": next_ids[:, None], "position_ids": positions, **cache})
            positions = positions + 1
            cache.update(zip(self._past_names, outputs[1:]))
            return outputs[0][:, -1]

        return decode(
            logits, step, self.settings, reported_ratio(ratio), max_new_tokens, min_new_tokens, sampling, started, prompt_ms=prompt_ms,
            kept_tokens=(cache[self._past_names[-1]] > 0).sum(axis=1).tolist(),
            prompt_tokens=np.asarray(inputs["attention_mask"]).sum(axis=1).tolist(),
        )


    def continuation_nll(self, prompt: Sequence[int], continuation: Sequence[int], keep_ratio: KeepRatio = None) -> float:
        """Summed negative log-likelihood (nats) of ``continuation`` after a pruned prompt pass over
        ``prompt`` (one row of token ids each): the prompt graph at ``keep_ratio`` gives the first
        logits and the cache, and the decode-step graph takes the whole continuation at once.
        What a ratio costs a decoder is what its kept cache no longer predicts."""
        prompt = np.asarray(prompt, dtype=np.int64).reshape(1, -1)
        continuation = np.asarray(continuation, dtype=np.int64).reshape(1, -1)
        if prompt.shape[1] == 0 or continuation.shape[1] == 0:
            raise InvalidInputError("continuation_nll needs at least one prompt token and one continuation token")
        if prompt.shape[1] + continuation.shape[1] > self.prompt.max_length:
            raise InvalidInputError(
                f"{prompt.shape[1]} prompt plus {continuation.shape[1]} continuation tokens exceed the model's "
                f"maximum of {self.prompt.max_length} positions"
            )
        first_logits, cache = self.prefill({"input_ids": prompt, "attention_mask": np.ones_like(prompt)}, keep_ratio)
        length = prompt.shape[1]
        positions = np.arange(length, length + continuation.shape[1], dtype=np.int64)[None, :]
        step_logits = self.decoder_with_past.run(["logits"], {"input_ids": continuation, "position_ids": positions, **cache})[0]
        logits = np.concatenate([first_logits[:, None, :], step_logits[:, :-1, :]], axis=1)[0].astype(np.float64)
        log_probs = logits - logits.max(axis=-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=-1, keepdims=True))
        return float(-log_probs[np.arange(continuation.shape[1]), continuation[0]].sum())


def open_generator(model_dir: Union[str, Path], provider: str = "cpu", intra_op_threads: int = 0, truncation: str = "warn"):
    """The generator for a converted directory: ``Seq2SeqGenerator`` or ``CausalGenerator``."""
    session = LatencyAdjustableSession(model_dir, provider, intra_op_threads, truncation)
    for generator_class in (Seq2SeqGenerator, CausalGenerator):
        if session.metadata.task == generator_class.task:
            return generator_class(model_dir, provider, intra_op_threads, truncation, session=session)
    raise ModelDirectoryError(
        f"{session.model_dir} holds a {session.metadata.task} model; generation needs a conversion with "
        "--task text-generation or --task text2text-generation"
    )


def _generation_settings(session: LatencyAdjustableSession, task: str) -> dict:
    if session.metadata.task != task or session.metadata.generation is None:
        raise ModelDirectoryError(
            f"{session.model_dir} holds a {session.metadata.task} model; this generator needs a conversion with --task {task}"
        )
    return session.metadata.generation


def decode(
    first_logits: np.ndarray,
    step,
    settings: dict,
    keep_ratio: Union[float, list[float]],
    max_new_tokens: int,
    min_new_tokens: int,
    sampling: Optional[Sampling],
    started: float,
    **timing_and_counts,
) -> Generation:
    """The token loop both generators share: choose, stop rows at the end token, and
    call ``step(next_ids [B]) -> logits [B, V]`` for every further token."""
    rng = np.random.default_rng(sampling.seed) if sampling else None
    eos, pad = settings["eos_token_id"], settings["pad_token_id"]
    logits = first_logits
    batch = logits.shape[0]
    generated = np.zeros((batch, 0), dtype=np.int64)
    finished = np.zeros(batch, dtype=bool)
    first_token_ms = None
    for position in range(max_new_tokens):
        if position < min_new_tokens:
            logits = logits.copy()
            logits[:, eos] = -np.inf
        logits = constrain_tokens(logits, settings, position, max_new_tokens)
        next_ids = np.where(finished, pad, next_tokens(logits, sampling, rng))
        if first_token_ms is None:
            first_token_ms = (time.perf_counter() - started) * 1e3
        generated = np.concatenate([generated, next_ids[:, None]], axis=1)
        finished |= next_ids == eos
        if finished.all() or position == max_new_tokens - 1:
            break
        logits = step(next_ids)
    return Generation(
        texts=[],
        token_ids=[_until_eos(row, eos) for row in generated.tolist()],
        keep_ratio=keep_ratio,
        first_token_ms=first_token_ms,
        total_ms=(time.perf_counter() - started) * 1e3,
        first_logits=first_logits,
        **timing_and_counts,
    )


def constrain_tokens(logits: np.ndarray, settings: dict, position: int, max_new_tokens: int) -> np.ndarray:
    """What transformers' ``generate`` imposes from the generation config (recorded at convert time, and
    absent for most models): never the suppressed tokens, the forced first token (mBART-50's target
    language) and the forced end token at the last allowed position, in that order."""
    suppressed = settings.get("suppressed_token_ids")
    forced = []
    if position == 0 and settings.get("forced_bos_token_id") is not None:
        forced = [settings["forced_bos_token_id"]]
    if position == max_new_tokens - 1 and settings.get("forced_eos_token_ids"):
        forced = settings["forced_eos_token_ids"]
    if not suppressed and not forced:
        return logits
    logits = logits.copy()
    if suppressed:
        logits[:, suppressed] = -np.inf
    if forced:
        logits[:] = -np.inf
        logits[:, forced] = 0.0
    return logits


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


def check_token_counts(max_new_tokens, min_new_tokens) -> tuple[int, int]:
    for name, value in (("max_new_tokens", max_new_tokens), ("min_new_tokens", min_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise InvalidInputError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise InvalidInputError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")
    return int(max_new_tokens), int(min_new_tokens)


def _until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row

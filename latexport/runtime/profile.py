"""The elimination profile: how many word-vectors each layer keeps, from one scalar.

One runtime knob, ``keep_ratio`` in (0, 1], sets the whole schedule.  After
layer ``l`` (1-based, of ``L``) a sample whose valid length is ``n`` keeps

    fraction(l) = keep_ratio ** ((l / L) ** power)
    k(l)        = clamp(ceil(n * fraction(l) - 1e-3), 1, k(l - 1)),   k(0) = n

A profile may first hold off for ``delay`` layers, which keep everything; the
decay then runs over the remaining layers, ``(l - delay) / (L - delay)`` in
place of ``l / L``.

``keep_ratio`` is therefore the fraction of word-vectors that survive the last
layer.  Upper layers keep fewer than lower ones, as in the paper, and a smaller
ratio never keeps more.  The ``- 1e-3`` stops float noise from moving ``k``
between runtimes; ``k >= 1`` keeps the token the head reads.

``power`` shapes the decay: 1 is geometric (every layer keeps the same share of
what reaches it); above 1 the lower layers, whose word-vectors are not yet
contextualised, keep more and the upper layers drop harder.  Measured on the
Rotten Tomatoes validation split with a plainly fine-tuned MiniLM (no training
for dropping), at the same estimated 1.55x: power 1 kept 84.2% accuracy,
power 1.5 86.0%, power 2 86.6% (87.2% unpruned); at 2.1x, power 1.5 kept 82.8%
and power 1 81.4%.  The default is 1.5; fine-tuning records its power and
conversion reuses it, and ``tune`` may then choose another on held-out data
(``latexport.runtime.reprofile`` rewrites the exponents in the file).

A decoder's prompt pass takes the opposite shape by default
(``prompt_pass_profile``): a delay, then a fast decay.

This module is numpy-only: the runtime and ``inspect`` use it without torch.
The exported graph computes the same formula (``selection.keep_counts``), in
float32 like here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from latexport.runtime.errors import SettingsError

CEIL_SLACK = 1e-3
DEFAULT_POWER = 1.5
#: A decoder's prompt pass: hold off for the first 2/15 of the layers, then power 0.25 (``prompt_pass_profile``).
PROMPT_PASS_DELAY_SHARE = 2 / 15
PROMPT_PASS_POWER = 0.25


@dataclass(frozen=True)
class EliminationProfile:
    """The kept fraction decays with depth as keep_ratio ** ((l / L) ** power) (module doc)."""

    num_layers: int
    power: float = DEFAULT_POWER
    name: str = "power"
    #: The first ``delay`` layers keep every word-vector (module doc).
    delay: int = 0

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise SettingsError(f"num_layers must be >= 1, got {self.num_layers}")
        if not (0.25 <= self.power <= 4.0) or math.isnan(self.power):
            raise SettingsError(f"power must be in [0.25, 4], got {self.power}")
        if not (0 <= self.delay < self.num_layers) or isinstance(self.delay, bool) or int(self.delay) != self.delay:
            raise SettingsError(f"delay must be a whole number of layers in [0, {self.num_layers}), got {self.delay!r}")
        if self.name != "power":
            raise SettingsError(f"unknown elimination profile {self.name!r}; latexport knows 'power'")

    def exponents(self) -> list[float]:
        """Per-layer exponent e(l) = ((l - delay) / (L - delay)) ** power (0 within the delay),
        so that fraction(l) = keep_ratio ** e(l)."""
        span = self.num_layers - self.delay
        return [
            0.0 if layer <= self.delay else float(np.float32(((layer - self.delay) / span) ** self.power))
            for layer in range(1, self.num_layers + 1)
        ]

    def kept_fractions(self, keep_ratio: float) -> list[float]:
        ratio = np.float32(clamp_keep_ratio(keep_ratio))
        return [float(np.power(ratio, np.float32(e))) for e in self.exponents()]

    def kept_counts(self, valid_length: int, keep_ratio: float) -> list[int]:
        """Word-vectors alive after each layer for one sample of ``valid_length`` tokens."""
        return self.kept_counts_table(valid_length, np.array([keep_ratio]))[0].tolist()

    def kept_counts_table(self, valid_length: int, keep_ratios: np.ndarray) -> np.ndarray:
        """``kept_counts`` for many ratios at once: int64 [len(keep_ratios), num_layers].

        The same float32 arithmetic as the graph; the per-layer ``min`` with the
        previous layer is a running minimum along the layers.
        """
        if valid_length < 0:
            raise SettingsError(f"valid_length must be >= 0, got {valid_length}")
        ratios = np.asarray(keep_ratios, dtype=np.float64)
        ratios = np.where(np.isnan(ratios), 1.0, np.clip(ratios, 0.0, 1.0)).astype(np.float32)
        fractions = np.power(ratios[:, None], np.array(self.exponents(), dtype=np.float32)[None, :])
        wanted = np.ceil(np.float32(valid_length) * fractions - np.float32(CEIL_SLACK))
        counts = np.minimum.accumulate(np.minimum(wanted, max(int(valid_length), 1)), axis=1)
        return np.maximum(counts, 1).astype(np.int64)

    def describe(self) -> str:
        """The formula, for ``inspect``."""
        if self.delay == 0:
            return f"kept fraction after layer l = keep_ratio ** ((l / {self.num_layers}) ** {self.power:g})"
        span = self.num_layers - self.delay
        return (f"layers 1-{self.delay} keep everything; after layer l > {self.delay}, kept fraction = "
                f"keep_ratio ** (((l - {self.delay}) / {span}) ** {self.power:g})")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EliminationProfile":
        fields = json.loads(text)
        return cls(
            num_layers=int(fields["num_layers"]), power=float(fields["power"]), name=fields.get("name", "power"),
            delay=int(fields.get("delay", 0)),  # files from before the delay hold off for none
        )


def prompt_pass_profile(num_layers: int) -> EliminationProfile:
    """The profile of a decoder's prompt pass with published weights (no fine-tuning).

    A prompt pass lives for the next tokens, which read every layer's cache.
    So it should keep more in the upper layers than an encoder does, and
    drop early instead, once the lower layers have read the prompt.
    Measured with SmolLM2-135M (30 layers), eager, ``DECODER_PROMPT_RULE``:
    perplexity of the next 64 tokens after 1,024-token prompts, 3 of each of
    four kinds of text; pass key at 10 depths of a 1,000-token prompt;
    speedups estimated from FLOPs:

    ===================  ==========================  ==========================
    profile              about 2.15x: rise, key      about 3x: rise, key
    ===================  ==========================  ==========================
    power 1.5            +3.3%, 9 of 10              +31.9%, 2 of 10
    power 1              +4.2%, 9                    +11.8% (3.12x), 2
    power 0.5            +3.7%, 4                    +4.9%, 5
    power 0.25           +2.6%, 4                    +5.1%, 5
    delay 3, power 0.25  +3.3%, 8                    +7.0%, 7
    delay 4, power 0.25  +3.7%, 10                   +6.9%, 2
    delay 5, power 0.25  +4.3%, 10                   +9.5%, 2
    ===================  ==========================  ==========================

    Dropping early costs the pass key, which the lower layers have not yet
    found; dropping late costs the continuation.  Holding off for 4 of 30
    layers, then decaying fast, keeps both at 2x and keeps 3x within +7%.
    Other depths scale the delay (2/15 of the layers); only 30 was measured.
    """
    return EliminationProfile(num_layers, power=PROMPT_PASS_POWER, delay=int(round(num_layers * PROMPT_PASS_DELAY_SHARE)))


def clamp_keep_ratio(keep_ratio: float) -> float:
    """The graph's own sanitising of keep_ratio: NaN means 'keep everything', the rest is clipped to [0, 1]."""
    value = float(keep_ratio)
    if math.isnan(value):
        return 1.0
    return min(max(value, 0.0), 1.0)

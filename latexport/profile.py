"""The elimination profile: how many word-vectors each layer keeps, from one scalar.

One runtime knob, ``keep_ratio`` in (0, 1], sets the whole schedule.  After
layer ``l`` (1-based, of ``L``) a sample whose valid length is ``n`` keeps

    fraction(l) = keep_ratio ** (l / (reach * L))
    k(l)        = clamp(ceil(n * fraction(l) - 1e-3), 1, k(l - 1)),   k(0) = n

so the kept fraction decays geometrically with depth and equals ``keep_ratio``
at the fraction ``reach`` of the depth.  Upper layers keep fewer word-vectors
than lower ones, as in the paper, and a smaller ratio never keeps more.  The
``- 1e-3`` stops float noise from moving ``k`` between runtimes; ``k >= 1``
keeps the token the head reads.

By default ``reach = 1``: ``keep_ratio`` is the fraction of word-vectors that
survive the last layer.  The whole range (0, 1] is usable; on a 12-layer
model at 512 tokens, 0.5 estimates 1.4x, 0.1 estimates 2.8x and 0.01 5.2x.
Why not a steeper default: a model has a fixed cost per layer (reading its
weights) that no dropping removes, so the measured speedup falls behind the
FLOPs estimate once the estimate passes about 3x (measured: 92% of it at
2.75x, 83% at 5.2x, BERT-base, 2 CPU threads).  With ``reach = 1`` every ratio
down to 0.1 stays within that regime and ratios below 0.1 give the larger
speedups.  A steeper ``reach`` is a conversion option.

This module is numpy-only: the runtime and ``inspect`` use it without torch.
The exported graph computes the same formula (``selection.keep_counts``), in
float32 like here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

CEIL_SLACK = 1e-3
DEFAULT_REACH = 1.0


@dataclass(frozen=True)
class EliminationProfile:
    """Geometric decay of the kept fraction with depth (formula in the module doc)."""

    num_layers: int
    reach: float = DEFAULT_REACH
    name: str = "geometric"

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not (0.0 < self.reach <= 1.0) or math.isnan(self.reach):
            raise ValueError(f"reach must be in (0, 1], got {self.reach}")
        if self.name != "geometric":
            raise ValueError(f"unknown elimination profile {self.name!r}; latexport knows 'geometric'")

    def exponents(self) -> list[float]:
        """Per-layer exponent e(l) = l / (reach * L), so that fraction(l) = keep_ratio ** e(l)."""
        return [float(np.float32(layer / (self.reach * self.num_layers))) for layer in range(1, self.num_layers + 1)]

    def kept_fractions(self, keep_ratio: float) -> list[float]:
        ratio = np.float32(clamp_keep_ratio(keep_ratio))
        return [float(np.power(ratio, np.float32(e))) for e in self.exponents()]

    def kept_counts(self, valid_length: int, keep_ratio: float) -> list[int]:
        """Word-vectors alive after each layer for one sample of ``valid_length`` tokens."""
        if valid_length < 0:
            raise ValueError(f"valid_length must be >= 0, got {valid_length}")
        counts = []
        previous = max(int(valid_length), 1)
        n = np.float32(valid_length)
        for fraction in self.kept_fractions(keep_ratio):
            wanted = int(np.ceil(n * np.float32(fraction) - np.float32(CEIL_SLACK)))
            previous = max(min(wanted, previous), 1)
            counts.append(previous)
        return counts

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EliminationProfile":
        fields = json.loads(text)
        return cls(num_layers=int(fields["num_layers"]), reach=float(fields["reach"]), name=fields.get("name", "geometric"))


def clamp_keep_ratio(keep_ratio: float) -> float:
    """The graph's own sanitising of keep_ratio: NaN means 'keep everything', the rest is clipped to [0, 1]."""
    value = float(keep_ratio)
    if math.isnan(value):
        return 1.0
    return min(max(value, 0.0), 1.0)

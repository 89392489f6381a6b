"""The deploy side: what a production app loads.

Everything under ``latexport.runtime`` needs only onnxruntime, numpy and
tokenizers, never torch, transformers or optimum (``tests/test_layout.py``
enforces it): the session that runs one converted file at any keep_ratio
(``session``), the generation loops (``generation``), latency budgets
(``calibration``, ``timing``), the metadata a file carries (``metadata``,
``profile``, ``estimate``), ``inspect``'s report (``inspection``), and the
shared ``errors`` and atomic file writes (``atomic``).  The export, training
and bench sides import from here, never the other way round.
"""

from latexport.runtime.generation import (
    CausalGenerator,
    Sampling,
    Seq2SeqGenerator,
    open_generator,
)
from latexport.runtime.session import (
    LatencyAdjustableSession,
    Prediction,
    TruncationWarning,
)

__all__ = [
    "CausalGenerator",
    "LatencyAdjustableSession",
    "Prediction",
    "Sampling",
    "Seq2SeqGenerator",
    "TruncationWarning",
    "open_generator",
]

"""How a sequence of final word-vectors becomes one vector: the sentence embedding
of feature extraction, and the input of ModernBERT's classifier."""

from __future__ import annotations

import torch

POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, valid: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence embedding from the final word-vectors: mean over the valid ones, or [CLS]
    (column 0: rows are packed real tokens first, and [CLS] is always kept)."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = valid.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

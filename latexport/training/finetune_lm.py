"""Fine-tuning a decoder-only language model for a pruned prompt pass.

Each step takes one span of ``prompt_tokens + scored_tokens`` tokens from the
training texts.  The prompt pass runs at keep_ratio 1 and the continuation is
scored through the decode step (teacher-forced, attending to the prompt's
cache): cross-entropy on the continuation.  With ``recipe="lat"`` the same
span also runs at the smallest ratio of the range and at ``sampled_ratios``
ratios drawn log-uniformly from it, each trained on the continuation and on
the full pass's predictions (in-place distillation, weight 0.5), the sandwich
rule ``latexport finetune`` uses for classifiers.  ``recipe="plain"`` is
ordinary language-model fine-tuning on the same spans, the reference.

``latexport finetune-lm`` runs it from the command line and
``examples/smollm2_austen.py`` measures it.  It has no resume: a run
checkpoints once, at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from latexport.export.checkpoint import load_checkpoint
from latexport.export.decoding import DecodeStep, LayerCache
from latexport.export.families import TASK_GENERATION
from latexport.export.model import LatencyAdjustableModel
from latexport.runtime.atomic import atomic_directory, check_target_free
from latexport.runtime.errors import SettingsError
from latexport.runtime.profile import EliminationProfile

RECIPES = ("lat", "plain")


@dataclass(frozen=True)
class LanguageModelSettings:
    recipe: str = "lat"
    steps: int = 300
    prompt_tokens: int = 512
    scored_tokens: int = 64
    learning_rate: float = 2e-5
    #: The prompt-pass profile's useful range: 0.1 is about 3.5x at 2,048 tokens, and lower ratios cost the
    #: continuation too much to be worth training for (graphs/README.md, long prompts).
    min_keep_ratio: float = 0.1
    sampled_ratios: int = 1
    distill_weight: float = 0.5
    #: None: the family's prompt-pass profile (``prompt_pass_profile``), the one convert uses untrained;
    #: a power: ``keep_ratio ** ((l / L) ** power)`` from the first layer.
    power: Optional[float] = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise SettingsError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.steps < 1 or self.prompt_tokens < 2 or self.scored_tokens < 1:
            raise SettingsError("steps, prompt_tokens and scored_tokens must be positive (prompt_tokens >= 2)")
        if not 0.0 < self.min_keep_ratio <= 1.0:
            raise SettingsError(f"min_keep_ratio must be in (0, 1], got {self.min_keep_ratio}")
        if self.power is not None and not 0.25 <= self.power <= 4.0:
            raise SettingsError(f"power must be in [0.25, 4], got {self.power}")

    def profile(self, family, num_layers: int) -> EliminationProfile:
        """The profile trained for, and recorded for convert."""
        if self.power is None:
            return family.default_profile(num_layers, TASK_GENERATION)
        return EliminationProfile(num_layers, power=self.power)


def continuation_logits(
    lat: LatencyAdjustableModel, step: DecodeStep, span: torch.Tensor, prompt_tokens: int, keep_ratio: float
) -> torch.Tensor:
    """[scored, vocab]: the logits that predict each continuation token of ``span`` [1, P + C]."""
    prompt, continuation = span[:, :prompt_tokens], span[:, prompt_tokens:]
    cache = LayerCache()
    result = lat(prompt, torch.ones_like(prompt), None, keep_ratio, cache=cache)
    past = cache.flat(result.cache_masks)
    positions = torch.arange(prompt_tokens, span.shape[1]).unsqueeze(0)
    step_logits, *_ = step(continuation, positions, *past)
    return torch.cat([result.output.unsqueeze(1), step_logits[:, :-1]], dim=1)[0]


def finetune_language_model(
    checkpoint: str, out_dir: Path, texts: list[str], settings: LanguageModelSettings, progress: bool = True,
    overwrite: bool = False,
) -> list[float]:
    """Fine-tune ``checkpoint`` on spans of ``texts`` and write an ordinary Hugging Face
    checkpoint (plus latexport_finetune.json, whose profile ``convert`` reuses); returns the losses."""
    out_dir = Path(out_dir)
    check_target_free(out_dir.absolute(), overwrite)
    torch.manual_seed(settings.seed)
    loaded = load_checkpoint(checkpoint, task=TASK_GENERATION)
    model = loaded.model.train()
    profile = settings.profile(loaded.family, loaded.family.layer_shape(loaded.config).num_layers)
    lat = LatencyAdjustableModel(model, loaded.family, profile, task=TASK_GENERATION)
    step = DecodeStep(model, loaded.family)
    span_length = settings.prompt_tokens + settings.scored_tokens
    documents = [ids for ids in (loaded.tokenizer.encode(text, add_special_tokens=False) for text in texts) if len(ids) > span_length]
    if not documents:
        raise SettingsError(f"no training text is longer than {span_length} tokens")
    rng = np.random.default_rng(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    losses = []
    from tqdm.auto import tqdm

    bar = tqdm(range(settings.steps), desc=f"finetune-lm ({settings.recipe})", disable=not progress)
    for _ in bar:
        ids = documents[int(rng.integers(len(documents)))]
        start = int(rng.integers(0, len(ids) - span_length))
        span = torch.tensor([ids[start : start + span_length]])
        targets = span[0, settings.prompt_tokens :]
        full = continuation_logits(lat, step, span, settings.prompt_tokens, 1.0)
        loss = torch.nn.functional.cross_entropy(full, targets)
        if settings.recipe == "lat":
            teacher = torch.softmax(full.detach(), dim=-1)
            low = math.log(settings.min_keep_ratio)
            ratios = [settings.min_keep_ratio] + [math.exp(rng.uniform(low, 0.0)) for _ in range(settings.sampled_ratios)]
            for ratio in ratios:
                pruned = continuation_logits(lat, step, span, settings.prompt_tokens, ratio)
                distill = torch.nn.functional.kl_div(torch.log_softmax(pruned, dim=-1), teacher, reduction="batchmean")
                weight = settings.distill_weight
                loss = loss + (1 - weight) * torch.nn.functional.cross_entropy(pruned, targets) + weight * distill
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    with atomic_directory(out_dir, overwrite=overwrite) as scratch:
        model.save_pretrained(scratch)
        loaded.tokenizer.save_pretrained(scratch)
        record = {"completed": True, "power": profile.power, "profile": json.loads(profile.to_json()),
                  "settings": asdict(settings), "task": TASK_GENERATION}
        (scratch / "latexport_finetune.json").write_text(json.dumps(record, indent=2))
    return losses


__all__ = ["LanguageModelSettings", "continuation_logits", "finetune_language_model"]

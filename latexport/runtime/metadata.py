"""What an exported model.onnx says about itself, in its ``metadata_props``.

The file is the single source of truth: the runtime, ``inspect`` and the
benchmarks read these keys and nothing else.  Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from latexport.runtime.estimate import FlopsModel
from latexport.runtime.profile import EliminationProfile
from latexport.runtime.scoring import ScoringRule

PREFIX = "latexport."
#: The runtime input every converted graph takes its speed from.
KEEP_RATIO_INPUT = "keep_ratio"


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """``{prefix}.{l}.key``, ``.value`` and ``.mask`` of every layer, in that order: the
    cache a decoder-only prompt pass returns ("present") and a decode step takes ("past").
    A mask is int64 [B, N_l]: 1 + the original position of each cached word-vector, 0 for an
    empty slot (files converted before sliding windows hold 1 for every real one)."""
    return [f"{prefix}.{layer}.{part}" for layer in range(num_layers) for part in ("key", "value", "mask")]


#: The second output of a text2text-generation encoder: 1 for each kept word-vector.
ENCODER_MASK_OUTPUT = "encoder_attention_mask"


@dataclass
class ModelMetadata:
    version: str
    family: str
    task: str
    profile: EliminationProfile
    flops: FlopsModel
    labels: list[str]
    input_names: list[str]
    output_name: str
    max_length: int
    vocab_size: int
    pad_token: str
    pad_token_id: int
    pooling: Optional[str] = None
    kept_positions_taps: list[str] = field(default_factory=list)
    problem_type: Optional[str] = None
    default_keep_ratio: float = 1.0
    tuning: Optional[dict] = None
    source: Optional[str] = None
    #: Graph variants applied after tracing: "fusions-cpu", "int8-dynamic", "fp16", ...
    optimizations: list[str] = field(default_factory=list)
    #: text2text-generation: the decoder graphs beside this encoder and the token ids
    #: generation needs ({"decoder": file, "decoder_with_past": file,
    #: "decoder_start_token_id": int, "eos_token_id": int, "pad_token_id": int}).
    generation: Optional[dict] = None
    #: Which word-vectors each layer keeps; files from before it was recorded used ACC over all queries.
    scoring: ScoringRule = field(default_factory=ScoringRule)

    @property
    def output_names(self) -> list[str]:
        """The graph's outputs: the task output; for an encoder-decoder also the kept mask;
        for a decoder-only prompt pass every layer's cache (key, value, mask)."""
        if self.task == "text2text-generation":
            return [self.output_name, ENCODER_MASK_OUTPUT]
        if self.task == "text-generation":
            return [self.output_name, *cache_names(self.profile.num_layers, "present")]
        return [self.output_name]

    def to_props(self) -> dict[str, str]:
        props = {
            "version": self.version,
            "family": self.family,
            "task": self.task,
            "profile": self.profile.to_json(),
            "flops": json.dumps(asdict(self.flops), sort_keys=True),
            "labels": json.dumps(self.labels),
            "input_names": json.dumps(self.input_names),
            "output_name": self.output_name,
            "max_length": str(self.max_length),
            "vocab_size": str(self.vocab_size),
            "pad_token": self.pad_token,
            "pad_token_id": str(self.pad_token_id),
            "kept_positions_taps": json.dumps(self.kept_positions_taps),
            "default_keep_ratio": repr(float(self.default_keep_ratio)),
            "scoring": self.scoring.to_json(),
        }
        if self.pooling:
            props["pooling"] = self.pooling
        if self.problem_type:
            props["problem_type"] = self.problem_type
        if self.source:
            props["source"] = self.source
        if self.optimizations:
            props["optimizations"] = json.dumps(self.optimizations)
        if self.tuning is not None:
            props["tuning"] = json.dumps(self.tuning, sort_keys=True)
        if self.generation is not None:
            props["generation"] = json.dumps(self.generation, sort_keys=True)
        return {PREFIX + key: value for key, value in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        """Parse the keys; a KeyError or ValueError means the file is not a latexport model."""
        own = {key[len(PREFIX) :]: value for key, value in props.items() if key.startswith(PREFIX)}
        return cls(
            version=own["version"],
            family=own["family"],
            task=own["task"],
            profile=EliminationProfile.from_json(own["profile"]),
            flops=FlopsModel(**json.loads(own["flops"])),
            labels=list(json.loads(own["labels"])),
            input_names=list(json.loads(own["input_names"])),
            output_name=own["output_name"],
            max_length=int(own["max_length"]),
            vocab_size=int(own["vocab_size"]),
            pad_token=own["pad_token"],
            pad_token_id=int(own["pad_token_id"]),
            pooling=own.get("pooling"),
            kept_positions_taps=list(json.loads(own.get("kept_positions_taps", "[]"))),
            problem_type=own.get("problem_type"),
            default_keep_ratio=float(own.get("default_keep_ratio", "1.0")),
            tuning=json.loads(own["tuning"]) if "tuning" in own else None,
            source=own.get("source"),
            optimizations=list(json.loads(own.get("optimizations", "[]"))),
            generation=json.loads(own["generation"]) if "generation" in own else None,
            scoring=ScoringRule.from_json(own["scoring"]) if "scoring" in own else ScoringRule(),
        )

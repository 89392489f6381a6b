"""Reading a checkpoint: how a sentence-transformers directory says it pools."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from latexport.export.checkpoint import sentence_transformers_pooling
from latexport.export.conversion import convert
from latexport.runtime.session import LatencyAdjustableSession

TEXTS = ["the film was a very long story and the ending was sad", "bad movie"]


def with_pooling(checkpoint, target, modes: dict):
    shutil.copytree(checkpoint, target)
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return target


@pytest.mark.parametrize("modes, expected", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
    ({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode_max_tokens": True}, None),
])
def test_the_pooling_a_sentence_transformers_directory_declares(checkpoints, tmp_path, modes, expected):
    source = with_pooling(checkpoints[("bert", "feature-extraction")], tmp_path / "st", modes)
    assert sentence_transformers_pooling(str(source)) == expected


def test_a_corrupt_or_missing_pooling_config_declares_nothing(checkpoints, tmp_path):
    source = checkpoints[("bert", "feature-extraction")]
    assert sentence_transformers_pooling(str(source)) is None
    broken = with_pooling(source, tmp_path / "st", {})
    (broken / "1_Pooling" / "config.json").write_text("{not json")
    assert sentence_transformers_pooling(str(broken)) is None


def test_convert_follows_the_declared_cls_pooling(checkpoints, tmp_path):
    """The file returns transformers' [CLS] state, which differs from the mean it would give otherwise."""
    source = with_pooling(checkpoints[("bert", "feature-extraction")], tmp_path / "st",
                          {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    result = convert(str(source), tmp_path / "out")
    assert result.metadata.pooling == "cls"
    session = LatencyAdjustableSession(result.out_dir)
    model, tokenizer = AutoModel.from_pretrained(str(source)).eval(), AutoTokenizer.from_pretrained(str(source))
    for text, got in zip(TEXTS, session.run(session.encode(TEXTS), 1.0)):
        with torch.no_grad():
            states = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].numpy()
        np.testing.assert_allclose(got, states[0], atol=1e-4)
        assert np.abs(got - states.mean(axis=0)).max() > 1e-2

"""The PyTorch Latency Adjustable model against transformers and against itself."""

import pytest
import torch
from tiny import FAMILIES

from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model
from latexport.export.validate import reference_output, validation_inputs


@pytest.fixture(scope="module")
def loaded_models(checkpoints):
    out = {}
    for key, path in checkpoints.items():
        loaded = load_checkpoint(str(path))
        out[key] = (loaded, build_model(loaded))
    return out


def _tensors(feed):
    return {name: torch.from_numpy(value) for name, value in feed.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_ratio_one_reproduces_transformers(loaded_models, family, task):
    loaded, lat = loaded_models[(family, task)]
    for feed in validation_inputs(loaded).values():
        expected = reference_output(loaded, feed, lat.pooling)
        tensors = _tensors(feed)
        with torch.no_grad():
            got = lat(tensors["input_ids"], tensors["attention_mask"], tensors.get("token_type_ids"), 1.0).output
        assert got.shape == expected.shape
        assert torch.max(torch.abs(got - torch.from_numpy(expected))).item() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_lower_ratios_keep_the_profile_counts(loaded_models, family):
    loaded, lat = loaded_models[(family, "text-classification")]
    feed = validation_inputs(loaded)["padded batch"]
    tensors = _tensors(feed)
    lengths = feed["attention_mask"].sum(axis=1)
    for ratio in (0.8, 0.4, 0.1):
        with torch.no_grad():
            result = lat(tensors["input_ids"], tensors["attention_mask"], tensors.get("token_type_ids"), ratio)
        for row, length in enumerate(lengths):
            counts = [int((kept[row] >= 0).sum()) for kept in result.kept_positions]
            assert counts == lat.profile.kept_counts(int(length), ratio)
            for kept in result.kept_positions:
                alive = kept[row][kept[row] >= 0].tolist()
                assert alive[0] == 0, "the [CLS] token must always be kept"
                assert alive == sorted(alive), "survivors keep their original order"
                assert max(alive) < length, "padding is never kept"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_samples_output_does_not_depend_on_its_batch(loaded_models, family):
    loaded, lat = loaded_models[(family, "text-classification")]
    feed = _tensors(validation_inputs(loaded)["padded batch"])
    for ratio in (1.0, 0.6, 0.2):
        with torch.no_grad():
            batched = lat(feed["input_ids"], feed["attention_mask"], feed.get("token_type_ids"), ratio).output
            for row in range(batched.shape[0]):
                length = int(feed["attention_mask"][row].sum())
                solo = {name: value[row : row + 1, :length] for name, value in feed.items()}
                alone = lat(solo["input_ids"], solo["attention_mask"], solo.get("token_type_ids"), ratio).output
                torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=0)


def test_lower_ratio_changes_the_output(loaded_models):
    loaded, lat = loaded_models[("bert", "feature-extraction")]
    feed = _tensors(validation_inputs(loaded)["long sequence"])
    with torch.no_grad():
        full = lat(feed["input_ids"], feed["attention_mask"], feed["token_type_ids"], 1.0).output
        pruned = lat(feed["input_ids"], feed["attention_mask"], feed["token_type_ids"], 0.2).output
    assert torch.max(torch.abs(full - pruned)).item() > 1e-2

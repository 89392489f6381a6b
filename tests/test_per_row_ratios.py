"""keep_ratio per row, and the file's default when keep_ratio is not fed.

A row's output and kept word-vectors at ratio r must be the same whether it
runs alone, in a batch where every row asks for r, or beside rows that ask for
other ratios: for every family and task, and for the int8 and fp16 variants.
Fed straight to ONNX Runtime, as a server that stacks requests would.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_padding import CASE_NAMES, OnnxRows, _cases, cls_pooled, laid_out  # noqa: F401  (cls_pooled: a fixture)

from latexport.runtime.errors import InvalidInputError
from latexport.runtime.keep_ratio_input import DEFAULT_KEY
from latexport.runtime.metadata import KEEP_RATIO_INPUT
from latexport.runtime.reprofile import reprofile
from latexport.runtime.session import LatencyAdjustableSession, check_keep_ratio
from latexport.training.evaluate import write_metadata

#: Row i asks for MIXED[i]; each ratio keeps a different number of word-vectors in the tiny models.
MIXED = (1.0, 0.1, 0.5)
ATOL = 1e-5


def assert_rows_equal(got, expected, label: str, atol: float = ATOL) -> None:
    for index, ((output, kept), (want_output, want_kept)) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(output, want_output, atol=atol, rtol=0, err_msg=f"{label}: row {index}")
        for layer, (positions, want) in enumerate(zip(kept, want_kept)):
            assert positions.tolist() == want.tolist(), f"{label}: row {index} layer {layer} kept other word-vectors"


def check_mixed_batch(onnx_rows: OnnxRows, atol: float = ATOL) -> None:
    rows = onnx_rows.rows()
    pad = onnx_rows.metadata.pad_token_id
    for layout in ("right", "left-wide"):
        feed = laid_out(rows, pad, layout)
        mixed = onnx_rows.run(feed, np.array(MIXED, dtype=np.float32))
        alone = [onnx_rows.run(laid_out([row], pad, "right"), ratio)[0] for row, ratio in zip(rows, MIXED)]
        assert_rows_equal(mixed, alone, f"{layout}, mixed against alone", atol)
        for index, ratio in enumerate(MIXED):
            uniform = onnx_rows.run(feed, ratio)
            assert_rows_equal([mixed[index]], [uniform[index]], f"{layout}, mixed against all at {ratio}", atol)
    # The ratios really differ in what they keep, so the comparison above could fail.
    kept = [len(result[1][-1]) for result in onnx_rows.run(laid_out([rows[0]] * 3, pad, "right"), np.array(MIXED, np.float32))]
    assert len(set(kept)) == len(MIXED), kept


@pytest.mark.parametrize("name", CASE_NAMES)
def test_each_row_runs_at_its_own_ratio(request, name):
    _, model_dir = _cases(request)[name]
    check_mixed_batch(OnnxRows(model_dir))


#: Dynamic int8 scales each MatMul's activations by the range of the whole batch tensor, so an int8 row's
#: output moves with its batch-mates whatever the ratios: 9.2e-3 between a row alone and in a batch all at
#: 1.0, on the tiny BERT.  Its kept word-vectors must still match exactly; fp16 has no such batch effect.
VARIANT_ATOL = {"int8": 2e-2, "fp16": ATOL}


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_each_row_runs_at_its_own_ratio_in_reduced_precision(variants, variant):
    check_mixed_batch(OnnxRows(variants[variant].out_dir), VARIANT_ATOL[variant])


def test_the_file_declares_keep_ratio_as_any_rank_with_its_default(bert_classifier):
    proto = onnx.load(str(bert_classifier / "model.onnx"))
    declared = next(value for value in proto.graph.input if value.name == KEEP_RATIO_INPUT)
    assert declared.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not declared.type.tensor_type.HasField("shape"), "a declared rank would refuse scalars or [batch]"
    default = next(tensor for tensor in proto.graph.initializer if tensor.name == KEEP_RATIO_INPUT)
    assert onnx.numpy_helper.to_array(default).tolist() == 1.0
    session = ort.InferenceSession(str(bert_classifier / "model.onnx"), providers=["CPUExecutionProvider"])
    assert KEEP_RATIO_INPUT not in [value.name for value in session.get_inputs()]
    assert [value.name for value in session.get_overridable_initializers()] == [KEEP_RATIO_INPUT]


def plain_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def token_feed(batch: int = 2, width: int = 20) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(3).integers(5, 60, size=(batch, width))
    mask = np.ones_like(ids)
    mask[1, width // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_only_token_inputs_run_at_the_tuned_default_and_reprofile_resets_it(bert_classifier, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes((bert_classifier / "model.onnx").read_bytes())
    feed = token_feed()
    at = {ratio: plain_session(path).run(None, {**feed, "keep_ratio": np.array(ratio, np.float32)})[0] for ratio in (1.0, 0.3)}
    assert np.abs(at[1.0] - at[0.3]).max() > 1e-3  # 0.3 drops enough to move the logits
    np.testing.assert_array_equal(plain_session(path).run(None, feed)[0], at[1.0])

    write_metadata(path, {"default_keep_ratio": "0.3"})
    np.testing.assert_array_equal(plain_session(path).run(None, feed)[0], at[0.3])
    # Fed, it still overrides the default.
    np.testing.assert_array_equal(plain_session(path).run(None, {**feed, "keep_ratio": np.array(1.0, np.float32)})[0], at[1.0])

    reprofile(path, 2.0)  # a new profile drops the tuned default: the file runs at 1.0 again
    props = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert DEFAULT_KEY not in props
    np.testing.assert_array_equal(plain_session(path).run(None, feed)[0], at[1.0])


def test_the_runtime_takes_one_ratio_per_row(bert_classifier):
    session = LatencyAdjustableSession(bert_classifier)
    texts = ["the film was long and the music was great", "bad movie", "a story of the actors"]
    mixed = session.predict(texts, keep_ratio=list(MIXED))
    assert mixed.keep_ratio == pytest.approx(list(MIXED))
    for index, ratio in enumerate(MIXED):
        alone = session.predict([texts[index]], keep_ratio=ratio)
        np.testing.assert_allclose(mixed.logits[index], alone.logits[0], atol=ATOL, rtol=0)
    assert session.predict(texts, keep_ratio=np.float32(0.5)).keep_ratio == 0.5


@pytest.mark.parametrize(
    "keep_ratio, message",
    [
        ([1.0, 0.5], "2 values for a batch of 3"),
        (np.ones((3, 1), np.float32), "scalar or one value per row"),
        ([1.0, 0.0, 0.5], "in (0, 1]"),
        ([1.0, float("nan"), 0.5], "finite"),
        ([1.0, True, 0.5], "numbers"),
        (np.array([1, 1, 1]), "float"),
        (np.array([], np.float32), "scalar or one value per row"),
    ],
)
def test_bad_per_row_ratios_are_refused_by_name(keep_ratio, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_keep_ratio(keep_ratio, batch=3)


def test_per_row_ratios_need_a_known_batch():
    with pytest.raises(InvalidInputError, match="batch is known"):
        check_keep_ratio([0.5, 0.7])
    assert check_keep_ratio([0.5]).shape == ()


@pytest.mark.parametrize("fixture, key", [("decoder_converted", ("llama", "text-generation")),
                                          ("t5_converted", ("t5", "text2text-generation"))])
def test_generation_runs_each_prompt_at_its_own_ratio(request, fixture, key):
    from latexport.runtime.generation import CausalGenerator, Seq2SeqGenerator

    out_dir = request.getfixturevalue(fixture)[key].out_dir
    generator = (CausalGenerator if key[1] == "text-generation" else Seq2SeqGenerator)(out_dir)
    prompts = ["the film was a very long story and the ending was sad", "bad movie with the actors"]
    ratios = [1.0, 0.1]
    mixed = generator.generate(prompts, keep_ratio=ratios, max_new_tokens=6, min_new_tokens=6)
    assert mixed.keep_ratio == pytest.approx(ratios)
    for index, ratio in enumerate(ratios):
        alone = generator.generate([prompts[index]], keep_ratio=ratio, max_new_tokens=6, min_new_tokens=6)
        assert mixed.token_ids[index] == alone.token_ids[0], f"prompt {index} at {ratio}"
        assert mixed.kept_tokens[index] == alone.kept_tokens[0]

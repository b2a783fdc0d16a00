"""One file for every width: storage, validity and parity per signature.

The per-width files are converted once per module; each `sharing` mode
merges them (cheap), and every signature is compared with the per-width
file of its rate, run by LiteRT on its own (an independent reference: the
converter's file, not the merged one).
"""

import warnings

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as litert_schema
from ai_edge_litert.interpreter import Interpreter

import keras_slicing
from keras_slicing.export import convert_to_tflite
from keras_slicing.export import signature_key
from keras_slicing.extract import extract_submodel
from keras_slicing.tflite_single_file import merge_widths
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_cnn

RATES = (1.0, 0.5, 0.25)


@pytest.fixture(scope="module")
def model():
    # Statistics shared by every width: batch norm folds into kernels that
    # are leading blocks of the full one (per-width statistics would not).
    model = small_cnn(bn_rates=None)
    randomize_weights(model)
    return model


@pytest.fixture(scope="module")
def files(model):
    return [convert_to_tflite(extract_submodel(model, rate)) for rate in RATES]


@pytest.fixture(scope="module")
def merged(files):
    keys = [signature_key(rate) for rate in RATES]
    return {
        sharing: merge_widths(files, keys, sharing)
        for sharing in ("views", "slices", "copies")
    }


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype("float32")


def _run(content, key, x):
    runner = Interpreter(model_content=content).get_signature_runner(key)
    (name,) = runner.get_input_details()
    (output,) = runner(**{name: x}).values()
    return output


def _constant_bytes(content):
    """Bytes of the file that tensors read as constants, counted once each.

    Read through the schema: inline buffer data, plus the union of the
    `offset`/`size` spans (views of one weight overlap its span).
    """
    model = litert_schema.Model.GetRootAs(content, 0)
    used = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        used.update(subgraph.Tensors(t).Buffer() for t in range(subgraph.TensorsLength()))
    inline = 0
    covered = np.zeros(len(content), dtype=bool)
    for index in used:
        buffer = model.Buffers(index)
        inline += buffer.DataLength()
        if buffer.Offset() > 1:
            covered[buffer.Offset() : buffer.Offset() + buffer.Size()] = True
    return inline + int(covered.sum())


@pytest.mark.parametrize("sharing", ["views", "slices"])
@pytest.mark.parametrize("position", range(len(RATES)))
def test_each_signature_equals_the_file_of_its_rate(
    merged, files, images, sharing, position
):
    content, _ = merged[sharing]
    want = _run(files[position], None, images)
    got = _run(content, signature_key(RATES[position]), images)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_views_change_no_computation(merged, files, images):
    # Views only move where bytes live: same kernels, same bits.
    content, _ = merged["views"]
    for rate, file in zip(RATES, files):
        np.testing.assert_array_equal(
            _run(content, signature_key(rate), images), _run(file, None, images)
        )


def _operators(content, subgraph_index):
    """(operator name, input shapes, whether each input is a constant)."""
    model = litert_schema.Model.GetRootAs(content, 0)
    names = {v: k for k, v in vars(litert_schema.BuiltinOperator).items()}
    subgraph = model.Subgraphs(subgraph_index)
    result = []
    for i in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(i)
        code = model.OperatorCodes(operator.OpcodeIndex())
        inputs = []
        for j in range(operator.InputsLength()):
            if operator.Inputs(j) < 0:
                continue
            tensor = subgraph.Tensors(operator.Inputs(j))
            buffer = model.Buffers(tensor.Buffer())
            constant = buffer.DataLength() > 0 or buffer.Offset() > 1
            inputs.append((tuple(tensor.ShapeAsNumpy()), constant))
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        result.append((names[builtin], tuple(inputs)))
    return result


def test_views_keep_each_file_s_operators_and_constant_weights(merged, files):
    # Why a view costs no time: each signature runs the operators of its
    # own file on the same shapes, every weight still a file constant (which
    # is what lets XNNPACK pack it once).
    content, _ = merged["views"]
    for position, file in enumerate(files):
        assert _operators(content, position) == _operators(file, 0)


def test_slices_store_each_weight_once(merged, files):
    content, _ = merged["slices"]
    # Besides the widest file's constants, only the slice bounds (three
    # int32 vectors per sliced tensor) are stored.
    assert _constant_bytes(content) - _constant_bytes(files[0]) < 0.01 * _constant_bytes(
        files[0]
    )


def test_copies_store_what_the_files_store(merged, files):
    content, _ = merged["copies"]
    assert _constant_bytes(content) <= sum(_constant_bytes(f) for f in files)
    assert _constant_bytes(content) > _constant_bytes(merged["views"][0])


def test_views_store_less_than_copies_and_more_than_slices(merged):
    sizes = {sharing: len(content) for sharing, (content, _) in merged.items()}
    assert sizes["slices"] < sizes["views"] < sizes["copies"]


def test_views_read_inside_the_bytes_of_the_file(merged):
    content, _ = merged["views"]
    model = litert_schema.Model.GetRootAs(content, 0)
    spans = [
        (model.Buffers(i).Offset(), model.Buffers(i).Size())
        for i in range(model.BuffersLength())
        if model.Buffers(i).Offset() > 1
    ]
    assert spans and all(offset + size <= len(content) for offset, size in spans)
    # Narrow tensors point into wider weights: some spans overlap.
    starts = [offset for offset, _ in spans]
    assert len(set(starts)) < len(starts) or any(
        a[0] < b[0] < a[0] + a[1] for a in spans for b in spans
    )


def test_litert_refuses_a_file_whose_views_point_past_its_end(merged):
    # LiteRT checks every buffer's offset and size against the file when it
    # loads it: views are valid because they pass the same check as the
    # converter's own large files, and a cut file cannot slip through.
    content, _ = merged["views"]
    truncated = content[: len(content) - 4096]
    with pytest.raises((ValueError, RuntimeError)):
        interpreter = Interpreter(model_content=truncated)
        for key in interpreter.get_signature_list():
            _run(truncated, key, np.zeros((1, 8, 8, 1), "float32"))


def test_slices_are_builtin_strided_slices(merged):
    content, reports = merged["slices"]
    names = keras_slicing.export.tflite_op_names(content)
    assert "STRIDED_SLICE" in names
    assert all(report.sliced_tensors for report in reports[1:])
    assert not reports[0].sliced_tensors


def test_unknown_sharing_is_rejected(files):
    with pytest.raises(ValueError, match="sharing='everything'"):
        merge_widths(files, ["a", "b", "c"], "everything")


@pytest.fixture(scope="module")
def int8_files(model):
    representative = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    return [
        convert_to_tflite(extract_submodel(model, rate), "int8", representative)
        for rate in (1.0, 0.5)
    ]


def test_int8_signatures_equal_their_files_bit_for_bit(int8_files, images):
    keys = [signature_key(rate) for rate in (1.0, 0.5)]
    content, _ = merge_widths(int8_files, keys, "views")
    for key, file in zip(keys, int8_files):
        np.testing.assert_array_equal(_run(content, key, images), _run(file, None, images))


def test_export_writes_one_file_with_a_signature_per_rate(model, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = keras_slicing.export_tflite(
            model, tmp_path / "bundle", rates=(1.0, 0.5),
            output_kind="multiclass_logits", single_file=True, sharing="slices",
        )
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "manifest.json", "model.tflite",
    ]
    assert manifest["format_version"] == 3
    assert [e["signature"] for e in manifest["rates"]] == ["rate_1", "rate_0.5"]
    content = (tmp_path / "bundle" / "model.tflite").read_bytes()
    assert sorted(Interpreter(model_content=content).get_signature_list()) == [
        "rate_0.5", "rate_1",
    ]
    # The slices trade speed for size, and the export says so.
    assert any("slower" in str(w.message) for w in caught)


def test_sharing_without_single_file_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="single_file=False"):
        keras_slicing.export_tflite(
            model, tmp_path / "b", output_kind="multiclass_logits", sharing="slices"
        )


def test_widths_of_a_model_with_joins_merge_into_signatures_equal_to_their_files(images):
    L = keras_slicing.layers
    x = keras.Input((8, 8, 1))
    r = keras_slicing.rate_input()
    a = L.SlicedConv2D(16, 3, padding="same", slice_input=False)(x, r)
    b = L.SlicedConv2D(8, 1, slice_input=False)(x, r)
    h = L.SlicedConcatenate()([a, b], r)
    h = L.SlicedConcatenate()([h, L.SlicedConv2D(8, 1)(h, r)], r)
    y = L.SlicedDense(4, slice_output=False)(keras.layers.GlobalAveragePooling2D()(h), r)
    joined = keras.Model([x, r], y)
    randomize_weights(joined)
    files = [convert_to_tflite(extract_submodel(joined, rate)) for rate in RATES]
    keys = [signature_key(rate) for rate in RATES]
    views, _ = merge_widths(files, keys, "views")
    copies, _ = merge_widths(files, keys, "copies")
    assert _constant_bytes(views) < _constant_bytes(copies)
    for key, file in zip(keys, files):
        np.testing.assert_array_equal(_run(views, key, images), _run(file, None, images))

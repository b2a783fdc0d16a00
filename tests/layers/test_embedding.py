import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing.layers import SlicedEmbedding
from tests.layers import harness

IDS = np.array([[0, 3, 9, 3], [5, 1, 2, 8]])


def _layer():
    layer = SlicedEmbedding(10, 16, slice_groups=4, embeddings_initializer="random_normal")
    layer.build()
    return layer


CASE = harness.LayerCase(_layer, lambda rate: (IDS,), keras.layers.Embedding)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


@pytest.mark.parametrize("rate, width", [(1.0, 16), (0.75, 12), (0.5, 8), (0.25, 4)])
def test_rate_looks_up_the_first_columns_of_the_table(rate, width):
    layer = _layer()
    table = layer.get_weights()[0]
    np.testing.assert_array_equal(layer(IDS, rate), table[IDS][..., :width])


def test_extracted_width_is_a_plain_embedding():
    ids = keras.Input((4,), dtype="int32")
    rate = keras_slicing.rate_input()
    y = SlicedEmbedding(10, 16, slice_groups=4)(ids, rate)
    model = keras.Model([ids, rate], y)
    half = keras_slicing.extract_submodel(model, 0.5)
    assert type(half.layers[1]) is keras.layers.Embedding
    assert half.layers[1].output_dim == 8
    np.testing.assert_array_equal(half(IDS), model([IDS, np.full(2, 0.5, "float32")]))
    assert keras_slicing.model_cost(model, 0.5) == {"params": 80, "macs": 0}


def test_embedding_reads_ids_so_its_input_is_not_sliced():
    layer = SlicedEmbedding(10, 16)
    assert layer.slice_input is False and layer.narrows_channels


def test_output_dim_not_divisible_is_rejected():
    with pytest.raises(ValueError, match=r"output_dim=10 is not divisible by slice_groups=4"):
        SlicedEmbedding(20, 10, slice_groups=4)


def test_lora_is_rejected():
    with pytest.raises(ValueError, match="lora_rank"):
        SlicedEmbedding(20, 16, lora_rank=2)

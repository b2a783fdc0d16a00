from keras_slicing.layers.batch_normalization import SlicedBatchNormalization
from keras_slicing.layers.concatenate import SlicedConcatenate
from keras_slicing.layers.conv1d import SlicedConv1D
from keras_slicing.layers.conv2d import SlicedConv2D
from keras_slicing.layers.dense import SlicedDense
from keras_slicing.layers.depthwise_conv2d import SlicedDepthwiseConv2D
from keras_slicing.layers.embedding import SlicedEmbedding
from keras_slicing.layers.flatten import SlicedFlatten
from keras_slicing.layers.group_normalization import SlicedGroupNormalization
from keras_slicing.layers.gru import SlicedGRU
from keras_slicing.layers.layer_normalization import SlicedLayerNormalization
from keras_slicing.layers.layer_scale import SlicedLayerScale
from keras_slicing.layers.lstm import SlicedLSTM
from keras_slicing.layers.multi_head_attention import SlicedMultiHeadAttention
from keras_slicing.layers.separable_conv1d import SlicedSeparableConv1D
from keras_slicing.layers.separable_conv2d import SlicedSeparableConv2D

__all__ = [
    "SlicedBatchNormalization",
    "SlicedConcatenate",
    "SlicedConv1D",
    "SlicedConv2D",
    "SlicedDense",
    "SlicedDepthwiseConv2D",
    "SlicedEmbedding",
    "SlicedFlatten",
    "SlicedGRU",
    "SlicedGroupNormalization",
    "SlicedLSTM",
    "SlicedLayerNormalization",
    "SlicedLayerScale",
    "SlicedMultiHeadAttention",
    "SlicedSeparableConv1D",
    "SlicedSeparableConv2D",
]

import keras
from keras import ops

from keras_slicing.layers.recurrent import SlicedRecurrentMixin
from keras_slicing.layers.recurrent import gate_block


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedLSTM(SlicedRecurrentMixin, keras.layers.LSTM):
    """An `LSTM` layer that runs only the active slice of its hidden units.

    The units are split into `slice_groups` contiguous groups; at rate `r`
    the first `ceil(r * slice_groups)` groups are active. All four gates
    (input, forget, cell, output) keep the same active units: the layer
    multiplies by those columns of every gate block of the kernel, by the
    matching rows and columns of the recurrent kernel, and reads as many
    input features as its input has. Hidden and cell states have the active
    width. A narrow width equals the full layer whose inactive units are held
    at zero at every time step, and costs `r^2` of its full MACs.

    Args:
        units: Positive integer, full number of hidden units.
        slice_groups: Number of contiguous groups the units are split into.
            `units` must be divisible by it when `slice_output=True`.
            Defaults to `8`.
        slice_input: Whether the input may have fewer features than at build
            time (it comes from a sliced layer). Defaults to `True`.
        slice_output: Whether the hidden units are sliced. Defaults to
            `True`.
        **kwargs: All other arguments of `keras.layers.LSTM`, including
            `return_sequences`, `return_state` and `go_backwards`. Not
            supported: `dropout`, `recurrent_dropout` (use `Dropout` layers
            between layers), `stateful=True`, and masked inputs. `unroll`
            and `use_cudnn` are ignored: the layer runs its own loop
            (`keras.ops.scan`).

    Call arguments:
        sequences: A `(batch, time, features)` tensor holding the active
            input features.
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            full width.
        initial_state: Optional `[h, c]`, each `(batch, active units)`.
        training: Unused (no dropout); accepted as Keras passes it.

    Example:

    >>> layer = SlicedLSTM(32, return_sequences=True, slice_input=False)
    >>> layer(np.ones((2, 5, 3)), 0.5).shape
    TensorShape([2, 5, 16])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing
      (sliced LSTM language models).
    - [Hochreiter & Schmidhuber, 1997](
      https://www.bioinf.jku.at/publications/older/2604.pdf), Long
      Short-Term Memory.
    """

    _num_gates = 4
    _plain_class = keras.layers.LSTM

    def __init__(self, units, slice_groups=8, slice_input=True,
                 slice_output=True, **kwargs):
        super().__init__(units, **kwargs)
        self._init_recurrent(slice_groups, slice_input, slice_output)

    def _recurrence(self, inputs, recurrent, n):
        cell = self.cell
        if cell.use_bias:
            inputs = ops.add(inputs, gate_block(cell.bias, None, n, 4))
        activation = cell.activation
        gate = cell.recurrent_activation

        def step(carry, projected):
            h, c = carry
            z = ops.add(projected, ops.matmul(h, recurrent))
            z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
            c = gate(z_f) * c + gate(z_i) * activation(z_c)
            h = gate(z_o) * activation(c)
            return (h, c), (h, c)

        return inputs, step

import keras
from keras import ops

from keras_slicing.layers.recurrent import SlicedRecurrentMixin
from keras_slicing.layers.recurrent import gate_block


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedGRU(SlicedRecurrentMixin, keras.layers.GRU):
    """A `GRU` layer that runs only the active slice of its hidden units.

    The units are split into `slice_groups` contiguous groups; at rate `r`
    the first `ceil(r * slice_groups)` groups are active. The update, reset
    and candidate gates keep the same active units: the layer multiplies by
    those columns of every gate block of the kernel, by the matching rows
    and columns of the recurrent kernel, and reads as many input features as
    its input has. The state has the active width. A narrow width equals the
    full layer whose inactive units are held at zero at every time step, and
    costs `r^2` of its full MACs.

    Args:
        units: Positive integer, full number of hidden units.
        slice_groups: Number of contiguous groups the units are split into.
            `units` must be divisible by it when `slice_output=True`.
            Defaults to `8`.
        slice_input: Whether the input may have fewer features than at build
            time (it comes from a sliced layer). Defaults to `True`.
        slice_output: Whether the hidden units are sliced. Defaults to
            `True`.
        **kwargs: All other arguments of `keras.layers.GRU`, including
            `reset_after`, `return_sequences`, `return_state` and
            `go_backwards`. Not supported: `dropout`, `recurrent_dropout`
            (use `Dropout` layers between layers), `stateful=True`, and
            masked inputs. `unroll` and `use_cudnn` are ignored: the layer
            runs its own loop (`keras.ops.scan`).

    Call arguments:
        sequences: A `(batch, time, features)` tensor holding the active
            input features.
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            full width.
        initial_state: Optional state `(batch, active units)`.
        training: Unused (no dropout); accepted as Keras passes it.

    Example:

    >>> layer = SlicedGRU(32, slice_input=False)
    >>> layer(np.ones((2, 5, 3)), 0.25).shape
    TensorShape([2, 8])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Cho et al., 2014](https://arxiv.org/abs/1406.1078), gated recurrent
      units.
    """

    _num_gates = 3
    _plain_class = keras.layers.GRU

    def __init__(self, units, slice_groups=8, slice_input=True,
                 slice_output=True, **kwargs):
        super().__init__(units, **kwargs)
        self._init_recurrent(slice_groups, slice_input, slice_output)

    def _recurrence(self, inputs, recurrent, n):
        cell = self.cell
        recurrent_bias = None
        if cell.use_bias:
            bias = gate_block(cell.bias, None, n, 3)
            if cell.reset_after:  # rows: input bias, recurrent bias
                bias, recurrent_bias = bias[0], bias[1]
            inputs = ops.add(inputs, bias)
        activation = cell.activation
        gate = cell.recurrent_activation
        u_z, u_r, u_h = ops.split(recurrent, 3, axis=-1)
        u_zr = ops.concatenate([u_z, u_r], axis=-1)

        def step(carry, projected):
            (h,) = carry
            x_z, x_r, x_h = ops.split(projected, 3, axis=-1)
            if cell.reset_after:
                inner = ops.matmul(h, recurrent)
                if recurrent_bias is not None:
                    inner = ops.add(inner, recurrent_bias)
                r_z, r_r, r_h = ops.split(inner, 3, axis=-1)
                z = gate(x_z + r_z)
                r = gate(x_r + r_r)
                candidate = activation(x_h + r * r_h)
            else:
                r_z, r_r = ops.split(ops.matmul(h, u_zr), 2, axis=-1)
                z = gate(x_z + r_z)
                r = gate(x_r + r_r)
                candidate = activation(x_h + ops.matmul(r * h, u_h))
            h = z * h + (1 - z) * candidate
            return (h,), (h,)

        return inputs, step

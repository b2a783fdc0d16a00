"""What the sliced recurrent layers (LSTM, GRU) share.

A gated layer's kernels hold one block of `units` columns per gate, side by
side. Slicing keeps, in every gate block, the columns of the active units
(and, in the recurrent kernel, their rows too), so every gate is sliced the
same way. The recurrence is run with `keras.ops.scan` over the time axis,
after one matrix product projects all time steps of the input at once.
"""

import keras
from keras import ops

from keras_slicing import backend
from keras_slicing import rates as rates_lib
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import is_static_int
from keras_slicing.layers.base import leading_block
from keras_slicing.layers.base import plain_config


def gate_block(tensor, rows, n, gates):
    """The active part of a gate-blocked kernel or bias.

    `tensor` is `(R, gates * units)` or `(gates * units,)`; returns the first
    `rows` rows (`None`: all) and, of every gate's block, its first `n`
    columns, again side by side: `(rows, gates * n)` or `(gates * n,)`.
    """
    units = tensor.shape[-1] // gates
    if rows is None and is_static_int(n, units):
        return tensor
    lead = list(tensor.shape[:-1])
    blocks = ops.reshape(tensor, (*lead, gates, units))
    blocks = leading_block(blocks, [rows] * len(lead) + [None, n])
    return ops.reshape(blocks, (-1, gates * n) if lead else (-1,))


class SlicedRecurrentMixin(SlicedLayerMixin):
    """Slicing of a gated recurrent layer; subclasses give the cell's step.

    Subclasses set `_num_gates` and `_plain_class` and implement
    `_recurrence(inputs, recurrent_kernel, n)`, which returns the projected
    inputs (bias added) and `step(carry, inputs_t) -> (carry, carry)`.
    """

    _num_gates = None
    _plain_class = None

    def _init_recurrent(self, slice_groups, slice_input, slice_output):
        self._init_slicing(slice_groups)
        owner = type(self).__name__
        for arg in ("dropout", "recurrent_dropout"):
            if getattr(self, arg):
                raise ValueError(
                    f"{owner} does not support {arg} (a sliced layer would "
                    "need dropout masks of every width). Use a Dropout layer "
                    f"between layers instead. Received: {arg}="
                    f"{getattr(self, arg)}"
                )
        if self.stateful:
            raise ValueError(
                f"{owner} does not support stateful=True: the kept state "
                "would have one width while the rate may change between "
                "calls. Pass the state with initial_state= and "
                "return_state=True instead."
            )
        self.slice_input = bool(slice_input)
        self.slice_output = bool(slice_output)
        if self.slice_output:
            self._check_divisible(self.units, "units")

    def _active_units(self, rate):
        groups = self._groups(rate)
        if not self.slice_output or is_static_int(groups, self.slice_groups):
            return self.units
        return groups * (self.units // self.slice_groups)

    def _static_units(self, rate):
        if not self.slice_output:
            return self.units
        return rates_lib.active_width(self.units, rate, self.slice_groups)

    def call(self, sequences, initial_state=None, mask=None, training=False,
             rate=None):
        self._check_no_mask(mask)
        n = self._active_units(rate)
        cell = self.cell
        n_in = backend.dim(sequences, -1)
        if is_static_int(n_in, cell.kernel.shape[0]):
            n_in = None
        gates = self._num_gates
        kernel = gate_block(cell.kernel, n_in, n, gates)
        rows = None if is_static_int(n, self.units) else n
        recurrent = gate_block(cell.recurrent_kernel, rows, n, gates)
        x = ops.cast(sequences, cell.compute_dtype)
        if self.go_backwards:
            x = ops.flip(x, axis=1)
        inputs, step = self._recurrence(ops.matmul(x, kernel), recurrent, n)
        if initial_state is None:
            zeros = ops.zeros((ops.shape(x)[0], n), dtype=cell.compute_dtype)
            initial_state = [zeros] * len(self.state_size)
        elif not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        carry = tuple(ops.cast(s, cell.compute_dtype) for s in initial_state)
        # Time major for the scan; the time length may be unknown.
        carry, history = ops.scan(step, carry, ops.transpose(inputs, (1, 0, 2)))
        if self.return_sequences:
            output = ops.transpose(history[0], (1, 0, 2))
        else:
            output = carry[0]
        output = ops.cast(output, self.compute_dtype)
        if self.return_state:
            return (output, *(ops.cast(s, self.compute_dtype) for s in carry))
        return output

    def _check_no_mask(self, mask):
        if mask is not None:
            raise ValueError(
                f"{self._owner()}: masked time steps are not supported. "
                "Feed sequences without a mask (e.g. an Embedding with "
                "mask_zero=False)."
            )

    def compute_output_spec(self, sequences, initial_state=None, mask=None,
                            training=False, rate=None):
        self._check_no_mask(mask)
        width = self.units
        static = self._static_rate(rate)
        if static is not None:
            width = self._static_units(static)
        batch, length = sequences.shape[0], sequences.shape[1]
        shape = (batch, length, width) if self.return_sequences else (batch, width)
        output = keras.KerasTensor(shape, dtype=self.compute_dtype)
        if self.return_state:
            states = [
                keras.KerasTensor((batch, width), dtype=self.compute_dtype)
                for _ in self.state_size
            ]
            return (output, *states)
        return output

    def plain_layer(self, rate, input_shapes, name):
        """The standard Keras layer of the width of `rate`, and its weights."""
        n = self._static_units(rate)
        n_in = input_shapes[0][-1]
        config = plain_config(self, name)
        config["units"] = n
        # Keras' looped LSTM/GRU needs Flex ops in TFLite when the batch is
        # unknown; unrolled over a static time length it converts to
        # builtins and computes the same.
        config["unroll"] = input_shapes[0][1] is not None
        cell = self.cell
        gates = self._num_gates
        weights = [
            gate_block(cell.kernel, n_in, n, gates),
            gate_block(cell.recurrent_kernel, n, n, gates),
        ]
        if cell.use_bias:
            weights.append(gate_block(cell.bias, None, n, gates))
        weights = [ops.convert_to_numpy(w) for w in weights]
        return self._plain_class.from_config(config), weights

    def active_cost(self, rate, input_shapes, output_shapes):
        """Parameters and per-example MACs of the two kernels, every step."""
        sequence = input_shapes[0]
        n_in, steps = sequence[-1], sequence[1]
        if steps is None:
            raise ValueError(
                f"model_cost: {self._owner()} reads sequences of unknown "
                "length, so its cost per example is not fixed. Give the "
                "model input a time length, e.g. keras.Input((T, features))."
            )
        n = output_shapes[0][-1]
        gates = self._num_gates
        weights = gates * n * (n_in + n)
        bias = 0
        if self.cell.use_bias:
            shape = self.cell.bias.shape  # (2, 3 * units) for a reset-after GRU
            bias = (shape[0] if len(shape) == 2 else 1) * gates * n
        return weights + bias, steps * weights

    def get_config(self):
        return {
            **super().get_config(),
            "slice_groups": self.slice_groups,
            "slice_input": self.slice_input,
            "slice_output": self.slice_output,
        }

"""Cutting one width out of a sliced model as a plain Keras model."""

import keras

from keras_slicing import checks
from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib
from keras_slicing import widths
from keras_slicing.layers.flatten import SlicedFlatten


def extract_submodel(model, rate):
    """Builds the plain Keras model that `model` computes at `rate`.

    The functional graph of `model` is replayed with the rate bound to a
    Python float. Every sliced layer becomes the standard Keras layer of its
    active width, the one its `plain_layer` returns (`Dense`, `Conv2D`,
    `GroupNormalization` with `active_channels / channels_per_group` groups,
    `BatchNormalization` holding that rate's moving statistics, `LSTM`, ...)
    with copies of exactly the active weights; `SlicedFlatten` becomes
    `Permute` + `Flatten`; every other layer is cloned from its config with
    copied weights. The result takes the data inputs alone, computes the
    same outputs as `model` at `rate`, and shares no variable with it: it can
    be saved, fine-tuned or converted without `keras_slicing`.

    The model is first checked by `keras_slicing.check_model` (sliced
    outputs allowed: a narrow feature extractor is a valid cut), so a graph
    whose narrow widths are not sub-networks of the full one (e.g. a
    `Concatenate` with a sliced input before the last) is refused whatever
    the rate.

    Args:
        model: A functional `keras.Model` whose inputs include the rate
            (`keras_slicing.rate_input()`), e.g. a `SlicingModel` or
            `keras.Model([x, rate], y)` built from sliced layers.
        rate: The slice rate in (0, 1], or a width configuration (a
            `keras_slicing.WidthConfig` or a dict `{group: rate}`, see
            `keras_slicing.width_groups`): each group at its own width.

    Returns:
        A functional `keras.Model` of the data inputs, named
        `"{model.name}_rate_{rate}"` (for a configuration, its groups'
        rates joined by `_`).

    Example:

    >>> x = keras.Input((8,))
    >>> r = keras_slicing.rate_input()
    >>> h = keras_slicing.layers.SlicedDense(16, slice_input=False)(x, r)
    >>> y = keras_slicing.layers.SlicedDense(2, slice_output=False)(h, r)
    >>> half = extract_submodel(keras.Model([x, r], y), 0.5)
    >>> [layer.units for layer in half.layers[1:]]
    [8, 2]

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """
    rate = widths.resolve(model, rate, "extract_submodel")
    data = graph.data_inputs(model)  # also rejects a non-functional model
    checks.check_model(model, allow_sliced_outputs=True)
    if not data:
        raise ValueError(
            f"extract_submodel: model '{model.name}' has no data input besides "
            "the slice rate."
        )
    inputs = [
        keras.Input(
            shape=tuple(x.shape[1:]),
            batch_size=x.shape[0],
            dtype=x.dtype,
            sparse=x.sparse,
            name=x.name,
        )
        for x in data
    ]
    builder = _Builder(rate)
    outputs = graph.replay(model, rate, builder, inputs=inputs)
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs,
        name=f"{model.name}_rate_{graph.describe_rate(rate)}",
    )


class _Builder:
    """The `call_fn` of `graph.replay`: one standard layer per sliced node."""

    def __init__(self, rate):
        self.rate = rate
        self.clones = {}
        self.uses = {}

    def __call__(self, layer, *args, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            return layer(*args, **kwargs)  # a stateless keras.ops operation
        try:
            if isinstance(layer, keras.Model):
                return self._nested(layer, args, kwargs)
            if graph.is_sliced(layer):
                return self._sliced(layer, args, kwargs)
            if isinstance(layer, SlicedFlatten):
                return self._flatten(layer, args[0])
            return self._plain(layer, args, kwargs)
        except _CarryError:
            raise
        except Exception as error:
            raise _CarryError(
                f"extract_submodel: cannot carry layer '{layer.name}' "
                f"({type(layer).__name__}) at rate "
                f"{graph.describe_rate(self.rate)}: {error}"
            ) from error

    def _sliced(self, layer, args, kwargs):
        kwargs = dict(kwargs)
        rate = kwargs.pop("rate", None)
        if rate is None:
            rate = 1.0
        if rates_lib.static_rate(rate) is not None:
            rate = float(rate)
        else:
            raise _CarryError(
                f"extract_submodel: the rate of layer '{layer.name}' "
                f"({type(layer).__name__}) is computed inside the model "
                "rather than taken from a rate input, so it has no fixed "
                f"value. Received: rate={rate!r}"
            )
        shapes = [
            tuple(t.shape) for t in keras.tree.flatten((args, kwargs))
            if isinstance(t, keras.KerasTensor)
        ]
        key = (id(layer), tuple(shapes))
        if key not in self.clones:
            self.clones[key] = layer.plain_layer(rate, shapes, self._name(layer))
        standard, weights = self.clones[key]
        outputs = standard(*args, **kwargs)
        if weights is not None:  # the first call built the variables
            standard.set_weights(weights)
            self.clones[key] = (standard, None)
        return outputs

    def _flatten(self, layer, x):
        key = (id(layer), tuple(x.shape))
        if key not in self.clones:
            rank = len(x.shape)
            name = self._name(layer)
            steps = []
            if rank > 2:
                # Channels first, as SlicedFlatten orders its features.
                steps.append(
                    keras.layers.Permute(
                        (rank - 1, *range(1, rank - 1)),
                        name=f"{name}_channels_first",
                    )
                )
            steps.append(
                keras.layers.Flatten(data_format="channels_last", name=name)
            )
            self.clones[key] = (steps, None)
        for step in self.clones[key][0]:
            x = step(x)
        return x

    def _plain(self, layer, args, kwargs):
        key = id(layer)
        if key in self.clones:
            return self.clones[key][0](*args, **kwargs)
        if isinstance(layer, keras.layers.Lambda):
            # A Lambda holds code, not weights; re-creating it from its config
            # would need unsafe deserialization.
            clone = layer
        else:
            clone = type(layer).from_config(layer.get_config())
        outputs = clone(*args, **kwargs)
        if clone is not layer:
            _copy_weights(layer, clone, self.rate)
        self.clones[key] = (clone, None)
        return outputs

    def _nested(self, layer, args, kwargs):
        if not any(
            graph.is_sliced(inner)
            for inner in keras_internals.all_sublayers(layer)
        ):
            key = id(layer)
            if key not in self.clones:
                clone = keras.models.clone_model(layer)
                clone.set_weights(layer.get_weights())
                self.clones[key] = (clone, None)
            return self.clones[key][0](*args, **kwargs)
        if not graph.is_functional(layer):
            raise _CarryError(
                f"extract_submodel: nested model '{layer.name}' "
                f"({type(layer).__name__}) holds sliced layers but is not "
                "functional, so its graph cannot be replayed. Build it with "
                "the functional API."
            )
        tensors = [
            t for t in keras.tree.flatten((args, kwargs))
            if isinstance(t, keras.KerasTensor)
        ]
        return graph.replay(layer, self.rate, self, inputs=tensors)

    def _name(self, layer):
        count = self.uses.get(id(layer), 0)
        self.uses[id(layer)] = count + 1
        return layer.name if count == 0 else f"{layer.name}_{count}"


class _CarryError(ValueError):
    pass


def _copy_weights(layer, clone, rate):
    source = layer.get_weights()
    target = clone.get_weights()
    for have, want in zip(source, target):
        if have.shape != want.shape:
            raise _CarryError(
                f"extract_submodel: layer '{layer.name}' "
                f"({type(layer).__name__}) holds weights of shape "
                f"{have.shape} but at rate {graph.describe_rate(rate)} its "
                f"input gives shape {want.shape}: a plain layer with weights "
                "cannot read a sliced tensor. Use its sliced version from "
                "keras_slicing.layers, or set slice_output=False on the "
                "sliced layer before it."
            )
    clone.set_weights(source)

"""Cutting one width out of a sliced model as a plain Keras model."""

import keras
import numpy as np

from keras_slicing import calibration
from keras_slicing import checks
from keras_slicing import cut_orders
from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import plain_calibration
from keras_slicing import rates as rates_lib
from keras_slicing import widths
from keras_slicing.layers.base import affine_values
from keras_slicing.layers.base import plain_config
from keras_slicing.layers.batch_normalization import SlicedBatchNormalization
from keras_slicing.layers.concatenate import SlicedConcatenate
from keras_slicing.layers.flatten import SlicedFlatten


def extract_submodel(model, rate, calibration_data=None, batch_size=256):
    """Builds the plain Keras model that `model` computes at `rate`.

    The functional graph of `model` is replayed with the rate bound to a
    Python float. Every sliced layer becomes the standard Keras layer of its
    active width, the one its `plain_layer` returns (`Dense`, `Conv2D`,
    `GroupNormalization` with `active_channels / channels_per_group` groups,
    `BatchNormalization` holding that rate's moving statistics, `LSTM`, ...)
    with copies of exactly the active weights; `SlicedFlatten` becomes
    `Permute` + `Flatten`; `SlicedConcatenate` becomes a plain
    `Concatenate`, its interleaving taken into the weights of the layers
    reading it (`keras_slicing.cut_orders`) or, for any other reader,
    undone by one gather; every other layer is cloned from its config with
    copied weights. The result takes the data inputs alone, computes the
    same outputs as `model` at `rate`, and shares no variable with it: it can
    be saved, fine-tuned or converted without `keras_slicing`.

    The model is first checked by `keras_slicing.check_model` (sliced
    outputs allowed: a narrow feature extractor is a valid cut), so a graph
    whose narrow widths are not sub-networks of the full one (e.g. a
    `Concatenate` with a sliced input before the last) is refused whatever
    the rate. A width whose batch-norm statistics were not computed for the
    current weights (`SlicedBatchNormalization.stale_rates`, e.g. after
    `fit(..., calibrate_batchnorm=False)`) is refused too: run
    `keras_slicing.calibrate_batchnorm` first.

    A model with `SlicedBatchNormalization` keeps statistics per uniform
    rate only, so a mixed configuration (groups at unequal shares of their
    width) needs `calibration_data` (so does a uniform one of a rate that
    some batch-norm layer does not declare): the configuration is cut out, then
    every `BatchNormalization` of the cut model gets as moving mean and
    variance the exact moments of its input over the data, pooled over
    the batches as `keras_slicing.calibrate_batchnorm` pools them (each
    layer normalizing with batch statistics, as in training). Without
    it, such a configuration is refused.

    Args:
        model: A functional `keras.Model` whose inputs include the rate
            (`keras_slicing.rate_input()`), e.g. a `SlicingModel` or
            `keras.Model([x, rate], y)` built from sliced layers.
        rate: The slice rate in (0, 1], or a width configuration (a
            `keras_slicing.WidthConfig` or a dict `{group: rate}`, see
            `keras_slicing.width_groups`): each group at its own width.
        calibration_data: Training inputs that recompute the batch-norm
            statistics of a mixed configuration, in any form
            `keras_slicing.calibrate_batchnorm` reads (an array, `(x, y)`,
            or an iterable of batches); read once. Unused by a rate, a
            uniform configuration of declared rates (their statistics are
            the model's), or a model without `SlicedBatchNormalization`. A
            few thousand examples suffice.
        batch_size: Batch size of array `calibration_data`. Defaults to
            `256`.

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
    owner = "extract_submodel"
    recalibrate = False
    if widths.is_config(rate) and calibration_data is not None:
        analysis = widths.analyze(model)
        by_group = widths.group_rates(model, rate, owner, analysis, False)
        resolved = widths.resolve(model, rate, owner, analysis, False)
        recalibrate = bool(analysis.batch_norms) and (
            widths.is_mixed(analysis, by_group) or _undeclared(model, resolved)
        )
    rate = widths.resolve(model, rate, owner, uses_statistics=not recalibrate)
    data = graph.data_inputs(model)  # also rejects a non-functional model
    checks.check_model(model, allow_sliced_outputs=True)
    if not recalibrate:
        calibration.refuse_stale(model, [rate], owner)
    if not data:
        raise ValueError(
            f"extract_submodel: model '{model.name}' has no data input besides "
            "the slice rate."
        )
    plain = _cut(model, rate, statistics=not recalibrate)
    if recalibrate:
        plain_calibration.recalibrate(plain, calibration_data, batch_size, owner)
    return plain


def cut_trainable_weights(model, rate):
    """The trainable weights of `model`'s width `rate` cut as by `extract_submodel`.

    As numpy arrays, the trainable weights of the plain model
    `extract_submodel(model, rate)` would return, without its checks (of
    the graph and of stale statistics): for a model mid-training whose
    graph a `SlicingModel` already checked.
    """
    plain = _cut(model, rate, statistics=True)
    return [keras.ops.convert_to_numpy(w) for w in plain.trainable_weights]


def _cut(model, rate, statistics):
    """The plain model of `model` at `rate`, unchecked (see `extract_submodel`)."""
    inputs = [
        keras.Input(
            shape=tuple(x.shape[1:]),
            batch_size=x.shape[0],
            dtype=x.dtype,
            sparse=x.sparse,
            name=x.name,
        )
        for x in graph.data_inputs(model)
    ]
    builder = _Builder(rate, statistics=statistics)
    outputs = builder.orders.restored(graph.replay(model, rate, builder, inputs=inputs))
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs,
        name=f"{model.name}_rate_{graph.describe_rate(rate)}",
    )


class _Builder:
    """The `call_fn` of `graph.replay`: one standard layer per sliced node."""

    def __init__(self, rate, statistics=True):
        self.rate = rate
        self.statistics = statistics
        self.clones = {}
        self.uses = {}
        # Channel orders of tensors after native concatenations.
        self.orders = cut_orders.Orders()

    def __call__(self, layer, *args, **kwargs):
        tensors = [
            t for t in keras.tree.flatten((args, kwargs))
            if isinstance(t, keras.KerasTensor) and t is not kwargs.get("rate")
        ]
        if cut_orders.carries(layer, tensors):
            order = self.orders.of(tensors[0])
            return self.orders.set(self._call(layer, args, kwargs), order)
        if isinstance(layer, SlicedConcatenate):
            return self._join(layer, args, kwargs)
        if not cut_orders.absorbs(layer, tensors):
            args, kwargs = self.orders.restored((args, kwargs))
        return self._call(layer, args, kwargs)

    def _call(self, layer, args, kwargs):
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

    def _static_rate(self, layer, kwargs):
        rate = kwargs.pop("rate", None)
        if rate is None:
            return 1.0
        if rates_lib.static_rate(rate) is not None:
            return float(rate)
        raise _CarryError(
            f"extract_submodel: the rate of layer '{layer.name}' "
            f"({type(layer).__name__}) is computed inside the model "
            "rather than taken from a rate input, so it has no fixed "
            f"value. Received: rate={rate!r}"
        )

    def _sliced(self, layer, args, kwargs):
        kwargs = dict(kwargs)
        rate = self._static_rate(layer, kwargs)
        tensors = [
            t for t in keras.tree.flatten((args, kwargs))
            if isinstance(t, keras.KerasTensor)
        ]
        shapes = [tuple(t.shape) for t in tensors]
        # A tensor of a native concatenation: its order goes into the weights.
        order = self.orders.of(tensors[0]) if len(tensors) == 1 else None
        key = (id(layer), tuple(shapes), None if order is None else order.tobytes())
        if key not in self.clones:
            if self.statistics or not isinstance(layer, SlicedBatchNormalization):
                standard, weights = layer.plain_layer(rate, shapes, self._name(layer))
            else:
                standard, weights = _uncalibrated(layer, shapes, self._name(layer))
            if order is not None:
                weights = cut_orders.absorbed(layer, weights, order)
            self.clones[key] = (standard, weights)
        standard, weights = self.clones[key]
        outputs = standard(*args, **kwargs)
        if weights is not None:  # the first call built the variables
            standard.set_weights(weights)
            self.clones[key] = (standard, None)
        if order is not None:
            self.orders.set(outputs, cut_orders.followed(layer, order))
        return outputs

    def _join(self, layer, args, kwargs):
        """A `SlicedConcatenate` as a native `Concatenate`, its order recorded."""
        kwargs = dict(kwargs)
        groups = rates_lib.active_groups(self._static_rate(layer, kwargs), layer.slice_groups)
        tensors = list(args[0] if args else kwargs["inputs"])
        key = id(layer)
        if key not in self.clones:
            name = self._name(layer)
            self.clones[key] = (keras.layers.Concatenate(name=name), None)
        outputs = self.clones[key][0](tensors)
        order = cut_orders.join_order(
            [t.shape[-1] for t in tensors], [self.orders.of(t) for t in tensors], groups
        )
        return self.orders.set(outputs, order)

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


def _undeclared(model, layer_rates):
    """Whether a batch-norm layer of `model` has no row for its rate."""
    for layer in calibration.batchnorm_layers(model):
        own = graph.rate_of(layer_rates, layer)
        declared = {
            rates_lib.active_groups(r, layer.slice_groups)
            for r in layer.declared_rates
        }
        if rates_lib.active_groups(own, layer.slice_groups) not in declared:
            return True
    return False


def _uncalibrated(layer, shapes, name):
    """A `BatchNormalization` of `layer`'s active width, statistics to be set.

    Its rate may have no statistics row (a configuration's widths need
    not be declared rates), so zero mean and unit variance stand in.
    """
    n = shapes[0][-1]
    plain = keras.layers.BatchNormalization.from_config(plain_config(layer, name))
    return plain, affine_values(layer, n) + [np.zeros(n), np.ones(n)]


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

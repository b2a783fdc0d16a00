"""The structural check of a sliced model: one walk, one table of layer kinds.

A narrow width is the paper's sub-network only if every tensor whose last
axis is sliced (its active channels a prefix of the full ones) reaches only
layers that treat that prefix as the sub-network does. `check_model` walks
the functional graph once, follows the state of every tensor's last axis
(full, sliced, or scrambled by a layout change) and refuses, naming the
layers on the path and the fix, every construction that would compute a
different model or fail at run time at a narrow width.

Sliced layers are classified by their attributes alone (`follows_input_width`,
`narrows_channels`, `slice_input`, see `keras_slicing.layers.base`), so a new
sliced layer needs no change here. Plain Keras layers go through `_TABLE`.
"""

import collections
import contextvars
import math
import weakref

import keras

from keras_slicing import fed_rates
from keras_slicing import graph
from keras_slicing import keras_internals

# The state of a tensor's last axis. "sliced": the active channels are its
# first `fixed + ceil(r * groups) * (width - fixed) / groups` entries;
# "scrambled": they are spread over it (a channels-last flatten). `path`
# holds the layers from the sliced layer that narrowed it.
_State = collections.namedtuple("_State", ["kind", "groups", "fixed", "path"])
_FULL = _State("full", None, 0, ())
# Set by `traced_walk`: called with `(call, input_states, output_states)` for
# every call the walk visits (nested models' calls included).
_observer = contextvars.ContextVar("keras_slicing_walk_observer", default=None)


def _layers(*names):
    return tuple(
        getattr(keras.layers, name) for name in names if hasattr(keras.layers, name)
    )


# Plain Keras layers by what they do to a sliced last axis.
_FOLLOWING = _layers(  # per channel: the narrow output is the active prefix
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "Masking", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "RepeatVector", "UnitNormalization", "Rescaling", "Resizing",
    "LayerNormalization",  # without weights; with them the weight rule applies
)
_LAYOUT = _layers("Flatten", "Reshape", "Permute")
_MERGING = _layers("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum") + (
    keras_internals.CustomScaleLayer,  # InceptionResNetV2's x + scale * branch
)
_CONCATENATING = _layers("Concatenate")
_DOT = _layers("Dot")

# Stateless `keras.ops` calls in a functional graph (e.g. `h + skip`), by
# class name.
_OP_MERGING = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "FloorDivide",
    "Maximum", "Minimum", "Power", "Mod",
}
_OP_FOLLOWING = {
    "Relu", "Relu6", "Sigmoid", "Tanh", "Silu", "Swish", "Gelu", "Elu", "Selu",
    "LeakyRelu", "Softplus", "Softsign", "HardSigmoid", "HardSilu", "HardSwish",
    "Exp", "Log", "Log1p", "Absolute", "Abs", "Negative", "Square", "Sqrt",
    "Rsqrt", "Clip", "Cast", "Sign", "Round", "Floor", "Ceil", "Erf",
    "Softmax", "LogSoftmax",
}
_OP_CONCATENATING = {"Concatenate"}

# Models that passed `check_model`: a functional graph never changes, so
# each is walked once, however often it is called.
_CHECKED = weakref.WeakSet()


def check_model(model, allow_sliced_outputs=False):
    """Refuses a sliced model whose narrow widths would be wrong.

    Walks the functional graph of `model` once (nested functional models and
    shared layers included) and follows, for every tensor, whether its last
    axis is full, sliced (the active channels form a prefix) or scrambled
    (a layout change spread them over the axis). It raises a `ValueError`
    naming the layers on the offending path and the fix when:

    - a sliced layer (e.g. `SlicedDense`) reads a scrambled tensor, as after
      a plain `Flatten` or `Reshape` of a sliced channels-last map (use
      `keras_slicing.layers.SlicedFlatten` or global pooling);
    - a sliced layer with `slice_input=False` reads a sliced tensor;
    - a plain layer with weights (`Dense`, `Conv2D`, `LSTM`, ...) reads a
      sliced tensor (its weights have the full input width);
    - `Add`/`Multiply`/... (layers or `keras.ops`) merge a sliced tensor
      with a full-width one, or sliced tensors with different
      `slice_groups`;
    - a `Concatenate` on the channel axis has a sliced input in another
      position than the last (join sliced tensors with
      `keras_slicing.layers.SlicedConcatenate`), or one on another axis
      mixes widths;
    - a `SlicedConcatenate` reads a full-width tensor, or one sliced with
      other `slice_groups` or after full-width channels;
    - a `Reshape` fixes the channel count, or a `Permute` moves the channel
      axis;
    - a nested model whose declared input shape is fixed reads a sliced
      tensor (Keras refuses the narrower tensor when it is called);
    - a layer the table below does not know reads a sliced tensor;
    - a sliced layer is called without a rate in a model whose input feeds
      the rate of other sliced layers (it would always run at full width);
    - a model output is sliced (forgotten `slice_output=False`), unless
      `allow_sliced_outputs`.

    `SlicingModel` runs it when it is built, `extract_submodel` and
    `export_tflite` before they cut a width, and the first call of a sliced
    layer in any other functional model (`keras.Model([x, rate], y)`, a
    `Sequential`, a nested model) runs it on the outermost functional model
    being called, before any result is returned. A model that passed is not
    checked again: call `check_model(model, allow_sliced_outputs=True)` once
    to use a feature extractor whose output is sliced.

    A plain functional model that passes gets, on this instance, `fit`,
    `evaluate`, `predict` and their `*_on_batch` forms that check the rates
    fed with host data (numbers, arrays, eager tensors) before anything
    runs, naming the method and the rate input (`keras_slicing.fed_rates`).

    Layer kinds: sliced layers are classified by their attributes (see
    `keras_slicing.layers.base.SlicedLayerMixin`). Plain per-channel layers
    (activations, dropout, pooling, global pooling, padding, cropping,
    upsampling, `LayerNormalization` without weights, ...) and elementwise
    `keras.ops` keep a tensor's state; weighted layers need full-width
    inputs. A custom layer not in the table is accepted on full-width
    tensors and refused on sliced ones, unless it declares that it treats
    each channel on its own (the narrow output is then the active prefix of
    the full one) with the class or instance attribute
    `follows_input_width = True`.

    Args:
        model: A functional `keras.Model` built from sliced layers.
        allow_sliced_outputs: Whether a model output may be narrower at a
            narrow width (a feature extractor). Defaults to `False`.

    Returns:
        `model`, for chaining.

    Example:

    >>> x = keras.Input((8, 8, 3))
    >>> r = keras_slicing.rate_input()
    >>> h = SlicedConv2D(16, 3, slice_input=False)(x, r)
    >>> h = keras.layers.Flatten()(h)
    >>> check_model(keras.Model([x, r], SlicedDense(4, slice_output=False)(h, r)))
    ValueError: ... Use keras_slicing.layers.SlicedFlatten() ...
    """
    outputs = _walk(model, {id(x): _FULL for x in model.inputs})
    if allow_sliced_outputs:
        if _observer.get() is None:  # not a walk for width_groups
            _passed(model)
        return model
    for tensor, state in zip(model.outputs, outputs):
        if state.kind != "full":
            source = state.path[0]
            raise ValueError(
                f"Model '{model.name}': its output '{_tensor_name(tensor)}' is "
                f"sliced: it comes from sliced layer {_label(source)}"
                f"{_through(state)}, so at a rate below 1 it has fewer "
                "entries than at full width (labels and losses would not "
                f"match). Build {_label(source)} with slice_output=False so "
                "that every width gives all outputs (or, for a feature "
                "extractor meant to give sliced outputs, declare it once with "
                "keras_slicing.check_model(model, allow_sliced_outputs=True))."
            )
    _passed(model)
    return model


def _passed(model):
    # From now on its `predict`, `evaluate`, `fit`, ... refuse a bad rate
    # fed with the data before anything runs.
    fed_rates.guard(model)
    _CHECKED.add(model)


def check_called_model():
    """Runs `check_model`, once, on the functional model being called.

    Sliced layers call it on their first run (not while a graph is being
    built): a model built from them as a plain `keras.Model`, `Sequential`
    or nested model is then refused where `check_model` refuses, with the
    same message, before its first result is returned. A model that passes
    is guarded (`keras_slicing.fed_rates`), and the rates fed to the call
    under way are checked as the guard checks later calls.
    """
    if keras.backend.backend() == "torch":
        import torch

        if torch.compiler.is_compiling():
            # Dynamo cannot trace the stack walk (a graph break in every
            # compiled width); the model's eager calls are checked.
            return
    model = keras_internals.calling_functional_model()
    if model is not None and model not in _CHECKED:
        check_model(model)
        try:
            # The call under way began before the guard: its data are
            # checked here, before its first result (on TensorFlow, while
            # its step is traced, before any graph runs).
            fed_rates.check_running_call(model)
        except ValueError:
            # A step whose first trace failed cannot be traced again
            # (TensorFlow refuses to create its variables then): the next
            # call makes new ones.
            keras_internals.forget_compiled_functions(model)
            raise


def traced_walk(model):
    """`check_model`'s walk of `model`, recorded call by call.

    Returns `[(call, input_states, output_states)]` in execution order, a
    state being `(kind, groups, fixed, path)` with `path[0]` the sliced
    layer that narrowed the tensor. `keras_slicing.width_groups` derives
    which layers must share a width from it, so the groups and the check
    cannot disagree. Sliced outputs are allowed (a feature extractor).
    """
    records = []
    token = _observer.set(lambda *record: records.append(record))
    try:
        check_model(model, allow_sliced_outputs=True)
    finally:
        _observer.reset(token)
    return records


def _walk(model, states):
    """Walks `model`'s graph from `states` (by input id); output states."""
    rate_sources = graph.rate_inputs(model)
    for call in graph.calls(model):
        inputs = [states.get(id(x), _FULL) for x in call.inputs]
        if rate_sources and call.rate is None and graph.is_sliced(call.operation):
            _refuse_rateless(model, call.operation, rate_sources[0])
        results = _call(call, inputs)
        for x, state in zip(call.outputs, results):
            states[id(x)] = state
        observe = _observer.get()
        if observe is not None:
            observe(call, inputs, results)
    return [states.get(id(x), _FULL) for x in model.outputs]


def _call(call, inputs):
    """The output states of one call, or a `ValueError`."""
    op = call.operation
    if graph.is_sliced(op):
        return _sliced(call, inputs)
    if graph.is_functional(op):
        inner = {id(x): _FULL for x in op.inputs}
        for x, state in zip(op.inputs, inputs):
            if state.kind != "full" and x.shape[-1] is not None:
                raise ValueError(
                    f"Nested model {_label(op)} declares input "
                    f"'{_tensor_name(x)}' of shape {tuple(x.shape)} but reads "
                    f"a sliced tensor from {_label(state.path[0])}"
                    f"{_through(state)}: Keras checks a model's input shapes "
                    "when it is called, so at a rate below 1 the call fails. "
                    "Call its layers in the outer model, or give the nested "
                    "model full-width inputs (slice_output=False on "
                    f"{_label(state.path[0])})."
                )
            inner[id(x)] = state
        return _walk(op, inner)
    narrowed = [s for s in inputs if s.kind != "full"]
    if not narrowed:
        return [_FULL] * len(call.outputs)
    kind = _plain_kind(op)
    if kind == "weighted":
        _refuse_weighted(op, narrowed[0])
    if kind == "following":
        return [_following(call, inputs)] * len(call.outputs)
    if kind == "layout":
        return [_layout(call, inputs[0])]
    if kind == "merging":
        return [_merging(call, inputs)]
    if kind == "concatenating":
        return [_concatenating(call, inputs)]
    if kind == "dot":
        return [_dot(call, inputs)]
    state = narrowed[0]
    raise ValueError(
        f"{_label(op)} reads a sliced tensor from {_label(state.path[0])}"
        f"{_through(state)}, and keras_slicing does not know whether it "
        "treats each channel on its own. If it does (elementwise or per "
        "channel: the output's last axis is its input's, channel by "
        "channel), declare it with the class attribute "
        "`follows_input_width = True` (or set it on this layer); "
        "otherwise give it full-width inputs (slice_output=False on the "
        "sliced layer before it) or write a sliced version with "
        "keras_slicing.layers.base.SlicedLayerMixin."
    )


def _sliced(call, inputs):
    op = call.operation
    for state in inputs:
        if state.kind == "scrambled":
            _refuse_scrambled(op, state)
        if state.kind == "sliced" and not getattr(op, "slice_input", True):
            raise ValueError(
                f"{_label(op)} has slice_input=False but reads a sliced "
                f"tensor from {_label(state.path[0])}{_through(state)}: at a "
                "rate below 1 its input is narrower than its weights. Build "
                f"{_label(op)} with slice_input=True (the default), or "
                f"{_label(state.path[0])} with slice_output=False."
            )
    if getattr(op, "joins_inputs", False):
        return [_joined(call, inputs)]
    if op.follows_input_width:
        return [_extend(inputs[0] if inputs else _FULL, op)] * len(call.outputs)
    if op.narrows_channels and call.rate is not None:
        state = _State("sliced", op.slice_groups, 0, (op,))
        return [state] * len(call.outputs)
    return [_FULL] * len(call.outputs)


def _plain_kind(op):
    if getattr(op, "follows_input_width", False) is True:
        return "following"
    if not isinstance(op, keras.layers.Layer):
        name = type(op).__name__
        if name in _OP_FOLLOWING:
            return "following"
        if name in _OP_MERGING:
            return "merging"
        if name in _OP_CONCATENATING:
            return "concatenating"
        return "unknown"
    if op.weights:
        return "weighted"
    from keras_slicing.layers.flatten import SlicedFlatten

    if isinstance(op, SlicedFlatten) or isinstance(op, _FOLLOWING):
        return "following"
    for kind, classes in (
        ("layout", _LAYOUT),
        ("merging", _MERGING),
        ("concatenating", _CONCATENATING),
        ("dot", _DOT),
    ):
        if isinstance(op, classes):
            return kind
    return "unknown"


def _following(call, inputs):
    op = call.operation
    state = next(s for s in inputs if s.kind != "full")
    rank = len(call.inputs[0].shape)
    if getattr(op, "data_format", None) == "channels_first" and rank > 2:
        raise ValueError(
            f"{_label(op)} has data_format='channels_first' but reads a "
            f"tensor sliced on its last axis by {_label(state.path[0])}"
            f"{_through(state)}: it would treat the sliced axis as a spatial "
            "one. Sliced layers slice the channels-last axis: use "
            "data_format='channels_last'."
        )
    state = _extend(state, op)
    width_in = call.inputs[0].shape[-1]
    width_out = call.outputs[0].shape[-1]
    if state.fixed and width_in and width_out and width_in != width_out:
        # SlicedFlatten puts each channel's positions together.
        state = state._replace(fixed=state.fixed * width_out // width_in)
    return state


def _layout(call, state):
    op = call.operation
    if state.kind == "scrambled":
        return _extend(state, op)
    x, y = call.inputs[0], call.outputs[0]
    kept = _positions(x) is not None and _positions(x) == _positions(y)
    if isinstance(op, keras.layers.Permute):
        if tuple(op.dims)[-1] != len(op.dims):
            raise ValueError(
                f"{_label(op)} moves the last axis, which "
                f"{_label(state.path[0])}{_through(state)} slices, to "
                f"position {list(op.dims).index(len(op.dims)) + 1}: the "
                "layers after it would slice another axis. Keep the channel "
                "axis last (e.g. Permute dims ending with "
                f"{len(op.dims)})."
            )
        return _extend(state, op)
    if isinstance(op, keras.layers.Reshape):
        target = tuple(op.target_shape)
        if -1 not in target:
            raise ValueError(
                f"{_label(op)} reshapes to the fixed shape {target} a tensor "
                f"sliced by {_label(state.path[0])}{_through(state)}: at a "
                "rate below 1 it has fewer entries and the reshape fails. "
                "Put -1 in place of the channel count, e.g. Reshape("
                f"{(*target[:-1], -1)})."
            )
        if target[-1] == -1 and kept:
            return _extend(state, op)
    elif kept or len(x.shape) <= 2:  # a Flatten of (N, 1, 1, C) or (N, C)
        return _extend(state, op)
    return _extend(state._replace(kind="scrambled"), op)


def _merging(call, inputs):
    op = call.operation
    pairs = [
        (x, s) for x, s in zip(call.inputs, inputs)
        if s.kind != "full" or x.shape[-1] != 1  # a size-1 axis broadcasts
    ]
    return _same_width(op, pairs, "merges")


def _concatenating(call, inputs):
    op = call.operation
    rank = len(call.inputs[0].shape)
    axis = getattr(op, "axis", -1)
    if axis % rank != rank - 1:
        return _same_width(op, list(zip(call.inputs, inputs)), "joins along "
                           f"axis {axis}")
    narrowed = [i for i, s in enumerate(inputs) if s.kind != "full"]
    state = inputs[narrowed[0]]
    if state.kind == "scrambled":
        _refuse_scrambled(op, state)
    early = [i for i in narrowed if i != len(inputs) - 1]
    if early:
        sources = ", ".join(
            f"input {i} from {_label(inputs[i].path[0])}{_through(inputs[i])}"
            for i in early
        )
        raise ValueError(
            f"{_label(op)} joins channels along the last axis, and its "
            f"sliced {sources} comes before the last input. At a rate below 1 the "
            "active channels are then not a prefix of the full-width "
            "concatenation, so the sliced layers after it would read weights "
            "of other channels and the narrow widths would not be "
            "sub-networks of the full one. Join sliced tensors with "
            "keras_slicing.layers.SlicedConcatenate (slice group by slice "
            "group), or concatenate a sliced tensor only as the last input, "
            "e.g. [full_width_features, sliced]."
        )
    fixed = sum(x.shape[-1] for x in call.inputs[:-1])
    return _extend(state._replace(fixed=state.fixed + fixed), op)


def _joined(call, inputs):
    """A sliced concatenation: every input sliced alike, from its first channel."""
    op = call.operation
    groups = op.slice_groups
    for i, (x, state) in enumerate(zip(call.inputs, inputs)):
        if state.kind == "full":
            problem = (f"input {i} '{_tensor_name(x)}' is a full-width tensor: "
                       "at a rate below 1 it would be cut into the wrong groups")
            fix = ("Slice that input too (a sliced layer with slice_output=True "
                   "before it), or join full-width tensors with "
                   "keras.layers.Concatenate")
        elif state.fixed or state.groups != groups:
            problem = (f"input {i} is {_describe(state)} from "
                       f"{_label(state.path[0])}{_through(state)}, but it "
                       f"interleaves inputs sliced with slice_groups={groups} "
                       "from their first channel")
            fix = (f"Give {_label(state.path[0])} slice_groups={groups}, and "
                   "join sliced tensors with SlicedConcatenate only")
        else:
            continue
        raise ValueError(
            f"{_label(op)} joins sliced tensors group by group, but its "
            f"{problem}. {fix}."
        )
    first = inputs[0]
    return _extend(first._replace(groups=groups, fixed=0), op)


def _dot(call, inputs):
    op = call.operation
    axes = op.axes if isinstance(op.axes, (list, tuple)) else [op.axes] * 2
    last = all(
        a % len(x.shape) == len(x.shape) - 1 for a, x in zip(axes, call.inputs)
    )
    _same_width(op, list(zip(call.inputs, inputs)), "multiplies")
    if not last:
        raise ValueError(
            f"{_label(op)} multiplies tensors sliced on their last axis "
            f"along axes {list(axes)}: its output would be sliced on several "
            "axes. Contract the last axes (axes=-1), or give it full-width "
            "inputs."
        )
    return _FULL


def _same_width(op, pairs, verb):
    """The common state of `pairs` of (tensor, state), or a `ValueError`."""
    narrowed = [(x, s) for x, s in pairs if s.kind != "full"]
    first_x, first = narrowed[0]
    for x, state in pairs:
        if state.kind == "full":
            raise ValueError(
                f"{_label(op)} {verb} the sliced tensor from "
                f"{_label(first.path[0])}{_through(first)} with the "
                f"full-width tensor '{_tensor_name(x)}': at a rate below 1 "
                "their last axes differ and the merge fails. Slice both "
                "branches (e.g. a sliced projection of the full-width one, "
                "with slice_input=False), or build "
                f"{_label(first.path[0])} with slice_output=False."
            )
        if state.kind != first.kind or (state.groups, state.fixed) != (
            first.groups, first.fixed
        ):
            raise ValueError(
                f"{_label(op)} {verb} tensors sliced differently: "
                f"{_describe(first)} from {_label(first.path[0])}"
                f"{_through(first)} and {_describe(state)} from "
                f"{_label(state.path[0])}{_through(state)}. At some rates "
                "their active widths differ and the merge fails. Give the "
                "sliced layers of both branches the same slice_groups."
            )
    return _extend(first, op)


def _refuse_scrambled(op, state):
    layout = next(
        (layer for layer in state.path if isinstance(layer, _LAYOUT)), None
    )
    raise ValueError(
        f"{_label(op)} reads a tensor whose channels were rearranged: "
        f"{_label(layout)} flattens or reshapes the channels-last output of "
        f"sliced layer "
        f"{_label(state.path[0])}{_through(state)}. The active channels are "
        "then spread over the flattened features instead of forming their "
        "prefix, so slicing the weights would compute a different model. "
        "Use keras_slicing.layers.SlicedFlatten(), which flattens channel "
        "by channel, or global pooling instead."
    )


def _refuse_rateless(model, op, rate_source):
    raise ValueError(
        f"{_label(op)} is called without a rate in model '{model.name}', "
        f"whose input '{_tensor_name(rate_source)}' feeds the rate of other "
        "sliced layers: it would run at full width at every rate. Call it "
        f"as layer(h, rate) with that input, or use a plain Keras layer if "
        "it is meant to keep its full width."
    )


def _refuse_weighted(op, state):
    sliced = _sliced_version(op)
    fix = f"Use keras_slicing.layers.{sliced}" if sliced else (
        "Use a sliced layer"
    )
    raise ValueError(
        f"{_label(op)} holds weights for its full input width but reads a "
        f"sliced tensor from {_label(state.path[0])}{_through(state)}: a "
        "plain layer with weights cannot read a sliced tensor (at a rate "
        f"below 1 it fails with a shape error). {fix}, or build "
        f"{_label(state.path[0])} with slice_output=False."
    )


def _sliced_version(op):
    from keras_slicing import layers

    name = "Sliced" + type(op).__name__
    return name if hasattr(layers, name) else None


def _extend(state, op):
    if state.kind == "full":
        return state
    return state._replace(path=state.path + (op,))


def _positions(tensor):
    dims = tensor.shape[1:-1]
    if any(d is None for d in dims):
        return None
    return math.prod(dims)


def _describe(state):
    if state.kind == "scrambled":
        return "a scrambled tensor"
    extra = f" after {state.fixed} full-width channels" if state.fixed else ""
    return f"slice_groups={state.groups}{extra}"


def _label(op):
    if op is None:
        return "a layer"
    name = getattr(op, "name", None) or type(op).__name__
    return f"'{name}' ({type(op).__name__})"


def _through(state):
    if len(state.path) < 2:
        return ""
    return " through " + " -> ".join(_label(op) for op in state.path[1:])


def _tensor_name(tensor):
    operation = keras_internals.producer(tensor)
    if operation is not None:
        return operation.name
    return getattr(tensor, "name", "?")

"""`slice_model`: the model a user already has, as a `SlicingModel`."""

import keras

from keras_slicing import calibration
from keras_slicing import cost
from keras_slicing import graph as graph_lib
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib
from keras_slicing.conversion import analysis as analysis_lib
from keras_slicing.conversion import building
from keras_slicing.conversion import nodes
from keras_slicing.conversion import rewiring
from keras_slicing.conversion.plan import PlanRow
from keras_slicing.conversion.plan import SlicingPlan
from keras_slicing.model import SlicingModel

# Chosen by benchmarks/rewiring.py (see docs/slice-existing-model.md).
DEFAULT_REWIRE = "bn"


def slice_model(
    model,
    slice_groups=rates_lib.DEFAULT_SLICE_GROUPS,
    rates=rates_lib.DEFAULT_RATES,
    rewire=DEFAULT_REWIRE,
    data=None,
    keep_full=(),
    verbose=0,
    **slicing_model_kwargs,
):
    """Converts a Keras model into a `SlicingModel` with the same weights.

    Every layer with a sliced version becomes it (`Dense`, `Conv1D`,
    `Conv2D`, `SeparableConv1D`, `SeparableConv2D`, `DepthwiseConv2D`,
    `BatchNormalization`, `GroupNormalization`, `LayerNormalization`,
    `Embedding`, `LSTM`, `GRU`, `MultiHeadAttention`, `Flatten`,
    `Concatenate` on the channel axis, ConvNeXt's `LayerScale`; a `Conv2D`
    with one input channel per group becomes a `SlicedDepthwiseConv2D`),
    every other layer is re-created from
    its config, and every weight is copied: at rate 1 the result computes
    what `model` computes. Nested functional and `Sequential` models are
    inlined into one graph (their layers keep their names; a clashing name
    gets the nested model's name as a prefix).

    Which channels are sliced is decided by width groups: the channels of
    every tensor belong to the group of the layer that chose their number
    (a Dense, convolution, ...); per-channel layers (normalizations,
    activations, pooling, dropout, padding, ...) pass it on, and merges
    (`Add`, `Multiply`, `x + y`, a squeeze-and-excite gate) join their
    inputs' groups. A group is sliced only if every layer writing and
    reading it can be sliced, its width divides into `slice_groups`, and it
    is not a model input or output; otherwise it stays at full width, and
    the plan says why. The first layers reading the data thus get
    `slice_input=False` and the output layers `slice_output=False`. Layers
    without a sliced version that are not known to work channel by channel
    (and those with weights) get full-width inputs. The result always passes
    `keras_slicing.check_model`.

    A `Concatenate` on the channel axis (a layer or `keras.ops.concatenate`)
    becomes `SlicedConcatenate`, which lays its output out slice group by
    slice group (group `j` of every input, in order), so that its active
    channels form a prefix at every rate; the layers reading it (the rows of
    a `Dense` or convolution, a normalization's parameters, a depthwise
    kernel, a further concatenation, ...) get their input weights in that
    interleaved order, composed with the rewiring of its inputs. It is
    sliced together with all its inputs; if one of them, or its output,
    stays at full width (a data input, a model output, a
    `GroupNormalization` after it, two concatenations added), they all do,
    and the plan says why.

    Channel rewiring permutes each sliced group's channels, consistently in
    every layer that writes, follows or reads it, so that the narrow widths
    keep the most important ones; the full width is unchanged (see
    `keras_slicing.conversion.rewiring` for the scores).

    Args:
        model: A functional or `Sequential` `keras.Model` (a subclassed
            model has no graph to convert and is refused).
        slice_groups: Number of contiguous groups each sliced width is
            split into. Defaults to `8`.
        rates: The rates the `SlicingModel` trains (and batch
            normalizations keep statistics for). Defaults to
            `(1.0, 0.75, 0.5, 0.25)`.
        rewire: `"l1"` (kernel magnitude), `"bn"` (batch-norm scale),
            `"taylor"` (first-order importance on `data`) or `None` (keep
            the channel order). Defaults to `"bn"` (which falls back to
            `"l1"` for groups without batch normalization): the best narrow
            widths right after conversion (with calibrated batch-norm
            statistics) on digits, confirmed on MNIST-1D, in
            `benchmarks/rewiring.py`.
        data: `(x, y)` arrays for `rewire="taylor"`: the importance is
            measured on the loss the model was compiled with (sparse
            categorical cross-entropy when it was not compiled). When given,
            the batch-norm statistics of every narrower width are also
            computed on its `x` (`keras_slicing.calibrate_batchnorm`; full
            width keeps the model's own); without it, the narrower widths'
            statistics are the full network's, marked stale
            (`SlicedBatchNormalization.stale_rates`) until `fit` ends or
            `calibrate_batchnorm` runs.
        keep_full: Names of layers to keep at full width, with every tensor
            they read and write (e.g. a stem or a head).
        verbose: `1` prints the plan. Defaults to `0`.
        **slicing_model_kwargs: Arguments of `SlicingModel` (`scheduler`,
            `rate_loss_weights`, `distillation`, `seed`, ...).

    Returns:
        A `SlicingModel` with the data inputs of `model` plus a rate input,
        not compiled; its `slicing_plan` attribute holds the
        `SlicingPlan` (printable, like `model.summary()`).

    Fine-tuning: at full width the result is `model`, but its narrower
    widths are sub-networks that were never trained (near chance at 0.25).
    They need large steps, not the small ones usual for fine-tuning: compile
    it with Adam at about three times the learning rate `model` was trained
    with, held constant (measured: 1e-2 after 3e-3), and the `SlicingModel`
    defaults otherwise (labels, every rate each step). On the CNNs of
    `benchmarks/slice_pretrained.py` that recipe, given a quarter of the
    from-scratch steps, brought width 0.25 from 74% (at a third of the
    learning rate) to 94% on digits, level with the sliced model trained
    from scratch, and on a 10-epoch MNIST-1D schedule that had not
    converged from 49% (a third of the rate, a fifth of the steps) to 77%,
    still 4 points short. From an MNIST-1D model trained to convergence (30
    epochs) a quarter of the steps is not enough: width 0.25 ends 3.1
    points short of the sliced model trained from scratch for 30 epochs and
    the full width 1.9 points below the pretrained model (narrow-width loss
    weights `rate_loss_weights=(1, 2, 4, 8)` narrow both gaps, to 2.7 and
    0.5); half the steps bring widths 1 to 0.5 level and width 0.25 within
    0.7 points. On an 80-epoch MNIST-1D schedule the full width holds at a
    quarter of the steps but widths 0.5 and 0.25 still trail by about 1.5
    points (docs/fine-tuning.md). For a model trained to convergence, add
    it as a frozen teacher at half weight at the same rate
    (`distillation=model, distillation_weight=0.5, rate_loss_weights=(1,
    1.5, 2, 2.5)`): on 30-epoch MNIST-1D and the text Transformer it kept
    the full width at `model`'s accuracy and narrowed the gaps at widths 1
    to 0.5; a model that labels lift well above its own accuracy holds the
    full width back as a teacher.

    Example:

    ```python
    plain = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    sliced = keras_slicing.slice_model(plain)
    print(sliced.slicing_plan)
    sliced.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    ```
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "slice_model: expected a keras.Model. Received: "
            f"model of type {type(model).__name__}"
        )
    slice_groups = rates_lib.validate_slice_groups(slice_groups, "slice_model")
    rates = rates_lib.validate_rates(rates, "slice_model: rates")
    if rewire not in rewiring.REWIRE_OPTIONS:
        raise ValueError(
            "slice_model: rewire must be one of "
            f"{list(rewiring.REWIRE_OPTIONS)}. Received: rewire={rewire!r}"
        )
    if rewire == "taylor" and data is None:
        raise ValueError(
            "slice_model: rewire='taylor' measures each channel's importance "
            "on data: pass data=(x, y). Received: data=None"
        )
    if verbose not in (0, 1, False, True):
        raise ValueError(
            f"slice_model: verbose must be 0 or 1. Received: verbose={verbose!r}"
        )
    if isinstance(model, SlicingModel) or (
        keras_internals.is_functional(model) and graph_lib.rate_inputs(model)
    ):
        raise ValueError(
            f"slice_model: model '{model.name}' already has a slice-rate "
            "input; it is sliced already."
        )
    graph = nodes.Graph(model)
    keep_full = _check_keep_full(keep_full, graph)
    analysis = analysis_lib.Analysis(graph, slice_groups, rates, keep_full)
    decisions = building.decide(graph, analysis)
    if not any(new is not None for _, new in decisions.values()):
        reasons = [f"'{d.name}' {d.reason}" if d.reason in analysis.refusals.values()
                   else d.reason for d, _ in decisions.values() if d.reason]
        reasons = list(dict.fromkeys(reasons))
        raise ValueError(
            f"slice_model: nothing in model '{model.name}' can be sliced. "
            f"Reasons: {'; '.join(reasons) or 'no layer has a sliced version'}"
        )
    orders, head_orders = rewiring.channel_orders(
        graph, analysis, rewire, data, getattr(model, "loss", None)
    )
    permuter = rewiring.Permuter(analysis, orders, head_orders)
    inputs, rate, outputs, built = building.build(
        graph, analysis, decisions, slice_groups, rates, permuter
    )
    sliced = SlicingModel(
        [*inputs, rate], outputs, rates=rates, name=model.name, **slicing_model_kwargs
    )
    _narrow_statistics(sliced, data)
    sliced.slicing_plan = _plan(model, graph, decisions, sliced, slice_groups, rewire)
    if verbose:
        sliced.slicing_plan.summary()
    return sliced


def _narrow_statistics(sliced, data):
    """Marks the narrow widths' batch-norm rows stale, or calibrates them.

    Every row starts as the full network's statistics, right at full width
    (which computes what the original model computes) only: the narrower
    widths' inputs differ. With `data`, the narrower widths are calibrated
    on it; without, their rows stay stale (evaluating them warns, exporting
    them is refused) until `fit` or `keras_slicing.calibrate_batchnorm`
    recomputes them.
    """
    norms = calibration.batchnorm_layers(sliced)
    narrow = [r for r in sliced.rates if r != 1.0]
    if not norms or not narrow:
        return
    if data is not None:
        calibration.calibrate_batchnorm(sliced, data, rates=narrow)
        return
    for layer in norms:
        layer.mark_stale([r for r in layer.declared_rates if r != 1.0])


def _check_keep_full(keep_full, graph):
    if isinstance(keep_full, str):
        keep_full = [keep_full]
    names = [node.name for node in graph.nodes]
    unknown = [name for name in keep_full if name not in names]
    if unknown:
        raise ValueError(
            f"slice_model: keep_full names layers the model does not have: "
            f"{unknown}. Layers: {', '.join(dict.fromkeys(names))}"
        )
    return set(keep_full)


def _plan(model, graph, decisions, sliced, slice_groups, rewire):
    rows = []
    for node in graph.nodes:
        decision, _ = decisions[id(node.layer)]
        if not isinstance(node.layer, keras.layers.Layer) and (
            decision.new_class is type(node.layer)
        ):
            continue  # a keras.ops call that stays one
        if any(row.name == decision.name for row in rows):
            continue
        width = node.outputs[0].shape[-1] if node.outputs and node.outputs[0].shape else None
        rows.append(
            PlanRow(
                decision.name,
                type(node.layer).__name__,
                decision.new_class.__name__,
                width,
                decision.status,
                decision.reason if decision.status == "full" else None,
            )
        )
    costs = {}
    try:
        for rate in sliced.rates:
            costs[rate] = cost.model_cost(sliced, rate)
    except ValueError:
        costs = {}  # a layer model_cost cannot count: the plan has no costs
    return SlicingPlan(model.name, slice_groups, rewire, rows, costs)

"""Each weight's optimizer step scaled by the narrowest width that uses it.

A weight of a sliced layer is used by every width from the narrowest one
that reaches it up to the full one. Weights that only the wide widths use
get gradient from the wide losses alone, and optimizers that normalize each
weight's step (Adam) give them a full-size step whatever the loss weights:
a scale per width, applied to the step of the weights whose narrowest width
it is, can give them smaller ones. For Adam or SGD, scaling the step is
exactly a per-weight learning rate (decoupled weight decay is scaled with
it).

Which width uses which weight is read from the extraction machinery, not
declared per layer type: every trainable variable is set to the ids of its
elements, each declared width is cut (`extract.cut_trainable_weights`,
which permutes a concatenation's readers and picks LSTM/GRU gates and
attention heads as `extract_submodel` does) and the ids that survive are
the elements that width uses; the weights are restored after.
"""

import numpy as np
from keras import ops

from keras_slicing import extract

# The largest integer every float of a dtype holds exactly (and all below).
_EXACT_INTEGERS = {"float64": 2**53, "float32": 2**24, "float16": 2**11,
                   "bfloat16": 2**8}


def narrowest_rates(model):
    """For each of `model.trainable_weights`, the narrowest rate using each element.

    Returns numpy arrays of the variables' shapes holding, per element, the
    narrowest of `model.rates` whose cut holds it (NaN: no declared width
    uses it).
    """
    variables = list(model.trainable_weights)
    if not variables:
        return []
    unknown = sorted({str(v.dtype) for v in variables} - set(_EXACT_INTEGERS))
    if unknown:
        raise ValueError(
            f"SlicingModel '{model.name}': per-width step scales need floating "
            f"point weights ({sorted(_EXACT_INTEGERS)}). Received trainable "
            f"weights of dtypes {unknown}."
        )
    # Ids start at 1: a 0 is an element outside the pass.
    chunk = min(_EXACT_INTEGERS[str(v.dtype)] for v in variables) - 1
    sizes = [int(np.prod(v.shape)) for v in variables]
    starts = np.cumsum([0] + sizes)
    narrowest = np.full(int(starts[-1]), np.nan)
    saved = [ops.convert_to_numpy(v) for v in variables]
    try:
        for low in range(0, int(starts[-1]), chunk):
            high = min(low + chunk, int(starts[-1]))
            for v, start, size in zip(variables, starts, sizes):
                index = np.arange(start, start + size)
                ids = np.where((index >= low) & (index < high), index - low + 1, 0)
                v.assign(ids.reshape(v.shape).astype("float32"))
            for rate in sorted(model.rates):
                cut = extract.cut_trainable_weights(model, rate)
                values = np.concatenate([np.ravel(w) for w in cut] or [np.zeros(0)])
                values = values[values != 0].astype("float64")
                if np.any((values != np.round(values)) | (values < 1)
                          | (values > high - low)):
                    raise ValueError(
                        f"SlicingModel '{model.name}': the width {rate:g} cut "
                        "out of the model holds weights that are not elements "
                        "of its own weights (a layer computes its cut weights "
                        "instead of selecting them), so the per-width step "
                        "scales cannot tell which weights it uses."
                    )
                index = low + values.astype("int64") - 1
                fresh = index[np.isnan(narrowest[index])]
                narrowest[fresh] = rate
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)
    return [narrowest[s:s + n].reshape(v.shape)
            for v, s, n in zip(variables, starts, sizes)]


def element_scales(model, scales):
    """`{id(variable): scale}` for the trainable variables whose step changes.

    `scales` holds one scale per rate of `model.rates` (widest first); an
    element's scale is that of the narrowest rate using it (the widest
    rate's for an element no width uses). A variable all of whose elements
    scale by 1 is left out; one whose elements share a scale gets a float,
    others a float32 array of its shape.
    """
    by_rate = dict(zip(model.rates, scales))
    result = {}
    for variable, rates in zip(model.trainable_weights, narrowest_rates(model)):
        values = np.full(rates.shape, by_rate[model.rates[0]], "float32")
        for rate, scale in by_rate.items():
            values[rates == rate] = scale
        if np.all(values == 1.0):
            continue
        flat = np.ravel(values)
        result[id(variable)] = float(flat[0]) if np.all(flat == flat[0]) else values
    return result


def apply_scaled(apply, gradients, variables, scales):
    """Runs `apply(gradients, variables)`, then scales each variable's step.

    `scales` maps `id(variable)` to its scale (`element_scales`); the step
    of every other variable is left as `apply` made it. Inside a JAX
    step's `StatelessScope`, `value` reads and `assign` writes the step's
    state, so the same code serves every backend.
    """
    scaled = [(v, scales[id(v)]) for v in variables if id(v) in scales]
    before = [ops.copy(v.value) for v, _ in scaled]
    apply(gradients, variables)
    for (variable, scale), old in zip(scaled, before):
        scale = ops.cast(scale, old.dtype)
        variable.assign(old + scale * (variable.value - old))

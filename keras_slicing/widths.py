"""Width configurations: a slice rate per width group instead of one rate.

A trained sliced model holds many more sub-networks than its uniform
widths: each layer can run at its own width, as long as the layers whose
outputs meet (in an `Add`, a `Multiply`, a `Concatenate` along another axis,
...) keep equal widths. Those sets are the *width groups*; a
`WidthConfig` gives each group a rate. They come from `check_model`'s walk
(`checks.traced_walk`), so a configuration can only describe sub-networks
that the check accepts.
"""

import collections

from keras_slicing import checks
from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib
from keras_slicing.layers.batch_normalization import SlicedBatchNormalization
from keras_slicing.layers.multi_head_attention import SlicedMultiHeadAttention

WidthGroup = collections.namedtuple(
    "WidthGroup", ["name", "layers", "slice_groups", "merges"]
)
WidthGroup.__doc__ = """Sliced layers that must share a width.

`name` is the name of its first layer in execution order (the key of a
`WidthConfig`); `layers` the names of the sliced layers whose width it sets;
`slice_groups` their number of slice groups (the widths it can take are
`k / slice_groups`); `merges` the names of the layers where their outputs
meet (empty for a group of one layer).
"""


class WidthConfig:
    """A slice rate per width group of a sliced model.

    A plain rate `r` is the uniform configuration: every group at `r`.
    Groups are named by `keras_slicing.width_groups(model)`; the name of any
    sliced layer of a group stands for its group too. Groups left out run at
    `default`. The configuration is checked against a model when it is used
    (`extract_submodel`, `model_cost`, `SlicingModel.at_rate`,
    `export_tflite`, ...): an unknown name, a rate outside (0, 1] or two
    rates for layers of one group (it would break the merge that joins
    them) raise a `ValueError` naming them.

    Args:
        rates: A dict `{group or layer name: rate}`.
        default: The rate of the groups not in `rates`. Defaults to `1.0`.

    Example:

    >>> groups = keras_slicing.width_groups(model)
    >>> [g.name for g in groups]
    ['conv1', 'conv2']
    >>> config = WidthConfig({"conv1": 0.25, "conv2": 0.5})
    >>> keras_slicing.model_cost(model, config)["macs"]
    """

    def __init__(self, rates, default=1.0):
        if isinstance(rates, WidthConfig):
            rates, default = rates.rates, rates.default
        if not isinstance(rates, dict):
            raise ValueError(
                "WidthConfig: rates must be a dict {group or layer name: "
                f"rate}}. Received: rates={rates!r}"
            )
        checked = {}
        for name, rate in rates.items():
            if not isinstance(name, str):
                raise ValueError(
                    "WidthConfig: the keys of rates are group or layer names "
                    f"(strings). Received: {name!r}"
                )
            checked[name] = rates_lib.validate_rate(
                rate, f"WidthConfig: group '{name}'"
            )
        self.rates = checked
        self.default = rates_lib.validate_rate(default, "WidthConfig: default")

    def get_config(self):
        return {"rates": dict(self.rates), "default": self.default}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, WidthConfig) and (
            self.get_config() == other.get_config()
        )

    def __hash__(self):
        return hash((tuple(sorted(self.rates.items())), self.default))

    def __repr__(self):
        rates = ", ".join(f"{k!r}: {rates_lib.format_rate(v)}" for k, v in self.rates.items())
        default = "" if self.default == 1.0 else f", default={self.default:g}"
        return f"WidthConfig({{{rates}}}{default})"


def is_config(value):
    """Whether `value` is a width configuration (a `WidthConfig` or a dict)."""
    return isinstance(value, (WidthConfig, dict))


def width_groups(model):
    """The width groups of a sliced model, in execution order.

    A group is a set of sliced layers that must run at one width: a layer
    that narrows its output (`SlicedDense`, `SlicedConv2D`, ...) starts
    one; the layers whose outputs meet in a merge (`Add`, `Multiply`,
    `Subtract`, a `Concatenate` along another axis than the channels, a
    `Dot`) or in a `SlicedConcatenate` (whose inputs run at one rate) join
    theirs. Width-following layers (normalization, depthwise
    convolutions) take the width of their input and belong to no group;
    `SlicedMultiHeadAttention` is a group of its own (its heads).

    Args:
        model: A functional model with a rate input.

    Returns:
        A list of `WidthGroup`s.
    """
    return list(analyze(model).groups)


def resolve(model, config, owner, analysis=None, uses_statistics=True):
    """`config` (a rate, dict or `WidthConfig`) for `model` as `graph.LayerRates`.

    A plain rate is returned as a validated float. `analysis` (from
    `analyze(model)`) saves walking the graph again. `uses_statistics`: see
    `group_rates`.
    """
    if not is_config(config):
        return rates_lib.validate_rate(config, owner)
    config = WidthConfig(config)
    analysis = analysis or analyze(model)
    by_group = group_rates(model, config, owner, analysis, uses_statistics)
    return _layer_rates(analysis, by_group)


def group_rates(
    model, config, owner="WidthConfig", analysis=None, uses_statistics=True
):
    """`{group name: rate}` of every group of `model` under `config`.

    A mixed configuration of a model with `SlicedBatchNormalization` is
    refused unless `uses_statistics` is False: the caller then reads no
    stored batch-norm statistics at it (it counts costs, or recomputes
    them, see `is_mixed`).
    """
    analysis = analysis or analyze(model)
    config = WidthConfig(config)
    group_of = {
        layer: group.name for group in analysis.groups for layer in group.layers
    }
    by_group = {group.name: config.default for group in analysis.groups}
    named_by = {}
    for name, rate in config.rates.items():
        if name not in group_of:
            raise ValueError(
                f"{owner}: '{name}' is not a width group or a layer of one of "
                f"model '{model.name}'. Groups: "
                f"{[g.name for g in analysis.groups]} (see "
                "keras_slicing.width_groups). Received: "
                f"{{{name!r}: {rate:g}}}"
            )
        group = group_of[name]
        if group in named_by and config.rates[named_by[group]] != rate:
            other = named_by[group]
            merges = next(g.merges for g in analysis.groups if g.name == group)
            raise ValueError(
                f"{owner}: layers '{other}' and '{name}' belong to width group "
                f"'{group}' (their outputs meet in {list(merges)}), so they "
                "must run at one rate or the merge fails. Give the group one "
                f"rate. Received: {other}={config.rates[other]:g}, "
                f"{name}={rate:g}"
            )
        named_by[group] = name
        by_group[group] = rate
    if uses_statistics and analysis.batch_norms and is_mixed(analysis, by_group):
        raise ValueError(
            f"{owner}: model '{model.name}' has SlicedBatchNormalization "
            f"layers ({', '.join(analysis.batch_norms)}), whose statistics are "
            "kept per uniform rate: at a mixed configuration they would "
            "normalize with statistics of another sub-network. Pass "
            "calibration_data (training inputs) to extract_submodel, "
            "search_widths or export_tflite, which recompute the statistics "
            "of the configuration's plain model; or use a uniform "
            "configuration, or SlicedGroupNormalization / "
            f"SlicedLayerNormalization. Received: {by_group}"
        )
    return by_group


def is_mixed(analysis, by_group):
    """Whether the groups' rates `by_group` keep unequal shares of their width."""
    return len(
        {rates_lib.active_groups(by_group[g.name], g.slice_groups) / g.slice_groups
         for g in analysis.groups}
    ) > 1


def config_label(by_group):
    """A short, file-safe text for a resolved configuration."""
    return "_".join(rates_lib.format_rate(r) for r in by_group.values())


_Analysis = collections.namedtuple(
    "_Analysis", ["groups", "source_group", "followers", "batch_norms"]
)


def analyze(model):
    """The width groups of `model` and which group sets each layer's rate."""
    records = checks.traced_walk(model)  # also rejects a non-functional model
    parent = {}
    names = {}
    slice_groups = {}
    merges = collections.defaultdict(list)
    order = []

    def find(key):
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def add(layer):
        key = id(layer)
        if key not in parent:
            parent[key] = key
            names[key] = layer.name
            slice_groups[key] = layer.slice_groups
            order.append(key)
        return key

    def union(layers, where):
        roots = {find(add(layer)) for layer in layers}
        if len(roots) > 1:
            first = min(roots, key=order.index)
            for root in roots:
                parent[root] = first
            merges[first].append(where)
            for root in roots - {first}:
                merges[first].extend(merges.pop(root, []))

    followers = {}
    for call, inputs, outputs in records:
        op = call.operation
        if graph.is_functional(op):
            continue
        sources = [s.path[0] for s in inputs if s.kind != "full"]
        if graph.is_sliced(op) and call.rate is not None and (
            isinstance(op, SlicedMultiHeadAttention)
        ):
            add(op)
            continue
        if graph.is_sliced(op) and call.rate is not None and (
            op.narrows_channels
        ):
            add(op)
            # Its inputs after the first (a recurrent layer's initial
            # state) have the layer's own width.
            extra = [s.path[0] for s in inputs[1:] if s.kind != "full"]
            if extra:
                union([op, *extra], op.name)
            continue
        if len(sources) > 1:
            union(sources, op.name)
        if graph.is_sliced(op) and sources:
            if id(op) in followers and followers[id(op)] is not sources[0]:
                union([followers[id(op)], sources[0]], op.name)
            followers[id(op)] = sources[0]
    groups = []
    source_group = {}
    for key in order:
        root = find(key)
        source_group[key] = names[root]
        if root == key:
            members = [names[k] for k in order if find(k) == root]
            groups.append(
                WidthGroup(
                    names[root], tuple(members), slice_groups[root],
                    tuple(dict.fromkeys(merges.get(root, []))),
                )
            )
    batch_norms = [
        layer.name
        for layer in keras_internals.all_sublayers(model)
        if isinstance(layer, SlicedBatchNormalization)
    ]
    return _Analysis(
        tuple(groups),
        source_group,
        {key: id(source) for key, source in followers.items()},
        batch_norms,
    )


def _layer_rates(analysis, by_group):
    by_layer = {key: by_group[name] for key, name in analysis.source_group.items()}
    for key, source in analysis.followers.items():
        by_layer[key] = by_group[analysis.source_group[source]]
    rates = set(by_group.values())
    # Layers outside every group (e.g. a batch norm on the data input) run
    # at the common rate of a uniform configuration, else at full width.
    default = rates.pop() if len(rates) == 1 else 1.0
    return graph.LayerRates(by_layer, default, config_label(by_group))


def equivalent_rate(model, config):
    """The uniform rate of the same MACs as `config`, rounded to 4 decimals.

    Uniform costs are measured at every `k / G` (`G` the largest number of
    slice groups) and interpolated linearly between them, so the rate grows
    with the cost: a bundle lists configurations among its rates in cost
    order under this key (see `export_tflite`), and a uniform configuration
    gets its own rate.
    """
    from keras_slicing.cost import model_cost

    analysis = analyze(model)
    target = model_cost(model, config)["macs"]
    G = max((g.slice_groups for g in analysis.groups), default=1)
    grid = [(k / G, model_cost(model, k / G)["macs"]) for k in range(1, G + 1)]
    if target <= grid[0][1]:
        return round(grid[0][0] * target / grid[0][1], 4) if grid[0][1] else grid[0][0]
    for (r0, c0), (r1, c1) in zip(grid, grid[1:]):
        if target <= c1:
            share = (target - c0) / (c1 - c0) if c1 > c0 else 1.0
            return round(r0 + share * (r1 - r0), 4)
    return 1.0

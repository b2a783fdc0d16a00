"""`SlicingPlan`: what `slice_model` did to each layer, and what it costs."""

import collections

PlanRow = collections.namedtuple(
    "PlanRow", ["name", "original", "becomes", "width", "status", "reason"]
)
PlanRow.__doc__ = """One layer of a `SlicingPlan`.

`original`/`becomes`: class names before and after; `width`: its output's
last axis; `status`: `"sliced"`, `"sliced input"`, `"sliced output"`,
`"sliced heads"` (attention heads sliced, input and output at full width) or
`"full"`; `reason`: why it stays at full width (None otherwise).
"""


class SlicingPlan:
    """The report of a conversion by `keras_slicing.slice_model`.

    Printed, it reads like `model.summary()`: each layer, what it became,
    whether it is sliced (its input, output or both) or kept at full width
    and why, then the parameters and multiply-accumulates per example of
    every rate (`keras_slicing.model_cost`).

    Attributes:
        model_name: Name of the converted model.
        slice_groups: Number of slice groups.
        rewire: The channel rewiring applied (`None` for none).
        rows: One `PlanRow` per layer, in graph order.
        costs: `{rate: {"params": int, "macs": int}}`, widest first.
    """

    def __init__(self, model_name, slice_groups, rewire, rows, costs):
        self.model_name = model_name
        self.slice_groups = slice_groups
        self.rewire = rewire
        self.rows = list(rows)
        self.costs = dict(costs)

    def row(self, name):
        """The `PlanRow` of the layer called `name`."""
        for row in self.rows:
            if row.name == name:
                return row
        names = ", ".join(row.name for row in self.rows)
        raise KeyError(f"No layer '{name}' in the plan. Layers: {names}")

    @property
    def sliced_layers(self):
        """Names of the layers that read or write a sliced tensor."""
        return [row.name for row in self.rows if row.status != "full"]

    @property
    def full_layers(self):
        """`{name: reason}` of the layers kept at full width."""
        return {row.name: row.reason for row in self.rows if row.status == "full"}

    def __str__(self):
        head = ("Layer (type)", "Becomes", "Width", "Slicing", "Why full")
        table = [
            (f"{r.name} ({r.original})", r.becomes, str(r.width or ""), r.status,
             r.reason or "")
            for r in self.rows
        ]
        sizes = [
            min(max(len(line[i]) for line in [head, *table]), limit)
            for i, limit in enumerate((40, 26, 6, 13, 200))
        ]
        lines = [
            f"SlicingPlan of '{self.model_name}' (slice_groups="
            f"{self.slice_groups}, rewire={self.rewire!r})",
        ]
        rule = "-" * (sum(sizes[:4]) + 8 + 20)
        lines.append(rule)
        lines.append(_line(head, sizes))
        lines.append(rule)
        lines += [_line(line, sizes) for line in table]
        lines.append(rule)
        sliced = len(self.sliced_layers)
        lines.append(f"{sliced} of {len(self.rows)} layers sliced.")
        if self.costs:
            full = self.costs[max(self.costs)]
            lines.append(f"{'Rate':>6}  {'Params':>12}  {'MACs':>14}  {'of full':>8}")
            for rate in sorted(self.costs, reverse=True):
                cost = self.costs[rate]
                share = cost["macs"] / full["macs"] if full["macs"] else 1.0
                lines.append(
                    f"{rate:>6g}  {cost['params']:>12,}  {cost['macs']:>14,}  "
                    f"{share:>8.1%}"
                )
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"<SlicingPlan of '{self.model_name}': {len(self.sliced_layers)} of "
            f"{len(self.rows)} layers sliced>"
        )

    def summary(self, print_fn=print):
        """Prints the plan (as `model.summary()` prints a model)."""
        print_fn(str(self))


def _line(values, sizes):
    cells = []
    for value, size in zip(values, sizes):
        if len(value) > size:
            value = value[: size - 1] + "…"
        cells.append(value.ljust(size))
    return "  ".join(cells).rstrip()

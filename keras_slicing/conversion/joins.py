"""Channel-axis concatenations (joins) in a conversion.

A join of sliced tensors becomes `SlicedConcatenate`, which lays its output
out slice group by slice group: output group `j` is group `j` of every
input, in order. Its output is a width group of its own whose channel order
is its inputs' (each in its rewired order) interleaved; it has no order of
its own to rewire, and the layers reading it take their input weights in
that order. A join is sliced together with all its inputs, or kept full
with them.
"""

import collections

import numpy as np

Join = collections.namedtuple("Join", ["index", "group", "inputs", "label"])
Join.__doc__ = """A channel-axis concatenation at node `index`.

It writes width group `group` from the tensors `inputs` (in order); `label`
names it in the plan's reasons.
"""

_JOINED = "joined on the channel axis"


def link(analysis):
    """Keeps each join and all its inputs sliced together, or all full.

    A sliced join interleaves its inputs' slice groups, so its output is
    sliced exactly when every input is. A group written by two joins (their
    layouts need not agree), or normalized by a `GroupNormalization` (whose
    blocks of adjacent channels the interleaving would mix), stays full.
    Runs after every other decision; marks whole groups until nothing
    changes.
    """
    groups = analysis.groups
    writers = collections.defaultdict(list)
    for join in analysis.joins.values():
        writers[groups.find(join.group)].append(join.label)
    for group, labels in writers.items():
        if len(labels) > 1:
            groups.keep_full(group, f"written by several concatenations ({', '.join(labels)})")
    for x, node in analysis.group_norms:
        if analysis.group_of(x) in writers:
            groups.keep_full(
                analysis.group_of(x),
                f"'{node.name}' normalizes groups of adjacent channels of a "
                "concatenation, which slicing interleaves",
            )
    changed = True
    while changed:
        changed = False
        for join in analysis.joins.values():
            members = [analysis.channels[id(x)].group for x in join.inputs] + [join.group]
            full = [g for g in members if not groups.sliced(g)]
            if not full or len(full) == len(members):
                continue
            reason = groups.reason(full[0])
            if not reason.startswith(_JOINED):  # the first join says why
                reason = f"{_JOINED} by {join.label} with a tensor kept full ({reason})"
            for group in members:
                if groups.sliced(group):
                    groups.keep_full(group, reason)
            changed = True


def is_sliced(analysis, index):
    """Whether the node at `index` is a join that becomes `SlicedConcatenate`."""
    join = analysis.joins.get(index)
    return join is not None and analysis.groups.sliced(join.group)


def writing(analysis, group):
    """The sliced `Join` whose output is width group `group`, or None."""
    group = analysis.groups.find(group)
    if not analysis.groups.sliced(group):
        return None
    for join in analysis.joins.values():
        if analysis.groups.find(join.group) == group:
            return join
    return None


def scores_through(analysis, scores):
    """`scores` (`{group: per channel}`) with each sliced join's channels
    counted for the input channels they come from.

    Latest join first, so that a join's inputs that are joins themselves
    pass on what they received.
    """
    scores = dict(scores)
    for index in sorted(analysis.joins, reverse=True):
        if not is_sliced(analysis, index):
            continue
        join = analysis.joins[index]
        score = scores.pop(analysis.groups.find(join.group), None)
        if score is None:
            continue
        offset = 0
        for x in join.inputs:
            width = x.shape[-1]
            part = np.asarray(score[offset:offset + width], dtype=np.float64)
            offset += width
            part = part.reshape(-1, analysis.channels[id(x)].factor).sum(1)
            group = analysis.group_of(x)
            scores[group] = scores.get(group, 0.0) + part
    return scores

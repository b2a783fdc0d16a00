"""Converting an existing Keras model into a `SlicingModel`.

`analysis.py` finds the width groups (which channels can be sliced),
`rewiring.py` orders each group's channels by importance, `building.py`
re-creates the layers and replays the graph, `plan.py` reports the result.
"""

from keras_slicing.conversion.plan import SlicingPlan
from keras_slicing.conversion.slice_model import slice_model

__all__ = ["SlicingPlan", "slice_model"]

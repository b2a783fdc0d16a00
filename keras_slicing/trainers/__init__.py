"""How `SlicingModel` trains on each Keras backend: one mixin per backend.

The steps themselves are `keras_slicing/train_step.py`, the same on every
backend; what differs is how a step takes gradients, how it is compiled and
how it is fed its state, in `<backend>.py`. Only `SlicingModel` mixes these
in: the layers never import this package (they need only
`keras_slicing.backend`, which turns a rate into a width). The module of the
active backend is imported alone, so `import keras_slicing` on JAX or
PyTorch does not import TensorFlow.
"""

from keras_slicing import backend

if backend.BACKEND == "tensorflow":
    from keras_slicing.trainers.tensorflow import SlicingTrainer
elif backend.BACKEND == "jax":
    from keras_slicing.trainers.jax import SlicingTrainer
else:
    from keras_slicing.trainers.torch import SlicingTrainer

__all__ = ["SlicingTrainer"]

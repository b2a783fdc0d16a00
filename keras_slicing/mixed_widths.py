"""Training mixed widths: a scheduler that also runs per-group configurations.

A `SlicingModel` trained on uniform rates only trains the sub-networks in
which every layer has one width; the configurations that
`keras_slicing.search_widths` finds (each width group at its own rate) are
only inherited. `MixedWidthScheduler` runs, besides the widest and the
narrowest uniform widths (the sandwich rule), a random width configuration
every step, as MatFormer and Universally Slimmable Networks sample widths,
so mixed configurations are trained too.
"""

import itertools

import keras
import numpy as np
from keras import ops

from keras_slicing import schedulers
from keras_slicing import widths as widths_lib

__all__ = ["MixedWidthScheduler"]


@keras.saving.register_keras_serializable(package="keras_slicing")
class MixedWidthScheduler(schedulers.RandomScheduler):
    """Runs the uniform rates of `RandomScheduler` plus mixed configurations.

    Each step runs what `RandomScheduler(num_random, include_min=...,
    include_max=...)` runs (by default the widest and the narrowest rate,
    the sandwich rule) and `num_configs` width configurations: every width
    group (see `keras_slicing.width_groups`) at one of the model's rates,
    not all at the same one. The configurations come from a fixed pool of
    `pool_size` distinct ones, drawn from `seed` when the model is built, so
    a run compiles a bounded number of train steps: the rates of a step are
    then sampled on the host on every backend, and each distinct set
    (`pool_size` of them with the defaults) gets its own traced or compiled
    step, once (`model.compiled_rate_sets` lists them). On TensorFlow that is
    one trace per set instead of the one trace of the uniform schedulers.

    A configuration's loss weight is the mean of its groups' rate loss
    weights (`rate_loss_weights` of `SlicingModel`). It is not logged per
    rate. Under a `min_rate` (progressive shrinking) a configuration with a
    group below it runs the narrowest allowed uniform rate instead.

    Models with `SlicedBatchNormalization` are refused (their statistics
    are kept per uniform rate), and so are models with a single width
    group (every configuration would be uniform).

    Args:
        num_configs: Mixed configurations run per step (distinct), at most
            `pool_size`. Defaults to 1.
        pool_size: How many distinct configurations the pool holds (fewer
            when the model has fewer mixed ones). Defaults to 16.
        num_random: Uniform rates drawn at random per step, besides the
            ends, as in `RandomScheduler`. Defaults to 0.
        include_min: Whether the narrowest uniform rate runs every step.
            Defaults to True.
        include_max: Whether the widest uniform rate runs every step.
            Defaults to True.
        seed: Integer seed of the pool. Defaults to 0. The configurations
            of each step are drawn from the model's seed, as the rates.

    Example:

    ```python
    model = keras_slicing.SlicingModel(
        [x, rate], y, scheduler=MixedWidthScheduler(pool_size=8)
    )
    model.scheduler.configurations(model)  # the pool, as {group: rate}
    ```

    Reference:
    - [Yu & Huang, 2019](https://arxiv.org/abs/1903.05134), Universally
      Slimmable Networks.
    - [Devvrit et al., 2023](https://arxiv.org/abs/2310.07707), MatFormer.
    """

    def __init__(
        self, num_configs=1, pool_size=16, num_random=0, include_min=True,
        include_max=True, seed=0,
    ):
        super().__init__(
            num_random=num_random, include_min=include_min, include_max=include_max
        )
        for name, value, low in (
            ("num_configs", num_configs, 1), ("pool_size", pool_size, 1),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < low
            ):
                raise ValueError(
                    f"MixedWidthScheduler: {name} must be an integer >= {low}. "
                    f"Received: {name}={value!r}"
                )
        if num_configs > pool_size:
            raise ValueError(
                "MixedWidthScheduler: num_configs must be at most pool_size. "
                f"Received: num_configs={num_configs}, pool_size={pool_size}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(
                f"MixedWidthScheduler: seed must be an integer. Received: seed={seed!r}"
            )
        self.num_configs = int(num_configs)
        self.pool_size = int(pool_size)
        self.seed = int(seed)

    def configurations(self, model):
        """The pool: a list of `{group name: rate}`, each not uniform.

        Raises a `ValueError` for a model it cannot train (batch norm, a
        single width group).
        """
        owner = f"SlicingModel '{model.name}': scheduler=MixedWidthScheduler"
        analysis = widths_lib.analyze(model)
        if analysis.batch_norms:
            raise ValueError(
                f"{owner} trains mixed width configurations, but the model has "
                f"SlicedBatchNormalization layers ({', '.join(analysis.batch_norms)}), "
                "whose statistics are kept per uniform rate. Use "
                "SlicedGroupNormalization / SlicedLayerNormalization, or a "
                "uniform scheduler (e.g. scheduler='random_min_max')."
            )
        names = [group.name for group in analysis.groups]
        if len(names) < 2:
            raise ValueError(
                f"{owner} needs at least two width groups to mix; the model has "
                f"{names} (see keras_slicing.width_groups): use a uniform "
                "scheduler (e.g. scheduler='random_min_max')."
            )
        rates = tuple(model.rates)
        count = len(rates) ** len(names) - len(rates)
        if count <= self.pool_size:
            # Every mixed configuration fits in the pool: take them all.
            drawn = [
                c for c in itertools.product(range(len(rates)), repeat=len(names))
                if len(set(c)) > 1
            ]
        else:
            generator = np.random.default_rng(self.seed)
            drawn = []
            seen = set()
            while len(drawn) < self.pool_size:
                c = tuple(int(i) for i in generator.integers(len(rates), size=len(names)))
                if len(set(c)) > 1 and c not in seen:
                    seen.add(c)
                    drawn.append(c)
        if len(drawn) < self.num_configs:
            raise ValueError(
                f"{owner}: num_configs={self.num_configs} exceeds the "
                f"{len(drawn)} mixed configurations of {len(names)} groups over "
                f"rates={list(rates)}. Received: num_configs={self.num_configs}"
            )
        # `sample` draws entries of this pool, however many it holds.
        self._pool_length = len(drawn)
        return [{n: rates[i] for n, i in zip(names, c)} for c in drawn]

    def num_rates(self, rates):
        return super().num_rates(rates) + self.num_configs

    def sample(self, rates, seed):
        uniform = ops.cast(super().sample(rates, seed), "int32")
        # Distinct pool entries, as Gumbel top-k over equal weights; entry k
        # is index len(rates) + k of the step (see SlicingModel's steps).
        pool = getattr(self, "_pool_length", self.pool_size)
        noise = keras.random.uniform((pool,), minval=1e-7, maxval=1.0, seed=seed)
        _, picked = ops.top_k(-ops.log(-ops.log(noise)), self.num_configs)
        return ops.concatenate([uniform, ops.cast(picked, "int32") + len(rates)], axis=0)

    def get_config(self):
        config = super().get_config()
        del config["probabilities"]
        return {
            **config,
            "num_configs": self.num_configs,
            "pool_size": self.pool_size,
            "seed": self.seed,
        }


def step_configurations(model, scheduler):
    """`[(WidthConfig, LayerRates, loss weight)]` a step of `model` may run.

    Empty for a scheduler of uniform rates; else the pool of
    `scheduler.configurations(model)`, whose entry k a step runs when its
    scheduler samples index `len(model.rates) + k`.
    """
    if not hasattr(scheduler, "configurations"):
        return []
    owner = f"SlicingModel '{model.name}': scheduler"
    analysis = widths_lib.analyze(model)
    weight_of = dict(zip(model.rates, model._loss_weights))
    entries = []
    for config in scheduler.configurations(model):
        config = widths_lib.WidthConfig(config)
        weight = float(np.mean([weight_of[r] for r in config.rates.values()]))
        entries.append(
            (config, widths_lib.resolve(model, config, owner, analysis), weight)
        )
    return entries

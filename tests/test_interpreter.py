"""The timing rounds of `keras_slicing.interpreter`, on a simulated clock."""

import itertools

from keras_slicing.interpreter import latency_rounds

CALL_AGAIN = 1.0  # seconds of a call right after a call of the same model
CALL_AFTER_ANOTHER = 10.0  # seconds of a first call after another model


class Machine:
    """A clock whose calls cost more after another model (cold caches)."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self):
        return self.now


class Model:
    def __init__(self, machine, name):
        self.machine = machine
        self.name = name

    def invoke(self):
        again = self.machine.calls and self.machine.calls[-1] == self.name
        self.machine.now += CALL_AGAIN if again else CALL_AFTER_ANOTHER
        self.machine.calls.append(self.name)


def test_timings_leave_out_the_first_call_after_another_model():
    machine = Machine()
    models = [Model(machine, name) for name in "abc"]
    rounds = latency_rounds(models, repeats=6, min_seconds=3, clock=machine)
    assert [len(timings) for timings in rounds] == [6, 6, 6]
    assert {t for timings in rounds for t in timings} == {CALL_AGAIN}


def test_every_model_is_timed_after_every_other_one():
    machine = Machine()
    models = [Model(machine, name) for name in "abcd"]
    latency_rounds(models, repeats=30, min_seconds=3, clock=machine)
    # One name per stretch of calls of the same model, the warm-up included.
    stretches = [name for name, _ in itertools.groupby(machine.calls)]
    followed = set(zip(stretches, stretches[1:]))
    assert followed == set(itertools.permutations("abcd", 2))

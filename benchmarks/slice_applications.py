"""slice_model on keras.applications networks: time, exactness, cost per width.

For MobileNetV2, MobileNetV3Small, ResNet50, EfficientNetB0, DenseNet121,
the separable-convolution networks Xception and NASNetMobile,
ConvNeXtTiny (grouped depthwise convolutions, layer norms, layer scale),
InceptionV3 and InceptionResNetV2 (concatenations, scaled residual merges),
and one network of each remaining family: MobileNet, MobileNetV3Large,
ResNet50V2, EfficientNetV2B0, VGG16
(weights=None, 32x32x3 inputs, Xception 71x71x3 and the Inceptions 75x75x3,
their smallest; 10 classes;
NASNetMobile with slice_groups=4, since its cells have 44 channels; batch-norm statistics of one
batch of random images so that activations stay of order one): the
conversion time, the largest difference from the original at full width in
float32 without and with channel rewiring (the default "l1") and in float64
with rewiring (which shows the float32 differences are rounding, not a wrong
permutation), the number of layers sliced (and of channel concatenations
sliced), and `model_cost` per width.

    python benchmarks/slice_applications.py [--names=MobileNetV2,ResNet50]
        [--merge=benchmarks/results/slice_applications.json]
"""

import argparse
import os
import subprocess
import sys
import json
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NAMES = ("MobileNetV2", "MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121",
         "Xception", "NASNetMobile", "ConvNeXtTiny", "InceptionV3", "InceptionResNetV2",
         "MobileNet", "MobileNetV3Large", "ResNet50V2", "EfficientNetV2B0", "VGG16")
SHAPE = (32, 32, 3)
SHAPES = {"Xception": (71, 71, 3), "InceptionV3": (75, 75, 3),  # their smallest
          "InceptionResNetV2": (75, 75, 3)}
# NASNetMobile's cells have 44 channels (4 x 11): with the default 8 groups
# they would stay at full width, and the plan says so.
SLICE_GROUPS = {"NASNetMobile": 4}


def measure(name, floatx):
    """One network's numbers; run in a process of its own per float type."""
    import keras
    import numpy as np

    keras.config.set_floatx(floatx)
    import keras_slicing
    from tests.conversion.plain_models import application_with_batch_statistics

    shape = SHAPES.get(name, SHAPE)

    def images(n, seed):
        return (np.random.default_rng(seed).random((n, *shape)) * 255).astype(floatx)

    keras.utils.set_random_seed(0)
    plain = application_with_batch_statistics(name, shape, images(32, 1))
    x = images(2, 0)
    want = keras.ops.convert_to_numpy(plain(x))
    result = {"max_abs_output": float(np.abs(want).max())}
    for rewire in ((None, "l1") if floatx == "float32" else ("l1",)):
        start = time.perf_counter()
        sliced = keras_slicing.slice_model(
            plain, rewire=rewire, slice_groups=SLICE_GROUPS.get(name, 8)
        )
        seconds = time.perf_counter() - start
        diff = float(np.abs(keras.ops.convert_to_numpy(sliced(x)) - want).max())
        result[f"max_abs_diff_{rewire}"] = diff
        result[f"convert_seconds_{rewire}"] = seconds
    if floatx == "float32":
        plan = sliced.slicing_plan
        result["layers"] = len(plan.rows)
        result["sliced_layers"] = len(plan.sliced_layers)
        result["full_layers"] = plan.full_layers
        joins = [row for row in plan.rows if row.original == "Concatenate"]
        result["joins"] = len(joins)
        result["sliced_joins"] = sum(row.status == "sliced" for row in joins)
        result["cost"] = {format(r, "g"): c for r, c in plan.costs.items()}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=",".join(NAMES))
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--merge", default="",
        help="Comma-separated result files of earlier runs whose networks "
             "are kept (a network measured now replaces its earlier result).",
    )
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # name, floatx
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    from benchmarks import common

    results = {}
    for path in filter(None, args.merge.split(",")):
        with open(path) as f:
            results.update(json.load(f)["results"])
    for name in filter(None, args.names.split(",")):
        results[name] = {}
        for floatx in ("float32", "float64"):
            # A process per float type: Keras' floatx is global state.
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.slice_applications", "--one", name, floatx],
                capture_output=True, text=True, check=True,
            ).stdout.strip().splitlines()[-1]
            results[name][floatx] = json.loads(out)
        print(name, json.dumps(results[name]["float32"]["cost"]), flush=True)
    for r in results.values():
        cost = r["float32"]["cost"]
        r["float32"]["macs_share"] = {
            rate: cost[rate]["macs"] / cost["1"]["macs"] for rate in cost
        }
    ordered = [name for name in NAMES if name in results]
    results = {name: results[name] for name in ordered + sorted(set(results) - set(ordered))}
    rows = []
    for name, r in results.items():
        f32, f64 = r["float32"], r["float64"]
        rows.append([
            name, f"{f32['sliced_layers']}/{f32['layers']}",
            f"{f32['convert_seconds_l1']:.1f}", f"{f32['max_abs_output']:.2f}",
            f"{f32['max_abs_diff_None']:.1e}", f"{f32['max_abs_diff_l1']:.1e}",
            f"{f64['max_abs_diff_l1']:.1e}",
            *[f"{f32['cost'][k]['macs'] / f32['cost']['1']['macs']:.3f}"
              for k in ("0.75", "0.5", "0.25")],
        ])
    common.print_table(
        "slice_model on keras.applications (32x32x3, Xception 71x71x3, Inceptions 75x75x3)",
        ["network", "sliced", "convert s", "max|logit|", "diff f32", "diff f32 l1",
         "diff f64 l1", "MACs 0.75", "MACs 0.5", "MACs 0.25"],
        rows,
    )
    payload = {
        "machine": {**common.machine_facts(),
                    "note": "shared 2-core machine under heavy load: conversion "
                            "times are upper bounds"},
        "settings": {"input_shape": SHAPE, "input_shapes": SHAPES,
                     "slice_groups": {**{n: 8 for n in NAMES}, **SLICE_GROUPS},
                     "classes": 10, "weights": None,
                     "batch_norm_statistics": "one training-mode batch of 32 random images"},
        "results": results,
    }
    common.write_json("slice_applications", payload, args.output)


if __name__ == "__main__":
    main()

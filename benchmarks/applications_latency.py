"""LiteRT latency of converted keras.applications widths against native ones.

For MobileNetV2, MobileNetV3Small, ResNet50, EfficientNetB0, DenseNet121
(32x32x3), Xception (71x71x3), ConvNeXtTiny (32x32x3), InceptionV3 and
InceptionResNetV2 (75x75x3; the input shapes of slice_applications.py;
weights=None, 10 classes): `slice_model` converts the network,
`export_tflite` writes every width (float32), and for each width a NATIVE
narrow model is built from the original model's config, each sliced
Conv2D / SeparableConv2D / Dense given that width's channel count
(depthwise convolutions, batch and layer norms follow their inputs; a
one-channel-per-group Conv2D gets its input's active channels as groups,
ConvNeXt's LayerScale as projection_dim), with random weights (as the
original is given before slicing: latency does not depend on values, but a
fresh model's zero biases let the converter drop ADDs), converted by
`convert_to_tflite`, the converter settings `export_tflite` uses. Checked per width: every layer's output shape
equals that of `extract_submodel`'s layer of the same name, and the two
files hold the same operators on the same shapes (`tflite_operators`); any
difference is reported; and the sliced file's output on two random images
equals the sliced Keras model's at that width (largest difference, and
largest output for scale). Timed with LiteRT, 1 thread, batch 1, sliced and
native interleaved in every round (each round in a random order, the first
call of each timing untimed: `latency_rounds`), by the CPU time of the
calling thread (which other jobs of a shared machine do not inflate) and by
wall time: the ratio is the median of per-round ratios. Target: sliced / native within
1.00 +- 0.05 at every width. One process per network.

    python benchmarks/applications_latency.py [--names=MobileNetV2] [--repeats=41]
        [--min_seconds=0.05] [--output=results.json] [--merge=earlier.json,...]

The first five networks' results are benchmarks/results/applications_latency.json;
the others' were written with
`--names=Xception,ConvNeXtTiny,InceptionV3,InceptionResNetV2
--output=benchmarks/results/applications_latency_families.json`.
"""

import argparse
import collections
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slicing  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.slice_applications import SHAPE, SHAPES, SLICE_GROUPS  # noqa: E402
from keras_slicing import interpreter as interpreter_lib  # noqa: E402
from keras_slicing.export import convert_to_tflite  # noqa: E402
from keras_slicing.rates import active_width  # noqa: E402
from keras_slicing.tflite_flatbuffer import tflite_operators  # noqa: E402

NAMES = ("MobileNetV2", "MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121",
         "Xception", "ConvNeXtTiny", "InceptionV3", "InceptionResNetV2")
RATES = (1.0, 0.75, 0.5, 0.25)
TARGET = 0.05


def native_model(plain, plan, rate):
    """`plain` rebuilt from its config at the width of `rate`, random weights.

    A Conv2D, SeparableConv2D or Dense whose output the plan slices gets the
    active width of its filters or units; a grouped Conv2D with one input
    channel per group (ConvNeXt's depthwise convolutions) whose input is
    sliced gets as many groups as its input has active channels, and
    `filters` that many times its filters per group; ConvNeXt's LayerScale
    gets its input's active channel count as `projection_dim`; everything
    else keeps its config, except the squeeze-excite `Reshape((1, 1, C))` of
    EfficientNet, given its input's channel count (read from a first build
    with -1 in its place).
    """
    config = plain.get_config()
    reshapes = []
    for layer in leaf_configs(config["layers"]):
        kind, settings = layer["class_name"], layer["config"]
        if kind not in ("Conv2D", "SeparableConv2D", "Dense", "LayerScale", "Reshape"):
            continue
        status = plan.row(settings["name"]).status
        if status == "full":
            continue
        if kind == "Conv2D" and settings.get("groups", 1) > 1:
            if settings["groups"] != plain.get_layer(settings["name"]).input.shape[-1]:
                raise ValueError(
                    f"Only grouped convolutions with one input channel per "
                    f"group have a native narrow version here. Received: "
                    f"groups={settings['groups']} in layer '{settings['name']}'"
                )
            # Every row of a one-channel-per-group convolution follows its
            # input: a sliced input leaves its active channels as groups.
            per_group = settings["filters"] // settings["groups"]
            settings["groups"] = active_width(settings["groups"], rate, plan.slice_groups)
            settings["filters"] = settings["groups"] * per_group
        elif kind in ("Conv2D", "SeparableConv2D", "Dense"):
            if status in ("sliced", "sliced output"):
                key = "units" if kind == "Dense" else "filters"
                settings[key] = active_width(settings[key], rate, plan.slice_groups)
        elif kind == "LayerScale":
            settings["projection_dim"] = active_width(
                settings["projection_dim"], rate, plan.slice_groups
            )
        else:
            settings["target_shape"] = [*settings["target_shape"][:-1], -1]
            reshapes.append(settings)
    # from_config consumes parts of the config it reads.
    model = keras.Model.from_config(copy.deepcopy(config))
    if reshapes:
        for settings in reshapes:
            channels = model.get_layer(settings["name"]).input.shape[-1]
            settings["target_shape"] = [*settings["target_shape"][:-1], channels]
        model = keras.Model.from_config(config)
    return randomize(model)


def leaf_configs(layers):
    """The layer configs of `layers`, those of nested models in their place.

    Each loses its build config: layers are built from their input at
    from_config, not at the original shapes.
    """
    for layer in layers:
        layer.pop("build_config", None)
        if layer["class_name"] == "Sequential":
            # Nested in ConvNeXt (stem, downsampling blocks): without its
            # input layer it takes the narrow input it is called on.
            nested = layer["config"]
            nested.pop("build_input_shape", None)
            nested["layers"] = [
                inner for inner in nested["layers"] if inner["class_name"] != "InputLayer"
            ]
            yield from leaf_configs(nested["layers"])
        else:
            yield layer


def randomize(model, seed=0):
    """Gives every weight random values, variances positive.

    Freshly initialized weights repeat (zero biases, unit batch norms), and
    the converter stores equal constants once: the file would be smaller
    than any trained model's for a reason latency does not share.
    """
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        values = rng.normal(0.0, 0.1, weight.shape)
        if "variance" in weight.path:
            values = rng.uniform(0.5, 1.5, weight.shape)
        weight.assign(values.astype(weight.dtype))
    return model


def shape_mismatches(native, extracted):
    """Layers whose output shape differs between the two models.

    The native model's nested models (ConvNeXt's stem and downsampling
    blocks) are looked into: the sliced model has their layers inlined.
    """
    theirs = {layer.name: layer for layer in extracted.layers}
    return [
        layer.name
        for layer in leaf_layers(native)
        if not isinstance(layer, keras.layers.InputLayer)
        and (layer.name not in theirs
             or tuple(layer.output.shape) != tuple(theirs[layer.name].output.shape))
    ]


def leaf_layers(model):
    """The layers of `model`, those of nested models in their place."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def operator_difference(sliced, native):
    """`{"extra": {op: n}, "missing": {op: n}}` of the sliced file, or {}."""
    if sliced == native:
        return {}
    extra = collections.Counter(sliced) - collections.Counter(native)
    missing = collections.Counter(native) - collections.Counter(sliced)
    return {
        "extra": {f"{name} {shapes}": n for (name, shapes), n in extra.items()},
        "missing": {f"{name} {shapes}": n for (name, shapes), n in missing.items()},
        "same_sequence_of_names": [n for n, _ in sliced] == [n for n, _ in native],
    }


def images(n, shape, seed=0):
    return (np.random.default_rng(seed).random((n, *shape)) * 255).astype("float32")


def measure(name, repeats, min_seconds):
    shape = SHAPES.get(name, SHAPE)
    keras.utils.set_random_seed(0)
    # Random weights on the sliced side too: fresh zero biases and betas make
    # the converter drop their ADDs, which a trained model keeps.
    plain = randomize(getattr(keras.applications, name)(
        input_shape=shape, weights=None, classes=10
    ), seed=1)
    start = time.perf_counter()
    sliced = keras_slicing.slice_model(plain, slice_groups=SLICE_GROUPS.get(name, 8))
    convert_seconds = time.perf_counter() - start
    # Width statistics on random images: extraction refuses stale ones, and
    # latency does not depend on their values. ConvNeXt has layer norms only.
    if any(isinstance(layer, keras_slicing.layers.SlicedBatchNormalization)
           for layer in sliced.layers):
        keras_slicing.calibrate_batchnorm(sliced, images(16, shape), rates=RATES)
    plan = sliced.slicing_plan
    files, checks = {}, {}
    with tempfile.TemporaryDirectory() as bundle:
        start = time.perf_counter()
        manifest = keras_slicing.export_tflite(sliced, bundle + "/b", rates=RATES)
        export_seconds = time.perf_counter() - start
        for entry in manifest["rates"]:
            with open(os.path.join(bundle, "b", entry["file"]), "rb") as f:
                files["sliced", float(entry["rate"])] = f.read()
    native_seconds = 0.0
    for rate in RATES:
        native = native_model(plain, plan, rate)
        start = time.perf_counter()
        files["native", rate] = convert_to_tflite(native)
        native_seconds += time.perf_counter() - start
        extracted = keras_slicing.extract_submodel(sliced, rate)
        x = images(2, shape, seed=3)
        want = keras.ops.convert_to_numpy(sliced.at_rate(rate)(x))
        have = interpreter_lib.run_tflite(
            interpreter_lib.load_interpreter(model_content=files["sliced", rate]), x
        )
        checks[rate] = {
            "tflite_max_abs_diff": float(np.abs(have - want).max()),
            "max_abs_output": float(np.abs(want).max()),
            "shape_mismatches": shape_mismatches(native, extracted),
            "operator_difference": operator_difference(
                tflite_operators(files["sliced", rate]),
                tflite_operators(files["native", rate]),
            ),
            "operators": len(tflite_operators(files["native", rate])),
        }
    keys = [(kind, rate) for rate in RATES for kind in ("sliced", "native")]
    interpreters = []
    for key in keys:
        interpreter = interpreter_lib.load_interpreter(
            model_content=files[key], num_threads=1
        )
        interpreter_lib.set_random_input(interpreter, 1)
        interpreters.append(interpreter)
    timings = {}
    for clock_name, clock in (("thread", time.thread_time), ("wall", time.perf_counter)):
        rounds = dict(zip(keys, interpreter_lib.latency_rounds(
            interpreters, repeats, min_seconds, clock=clock
        )))
        timings[clock_name] = rounds
    widths = []
    for rate in RATES:
        row = {"rate": rate, **checks[rate]}
        for clock_name, rounds in timings.items():
            sliced_times = np.asarray(rounds["sliced", rate])
            native_times = np.asarray(rounds["native", rate])
            row[f"sliced_ms_{clock_name}"] = float(np.median(sliced_times)) * 1e3
            row[f"native_ms_{clock_name}"] = float(np.median(native_times)) * 1e3
            # Paired within each round: immune to slow phases of the machine.
            row[f"ratio_{clock_name}"] = float(np.median(sliced_times / native_times))
            # The fastest rounds are the ones other jobs disturbed least.
            row[f"ratio_fastest_{clock_name}"] = float(
                sliced_times.min() / native_times.min()
            )
        row["sliced_bytes"] = len(files["sliced", rate])
        row["native_bytes"] = len(files["native", rate])
        row["within_target"] = abs(row["ratio_thread"] - 1) <= TARGET
        widths.append(row)
    return {
        "convert_seconds": convert_seconds,
        "export_seconds": export_seconds,
        "native_convert_seconds": native_seconds,
        "widths": widths,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=",".join(NAMES))
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--min_seconds", type=float, default=0.05)
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--merge", default="",
        help="Comma-separated result files of earlier runs whose networks "
             "are kept (a network measured now replaces its earlier result).",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats, args.min_seconds)))
        return
    import ai_edge_litert

    results = {}
    for path in filter(None, args.merge.split(",")):
        with open(path) as f:
            results.update(json.load(f)["results"])
    for name in filter(None, args.names.split(",")):
        # A process per network: four converted ResNet50s do not stay in
        # memory, and a failure of one network keeps the others' numbers.
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.applications_latency", "--one", name,
             f"--repeats={args.repeats}", f"--min_seconds={args.min_seconds}"],
            capture_output=True, text=True,
        )
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            results[name] = {"error": done.stderr.strip().splitlines()[-1]}
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, f"export {results[name]['export_seconds']:.0f} s", flush=True)
    ordered = [name for name in NAMES if name in results]
    results = {name: results[name] for name in ordered + sorted(set(results) - set(ordered))}
    rows = []
    for name, result in results.items():
        for w in result.get("widths", []):
            difference = w["operator_difference"]
            rows.append([
                name, f"{w['rate']:g}",
                f"{w['sliced_ms_thread']:.3f}", f"{w['native_ms_thread']:.3f}",
                f"{w['ratio_thread']:.3f}", f"{w['ratio_fastest_thread']:.3f}",
                f"{w['ratio_wall']:.3f}",
                f"{w['sliced_bytes']:,}", f"{w['native_bytes']:,}",
                "same" if not difference else
                "+" + ",".join(k.split()[0] for k in difference["extra"]) +
                " -" + ",".join(k.split()[0] for k in difference["missing"]),
                "ok" if not w["shape_mismatches"] else len(w["shape_mismatches"]),
                "yes" if w["within_target"] else "NO",
            ])
    common.print_table(
        "Exported widths of converted keras.applications vs native narrow models "
        "(LiteRT float32, 1 thread, batch 1; input shapes in the result file)",
        ["network", "rate", "sliced ms", "native ms", "ratio cpu", "fastest cpu", "ratio wall",
         "sliced B", "native B", "operators", "shapes", "1.00+-0.05"],
        rows,
    )
    payload = {
        "machine": {
            **common.machine_facts(),
            "litert": getattr(ai_edge_litert, "__version__", "unknown"),
            "litert_threads": 1,
            "note": "shared 2-core machine (other jobs running): ratios are "
                    "medians of per-round ratios of interleaved rounds, each "
                    "in a random order; the thread-CPU-time ratio is the headline",
        },
        "settings": {
            "input_shapes": {name: SHAPES.get(name, SHAPE) for name in results},
            "slice_groups": {name: SLICE_GROUPS.get(name, 8) for name in results},
            "classes": 10, "weights": None,
            "quantization": "float32", "batch": 1, "repeats": args.repeats,
            "min_seconds_per_timing": args.min_seconds, "target": [1 - TARGET, 1 + TARGET],
            "sliced": "the original with random weights (variances positive), "
                      "slice_model, calibrate_batchnorm on random images, export_tflite",
            "native": "the original config with each sliced Conv2D/SeparableConv2D/"
                      "Dense at the width's channel count (one-channel-per-group "
                      "convolutions and LayerScale at their input's), random "
                      "weights, convert_to_tflite",
        },
        "results": results,
    }
    common.write_json("applications_latency", payload, args.output)


if __name__ == "__main__":
    main()

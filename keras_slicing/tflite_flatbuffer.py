"""Reading and editing `.tflite` flatbuffers through their schema.

The operators a converted file holds (so that a file needing Flex or custom
ops, which phone runtimes do not ship, is refused) and the one edit an
export makes: a final QUANTIZE op that gives every width's int8 output the
same scale and zero point. Apart from `export.py` because it works on the
bytes a converter wrote, not on Keras models, through the generated Python
of the TFLite schema (TensorFlow's copy, see `tf_internals.py`).
"""

import flatbuffers
import numpy as np

from keras_slicing.tf_internals import tflite_schema as schema


def share_output_quantization(contents):
    """Gives every file's int8 output one scale and zero point.

    Calibration quantizes each width's output over its own range, but a
    runtime switching widths reads every output with the manifest's single
    scale and zero point. Files whose parameters differ get a final
    QUANTIZE op that requantizes into the union of all ranges.
    """
    params = {}
    for rate, content in contents.items():
        flatbuffer = schema.Model.GetRootAs(content, 0)
        subgraph = flatbuffer.Subgraphs(0)
        tensor = subgraph.Tensors(subgraph.Outputs(0))
        quantization = tensor.Quantization()
        params[rate] = (
            float(quantization.Scale(0)),
            int(quantization.ZeroPoint(0)),
        )
    low = min((-128 - zero_point) * scale for scale, zero_point in params.values())
    high = max((127 - zero_point) * scale for scale, zero_point in params.values())
    scale = float(np.float32((high - low) / 255.0))
    zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
    return {
        rate: content
        if params[rate] == (scale, zero_point)
        else _append_requantize(content, scale, zero_point)
        for rate, content in contents.items()
    }


def _append_requantize(content, scale, zero_point):
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    subgraph = model.subgraphs[0]
    source_index = subgraph.outputs[0]
    source = subgraph.tensors[source_index]
    target = schema.TensorT()
    target.shape = source.shape
    target.shapeSignature = source.shapeSignature
    target.type = source.type
    target.name = source.name
    source.name = (source.name or b"output") + b"_before_requantize"
    model.buffers.append(schema.BufferT())
    target.buffer = len(model.buffers) - 1
    target.quantization = schema.QuantizationParametersT()
    target.quantization.scale = [scale]
    target.quantization.zeroPoint = [zero_point]
    subgraph.tensors.append(target)
    target_index = len(subgraph.tensors) - 1

    quantize = schema.BuiltinOperator.QUANTIZE
    codes = model.operatorCodes
    opcode = next(
        (
            i for i, code in enumerate(codes)
            if max(code.builtinCode, code.deprecatedBuiltinCode) == quantize
        ),
        None,
    )
    if opcode is None:
        code = schema.OperatorCodeT()
        code.builtinCode = quantize
        code.deprecatedBuiltinCode = quantize
        codes.append(code)
        opcode = len(codes) - 1
    # Version 2 of QUANTIZE covers int8 -> int8 requantization.
    codes[opcode].version = max(codes[opcode].version, 2)
    operator = schema.OperatorT()
    operator.opcodeIndex = opcode
    operator.inputs = [source_index]
    operator.outputs = [target_index]
    operator.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
    operator.builtinOptions = schema.QuantizeOptionsT()
    subgraph.operators.append(operator)
    subgraph.outputs = [target_index]
    for signature in model.signatureDefs or []:
        for output in signature.outputs or []:
            if output.tensorIndex == source_index:
                output.tensorIndex = target_index
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_op_names(content):
    """Operator names of a `.tflite` flatbuffer; custom ops by their code."""
    return [name for name, _ in _operator_codes(content)]


def tflite_operators(content):
    """The operators of a `.tflite` file's first subgraph, in execution order.

    Unlike `tflite_op_names` (the distinct operator codes), this lists every
    operator with the shapes of its outputs, so two files doing the same work
    compare equal and an extra `SLICE`, `PAD` or `RESHAPE` shows.

    Returns:
        A list of `(operator name, tuple of output shapes)`.
    """
    names = [name for name, _ in _operator_codes(content)]
    subgraph = schema.Model.GetRootAs(content, 0).Subgraphs(0)
    operators = []
    for i in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(i)
        shapes = tuple(
            tuple(int(d) for d in subgraph.Tensors(operator.Outputs(j)).ShapeAsNumpy())
            for j in range(operator.OutputsLength())
        )
        operators.append((names[operator.OpcodeIndex()], shapes))
    return operators


def check_builtin_ops(content, what="model"):
    """Raises a `ValueError` if the flatbuffer holds Flex or custom ops."""
    custom = [name for name, is_custom in _operator_codes(content) if is_custom]
    if custom:
        raise ValueError(
            f"{what}: the converted file holds operators outside the TFLite "
            f"builtins (Flex or custom), which phone runtimes do not ship. "
            f"Received: {custom}"
        )


def _operator_codes(content):
    names = {
        value: key
        for key, value in vars(schema.BuiltinOperator).items()
        if not key.startswith("_")
    }
    flatbuffer = schema.Model.GetRootAs(content, 0)
    codes = []
    for i in range(flatbuffer.OperatorCodesLength()):
        code = flatbuffer.OperatorCodes(i)
        # Codes above 127 live only in builtin_code; older files only fill
        # deprecated_builtin_code.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            codes.append(((code.CustomCode() or b"").decode(), True))
        else:
            codes.append((names.get(builtin, str(builtin)), False))
    return codes

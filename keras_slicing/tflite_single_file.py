"""One `.tflite` file holding every width, each weight stored once.

The per-width files that `export_tflite` converts are merged into one
flatbuffer: each width's subgraphs are kept exactly as the converter wrote
them (so each signature computes what that width's own file computes) and
each width becomes a signature. What changes is where constant tensors keep
their bytes. A narrow width's weight is the leading block of the wider
width's (the first channels of every sliced dimension), so instead of its own
copy it can read the wider weight:

- `"views"` (the default): a block that is contiguous in the wider weight's
  row-major bytes (a bias or normalization vector, a kernel sliced only in
  its first dimension) becomes a buffer that points into those bytes, through
  the schema's `Buffer.offset`/`Buffer.size` (the layout the converter uses
  for files past 2 GB: constant data after the flatbuffer, addressed by file
  offset). Such a tensor stays a static constant, so the kernels and XNNPACK
  treat it exactly as before. A block that is not contiguous (a kernel
  sliced in an inner dimension) keeps bytes of its own.
- `"slices"`: as `"views"`, and every non-contiguous block is cut from the
  wider weight by a builtin `STRIDED_SLICE` whose inputs are all constant,
  which LiteRT evaluates once when the interpreter is prepared. The file
  stores each weight once, but the sliced kernel is no longer a file
  constant, and the operator it feeds runs slower (XNNPACK packs only
  weights it sees as constants; measured in `benchmarks/tflite_latency.py
  --single_file`). Integer
  blocks are never sliced: the builtin integer kernels round differently
  from XNNPACK's, and an int8 width must compute exactly what its own file
  computes.
- `"copies"`: every width keeps its own bytes, as the converter's
  multi-signature conversion does; the file is the sum of the per-width
  files.

Identical byte strings are stored once in every mode. Every tensor of the
file is backed by a buffer the runtime reads at load time, so LiteRT's
verifier (buffer offsets and sizes inside the file, tensor sizes matching
their buffers) checks the result like any converted file.
"""

import dataclasses

import flatbuffers
import numpy as np

from keras_slicing.tf_internals import tflite_schema as schema

SHARING_MODES = ("views", "slices", "copies")
# Buffer data sits after the flatbuffer at this alignment, as the
# converter's own external-buffer files do (and what SIMD loads like).
_ALIGNMENT = 64
# LiteRT reads `offset > 1` as "data at this file offset" (0 and 1 mean
# none); this placeholder makes the first packing the same size as the last.
_PLACEHOLDER_OFFSET = 2**40


@dataclasses.dataclass
class SharingReport:
    """How many bytes each way of storing a width's constants took.

    Attributes:
        own_bytes: Constant bytes stored for this width alone.
        view_bytes: Bytes read through a view of a wider width's weight.
        sliced_bytes: Bytes cut at preparation by `STRIDED_SLICE` ops.
        sliced_tensors: Names of the tensors cut that way.
    """

    own_bytes: int = 0
    view_bytes: int = 0
    sliced_bytes: int = 0
    sliced_tensors: list = dataclasses.field(default_factory=list)


def merge_widths(contents, signature_keys, sharing="views"):
    """Merges per-width `.tflite` files into one with a signature per width.

    Args:
        contents: List of flatbuffers (bytes), widest first, each a
            converted single-signature model.
        signature_keys: The signature name of each, in the same order.
        sharing: One of `SHARING_MODES` (see the module docstring).

    Returns:
        `(content, reports)`: the merged flatbuffer and one `SharingReport`
        per width.
    """
    if sharing not in SHARING_MODES:
        raise ValueError(
            f"merge_widths: unknown sharing. Allowed: {SHARING_MODES}. "
            f"Received: sharing={sharing!r}"
        )
    if len(contents) != len(signature_keys) or not contents:
        raise ValueError(
            "merge_widths: pass one signature key per file. Received: "
            f"{len(contents)} files and {len(signature_keys)} keys"
        )
    merged = schema.ModelT()
    merged.version = 3
    merged.description = b"keras-slicing: one signature per width"
    merged.operatorCodes = []
    merged.subgraphs = []
    merged.buffers = [schema.BufferT()]  # index 0: the empty sentinel
    merged.signatureDefs = []
    merged.metadata = []
    store = _ConstantStore(merged)
    reports = []
    for position, (content, key) in enumerate(zip(contents, signature_keys)):
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
        if len(model.signatureDefs or []) != 1:
            raise ValueError(
                f"merge_widths: file {position} must hold one signature. "
                f"Received: {len(model.signatureDefs or [])}"
            )
        report = SharingReport()
        opcode_map = [_opcode_index(merged, code) for code in model.operatorCodes]
        subgraph_offset = len(merged.subgraphs)
        for subgraph in model.subgraphs:
            for operator in subgraph.operators or []:
                operator.opcodeIndex = opcode_map[operator.opcodeIndex]
                for options in (operator.builtinOptions, operator.builtinOptions2):
                    _shift_subgraph_indices(options, subgraph_offset)
            _drop_inner_names(subgraph)
            slices = []
            for index, tensor in enumerate(subgraph.tensors or []):
                data = _buffer_bytes(model.buffers[tensor.buffer])
                if data is None:
                    tensor.buffer = 0
                    continue
                values = _tensor_values(tensor, data)
                # The widest file is stored as it is; every later file is
                # matched against what is already stored.
                found = None
                if position > 0 and sharing != "copies":
                    found = store.find(values)
                if found is not None and found.contiguous:
                    tensor.buffer = store.view_buffer(found)
                    report.view_bytes += len(data)
                elif (
                    found is not None
                    and sharing == "slices"
                    and values.dtype.kind == "f"
                ):
                    slices.append((index, found))
                    report.sliced_bytes += len(data)
                    report.sliced_tensors.append(_name(tensor))
                else:
                    tensor.buffer = store.add(values, data)
                    report.own_bytes += len(data)
            for index, found in slices:
                _slice_from(merged, subgraph, index, found, store)
        merged.subgraphs.extend(model.subgraphs)
        (signature,) = model.signatureDefs
        signature.signatureKey = key.encode()
        signature.subgraphIndex += subgraph_offset
        merged.subgraphs[signature.subgraphIndex].name = key.encode()
        merged.signatureDefs.append(signature)
        if position == 0:
            for entry in model.metadata or []:
                data = _buffer_bytes(model.buffers[entry.buffer]) or b""
                entry.buffer = store.add_raw(data)
                merged.metadata.append(entry)
        reports.append(report)
    return store.serialize(), reports


@dataclasses.dataclass
class _Match:
    blob: int
    shape: tuple
    start: int  # byte offset of the block in the blob, when contiguous
    size: int
    contiguous: bool


class _ConstantStore:
    """Constant byte strings of the merged file and the buffers reading them."""

    def __init__(self, model):
        self._model = model
        self._blobs = []  # bytes
        self._arrays = []  # the tensor values a blob holds, for matching
        self._buffer_views = {}  # buffer index -> (blob, start, size)

    def find(self, values):
        """A stored tensor whose leading block equals `values`, if any.

        A match whose block is contiguous is preferred: it costs nothing.
        """
        fallback = None
        for blob, stored in enumerate(self._arrays):
            if stored is None or stored.dtype != values.dtype:
                continue
            if stored.ndim != values.ndim or any(
                have < want for have, want in zip(stored.shape, values.shape)
            ):
                continue
            block = stored[tuple(slice(0, n) for n in values.shape)]
            if not np.array_equal(_bits(block), _bits(values)):
                continue
            match = _Match(
                blob, stored.shape, 0, values.nbytes,
                _is_contiguous_prefix(values.shape, stored.shape),
            )
            if match.contiguous:
                return match
            fallback = fallback or match
        return fallback

    def add(self, values, data):
        for blob, stored in enumerate(self._blobs):
            if stored == data and self._arrays[blob].dtype == values.dtype:
                return self._new_buffer(blob, 0, len(data))
        self._blobs.append(bytes(data))
        self._arrays.append(values)
        return self._new_buffer(len(self._blobs) - 1, 0, len(data))

    def add_raw(self, data):
        self._blobs.append(bytes(data))
        self._arrays.append(None)
        return self._new_buffer(len(self._blobs) - 1, 0, len(data))

    def view_buffer(self, match):
        return self._new_buffer(match.blob, match.start, match.size)

    def whole_buffer(self, match):
        return self._new_buffer(match.blob, 0, len(self._blobs[match.blob]))

    def _new_buffer(self, blob, start, size):
        if size == 0:
            return 0
        buffer = schema.BufferT()
        self._model.buffers.append(buffer)
        index = len(self._model.buffers) - 1
        self._buffer_views[index] = (blob, start, size)
        return index

    def serialize(self):
        """Packs the flatbuffer, then appends the blobs it points at."""
        for index, (_, _, size) in self._buffer_views.items():
            buffer = self._model.buffers[index]
            buffer.offset = _PLACEHOLDER_OFFSET
            buffer.size = size
        head = _pack(self._model)
        data_start = _align(len(head))
        blob_offsets = []
        position = data_start
        for blob in self._blobs:
            blob_offsets.append(position)
            position = _align(position + len(blob))
        for index, (blob, start, size) in self._buffer_views.items():
            self._model.buffers[index].offset = blob_offsets[blob] + start
        packed = _pack(self._model)
        if len(packed) != len(head):
            raise AssertionError("flatbuffer size changed between packings")
        out = bytearray(position)
        out[: len(packed)] = packed
        for blob, offset in zip(self._blobs, blob_offsets):
            out[offset : offset + len(blob)] = blob
        return bytes(out)


def _slice_from(model, subgraph, index, match, store):
    """Makes tensor `index` the output of a STRIDED_SLICE of the stored one."""
    tensor = subgraph.tensors[index]
    tensor.buffer = 0
    source = schema.TensorT()
    source.shape = list(match.shape)
    source.type = tensor.type
    source.name = _name(tensor).encode() + b"/source"
    source.buffer = store.whole_buffer(match)
    if tensor.quantization is not None and tensor.quantization.scale is not None:
        # The slice copies bytes; the source carries the block's per-tensor
        # parameters only when they are per-tensor (int8 kernels check them).
        quantization = tensor.quantization
        if len(quantization.scale) == 1:
            source.quantization = quantization
    inputs = [_append(subgraph, source)]
    rank = len(match.shape)
    for name, values in (
        ("begin", [0] * rank),
        ("end", list(tensor.shape)),
        ("strides", [1] * rank),
    ):
        bound = schema.TensorT()
        bound.shape = [rank]
        bound.type = schema.TensorType.INT32
        bound.name = _name(tensor).encode() + b"/" + name.encode()
        array = np.asarray(values, dtype="<i4")
        bound.buffer = store.add(array, array.tobytes())
        inputs.append(_append(subgraph, bound))
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.STRIDED_SLICE
    code.deprecatedBuiltinCode = schema.BuiltinOperator.STRIDED_SLICE
    # Version 4 covers int8, int16 and ranks up to 5.
    code.version = 4 if rank <= 4 else 5
    operator = schema.OperatorT()
    operator.opcodeIndex = _opcode_index(model, code)
    operator.inputs = inputs
    operator.outputs = [index]
    operator.builtinOptionsType = schema.BuiltinOptions.StridedSliceOptions
    operator.builtinOptions = schema.StridedSliceOptionsT()
    subgraph.operators.insert(0, operator)


def _drop_inner_names(subgraph):
    """Clears the names of tensors other than the inputs and outputs.

    The converter names every tensor after its Keras op (a few kilobytes a
    width); nothing reads them, signatures address tensors by index.
    """
    keep = set(subgraph.inputs or []) | set(subgraph.outputs or [])
    for index, tensor in enumerate(subgraph.tensors or []):
        if index not in keep:
            tensor.name = b""


def _append(subgraph, tensor):
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _opcode_index(model, code):
    key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
    for i, have in enumerate(model.operatorCodes):
        if (have.builtinCode, have.deprecatedBuiltinCode, have.customCode,
                have.version) == key:
            return i
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _shift_subgraph_indices(options, offset):
    if options is None or offset == 0:
        return
    for name, value in vars(options).items():
        if isinstance(value, int) and (
            name.endswith("SubgraphIndex") or name == "subgraph"
        ):
            setattr(options, name, value + offset)


def _buffer_bytes(buffer):
    if buffer is None or buffer.data is None or len(buffer.data) == 0:
        return None
    return np.asarray(buffer.data, dtype=np.uint8).tobytes()


_DTYPES = {
    "FLOAT32": "<f4", "FLOAT16": "<f2", "FLOAT64": "<f8", "INT8": "i1",
    "UINT8": "u1", "INT16": "<i2", "UINT16": "<u2", "INT32": "<i4",
    "UINT32": "<u4", "INT64": "<i8", "UINT64": "<u8", "BOOL": "?",
}


def _tensor_values(tensor, data):
    """The tensor's values as an array, or raw bytes for other types."""
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    dtype = _DTYPES.get(names.get(tensor.type))
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    if dtype is None or tensor.sparsity is not None:
        return np.frombuffer(data, dtype=np.uint8)
    values = np.frombuffer(data, dtype=dtype)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        return np.frombuffer(data, dtype=np.uint8)
    return values.reshape(shape)


def _bits(values):
    """Values as unsigned integers, so that -0.0 and NaN compare by bits."""
    if values.dtype.kind in "fb":
        return values.view(f"u{values.dtype.itemsize}")
    return values


def _is_contiguous_prefix(block, full):
    """Whether the leading `block` of a row-major `full` array is its prefix."""
    for k in range(len(full)):
        if block[k] != full[k]:
            return all(n == 1 for n in block[:k]) and tuple(block[k + 1 :]) == tuple(
                full[k + 1 :]
            )
    return True


def _name(tensor):
    name = tensor.name or b""
    return name.decode() if isinstance(name, bytes) else str(name)


def _align(n):
    return -(-n // _ALIGNMENT) * _ALIGNMENT


def _pack(model):
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

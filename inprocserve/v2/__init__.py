"""The Open Inference Protocol (KServe v2 REST), framework-free: codec, metadata and endpoints.

The Flask and Django plug-ins serve it with one setting; this module is what they share, and what a
client or another integration can use on its own::

    from inprocserve import v2

    body, headers = v2.encode_infer_request({"x": rows}, binary=True)
    request = v2.decode_infer_request(body, headers)          # hostile input -> InvalidInputError
    prediction = server.predict("fraud", request.inputs)
    body, headers = v2.encode_infer_response(prediction, request.outputs, binary=request.binary_output)

JSON tensors and the binary tensor data extension (``Inference-Header-Content-Length``) are supported,
with datatypes BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 and BYTES (text). See
``docs/protocol.md``.
"""

from __future__ import annotations

from ._client_codec import decode_infer_response, encode_infer_request
from ._codec import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    Limits,
    RequestedOutput,
    TensorHeader,
    decode_infer_request,
    encode_infer_response,
)
from ._datatypes import DATATYPES, datatype_of, datatype_of_onnx, numpy_dtype
from ._endpoints import Endpoints, Response, model_metadata, server_metadata, server_readiness

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "Endpoints",
    "InferRequest",
    "InferResponse",
    "Limits",
    "RequestedOutput",
    "Response",
    "TensorHeader",
    "datatype_of",
    "datatype_of_onnx",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "model_metadata",
    "numpy_dtype",
    "server_metadata",
    "server_readiness",
]

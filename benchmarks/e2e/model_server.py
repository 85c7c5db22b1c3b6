"""The out-of-process model server of the end-to-end benchmark: LitServe serving one reference model.

Runs in its own virtual environment (LitServe's dependencies stay out of the project's), made by
``http_e2e.py``::

    .venv-bench-litserve/bin/python benchmarks/e2e/model_server.py MODEL_ONNX --name mlp-small --port 8100

``POST /predict/<name>`` takes ``{"x": [[...features]]}`` and answers ``{"y": [[...]]}``. LitServe's own
dynamic batching is on (``--max-batch-size``, ``--batch-timeout-s``), as its documentation recommends for
throughput, with ZeroMQ between its HTTP and inference processes (``fast_queue``); the inference worker holds
one onnxruntime session with onnxruntime's default options, like the naive variant.
"""

import argparse
from typing import Any

import litserve as ls
import numpy as np


class OnnxAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device: Any) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(self.model_path, providers=["CPUExecutionProvider"])

    def decode_request(self, request: dict) -> np.ndarray:  # type: ignore[type-arg]  # FastAPI reads it
        return np.asarray(request["x"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x})[0]  # type: ignore[no-any-return]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return [output[i : i + 1] for i in range(len(output))]

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"y": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-s", type=float, default=0.001)
    parser.add_argument("--api-servers", type=int, default=1)
    parser.add_argument("--queue", choices=["zmq", "multiprocessing"], default="zmq")
    args = parser.parse_args()
    api = OnnxAPI(
        args.model_path,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_s,
        api_path=f"/predict/{args.name}",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.queue == "zmq", timeout=30)
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()

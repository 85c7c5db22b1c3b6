"""Train three fraud scorers on synthetic transactions and write them as ONNX model versions.

No downloads: the transactions are generated here with a fixed seed, the models are trained with numpy
(logistic regression, then two small neural networks) and written with onnx.helper.
"""

from __future__ import annotations

import os
from pathlib import Path

if __name__ == "__main__":  # run as a script: one BLAS thread, read when numpy loads (see run.py for why)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = [
    "amount_log",
    "hour_sin",
    "hour_cos",
    "merchant_risk",
    "distance_km_log",
    "tx_last_hour",
    "card_age_years",
    "foreign",
]


def transactions(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic card transactions and fraud labels (about 6 % fraud)."""
    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, count)
    x = np.column_stack(
        [
            rng.normal(3.5, 1.2, count),  # log amount
            np.sin(hour / 24 * 2 * np.pi),
            np.cos(hour / 24 * 2 * np.pi),
            rng.beta(2, 8, count),  # merchant risk score
            rng.normal(2.0, 1.5, count),  # log distance from home
            rng.poisson(1.2, count).astype(float),  # transactions in the last hour
            rng.exponential(3.0, count),  # card age
            rng.random(count) < 0.1,  # foreign merchant
        ]
    ).astype(np.float32)
    logit = (
        -5.2
        + 0.6 * (x[:, 0] - 3.5)
        + 3.5 * x[:, 3]
        + 0.45 * x[:, 4]
        + 0.5 * x[:, 5]
        - 0.25 * x[:, 6]
        + 1.2 * x[:, 7]
        + 0.8 * (x[:, 1] < -0.5) * (x[:, 5] > 2)  # night bursts: a non-linear pattern
    )
    y = (rng.random(count) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, y


def train_logistic(x: np.ndarray, y: np.ndarray, epochs: int = 300) -> tuple[np.ndarray, np.ndarray]:
    w, b = np.zeros((x.shape[1], 1), np.float32), np.zeros(1, np.float32)
    for _ in range(epochs):
        p = 1 / (1 + np.exp(-np.clip(x @ w + b, -30, 30)))
        grad = p[:, 0] - y
        w -= 0.5 * (x.T @ grad[:, None]) / len(y)
        b -= 0.5 * grad.mean()
    return w, b


def train_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int, seed: int, epochs: int = 100, rate: float = 0.02
) -> list[np.ndarray]:
    """One hidden ReLU layer, full-batch Adam: 100 steps reach a test AUC of about 0.82-0.83, where plain
    gradient descent took 400 for 0.815 (four times the demo's training time)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((x.shape[1], hidden)) / np.sqrt(x.shape[1])).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(1, np.float32)
    params = [w1, b1, w2, b2]
    first = [np.zeros_like(p) for p in params]  # Adam's running mean of each gradient
    second = [np.zeros_like(p) for p in params]  # and of its square
    for step in range(1, epochs + 1):
        h = np.maximum(x @ w1 + b1, 0)
        p = 1 / (1 + np.exp(-np.clip(h @ w2 + b2, -30, 30)))
        d2 = (p[:, 0] - y)[:, None] / len(y)
        dh = (d2 @ w2.T) * (h > 0)
        for param, grad, m, v in zip(params, (x.T @ dh, dh.sum(0), h.T @ d2, d2.sum(0)), first, second, strict=True):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return params


def _export(nodes: list, inits: list, path: Path) -> None:
    """Append [1 - p, p] as ``probability`` [batch, 2] after the node computing ``fraud_logit``."""
    zero = numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero_logit")
    nodes = [
        *nodes,
        helper.make_node("Mul", ["fraud_logit", "zero_logit"], ["legit_logit"]),  # [batch, 1] of zeros
        helper.make_node("Concat", ["legit_logit", "fraud_logit"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probability"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fraud",
        [helper.make_tensor_value_info("transactions", TensorProto.FLOAT, ["batch", len(FEATURES)])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 2])],
        [*inits, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def roc_auc(probability: np.ndarray, label: np.ndarray) -> float:
    """The chance that a fraud scores above a legitimate transaction (a tie counts half): 0.5 is guessing.
    Unlike accuracy it is not flattered by how rare fraud is."""
    fraud, legitimate = probability[label > 0.5], probability[label <= 0.5]
    above = (fraud[:, None] > legitimate[None, :]).sum() + 0.5 * (fraud[:, None] == legitimate[None, :]).sum()
    return float(above / (len(fraud) * len(legitimate)))


def build(repository: Path) -> dict[int, dict[str, float]]:
    """Write fraud/1 (logistic regression), fraud/2 and fraud/3 (MLPs); return each one's test ``accuracy``,
    ``baseline`` (the accuracy of answering "not fraud" every time: about 0.94, as 6 % are fraud, so an
    accuracy alone says little) and ``auc`` (``roc_auc``)."""
    x, y = transactions(40_000, seed=0)
    test_x, test_y = transactions(10_000, seed=1)
    folder = repository / "fraud"
    w, b = train_logistic(x, y)
    _export(
        [helper.make_node("Gemm", ["transactions", "w", "b"], ["fraud_logit"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        folder / "1" / "model.onnx",
    )
    for version, hidden, seed in ((2, 32, 2), (3, 64, 3)):
        w1, b1, w2, b2 = train_mlp(x, y, hidden, seed)
        _export(
            [
                helper.make_node("Gemm", ["transactions", "w1", "b1"], ["h"]),
                helper.make_node("Relu", ["h"], ["hr"]),
                helper.make_node("Gemm", ["hr", "w2", "b2"], ["fraud_logit"]),
            ],
            [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
            folder / str(version) / "model.onnx",
        )
    (folder / "config.toml").write_text(
        """# version 1 is stable; version 2 answers 10 % of users (sticky); version 3 runs in the shadow
[rollout]
strategy = "canary"
stable = 1

[rollout.canary]
version = 2
percent = 10

[rollout.shadow]
versions = [3]
"""
    )
    np.savez(folder / "reference.npz", transactions=test_x[:5000])
    with (folder / "config.toml").open("a") as handle:
        handle.write('\n[drift]\nreference_file = "reference.npz"\nwindow = 2000\n')
    import onnxruntime as ort

    accuracy: dict[int, dict[str, float]] = {}
    for version in (1, 2, 3):
        session = ort.InferenceSession(str(folder / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
        p = session.run(None, {"transactions": test_x})[0][:, 1]
        accuracy[version] = {
            "accuracy": float(((p > 0.5) == (test_y > 0.5)).mean()),
            "baseline": float((test_y <= 0.5).mean()),
            "auc": roc_auc(p, test_y),
        }
    return accuracy


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "repository",
        nargs="?",
        type=Path,
        default=Path(__file__).parent / "models",
        help="the model repository to write fraud/{1,2,3}/model.onnx and fraud/config.toml into "
        "(default: models/ beside this script)",
    )
    for version, scores in build(parser.parse_args().repository).items():
        print(f"fraud v{version}: ROC AUC {scores['auc']:.3f}, accuracy {scores['accuracy']:.3f}")

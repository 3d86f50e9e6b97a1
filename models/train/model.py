"""The linear intent model: feature matrices, fitting, and the ONNX export read by tract."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression

import features as F

OPSET = 13
IR_VERSION = 8
MAX_ITER = 5000


def feature_matrix(texts) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for i, t in enumerate(texts):
        idx, val = F.extract(t)
        rows += [i] * len(idx)
        cols += idx
        vals += val
    return sp.csr_matrix(
        (np.asarray(vals, dtype=np.float64), (rows, cols)), shape=(len(texts), F.BUCKETS)
    )


def fit(x: sp.csr_matrix, y: np.ndarray, c: float) -> LogisticRegression:
    """Multinomial logistic regression, L2, lbfgs: deterministic for the same inputs."""
    return LogisticRegression(C=c, max_iter=MAX_ITER, tol=1e-6).fit(x, y)


def model_version(data_sha256: str, params: dict) -> str:
    h = hashlib.sha256((data_sha256 + json.dumps(params, sort_keys=True)).encode())
    return f"intent-v{F.FEATURE_SPEC_VERSION}-{h.hexdigest()[:12]}"


def to_onnx(clf: LogisticRegression, labels: list[str], metadata: dict[str, str]) -> bytes:
    """indices int64 [N], values float32 [N] → probabilities float32 [12].

    Gather(W, indices) [N,12]; values as [1,N] MatMul → [1,12]; + bias; Softmax; squeeze.
    W is the classifier's coefficients transposed (buckets × labels), float32.
    """
    assert list(clf.classes_) == list(range(len(labels)))
    w = np.ascontiguousarray(clf.coef_.T.astype(np.float32))
    b = clf.intercept_.astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["W", "indices"], ["rows"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["values", "axis0"], ["values_row"], name="unsqueeze"),
        helper.make_node("MatMul", ["values_row", "rows"], ["scores"], name="matmul"),
        helper.make_node("Add", ["scores", "b"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["probs_row"], axis=-1, name="softmax"),
        helper.make_node("Squeeze", ["probs_row", "axis0"], ["probabilities"], name="squeeze"),
    ]
    graph = helper.make_graph(
        nodes,
        "aisle_intent",
        inputs=[
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N"]),
        ],
        outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [len(labels)])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        ],
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="aisle-models/train",
        producer_version="1",
    )
    m.ir_version = IR_VERSION
    for k, v in metadata.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(m)
    return m.SerializeToString(deterministic=True)


def numpy_predict(onnx_bytes: bytes, idx, val) -> np.ndarray:
    """The ONNX graph's arithmetic in numpy (float64), for checking without a runtime."""
    m = onnx.load_from_string(onnx_bytes)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    z = np.asarray(val, dtype=np.float64) @ inits["W"][np.asarray(idx, dtype=np.int64)]
    z = z + inits["b"]
    z = np.exp(z - z.max())
    return z / z.sum()

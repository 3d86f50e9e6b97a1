"""The exported ONNX graph: onnxruntime agrees with scikit-learn; the committed model's
metadata and its outputs on the golden inputs."""

import json
import os
import sys
import unittest
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import data as D  # noqa: E402
import features as F  # noqa: E402
import golden  # noqa: E402
import model as M  # noqa: E402

ONNX_PATH = D.MODELS_DIR / "intent.onnx"


def session(onnx_bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def run(sess, text):
    idx, val = F.extract(text)
    if not idx:  # as the Rust side does: one zero-weight entry
        idx, val = [0], [0.0]
    return sess.run(
        ["probabilities"],
        {"indices": np.asarray(idx, dtype=np.int64), "values": np.asarray(val, dtype=np.float32)},
    )[0]


class ExportMatchesSklearn(unittest.TestCase):
    """A small model fitted here (a slice of the data, quick) and exported the same way."""

    @classmethod
    def setUpClass(cls):
        rows = D.load()[::3]
        texts = [r[2] for r in rows]
        y = np.array([r[1] for r in rows])
        cls.clf = M.fit(M.feature_matrix(texts), y, 30.0)
        meta = {"labels": ",".join(D.LABELS), "feature_spec_version": F.FEATURE_SPEC_VERSION}
        cls.onnx_bytes = M.to_onnx(cls.clf, D.LABELS, meta)
        cls.sess = session(cls.onnx_bytes)
        cls.texts = golden.TRICKY + [r[2] for r in D.load()[1::7]]

    def test_onnxruntime_vs_sklearn(self):
        want = self.clf.predict_proba(M.feature_matrix(self.texts))
        worst = 0.0
        for t, w in zip(self.texts, want):
            got = run(self.sess, t)
            self.assertEqual(got.shape, (12,))
            worst = max(worst, float(np.abs(got - w).max()))
            np.testing.assert_allclose(got, w, atol=1e-4, err_msg=repr(t))
        print(f"\n  {len(self.texts)} inputs, max |onnxruntime - sklearn| = {worst:.2e}")

    def test_numpy_reference_vs_sklearn(self):
        want = self.clf.predict_proba(M.feature_matrix(self.texts[:50]))
        for t, w in zip(self.texts[:50], want):
            idx, val = F.extract(t)
            np.testing.assert_allclose(M.numpy_predict(self.onnx_bytes, idx, val), w, atol=1e-5)

    def test_graph_uses_standard_ops_only(self):
        m = onnx.load_from_string(self.onnx_bytes)
        ops = {n.op_type for n in m.graph.node}
        self.assertLessEqual(ops, {"Gather", "Unsqueeze", "MatMul", "Add", "Softmax", "Squeeze"})
        self.assertEqual([o.domain for o in m.opset_import], [""])


class CommittedModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bytes = ONNX_PATH.read_bytes()
        cls.model = onnx.load_from_string(cls.bytes)
        cls.sess = session(cls.bytes)

    def test_metadata(self):
        meta = {p.key: p.value for p in self.model.metadata_props}
        self.assertEqual(meta["labels"], ",".join(D.LABELS))
        self.assertEqual(meta["feature_spec_version"], "1")
        self.assertEqual(meta["training_data_sha256"], D.training_data_sha256())
        params = json.loads(meta["training_params"])
        self.assertEqual(meta["model_version"], M.model_version(D.training_data_sha256(), params))
        self.assertEqual(params["hash_bits"], F.HASH_BITS)

    def test_size(self):
        self.assertLess(len(self.bytes), 1_200_000)

    def test_golden_outputs(self):
        with open(D.MODELS_DIR / "testdata" / "golden_outputs.jsonl", encoding="utf-8") as f:
            recs = [json.loads(line) for line in f]
        self.assertGreater(len(recs), 200)
        for r in recs:
            got = run(self.sess, r["text"])
            np.testing.assert_allclose(got, r["probabilities"], atol=1e-4, err_msg=repr(r["text"]))
            self.assertEqual(D.LABELS[int(got.argmax())], r["intent"])


if __name__ == "__main__":
    unittest.main()

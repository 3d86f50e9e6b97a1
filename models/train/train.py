#!/usr/bin/env python3
"""Train the retail intent classifier and export models/intent.onnx.

    python3 models/train/train.py            # rebuild the model, golden files, README section
    python3 models/train/train.py --check    # rebuild into a temporary directory and compare

Steps: read models/data/, split train/dev by the GUIDELINES.md rule, choose the L2 strength C
on dev (best dev accuracy over C_GRID, ties to the smaller C), report dev accuracy per
language and the confusion matrix of that train-only model, then refit with the chosen C on
train + dev (every line we have) and export that model. Deterministic: the same data and
package versions give the same bytes (single-threaded BLAS, lbfgs, ordered serialisation).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as D  # noqa: E402
import features as F  # noqa: E402
import golden  # noqa: E402
import model as M  # noqa: E402

C_GRID = [3.0, 10.0, 30.0, 100.0]
README_BEGIN = "<!-- BEGIN GENERATED: train.py -->"
README_END = "<!-- END GENERATED: train.py -->"
GOLDEN_OUTPUT_DEV_LINES = 240


def confusion(y_true, y_pred, k):
    m = np.zeros((k, k), dtype=int)
    for t, p in zip(y_true, y_pred):
        m[t, p] += 1
    return m


def report(rows, dev_pred, dev_proba, chosen_c, grid_scores, meta) -> str:
    dev = [r for r in rows if r[3]]
    y = np.array([r[1] for r in dev])
    langs = np.array([r[0] for r in dev])
    lines = [README_BEGIN, ""]
    lines.append(
        f"Model `{meta['model_version']}`; training data sha256 `{meta['training_data_sha256']}`."
    )
    lines.append("")
    n_train = sum(1 for r in rows if not r[3])
    lines.append(
        f"Split (GUIDELINES.md rule): {n_train} train, {len(dev)} dev messages. "
        f"C chosen on dev: {chosen_c:g} (dev accuracy by C: "
        + ", ".join(f"{c:g} → {a:.3f}" for c, a in grid_scores)
        + "). The figures below are of the model fitted on **train only**; the shipped "
        "`intent.onnx` is refitted on train + dev with the same C."
    )
    lines.append("")
    lines.append("| dev set | messages | accuracy | macro-F1 |")
    lines.append("| --- | ---: | ---: | ---: |")
    for name, mask in [("en", langs == "en"), ("zh", langs == "zh"), ("all", langs != "")]:
        yt, yp = y[mask], dev_pred[mask]
        f1s = []
        for k in range(len(D.LABELS)):
            tp = np.sum((yt == k) & (yp == k))
            fp = np.sum((yt != k) & (yp == k))
            fn = np.sum((yt == k) & (yp != k))
            f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        lines.append(
            f"| {name} | {mask.sum()} | {np.mean(yt == yp):.3f} | {np.mean(f1s):.3f} |"
        )
    lines.append("")
    lines.append("Confusion matrix on dev (en + zh; rows = true label, columns = predicted):")
    lines.append("")
    short = [lbl for lbl in D.LABELS]
    cm = confusion(y, dev_pred, len(D.LABELS))
    lines.append("| true \\ predicted | " + " | ".join(f"{i}" for i in range(len(short))) + " |")
    lines.append("| --- |" + " ---: |" * len(short))
    for i, lbl in enumerate(short):
        lines.append(f"| {i} {lbl} | " + " | ".join(str(v) for v in cm[i]) + " |")
    lines.append("")
    conf = dev_proba.max(axis=1)
    lines.append(
        "Confidence on dev (the top probability; for choosing a threshold below which the "
        "edge asks again or offers a person):"
    )
    lines.append("")
    lines.append("| confidence ≥ | share of messages | accuracy on them |")
    lines.append("| ---: | ---: | ---: |")
    for t in [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]:
        sel = conf >= t
        acc = np.mean(dev_pred[sel] == y[sel]) if sel.any() else float("nan")
        lines.append(f"| {t:.1f} | {sel.mean():.3f} | {acc:.3f} |")
    ece = 0.0
    bins = np.linspace(0, 1, 11)
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(np.mean(dev_pred[sel] == y[sel]) - conf[sel].mean())
    lines.append("")
    lines.append(
        f"Expected calibration error on dev (10 bins): {ece:.3f}; mean confidence "
        f"{conf.mean():.3f} vs accuracy {np.mean(dev_pred == y):.3f}."
    )
    lines.append("")
    lines.append(README_END)
    return "\n".join(lines)


def build(out_dir: Path, data_dir: Path = D.DATA_DIR, log=print) -> dict:
    rows = D.load(data_dir)
    train = [r for r in rows if not r[3]]
    dev = [r for r in rows if r[3]]
    x_train = M.feature_matrix([r[2] for r in train])
    y_train = np.array([r[1] for r in train])
    x_dev = M.feature_matrix([r[2] for r in dev])
    y_dev = np.array([r[1] for r in dev])

    grid_scores = []
    best = None
    for c in C_GRID:
        clf = M.fit(x_train, y_train, c)
        acc = float(np.mean(clf.predict(x_dev) == y_dev))
        grid_scores.append((c, acc))
        log(f"C={c:g}: dev accuracy {acc:.4f}")
        if best is None or acc > best[1] + 1e-12:
            best = (c, acc, clf)
    chosen_c, _, dev_clf = best
    dev_proba = dev_clf.predict_proba(x_dev)
    dev_pred = dev_proba.argmax(axis=1)

    data_sha = D.training_data_sha256(data_dir)
    params = {
        "C": chosen_c,
        "hash_bits": F.HASH_BITS,
        "ngram": [F.NGRAM_MIN, F.NGRAM_MAX],
        "max_iter": M.MAX_ITER,
        "fit_on": "train+dev",
    }
    meta = {
        "labels": ",".join(D.LABELS),
        "feature_spec_version": F.FEATURE_SPEC_VERSION,
        "training_data_sha256": data_sha,
        "model_version": M.model_version(data_sha, params),
        "training_params": json.dumps(params, sort_keys=True),
    }

    x_all = M.feature_matrix([r[2] for r in rows])
    y_all = np.array([r[1] for r in rows])
    final = M.fit(x_all, y_all, chosen_c)
    onnx_bytes = M.to_onnx(final, D.LABELS, meta)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "testdata").mkdir(exist_ok=True)
    (out_dir / "intent.onnx").write_bytes(onnx_bytes)
    log(f"intent.onnx: {len(onnx_bytes)} bytes, {meta['model_version']}")

    # Golden outputs: the shipped sklearn model's probabilities (float64) for tricky inputs
    # and a slice of dev; Rust checks tract's output against them within 1e-4.
    texts = golden.TRICKY + [r[2] for r in dev[::max(1, len(dev) // GOLDEN_OUTPUT_DEV_LINES)]]
    proba = final.predict_proba(M.feature_matrix(texts))
    golden.write_jsonl(
        out_dir / "testdata" / "golden_outputs.jsonl",
        [
            {
                "text": t,
                "intent": D.LABELS[int(p.argmax())],
                "probabilities": [round(float(v), 8) for v in p],
            }
            for t, p in zip(texts, proba)
        ],
    )
    write_feature_goldens(out_dir, rows)

    section = report(rows, dev_pred, dev_proba, chosen_c, grid_scores, meta)
    (out_dir / "testdata" / "README.generated.md").write_text(section + "\n", encoding="utf-8")
    return meta


def write_feature_goldens(out_dir: Path, rows) -> None:
    sample = [r[2] for r in rows[::25]]
    golden.write_jsonl(
        out_dir / "testdata" / "golden_features.jsonl", golden.feature_records(sample)
    )
    golden.write_jsonl(out_dir / "testdata" / "random_unicode.jsonl", golden.random_records())


def splice_readme(readme: Path, section: str) -> None:
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
        text = head + section.strip() + tail
    else:
        text = text + "\n" + section.strip() + "\n"
    readme.write_text(text, encoding="utf-8")


COMPARED = [
    "intent.onnx",
    "testdata/golden_outputs.jsonl",
    "testdata/golden_features.jsonl",
    "testdata/random_unicode.jsonl",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir, compare bytes")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            bad = [
                p
                for p in COMPARED
                if (Path(tmp) / p).read_bytes() != (M_DIR / p).read_bytes()
            ]
        if bad:
            print("differs from the committed files: " + ", ".join(bad))
            return 1
        print("reproduced bit-for-bit: " + ", ".join(COMPARED))
        return 0
    build(M_DIR)
    gen = M_DIR / "testdata" / "README.generated.md"
    splice_readme(M_DIR / "README.md", gen.read_text(encoding="utf-8"))
    gen.unlink()
    print("wrote models/intent.onnx, models/testdata/*.jsonl, models/README.md section")
    return 0


M_DIR = D.MODELS_DIR

if __name__ == "__main__":
    sys.exit(main())

"""The retail intent data (models/data/) and its deterministic train/dev split."""

from __future__ import annotations

import hashlib
from pathlib import Path

# The contract with the edge: exactly these labels, in this order (the model's output order).
LABELS = [
    "order_status",
    "return_refund",
    "product_availability",
    "product_info",
    "price_promotion",
    "store_info",
    "payment",
    "membership",
    "complaint",
    "human_agent",
    "greeting",
    "other",
]
LANGS = ["en", "zh"]

MODELS_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = MODELS_DIR / "data"


def data_files(data_dir: Path = DATA_DIR) -> list[Path]:
    """The data files in the order that defines training_data_sha256: language, then label."""
    return [data_dir / lang / f"{label}.txt" for lang in LANGS for label in LABELS]


def training_data_sha256(data_dir: Path = DATA_DIR) -> str:
    """SHA-256 over, for each file in data_files() order: '<lang>/<label>.txt\\n', then its bytes."""
    h = hashlib.sha256()
    for p in data_files(data_dir):
        h.update(f"{p.parent.name}/{p.name}\n".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def is_dev(line: str) -> bool:
    """GUIDELINES.md: dev when the last byte of SHA-256(UTF-8 bytes) is ≡ 0 (mod 5)."""
    return hashlib.sha256(line.encode("utf-8")).digest()[-1] % 5 == 0


def load(data_dir: Path = DATA_DIR):
    """Every message as (lang, label index, text, is_dev), in data_files() order."""
    rows = []
    for p in data_files(data_dir):
        lang, label = p.parent.name, p.stem
        for line in p.read_text(encoding="utf-8").split("\n"):
            if line == "":
                continue
            rows.append((lang, LABELS.index(label), line, is_dev(line)))
    return rows

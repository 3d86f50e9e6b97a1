"""Feature spec v1 (models/FEATURES.md), the Python side.

The Rust side is `models/src/features.rs`; both must produce the same sparse vector for every
input (golden files in models/testdata/ are checked by the tests of both).
"""

from __future__ import annotations

import math
import unicodedata

FEATURE_SPEC_VERSION = "1"
# Buckets of the hashing trick: 2**HASH_BITS.
HASH_BITS = 14
BUCKETS = 1 << HASH_BITS
NGRAM_MIN = 1
NGRAM_MAX = 4
# Code points kept after normalisation (longer messages are cut: bounded cost per message).
MAX_CHARS = 512

# Unicode's White_Space property (PropList.txt), hard-coded: Python's str.isspace() and
# Rust's char::is_whitespace() disagree (U+001C..U+001F, U+0085 ...), this list decides.
WHITE_SPACE = frozenset(
    [0x0009, 0x000A, 0x000B, 0x000C, 0x000D, 0x0020, 0x0085, 0x00A0, 0x1680]
    + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)

FNV32_OFFSET = 0x811C9DC5
FNV32_PRIME = 0x01000193


def fnv1a32(data: bytes) -> int:
    h = FNV32_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV32_PRIME) & 0xFFFFFFFF
    return h


def normalize(text: str) -> str:
    """Steps 1-4 of the spec: NFKC, per-code-point lowercase, whitespace folding, cut."""
    s = unicodedata.normalize("NFKC", text)
    # Per code point, the full unconditional lowercase mapping (no final-sigma context).
    s = "".join(c.lower() for c in s)
    out = []
    in_space = False
    for c in s:
        if ord(c) in WHITE_SPACE:
            in_space = True
            continue
        if in_space and out:
            out.append(" ")
        in_space = False
        out.append(c)
    s = "".join(out)
    if len(s) > MAX_CHARS:
        s = s[:MAX_CHARS].rstrip(" ")
    return s


def ngrams(norm: str):
    """Step 5: character n-grams of ' ' + norm + ' ' (the lone ' ' unigram left out)."""
    if not norm:
        return
    t = " " + norm + " "
    for n in range(NGRAM_MIN, NGRAM_MAX + 1):
        for i in range(0, len(t) - n + 1):
            g = t[i : i + n]
            if g == " ":
                continue
            yield g


def extract(text: str) -> tuple[list[int], list[float]]:
    """The sparse feature vector: (indices ascending, values as float32-representable floats)."""
    counts: dict[int, int] = {}
    for g in ngrams(normalize(text)):
        b = fnv1a32(g.encode("utf-8")) & (BUCKETS - 1)
        counts[b] = counts.get(b, 0) + 1
    if not counts:
        return [], []
    idx = sorted(counts)
    w = [1.0 + math.log(counts[i]) for i in idx]
    norm = math.sqrt(sum(x * x for x in w))
    return idx, [x / norm for x in w]

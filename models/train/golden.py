"""Golden inputs shared by the Python and Rust tests (models/testdata/)."""

from __future__ import annotations

import json
import random
import sys
import unicodedata

import features as F

# Inputs chosen to break a careless implementation (each a case the spec decides).
TRICKY = [
    "",
    " ",
    "\t\n\r ",
    "hi",
    "Hello, World!",
    "WHERE IS MY ORDER #A12345???",
    "ＡＢＣ１２３、！？",  # full-width
    "这个有M码吗",
    "can I use 支付宝 to pay?",
    "在吗在吗 😀😀 thx!!",
    "👨‍👩‍👧 family emoji with ZWJ",
    "🇨🇳🇬🇧 flags",
    "café vs cafe\u0301",  # precomposed vs combining acute
    "e\u0301\u0301\u0323 stacked marks",
    "Straße GROSS",
    "İstanbul",  # U+0130: lowercase is two code points
    "ΣΟΦΟΣ σοφός",  # final sigma is not context-mapped (per code point)
    "ﬁne ﬂour",  # ligatures (NFKC)
    "①②③ ㈱ ㎏",  # compatibility characters
    "ｶﾀｶﾅ ﾊﾟﾝ",  # half-width katakana, voiced mark composes
    "a\u3000\u3000b\u00a0c\u2009d\u202fe\u205ff\u1680g",  # White_Space, folded
    "a\u001cb\u001dc\u001ed\u001ff",  # not White_Space (Python's isspace says yes)
    "a\u0085b\u2028c\u2029d",  # White_Space
    "zero\u200bwidth\u200cjoin\u200dx\ufeffy",  # not White_Space
    "  leading and trailing  ",
    "multiple     spaces\t\tand\n\nnewlines",
    "한국어 테스트",
    "\u1100\u1161\u11a8",  # conjoining jamo, NFKC composes to 각
    "Ǆ ǅ ǆ",
    "ﷺ",  # NFKC expands to 18 code points
    "x" * 600,  # longer than MAX_CHARS
    ("ab " * 300),  # cut at a space
    "退款什么时候到账？订单号：20240611-8832",
    "我要投诉！！！你们的服务太差了",
    "转人工",
    "\U0001d400\U0001d401 math bold",
    "\u2163 roman four",
    "a" + "\u0300" * 20,
]


def vec_record(text: str) -> dict:
    idx, val = F.extract(text)
    return {"text": text, "indices": idx, "values": [round(v, 8) for v in val]}


def write_jsonl(path, records) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def assigned(cp: int) -> bool:
    """Assigned in Python's Unicode version (14.0) and encodable (no surrogates)."""
    c = chr(cp)
    return unicodedata.category(c) not in ("Cn", "Cs")


# Pools the random strings draw from: (weight, code point ranges).
POOLS = [
    (6, [(0x20, 0x7E)]),
    (2, [(0x09, 0x0D), (0x1C, 0x1F), (0x85, 0x85), (0xA0, 0xA0), (0x2000, 0x200D),
         (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
         (0xFEFF, 0xFEFF)]),
    (5, [(0x4E00, 0x9FFF)]),
    (2, [(0x3000, 0x30FF), (0xFF00, 0xFFEF)]),
    (2, [(0x00C0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x1E00, 0x1FFF)]),
    (2, [(0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x20D0, 0x20FF)]),
    (1, [(0x1100, 0x11FF), (0xAC00, 0xD7A3)]),
    (2, [(0x1F300, 0x1FAFF), (0x2600, 0x27BF), (0x1F1E6, 0x1F1FF)]),
    (1, [(0x2100, 0x24FF), (0x3200, 0x33FF), (0xFB00, 0xFDFF), (0x1D400, 0x1D7FF)]),
    (2, [(0x0000, 0x10FFFF)]),
]


def random_strings(seed: int = 20240611, count: int = 600) -> list[str]:
    rng = random.Random(seed)
    weights = [w for w, _ in POOLS]
    out = []
    for _ in range(count):
        n = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40])
        chars = []
        while len(chars) < n:
            _, ranges = rng.choices(POOLS, weights)[0]
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            if assigned(cp):
                chars.append(chr(cp))
        out.append("".join(chars))
    return out


def feature_records(data_lines: list[str]) -> list[dict]:
    return [vec_record(t) for t in TRICKY + data_lines]


def random_records() -> list[dict]:
    return [vec_record(t) for t in random_strings()]


def write_every_code_point(path) -> int:
    """normalize() of every code point assigned in Python's Unicode version, one JSON array
    [code point, normalised] a line: the input of the Rust side's exhaustive check (ignored
    test `every_assigned_code_point_matches_python`, FEATURES.md "Unicode versions")."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for cp in range(0x110000):
            if assigned(cp):
                f.write(json.dumps([cp, F.normalize(chr(cp))], ensure_ascii=False) + "\n")
                n += 1
    return n


if __name__ == "__main__":
    # python3 golden.py every-code-point OUT.jsonl
    if len(sys.argv) == 3 and sys.argv[1] == "every-code-point":
        print(f"{write_every_code_point(sys.argv[2])} code points", file=sys.stderr)
    else:
        print("usage: golden.py every-code-point OUT.jsonl", file=sys.stderr)
        sys.exit(2)

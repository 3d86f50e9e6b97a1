"""Feature spec v1 from the Python side: the golden files match this implementation."""

import json
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as D  # noqa: E402
import features as F  # noqa: E402
import golden  # noqa: E402

TESTDATA = D.MODELS_DIR / "testdata"


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class FeatureSpec(unittest.TestCase):
    def check(self, name, expected_records):
        committed = read_jsonl(TESTDATA / name)
        self.assertEqual(len(committed), len(expected_records))
        for c, e in zip(committed, expected_records):
            self.assertEqual(c["text"], e["text"])
            self.assertEqual(c["indices"], e["indices"], repr(c["text"]))
            for a, b in zip(c["values"], e["values"]):
                self.assertAlmostEqual(a, b, delta=1e-6)

    def test_golden_features_are_this_implementation(self):
        rows = D.load()
        self.check("golden_features.jsonl", golden.feature_records([r[2] for r in rows[::25]]))

    def test_random_unicode_is_this_implementation(self):
        # Regenerated from the seed: the file the Rust test reads is what Python computes.
        self.check("random_unicode.jsonl", golden.random_records())

    def test_fnv1a32_reference_values(self):
        self.assertEqual(F.fnv1a32(b""), 0x811C9DC5)
        self.assertEqual(F.fnv1a32(b"a"), 0xE40C292C)
        self.assertEqual(F.fnv1a32(b"foobar"), 0xBF9CF968)

    def test_normalisation(self):
        self.assertEqual(F.normalize("  ＨＥＬＬＯ\u3000\u3000World\t\n"), "hello world")
        self.assertEqual(F.normalize("a\u001cb"), "a\u001cb")  # not White_Space
        self.assertEqual(F.normalize(" \u0085 "), "")
        self.assertEqual(F.normalize("\u0130"), "i\u0307")
        self.assertEqual(F.normalize("ΟΣ"), "οσ")  # per code point: no final sigma
        self.assertEqual(len(F.normalize("abc " * 400)), F.MAX_CHARS - 1)

    def test_white_space_list_is_unicode_white_space(self):
        # The property as Python 3.11 knows it: str.isspace() minus the four separators
        # U+001C..U+001F, which it counts and Unicode's White_Space does not.
        isspace = {cp for cp in range(0x110000) if chr(cp).isspace()}
        self.assertEqual(set(F.WHITE_SPACE), isspace - {0x1C, 0x1D, 0x1E, 0x1F})

    def test_vector_shape(self):
        self.assertEqual(F.extract(""), ([], []))
        idx, val = F.extract("hello hello 你好")
        self.assertEqual(idx, sorted(set(idx)))
        self.assertAlmostEqual(sum(v * v for v in val), 1.0, places=9)
        self.assertTrue(all(0 <= i < F.BUCKETS for i in idx))


if __name__ == "__main__":
    unittest.main()

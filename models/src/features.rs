//! Feature spec v1 ([models/FEATURES.md](../FEATURES.md)): a message → a sparse vector of
//! hashed character n-grams. The Python side (`models/train/features.py`) computes the same
//! vector for every input; the golden files in `models/testdata/` hold both to it.

use unicode_normalization::UnicodeNormalization;

/// The version of this spec, as written in the model's `feature_spec_version` metadata.
pub const FEATURE_SPEC_VERSION: &str = "1";
/// The hashing trick's buckets: `2^HASH_BITS` (the model's weight rows).
pub const HASH_BITS: u32 = 14;
/// Number of buckets, `2^HASH_BITS`.
pub const BUCKETS: usize = 1 << HASH_BITS;
/// Shortest character n-gram.
pub const NGRAM_MIN: usize = 1;
/// Longest character n-gram.
pub const NGRAM_MAX: usize = 4;
/// Code points kept after normalisation; the rest of a longer message is ignored (bounded cost).
pub const MAX_CHARS: usize = 512;

const FNV32_OFFSET: u32 = 0x811C_9DC5;
const FNV32_PRIME: u32 = 0x0100_0193;

/// Unicode's White_Space property, hard-coded (the spec's list, the same as Python's side;
/// `char::is_whitespace` is the same set today but follows the compiler's Unicode version).
pub fn is_spec_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{0009}'..='\u{000D}'
            | '\u{0020}'
            | '\u{0085}'
            | '\u{00A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// A sparse feature vector: `indices` strictly ascending, each `< BUCKETS`, with its value.
/// Empty for a message with no characters left after normalisation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseFeatures {
    /// Bucket numbers, strictly ascending.
    pub indices: Vec<u32>,
    /// Weight of each bucket (sublinear term frequency, L2-normalised).
    pub values: Vec<f32>,
}

impl SparseFeatures {
    /// Number of non-zero entries.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when there is no entry (an empty or whitespace-only message).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// 32-bit FNV-1a of `bytes`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h = FNV32_OFFSET;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(FNV32_PRIME);
    }
    h
}

/// Steps 1–4 of the spec: NFKC, per-code-point lowercase, whitespace runs folded to one
/// U+0020 and trimmed, cut to [`MAX_CHARS`] code points (then trailing U+0020 trimmed).
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = 0usize;
    let mut pending_space = false;
    for c in text.nfkc().flat_map(char::to_lowercase) {
        if is_spec_whitespace(c) {
            pending_space = true;
            continue;
        }
        if pending_space && !out.is_empty() {
            if chars == MAX_CHARS {
                break;
            }
            out.push(' ');
            chars += 1;
        }
        pending_space = false;
        if chars == MAX_CHARS {
            break;
        }
        out.push(c);
        chars += 1;
    }
    // A cut right after a space leaves it at the end.
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// The message's feature vector under spec v1.
pub fn extract(text: &str) -> SparseFeatures {
    let norm = normalize(text);
    if norm.is_empty() {
        return SparseFeatures::default();
    }
    // ' ' + norm + ' ' as code points with their UTF-8 byte offsets.
    let mut padded = String::with_capacity(norm.len() + 2);
    padded.push(' ');
    padded.push_str(&norm);
    padded.push(' ');
    let mut starts: Vec<usize> = padded.char_indices().map(|(i, _)| i).collect();
    starts.push(padded.len());
    let len = starts.len() - 1;
    let bytes = padded.as_bytes();

    let mut buckets: Vec<u32> = Vec::with_capacity(len * (NGRAM_MAX - NGRAM_MIN + 1));
    let mask = (BUCKETS - 1) as u32;
    for n in NGRAM_MIN..=NGRAM_MAX {
        if n > len {
            break;
        }
        for i in 0..=len - n {
            let g = &bytes[starts[i]..starts[i + n]];
            if g == b" " {
                continue;
            }
            buckets.push(fnv1a32(g) & mask);
        }
    }
    buckets.sort_unstable();

    let mut indices = Vec::with_capacity(buckets.len());
    let mut weights: Vec<f64> = Vec::with_capacity(buckets.len());
    let mut i = 0;
    while i < buckets.len() {
        let b = buckets[i];
        let mut j = i;
        while j < buckets.len() && buckets[j] == b {
            j += 1;
        }
        indices.push(b);
        weights.push(1.0 + ((j - i) as f64).ln());
        i = j;
    }
    let norm2 = weights.iter().map(|w| w * w).sum::<f64>().sqrt();
    let values = weights.iter().map(|w| (w / norm2) as f32).collect();
    SparseFeatures { indices, values }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811C_9DC5);
        assert_eq!(fnv1a32(b"a"), 0xE40C_292C);
        assert_eq!(fnv1a32(b"foobar"), 0xBF9C_F968);
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize("  ＨＥＬＬＯ\u{3000}\u{3000}World\t\n"),
            "hello world"
        );
        assert_eq!(normalize("\u{200B}"), "\u{200B}");
        assert_eq!(normalize(" \u{0085} "), "");
        assert_eq!(normalize("a\u{001C}b"), "a\u{001C}b");
        let long = "abc ".repeat(400);
        assert_eq!(normalize(&long).chars().count(), 511);
    }

    #[test]
    fn vector_shape() {
        assert!(extract("").is_empty());
        assert!(extract(" \t ").is_empty());
        let f = extract("hello hello");
        assert!(f.indices.windows(2).all(|w| w[0] < w[1]));
        let n: f32 = f.values.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-5);
    }
}

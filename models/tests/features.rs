//! Feature spec v1 parity with the Python side: the golden files written by
//! `models/train/train.py` (tricky inputs, data lines, random Unicode strings).

use aisle_models::features::{self, BUCKETS};
use serde_json::Value;

fn check_file(name: &str) -> usize {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut n = 0;
    for (line_no, line) in text.lines().enumerate() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let input = rec["text"].as_str().unwrap();
        let want_idx: Vec<u32> = rec["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want_val: Vec<f64> = rec["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = features::extract(input);
        assert_eq!(
            got.indices,
            want_idx,
            "{name}:{}: indices differ for {input:?} (normalised {:?})",
            line_no + 1,
            features::normalize(input)
        );
        for (g, w) in got.values.iter().zip(&want_val) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6,
                "{name}:{}: value {g} vs {w} for {input:?}",
                line_no + 1
            );
        }
        assert!(got.indices.iter().all(|&i| (i as usize) < BUCKETS));
        n += 1;
    }
    n
}

#[test]
fn golden_features_match_python() {
    assert!(check_file("golden_features.jsonl") > 100);
}

#[test]
fn random_unicode_matches_python() {
    assert!(check_file("random_unicode.jsonl") >= 500);
}

/// Every code point assigned in Python's Unicode version, normalised alone, against Python.
/// Needs a file from the Python side, so it is run by hand:
///
/// ```sh
/// python3 models/train/golden.py every-code-point /tmp/every-code-point.jsonl
/// AISLE_EVERY_CODE_POINT=/tmp/every-code-point.jsonl \
///   cargo test --release -p aisle-models --test features -- --ignored
/// ```
#[test]
#[ignore = "needs AISLE_EVERY_CODE_POINT from models/train/golden.py"]
fn every_assigned_code_point_matches_python() {
    let path = std::env::var("AISLE_EVERY_CODE_POINT").expect("AISLE_EVERY_CODE_POINT");
    let text = std::fs::read_to_string(path).unwrap();
    let mut differ = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let (cp, want): (u32, String) = serde_json::from_str(line).unwrap();
        let c = char::from_u32(cp).unwrap();
        let got = features::normalize(&c.to_string());
        if got != want {
            differ.push(format!("U+{cp:04X}: rust {got:?} python {want:?}"));
        }
        n += 1;
    }
    eprintln!("{n} code points, {} differ", differ.len());
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

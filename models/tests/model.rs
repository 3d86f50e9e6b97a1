//! The ONNX model under tract: outputs against the Python model's, metadata validation, the
//! classifier service's hot swap under load and its refusal of bad files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aisle_models::{
    Classifier, ClassifierOptions, EMBEDDED_MODEL, Intent, Model, ModelError, features,
};
use serde_json::Value;

/// `bytes` with the only occurrence of `from` replaced by `to` (same length, so the
/// protobuf stays well-formed).
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let hits: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{:?} occurs {} times",
        String::from_utf8_lossy(from),
        hits.len()
    );
    let mut out = bytes.to_vec();
    out[hits[0]..hits[0] + to.len()].copy_from_slice(to);
    out
}

/// A second valid model: the embedded one under another `model_version`.
fn renamed_model(version_suffix: u8) -> (Vec<u8>, String) {
    let v = Model::embedded().unwrap().version().to_string();
    let mut w = v.clone().into_bytes();
    *w.last_mut().unwrap() = version_suffix;
    let bytes = patched(EMBEDDED_MODEL, v.as_bytes(), &w);
    (bytes, String::from_utf8(w).unwrap())
}

#[test]
fn tract_matches_python_probabilities() {
    let model = Model::embedded().unwrap();
    let path = format!(
        "{}/testdata/golden_outputs.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut n = 0;
    let mut max_diff = 0f64;
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let input = rec["text"].as_str().unwrap();
        let c = model.classify(input).unwrap();
        let want: Vec<f64> = rec["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(want.len(), 12);
        for (g, w) in c.probabilities.iter().zip(&want) {
            let d = (f64::from(*g) - w).abs();
            max_diff = max_diff.max(d);
            assert!(d <= 1e-4, "{input:?}: {g} vs {w}");
        }
        assert_eq!(
            c.intent.as_str(),
            rec["intent"].as_str().unwrap(),
            "{input:?}"
        );
        assert_eq!(c.confidence, c.probabilities[c.intent.index()]);
        n += 1;
    }
    assert!(n > 200, "{n} golden outputs");
    eprintln!("{n} golden outputs, max |tract - sklearn| = {max_diff:.2e}");
}

#[test]
fn embedded_model_metadata() {
    let m = Model::embedded().unwrap();
    assert!(m.version().starts_with("intent-v1-"), "{}", m.version());
    assert_eq!(m.training_data_sha256().len(), 64);
    assert_eq!(m.labels(), &Intent::ALL);
    // A few unambiguous messages, both languages.
    assert_eq!(m.classify("转人工").unwrap().intent, Intent::HumanAgent);
    assert_eq!(
        m.classify("where is my order?").unwrap().intent,
        Intent::OrderStatus
    );
    // The empty message is classified too (the model's prior), not an error.
    let empty = m.classify("").unwrap();
    assert!((empty.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(features::extract("").is_empty());
}

#[test]
fn wrong_labels_are_refused() {
    let swapped = patched(
        EMBEDDED_MODEL,
        b"order_status,return_refund",
        b"return_refund,order_status",
    );
    assert!(matches!(
        Model::from_bytes(&swapped),
        Err(ModelError::Labels { .. })
    ));
    let renamed = patched(EMBEDDED_MODEL, b"human_agent", b"human_agenT");
    assert!(matches!(
        Model::from_bytes(&renamed),
        Err(ModelError::Labels { .. })
    ));
}

#[test]
fn wrong_feature_spec_is_refused() {
    let v2 = patched(
        EMBEDDED_MODEL,
        b"feature_spec_version\x12\x011",
        b"feature_spec_version\x12\x012",
    );
    match Model::from_bytes(&v2) {
        Err(ModelError::FeatureSpec { found, .. }) => assert_eq!(found, "2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_metadata_is_refused() {
    let b = patched(EMBEDDED_MODEL, b"\x0a\x06labels", b"\x0a\x06labelz");
    assert!(matches!(
        Model::from_bytes(&b),
        Err(ModelError::MissingMetadata("labels"))
    ));
    let b = patched(EMBEDDED_MODEL, b"\x0dmodel_version", b"\x0dmodel_versioN");
    assert!(matches!(
        Model::from_bytes(&b),
        Err(ModelError::MissingMetadata("model_version"))
    ));
}

#[test]
fn corrupt_bytes_are_refused() {
    assert!(matches!(
        Model::from_bytes(b"not a model"),
        Err(ModelError::Onnx(_))
    ));
    assert!(Model::from_bytes(&EMBEDDED_MODEL[..EMBEDDED_MODEL.len() / 2]).is_err());
    assert!(Model::from_bytes(&[]).is_err());
    assert!(matches!(
        Model::load("/nonexistent/intent.onnx"),
        Err(ModelError::Read { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_every_call_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (b_bytes, b_version) = renamed_model(b'x');
    let (c_bytes, c_version) = renamed_model(b'y');
    let b_path = dir.path().join("b.onnx");
    let c_path = dir.path().join("c.onnx");
    std::fs::write(&b_path, &b_bytes).unwrap();
    std::fs::write(&c_path, &c_bytes).unwrap();

    let classifier = Classifier::start(ClassifierOptions {
        model_path: None,
        workers: 2,
        queue_limit_requests: 100_000,
    })
    .unwrap();
    let a_version = classifier.version();
    assert_ne!(a_version, b_version);

    const TASKS: usize = 16;
    const CALLS: usize = 400;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let classifier = classifier.clone();
        let answered = Arc::clone(&answered);
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS {
                let text = if (t + i) % 2 == 0 {
                    "我的快递到哪了"
                } else {
                    "is the store open sunday"
                };
                let c = classifier.classify(text).await.expect("every call answers");
                assert!(c.confidence > 0.0);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Swap twice while the calls run.
    while answered.load(Ordering::Relaxed) < TASKS * CALLS / 4 {
        tokio::task::yield_now().await;
    }
    assert_eq!(classifier.reload(&b_path).await.unwrap(), b_version);
    assert_eq!(classifier.version(), b_version);
    while answered.load(Ordering::Relaxed) < TASKS * CALLS / 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(classifier.reload(&c_path).await.unwrap(), c_version);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(answered.load(Ordering::Relaxed), TASKS * CALLS);
    assert_eq!(classifier.version(), c_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_file_is_refused_and_the_old_model_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let classifier = Classifier::start(ClassifierOptions::default()).unwrap();
    let before = classifier.version();
    let before_answer = classifier.classify("转人工").await.unwrap();

    let corrupt = dir.path().join("corrupt.onnx");
    let mut bytes = EMBEDDED_MODEL[..EMBEDDED_MODEL.len() - 1000].to_vec();
    bytes.extend_from_slice(&[0xff; 1000]);
    std::fs::write(&corrupt, &bytes).unwrap();
    let wrong_labels = dir.path().join("labels.onnx");
    std::fs::write(
        &wrong_labels,
        patched(EMBEDDED_MODEL, b"greeting,other", b"other,greeting"),
    )
    .unwrap();

    // Calls keep answering while the bad reloads are tried.
    let load = {
        let classifier = classifier.clone();
        tokio::spawn(async move {
            for _ in 0..500 {
                classifier
                    .classify("do you have this in size 40")
                    .await
                    .unwrap();
            }
        })
    };
    assert!(classifier.reload(&corrupt).await.is_err());
    assert!(matches!(
        classifier.reload(&wrong_labels).await,
        Err(ModelError::Labels { .. })
    ));
    assert!(
        classifier
            .reload(dir.path().join("missing.onnx"))
            .await
            .is_err()
    );
    assert!(classifier.reload_blocking(&corrupt).is_err());
    load.await.unwrap();

    assert_eq!(classifier.version(), before);
    assert_eq!(classifier.classify("转人工").await.unwrap(), before_answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_path_overrides_the_embedded_model() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, version) = renamed_model(b'z');
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, bytes).unwrap();
    let c = Classifier::start(ClassifierOptions {
        model_path: Some(path),
        ..ClassifierOptions::default()
    })
    .unwrap();
    assert_eq!(c.version(), version);
    assert!(
        Classifier::start(ClassifierOptions {
            model_path: Some(dir.path().join("missing.onnx")),
            ..ClassifierOptions::default()
        })
        .is_err()
    );
}

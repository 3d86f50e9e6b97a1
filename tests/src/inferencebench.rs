//! `aisle-bench inference`: the intent classifier on one thread (aisle-models).
//!
//! Loads the model (the embedded `models/intent.onnx`, or `--model`) `load_runs` times and
//! takes the median as `model_load_ms` (read + tract parse, validation, optimisation and the
//! smoke inputs); then classifies every message of `models/data` (en + zh, realistic shopper
//! messages) `passes` times on the calling thread, one message at a time, and times each call
//! (feature extraction + inference) with `Instant`. One untimed pass warms up first.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aisle_models::{EMBEDDED_MODEL, Model, features};
use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What to run.
#[derive(Debug, Clone)]
pub struct InferenceBenchOptions {
    /// A model file; `None`: the embedded one.
    pub model: Option<PathBuf>,
    /// The `models/data` directory (`<lang>/<label>.txt`).
    pub data_dir: PathBuf,
    /// Timed passes over the messages.
    pub passes: usize,
    /// Model loads timed (median reported).
    pub load_runs: usize,
}

/// The default `models/data` of this checkout.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/data")
}

fn messages(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for lang in ["en", "zh"] {
        let d = dir.join(lang);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
        }
    }
    if out.is_empty() {
        bail!("no messages under {}", dir.display());
    }
    Ok(out)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn load(o: &InferenceBenchOptions) -> anyhow::Result<Model> {
    Ok(match &o.model {
        Some(p) => Model::load(p)?,
        None => Model::from_bytes(EMBEDDED_MODEL)?,
    })
}

/// Runs the benchmark; the JSON keys are documented in models/README.md.
pub fn run(o: &InferenceBenchOptions) -> anyhow::Result<Value> {
    let texts = messages(&o.data_dir)?;
    let mut loads = Vec::new();
    let mut model = None;
    for _ in 0..o.load_runs.max(1) {
        let t = Instant::now();
        let m = load(o)?;
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        model = Some(m);
    }
    let model = model.expect("at least one load");
    let first_load_ms = loads[0];
    loads.sort_by(f64::total_cmp);

    for t in &texts {
        model.classify(t)?;
    }
    let mut us = Vec::with_capacity(texts.len() * o.passes);
    let mut feat_us = Vec::with_capacity(texts.len());
    let wall = Instant::now();
    for _ in 0..o.passes.max(1) {
        for t in &texts {
            let s = Instant::now();
            let c = model.classify(t)?;
            us.push(s.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(c);
        }
    }
    let wall = wall.elapsed().as_secs_f64();
    for t in &texts {
        let s = Instant::now();
        std::hint::black_box(features::extract(t));
        feat_us.push(s.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    feat_us.sort_by(f64::total_cmp);
    Ok(json!({
        "scenario": "inference",
        "model_version": model.version(),
        "model_bytes": match &o.model {
            Some(p) => std::fs::metadata(p)?.len(),
            None => EMBEDDED_MODEL.len() as u64,
        },
        "model_load_ms": r2(pct(&loads, 0.5)),
        "model_load_first_ms": r2(first_load_ms),
        "load_runs": loads.len(),
        "messages": us.len(),
        "distinct_messages": texts.len(),
        "classify_p50_us": r2(pct(&us, 0.5)),
        "classify_p99_us": r2(pct(&us, 0.99)),
        "classify_max_us": r2(*us.last().unwrap()),
        "classify_mean_us": r2(us.iter().sum::<f64>() / us.len() as f64),
        "features_p50_us": r2(pct(&feat_us, 0.5)),
        "features_p99_us": r2(pct(&feat_us, 0.99)),
        "messages_per_sec_one_thread": (us.len() as f64 / wall).round(),
    }))
}

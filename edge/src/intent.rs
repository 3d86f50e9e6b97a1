//! Intents of customer messages, read by the on-device model (`aisle-models`: hashed character
//! n-grams, a linear ONNX model run by tract on its own threads).
//!
//! A send waits at most `classify_timeout_ms` for its reading; a message the classifier could
//! not read in time (queue full, timeout, error) is stored without one — chat never waits on the
//! model. The model file named by `model.path` is watched: a new file is validated and swapped
//! in without a restart, a bad one is refused and logged while the old model keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aisle_models::{Classifier, ClassifierOptions, ModelError};
use aisle_sync::IntentRecord;

use crate::App;
use crate::config::Config;
use crate::metrics::METRICS;

/// Starts the classifier: the configured model file, else the model built into the binary.
pub fn start(config: &Config) -> Result<Classifier, ModelError> {
    let classifier = Classifier::start(ClassifierOptions {
        model_path: config.model.path.clone(),
        workers: config.model.workers,
        queue_limit_requests: config.limits.max_classify_queue,
    })?;
    METRICS.model_version(&classifier.version());
    Ok(classifier)
}

/// The intent of one customer message, or `None` when the model did not answer in time.
pub async fn read(app: &App, text: &str) -> Option<IntentRecord> {
    if text.trim().is_empty() {
        return None;
    }
    let timeout = Duration::from_millis(app.config.limits.classify_timeout_ms);
    match tokio::time::timeout(timeout, app.classifier.classify(text)).await {
        Ok(Ok(c)) => {
            METRICS
                .intents
                .with_label_values(&[c.intent.as_str()])
                .inc();
            Some(IntentRecord {
                label: c.intent.as_str().to_owned(),
                confidence: c.confidence,
                model: app.classifier.version(),
            })
        }
        Ok(Err(err)) => {
            let reason = match err {
                ModelError::Overloaded(_) => "overloaded",
                _ => "error",
            };
            METRICS.classify_failures.with_label_values(&[reason]).inc();
            tracing::debug!(error = %err, "message stored without an intent");
            None
        }
        Err(_) => {
            METRICS
                .classify_failures
                .with_label_values(&["timeout"])
                .inc();
            METRICS.limit("classify_timeout_ms");
            None
        }
    }
}

/// Watches `model.path` and swaps in each new version. Returns the watcher, which stops when
/// dropped.
pub fn watch(app: &Arc<App>) -> Option<notify::RecommendedWatcher> {
    let path = app.config.model.path.clone()?;
    let app = Arc::clone(app);
    let watched = path.clone();
    crate::watch::watch_file(&watched, "model file", move || {
        let (app, path) = (Arc::clone(&app), path.clone());
        async move { reload(&app, &path).await }
    })
}

/// Validates `path` and swaps it in; a refused file leaves the model in force serving.
pub async fn reload(app: &App, path: &Path) {
    let before = app.classifier.version();
    match app.classifier.reload(path).await {
        Ok(version) => {
            METRICS.model_reloads.with_label_values(&["swapped"]).inc();
            METRICS.model_version(&version);
            *app.model_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!(from = %before, to = %version, "intent model swapped");
        }
        Err(err) => {
            METRICS.model_reloads.with_label_values(&["refused"]).inc();
            tracing::warn!(error = %err, path = %path.display(), serving = %before,
                "new intent model refused; the model in force keeps serving");
            *app.model_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.to_string());
        }
    }
}

/// `aisle-edge classify`: one JSON object per stdin line, by the same classifier the server
/// runs (same model file, same threads, same code path).
pub fn classify_lines(config: &Config) -> std::process::ExitCode {
    use std::io::{BufRead, Write};
    let classifier = match start(config) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("aisle-edge classify: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("aisle-edge classify: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    let version = classifier.version();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in std::io::stdin().lock().lines() {
        let line = match line {
            Ok(line) => line,
            Err(err) => {
                eprintln!("aisle-edge classify: reading stdin: {err}");
                return std::process::ExitCode::from(1);
            }
        };
        let answer = match runtime.block_on(classifier.classify(line.as_str())) {
            Ok(c) => serde_json::json!({
                "intent": c.intent.as_str(),
                "confidence": c.confidence,
                "model": version,
            }),
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        if writeln!(out, "{answer}").is_err() {
            return std::process::ExitCode::from(1);
        }
    }
    let _ = out.flush();
    std::process::ExitCode::SUCCESS
}

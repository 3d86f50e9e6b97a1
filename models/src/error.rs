//! Typed errors of the crate.

use std::path::PathBuf;

/// Why a model could not be loaded, validated or run, or the classifier could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file could not be read.
    #[error("reading model file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// tract refused the bytes (not ONNX, truncated, unsupported operator, ...).
    #[error("loading ONNX model: {0}")]
    Onnx(String),
    /// A required metadata property is absent.
    #[error("model metadata {0:?} is missing")]
    MissingMetadata(&'static str),
    /// The model's labels are not exactly the 12 intents in the contract's order.
    #[error("model labels {found:?} are not the expected {expected:?}")]
    Labels { found: String, expected: String },
    /// The model was trained on another feature spec than the one compiled in.
    #[error("model feature_spec_version {found:?}, this build extracts {expected:?}")]
    FeatureSpec {
        found: String,
        expected: &'static str,
    },
    /// The smoke input did not give 12 probabilities summing to 1.
    #[error("model failed its smoke test: {0}")]
    Smoke(String),
    /// Running the model failed.
    #[error("running the model: {0}")]
    Run(String),
    /// The classifier's queue is full (the edge should answer without an intent).
    #[error("classifier queue full ({0} requests waiting)")]
    Overloaded(usize),
    /// A classifier or loader thread could not be started.
    #[error("starting a classifier thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The classifier's workers are gone (shut down).
    #[error("classifier stopped")]
    Stopped,
}

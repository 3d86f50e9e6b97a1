//! The intent model: an ONNX file loaded, validated and optimised by tract.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tract_onnx::prelude::*;

use crate::error::ModelError;
use crate::features::{self, FEATURE_SPEC_VERSION, SparseFeatures};
use crate::intent::Intent;

/// The model committed at `models/intent.onnx`, compiled in: the appliance classifies out of
/// the box, and a model file given by path overrides it.
pub static EMBEDDED_MODEL: &[u8] = include_bytes!("../intent.onnx");

/// Smoke inputs every model must classify (12 finite probabilities summing to 1) to load.
const SMOKE_INPUTS: [&str; 3] = ["where is my order", "我的订单到哪了", ""];

/// The result of classifying one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The most probable intent.
    pub intent: Intent,
    /// Its probability, in [0, 1].
    pub confidence: f32,
    /// Every intent's probability, indexed by [`Intent::index`].
    pub probabilities: [f32; 12],
}

/// A loaded intent model. Cheap to share (`Arc` inside); `classify` takes `&self` and may be
/// called from several threads at once.
#[derive(Clone)]
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    version: Arc<str>,
    training_data_sha256: Arc<str>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn onnx_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Onnx(format!("{e:#}"))
}

fn metadata(model: &InferenceModel, key: &'static str) -> Result<String, ModelError> {
    let t = model
        .properties
        .get(&format!("onnx.metadata_props.{key}"))
        .ok_or(ModelError::MissingMetadata(key))?;
    let view = t
        .to_plain_array_view::<String>()
        .map_err(|_| ModelError::MissingMetadata(key))?;
    view.iter()
        .next()
        .cloned()
        .ok_or(ModelError::MissingMetadata(key))
}

impl Model {
    /// The embedded model ([`EMBEDDED_MODEL`]).
    pub fn embedded() -> Result<Model, ModelError> {
        Model::from_bytes(EMBEDDED_MODEL)
    }

    /// Reads, validates and optimises the model file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Model::from_bytes(&bytes)
    }

    /// Validates and optimises an ONNX model: its `labels` metadata must be exactly the 12
    /// intents in [`Intent::ALL`] order, its `feature_spec_version` the one compiled in
    /// ([`FEATURE_SPEC_VERSION`]), and it must classify the smoke inputs.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let mut reader = bytes;
        let inference = tract_onnx::onnx()
            .model_for_read(&mut reader)
            .map_err(onnx_err)?;

        let expected = Intent::ALL.map(Intent::as_str).join(",");
        let labels = metadata(&inference, "labels")?;
        if labels != expected {
            return Err(ModelError::Labels {
                found: labels,
                expected,
            });
        }
        let spec = metadata(&inference, "feature_spec_version")?;
        if spec != FEATURE_SPEC_VERSION {
            return Err(ModelError::FeatureSpec {
                found: spec,
                expected: FEATURE_SPEC_VERSION,
            });
        }
        let version = metadata(&inference, "model_version")?;
        let training_data_sha256 = metadata(&inference, "training_data_sha256")?;

        let plan = inference
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(onnx_err)?;
        let model = Model {
            plan,
            version: version.into(),
            training_data_sha256: training_data_sha256.into(),
        };
        for text in SMOKE_INPUTS {
            let p = model
                .probabilities(&features::extract(text))
                .map_err(|e| ModelError::Smoke(e.to_string()))?;
            let sum: f32 = p.iter().sum();
            if p.iter().any(|v| !v.is_finite() || *v < 0.0) || (sum - 1.0).abs() > 1e-3 {
                return Err(ModelError::Smoke(format!(
                    "{text:?} gave probabilities {p:?}"
                )));
            }
        }
        Ok(model)
    }

    /// The `model_version` metadata (derived from the training data and parameters).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `training_data_sha256` metadata.
    pub fn training_data_sha256(&self) -> &str {
        &self.training_data_sha256
    }

    /// The labels, in output order (validated at load to be exactly [`Intent::ALL`]).
    pub fn labels(&self) -> &'static [Intent; 12] {
        &Intent::ALL
    }

    /// Classifies one message (feature extraction + the model), on the calling thread.
    pub fn classify(&self, text: &str) -> Result<Classification, ModelError> {
        let probabilities = self.probabilities(&features::extract(text))?;
        let (best, confidence) =
            probabilities
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |acc, (i, p)| if p > acc.1 { (i, p) } else { acc },
                );
        Ok(Classification {
            intent: Intent::ALL[best],
            confidence,
            probabilities,
        })
    }

    /// The model's 12 probabilities for a feature vector.
    pub fn probabilities(&self, f: &SparseFeatures) -> Result<[f32; 12], ModelError> {
        let run_err = |e: TractError| ModelError::Run(format!("{e:#}"));
        // An empty vector is fed as one zero-weight entry: the same scores (bias only),
        // without asking the runtime for zero-sized tensors.
        let (indices, values): (Vec<i64>, Vec<f32>) = if f.is_empty() {
            (vec![0], vec![0.0])
        } else {
            (
                f.indices.iter().map(|&i| i64::from(i)).collect(),
                f.values.clone(),
            )
        };
        let n = indices.len();
        let indices = Tensor::from_shape(&[n], &indices).map_err(run_err)?;
        let values = Tensor::from_shape(&[n], &values).map_err(run_err)?;
        let out = self
            .plan
            .run(tvec![indices.into(), values.into()])
            .map_err(run_err)?;
        let view = out
            .first()
            .ok_or_else(|| ModelError::Run("no output".into()))?
            .to_plain_array_view::<f32>()
            .map_err(run_err)?;
        if view.len() != 12 {
            return Err(ModelError::Run(format!(
                "output has {} values, not 12",
                view.len()
            )));
        }
        let mut p = [0f32; 12];
        for (dst, src) in p.iter_mut().zip(view.iter()) {
            *dst = *src;
        }
        Ok(p)
    }
}

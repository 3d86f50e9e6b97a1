//! `aisle-models`: on-device models of the Aisle appliance.
//!
//! Today one: the shopper-message intent classifier. A message becomes a sparse vector of
//! hashed character n-grams ([`features`], spec v1 in `models/FEATURES.md`, identical to the
//! Python training pipeline in `models/train/`), and a linear ONNX model run by tract gives
//! the 12 intents' probabilities ([`Model`]). [`Classifier`] serves it from a small pool of
//! worker threads, so inference never runs on an async runtime, and swaps in a new model file
//! atomically after validating it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), aisle_models::ModelError> {
//! use aisle_models::{Classifier, ClassifierOptions};
//! let classifier = Classifier::start(ClassifierOptions::default())?; // the embedded model
//! let c = classifier.classify("在吗？我的订单到哪了").await?;
//! println!("{} {:.2}", c.intent, c.confidence);
//! # Ok(()) }
//! ```

pub mod classifier;
mod error;
pub mod features;
mod intent;
mod model;

pub use classifier::{Classifier, ClassifierOptions};
pub use error::ModelError;
pub use features::{SparseFeatures, extract};
pub use intent::{Intent, UnknownIntent};
pub use model::{Classification, EMBEDDED_MODEL, Model};

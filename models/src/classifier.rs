//! The classifier service: worker threads own the inference, async callers await a oneshot.
//!
//! Inference never runs on an async runtime (ARCHITECTURE.md invariant 6): `classify` puts the
//! message on a bounded queue (`try_send`; a full queue is [`ModelError::Overloaded`], never a
//! wait) and awaits the answer. The model in force sits in an [`ArcSwap`]: [`Classifier::reload`]
//! loads and validates the new file off the runtime first, then swaps it in atomically; a bad
//! file is refused with its error and the old model keeps serving. A request already taken by
//! a worker finishes on the model it started with.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::error::ModelError;
use crate::model::{Classification, Model};

/// How the classifier starts.
#[derive(Debug, Clone)]
pub struct ClassifierOptions {
    /// A model file overriding the embedded one; `None` serves [`crate::EMBEDDED_MODEL`].
    pub model_path: Option<PathBuf>,
    /// Inference threads (each one classification at a time).
    pub workers: usize,
    /// Messages waiting for a worker before `classify` answers `Overloaded`.
    pub queue_limit_requests: usize,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        ClassifierOptions {
            model_path: None,
            workers: 1,
            queue_limit_requests: 256,
        }
    }
}

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Classification, ModelError>>,
}

/// The intent classifier service. Cloning is cheap and shares the workers and the model;
/// the workers stop when the last clone is dropped (after finishing the queued messages).
#[derive(Clone)]
pub struct Classifier {
    model: Arc<ArcSwap<Model>>,
    queue: SyncSender<Job>,
    queue_limit_requests: usize,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("version", &self.version())
            .field("queue_limit_requests", &self.queue_limit_requests)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// Loads the model (the file in `options.model_path`, else the embedded one) and starts
    /// the workers. Blocking (the load takes milliseconds): call it before serving, or from
    /// a blocking context.
    pub fn start(options: ClassifierOptions) -> Result<Classifier, ModelError> {
        let model = match &options.model_path {
            Some(p) => Model::load(p)?,
            None => Model::embedded()?,
        };
        Classifier::with_model(model, &options)
    }

    /// Starts the workers on an already loaded model (`options.model_path` is ignored).
    pub fn with_model(model: Model, options: &ClassifierOptions) -> Result<Classifier, ModelError> {
        let model = Arc::new(ArcSwap::from_pointee(model));
        let limit = options.queue_limit_requests.max(1);
        let (queue, rx) = mpsc::sync_channel::<Job>(limit);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..options.workers.max(1) {
            let rx = Arc::clone(&rx);
            let model = Arc::clone(&model);
            thread::Builder::new()
                .name(format!("aisle-intent-{i}"))
                .spawn(move || worker(&rx, &model))
                .map_err(ModelError::Spawn)?;
        }
        Ok(Classifier {
            model,
            queue,
            queue_limit_requests: limit,
        })
    }

    /// Classifies `text` on a worker thread. `Overloaded` when `queue_limit_requests`
    /// messages are already waiting.
    pub async fn classify(&self, text: impl Into<String>) -> Result<Classification, ModelError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            text: text.into(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ModelError::Overloaded(self.queue_limit_requests));
            }
            Err(TrySendError::Disconnected(_)) => return Err(ModelError::Stopped),
        }
        answer.await.map_err(|_| ModelError::Stopped)?
    }

    /// The `model_version` of the model in force.
    pub fn version(&self) -> String {
        self.model.load().version().to_string()
    }

    /// The model in force (a snapshot: a later reload does not change it).
    pub fn model(&self) -> Arc<Model> {
        self.model.load_full()
    }

    /// Loads and validates the model file at `path` on a thread of its own, then swaps it in.
    /// On any error the model in force stays. Returns the new model's version.
    pub async fn reload(&self, path: impl AsRef<Path>) -> Result<String, ModelError> {
        let path = path.as_ref().to_path_buf();
        let (tx, rx) = oneshot::channel();
        thread::Builder::new()
            .name("aisle-intent-load".into())
            .spawn(move || {
                let _ = tx.send(Model::load(&path));
            })
            .map_err(ModelError::Spawn)?;
        let model = rx.await.map_err(|_| ModelError::Stopped)??;
        Ok(self.swap(model))
    }

    /// [`Classifier::reload`] for a caller outside an async runtime (blocks for the load).
    pub fn reload_blocking(&self, path: impl AsRef<Path>) -> Result<String, ModelError> {
        let model = Model::load(path)?;
        Ok(self.swap(model))
    }

    /// Puts an already validated model in force; returns its version.
    pub fn swap(&self, model: Model) -> String {
        let version = model.version().to_string();
        self.model.store(Arc::new(model));
        version
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, model: &ArcSwap<Model>) {
    loop {
        // The lock is held only while waiting for the next job, not while classifying.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = model.load().classify(&job.text);
        // The caller may have gone away (its future dropped): nothing to answer then.
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_answers_overloaded_at_once() {
        // No worker drains this queue: one message fills it.
        let (queue, _rx) = mpsc::sync_channel::<Job>(1);
        let classifier = Classifier {
            model: Arc::new(ArcSwap::from_pointee(Model::embedded().unwrap())),
            queue,
            queue_limit_requests: 1,
        };
        let (reply, _answer) = oneshot::channel();
        classifier
            .queue
            .try_send(Job {
                text: "waiting".into(),
                reply,
            })
            .unwrap();
        assert!(matches!(
            classifier.classify("one too many").await,
            Err(ModelError::Overloaded(1))
        ));
    }

    #[tokio::test]
    async fn stopped_workers_answer_stopped() {
        let (queue, rx) = mpsc::sync_channel::<Job>(4);
        drop(rx);
        let classifier = Classifier {
            model: Arc::new(ArcSwap::from_pointee(Model::embedded().unwrap())),
            queue,
            queue_limit_requests: 4,
        };
        assert!(matches!(
            classifier.classify("anyone there?").await,
            Err(ModelError::Stopped)
        ));
    }
}

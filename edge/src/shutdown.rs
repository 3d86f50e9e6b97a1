//! Graceful shutdown: a broadcast to every connection, and a drop guard to know when the last
//! one has finished (the pattern of tokio-rs/mini-redis).
//!
//! Each connection task holds a `Listener`. `trigger` tells them all; each finishes what it
//! owes its client (acks of sends already queued for commit), says `bye`, and drops its
//! listener. `Completion::wait` returns when every listener is gone.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{broadcast, mpsc};

pub struct Shutdown {
    notify: broadcast::Sender<()>,
    guard: Mutex<Option<mpsc::Sender<()>>>,
    triggered: AtomicBool,
}

pub struct Completion {
    rx: mpsc::Receiver<()>,
}

pub struct Listener {
    rx: broadcast::Receiver<()>,
    triggered: bool,
    _guard: Option<mpsc::Sender<()>>,
}

impl Shutdown {
    pub fn new() -> (Self, Completion) {
        let (notify, _) = broadcast::channel(1);
        let (guard, rx) = mpsc::channel(1);
        (
            Self {
                notify,
                guard: Mutex::new(Some(guard)),
                triggered: AtomicBool::new(false),
            },
            Completion { rx },
        )
    }

    pub fn subscribe(&self) -> Listener {
        let guard = self.guard.lock().map(|g| g.clone()).unwrap_or(None);
        Listener {
            rx: self.notify.subscribe(),
            triggered: guard.is_none(),
            _guard: guard,
        }
    }

    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::SeqCst);
        if let Ok(mut guard) = self.guard.lock() {
            guard.take();
        }
        let _ = self.notify.send(());
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }
}

impl Listener {
    /// Resolves once shutdown has been triggered (immediately if it already was).
    pub async fn recv(&mut self) {
        if self.triggered {
            return;
        }
        let _ = self.rx.recv().await;
        self.triggered = true;
    }
}

impl Completion {
    /// Waits until every `Listener` has been dropped (after `trigger`).
    pub async fn wait(mut self) {
        let _ = self.rx.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn completion_waits_for_listeners() {
        let (shutdown, completion) = Shutdown::new();
        let mut listener = shutdown.subscribe();
        let task = tokio::spawn(async move {
            listener.recv().await;
        });
        shutdown.trigger();
        task.await.unwrap();
        completion.wait().await;
        let mut late = shutdown.subscribe();
        late.recv().await;
    }
}

//! SIGTERM and Ctrl-C, registered when the server starts.
//!
//! Registering the handler lazily (when the graceful-shutdown future is first polled) leaves a
//! window after the server already answers in which SIGTERM kills the process instead of
//! draining it; installing first closes that window.

pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; call before binding the listener. Needs a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    /// Resolves on SIGTERM or Ctrl-C.
    pub async fn wait(mut self) {
        #[cfg(unix)]
        let terminate = self.terminate.recv();
        #[cfg(not(unix))]
        let terminate = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = terminate => {},
        }
    }
}

//! A TCP load balancer in front of hub replicas, as a region runs one (HAProxy, nginx, a cloud
//! load balancer): each connection goes to the first backend in the balancer's order that
//! accepts it, so a store sticks to its preferred replica while it is up and reaches the
//! other when it is down. Bytes are copied both ways untouched (HTTP and the sync
//! WebSocket alike); when either side closes, so does the other.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running balancer; dropping it stops accepting (open connections end with their peers).
pub struct Balancer {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port and forwards to `backends`, in that order of preference.
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Balancer> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("bind the balancer")?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let backends = backends.clone();
                tokio::spawn(async move {
                    for backend in backends {
                        if let Ok(mut server) = TcpStream::connect(backend).await {
                            let mut client = client;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                    // No backend up: the client's connection is closed unanswered.
                });
            }
        });
        Ok(Balancer { addr, accept })
    }

    /// `http://127.0.0.1:PORT`: what a store's `--hub` names.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

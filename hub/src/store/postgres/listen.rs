//! The LISTEN task: other replicas' notifications (`pg_notify` in their transactions, see
//! [`super::notify`]) become [`ReplicaEvent`]s on this process's broadcast channel.
//!
//! One dedicated connection (not from the pool: it must stay LISTENing). When it is lost the
//! task reconnects with a doubling back-off (250 ms up to 30 s) and, listening again, sends
//! [`ReplicaEvent::Resync`]: whatever was notified in between is lost, so every piece of
//! in-memory state must be rebuilt from the database.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{CHANNEL, Notice};
use crate::store::ReplicaEvent;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A connection that LISTENs: its client (dropping it closes the connection) and the payloads
/// its driver task receives (closed when the connection ends).
pub(super) struct Listener {
    _client: Client,
    payloads: mpsc::UnboundedReceiver<String>,
}

impl Listener {
    pub(super) async fn open(
        config: &tokio_postgres::Config,
    ) -> Result<Listener, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let (tx, payloads) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "the PostgreSQL listening connection failed");
                        return;
                    }
                    None => return,
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(Listener {
            _client: client,
            payloads,
        })
    }
}

/// Runs until `stop` says so (or the store is dropped).
pub(super) async fn run(
    mut listener: Listener,
    config: tokio_postgres::Config,
    replica: String,
    events: broadcast::Sender<ReplicaEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        loop {
            tokio::select! {
                payload = listener.payloads.recv() => match payload {
                    Some(payload) => deliver(&payload, &replica, &events),
                    None => break,
                },
                _ = stop.changed() => return,
            }
        }
        tracing::warn!("the PostgreSQL listening connection was lost; reconnecting");
        let mut backoff = FIRST_BACKOFF;
        listener = loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            match Listener::open(&config).await {
                Ok(listener) => break listener,
                Err(err) => {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!(
                        error = %err,
                        retry_in_ms = backoff.as_millis() as u64,
                        "reconnecting the PostgreSQL listening connection"
                    );
                }
            }
        };
        tracing::info!("listening to the other replicas again; resynchronising");
        let _ = events.send(ReplicaEvent::Resync);
    }
}

/// Decodes one payload; drops this process's own notifications.
fn deliver(payload: &str, replica: &str, events: &broadcast::Sender<ReplicaEvent>) {
    match serde_json::from_str::<Notice>(payload) {
        Ok(notice) if notice.replica == replica => {}
        Ok(notice) => {
            // No receiver is not an error: nothing in this process wants events yet.
            let _ = events.send(notice.event.into());
        }
        Err(err) => {
            tracing::warn!(error = %err, payload, "skipping an unreadable replica notification");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, payload};
    use super::*;

    #[test]
    fn payloads_are_decoded_and_own_ones_dropped() {
        let (events, mut rx) = broadcast::channel(8);
        let revoked = Event::Revoked {
            store_id: "s1".into(),
        };
        deliver(&payload("r1", revoked.clone()), "r1", &events);
        deliver("not json", "r1", &events);
        deliver(r#"{"replica":"r2","kind":"unknown"}"#, "r1", &events);
        deliver(&payload("r2", revoked), "r1", &events);
        assert_eq!(
            rx.try_recv().unwrap(),
            ReplicaEvent::Revoked {
                store_id: "s1".into()
            }
        );
        assert!(rx.try_recv().is_err());
        let wire = payload(
            "r2",
            Event::Shared {
                doc_key: "conversation:x".into(),
                store_id: "s2".into(),
            },
        );
        assert_eq!(
            wire,
            r#"{"replica":"r2","kind":"shared","doc_key":"conversation:x","store_id":"s2"}"#
        );
    }

    #[test]
    fn an_event_too_large_for_a_notification_is_a_resync() {
        let holders: Vec<String> = (0..2_000).map(|i| format!("store-{i}")).collect();
        let wire = payload(
            "r2",
            Event::Erased {
                doc_key: "conversation:x".into(),
                holders,
            },
        );
        assert!(wire.len() < 8_000);
        let (events, mut rx) = broadcast::channel(8);
        deliver(&wire, "r1", &events);
        assert_eq!(rx.try_recv().unwrap(), ReplicaEvent::Resync);
    }
}

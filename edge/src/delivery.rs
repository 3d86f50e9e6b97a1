//! Who receives what: the registry of open connections and the fan-out of frames to them.
//!
//! A frame for a conversation goes to the connections *watching* it (customers after `start`
//! or `resume`, staff after `resume`) and to every connection of the staff member holding it
//! (so a second tablet sees the same chats live). Recipients are de-duplicated per frame, and
//! each frame is serialised once and shared (`Utf8Bytes` is reference counted).
//!
//! Each connection has a bounded queue (`max_outbound_frames`). Fan-out never waits: a
//! connection whose queue is full is dropped from the registry, which closes its queue; the
//! connection task sees that and closes the socket with `slow_consumer`. A slow phone can
//! therefore never grow the appliance's memory nor stall the writer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aisle_sync::{ConversationId, CustomerId, StaffId};
use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

use crate::metrics::METRICS;

pub type ConnId = u64;

/// One frame on its way to a connection. `seq` (0 = none) lets a connection that replayed
/// history skip live frames it already sent.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub conversation: Option<ConversationId>,
    pub seq: u64,
    pub text: Utf8Bytes,
    /// The connection sends this frame and then closes (e.g. the account was disabled).
    pub close_after: bool,
}

impl Outbound {
    pub fn new(conversation: Option<ConversationId>, seq: u64, text: String) -> Self {
        Self {
            conversation,
            seq,
            text: Utf8Bytes::from(text),
            close_after: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Customer(CustomerId),
    Staff(StaffId),
}

/// Who a conversation's frames concern beyond its watchers: kept current by the writer
/// from the conversation's state (a cache of the fold, replaced on every state change).
#[derive(Clone, Copy, Debug)]
pub struct Audience {
    pub agent: Option<StaffId>,
}

struct Conn {
    tx: mpsc::Sender<Outbound>,
    who: Who,
    watching: Vec<ConversationId>,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<ConnId, Conn>,
    watchers: HashMap<ConversationId, Vec<ConnId>>,
    staff: HashMap<StaffId, Vec<ConnId>>,
    audience: HashMap<ConversationId, Audience>,
}

/// Recipients of one publish, beyond watchers.
#[derive(Default, Clone, Debug)]
pub struct Targets {
    /// Staff members whose connections get the frame (e.g. the old and new agent of a transfer).
    pub staff: Vec<StaffId>,
    /// Every online staff member (a chat in the queue).
    pub all_staff: bool,
    /// Do not send to this connection (the sender gets an ack instead).
    pub except: Option<ConnId>,
}

#[derive(Default)]
pub struct Delivery {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
}

impl Delivery {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock is a bug; the registry itself stays consistent
        // (every method leaves it whole before it can panic), so keep serving.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection. Returns its id and, for staff, whether this is their first open
    /// connection (they just came online).
    pub fn register(&self, who: Who, tx: mpsc::Sender<Outbound>) -> (ConnId, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut reg = self.lock();
        reg.conns.insert(
            id,
            Conn {
                tx,
                who,
                watching: Vec::new(),
            },
        );
        let mut came_online = false;
        if let Who::Staff(staff) = who {
            let conns = reg.staff.entry(staff).or_default();
            came_online = conns.is_empty();
            conns.push(id);
        }
        (id, came_online)
    }

    /// Removes a connection (closed, or kicked as a slow consumer).
    pub fn unregister(&self, id: ConnId) {
        let mut reg = self.lock();
        remove(&mut reg, id);
    }

    /// Subscribes a connection to a conversation's frames.
    pub fn watch(&self, id: ConnId, conversation: ConversationId) {
        let mut reg = self.lock();
        let Some(conn) = reg.conns.get_mut(&id) else {
            return;
        };
        if conn.watching.contains(&conversation) {
            return;
        }
        conn.watching.push(conversation);
        reg.watchers.entry(conversation).or_default().push(id);
    }

    /// Ends every connection of `staff`: each gets `frame` and closes. They are offline at once.
    pub fn disconnect_staff(&self, staff: StaffId, frame: &Outbound) {
        let mut reg = self.lock();
        let Some(conns) = reg.staff.get(&staff).cloned() else {
            return;
        };
        let last = Outbound {
            close_after: true,
            ..frame.clone()
        };
        for id in conns {
            if let Some(conn) = reg.conns.get(&id) {
                // A full queue: removing the connection below closes it anyway.
                let _ = conn.tx.try_send(last.clone());
            }
            remove(&mut reg, id);
        }
    }

    /// Stops every connection of `staff` following `conversation` (it was taken from them).
    pub fn unwatch_staff(&self, conversation: ConversationId, staff: StaffId) {
        let mut reg = self.lock();
        let Some(conns) = reg.staff.get(&staff).cloned() else {
            return;
        };
        for id in conns {
            if let Some(conn) = reg.conns.get_mut(&id) {
                conn.watching.retain(|c| *c != conversation);
            }
            if let Some(list) = reg.watchers.get_mut(&conversation) {
                list.retain(|c| *c != id);
                if list.is_empty() {
                    reg.watchers.remove(&conversation);
                }
            }
        }
    }

    pub fn is_watching(&self, id: ConnId, conversation: ConversationId) -> bool {
        let reg = self.lock();
        reg.conns
            .get(&id)
            .is_some_and(|c| c.watching.contains(&conversation))
    }

    pub fn set_audience(&self, conversation: ConversationId, audience: Option<Audience>) {
        let mut reg = self.lock();
        match audience {
            Some(audience) => reg.audience.insert(conversation, audience),
            None => reg.audience.remove(&conversation),
        };
    }

    /// Staff members with at least one open connection.
    pub fn online_staff(&self) -> Vec<StaffId> {
        self.lock().staff.keys().copied().collect()
    }

    pub fn is_online(&self, staff: StaffId) -> bool {
        self.lock().staff.contains_key(&staff)
    }

    /// Queues `frame` for everyone concerned. Never blocks.
    pub fn publish(&self, conversation: ConversationId, frame: &Outbound, targets: &Targets) {
        let mut reg = self.lock();
        let mut recipients: Vec<ConnId> = Vec::with_capacity(8);
        if let Some(watchers) = reg.watchers.get(&conversation) {
            recipients.extend_from_slice(watchers);
        }
        let agent = reg.audience.get(&conversation).and_then(|a| a.agent);
        for staff in agent.iter().chain(targets.staff.iter()) {
            if let Some(conns) = reg.staff.get(staff) {
                recipients.extend_from_slice(conns);
            }
        }
        if targets.all_staff {
            for conns in reg.staff.values() {
                recipients.extend_from_slice(conns);
            }
        }
        recipients.sort_unstable();
        recipients.dedup();
        let mut kicked = Vec::new();
        for id in recipients {
            if Some(id) == targets.except {
                continue;
            }
            let Some(conn) = reg.conns.get(&id) else {
                continue;
            };
            match conn.tx.try_send(frame.clone()) {
                Ok(()) => METRICS.frames_delivered.inc(),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    METRICS.limit("max_outbound_frames");
                    kicked.push(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => kicked.push(id),
            }
        }
        for id in kicked {
            // Dropping the sender closes the connection's queue: its task closes the socket
            // with `slow_consumer`.
            remove(&mut reg, id);
        }
    }
}

fn remove(reg: &mut Registry, id: ConnId) {
    let Some(conn) = reg.conns.remove(&id) else {
        return;
    };
    for conversation in conn.watching {
        if let Some(list) = reg.watchers.get_mut(&conversation) {
            list.retain(|c| *c != id);
            if list.is_empty() {
                reg.watchers.remove(&conversation);
            }
        }
    }
    if let Who::Staff(staff) = conn.who
        && let Some(list) = reg.staff.get_mut(&staff)
    {
        list.retain(|c| *c != id);
        if list.is_empty() {
            reg.staff.remove(&staff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Outbound {
        Outbound::new(None, 0, "{}".into())
    }

    #[test]
    fn staff_connections_all_get_their_chats_once() {
        let delivery = Delivery::new();
        let staff = StaffId::new();
        let conversation = ConversationId::new();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let (c1, first) = delivery.register(Who::Staff(staff), tx1);
        let (_c2, second) = delivery.register(Who::Staff(staff), tx2);
        assert!(first && !second);
        delivery.watch(c1, conversation);
        delivery.set_audience(conversation, Some(Audience { agent: Some(staff) }));
        delivery.publish(conversation, &frame(), &Targets::default());
        assert!(rx1.try_recv().is_ok());
        assert!(rx1.try_recv().is_err(), "watcher and agent: delivered once");
        assert!(rx2.try_recv().is_ok());
    }

    #[test]
    fn full_queue_drops_the_connection() {
        let delivery = Delivery::new();
        let customer = CustomerId::new();
        let conversation = ConversationId::new();
        let (tx, mut rx) = mpsc::channel(1);
        let (id, _) = delivery.register(Who::Customer(customer), tx);
        delivery.watch(id, conversation);
        delivery.publish(conversation, &frame(), &Targets::default());
        delivery.publish(conversation, &frame(), &Targets::default());
        assert!(rx.try_recv().is_ok());
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(!delivery.is_watching(id, conversation));
    }
}

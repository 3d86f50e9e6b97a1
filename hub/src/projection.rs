//! The HQ projection: what a received sync round changes in the `conversations`, `participants`
//! and `messages` tables (schema version 2), which the HQ API (hq.rs) reads.
//!
//! The documents are the truth; these rows are an index of them, written in the same
//! transaction as the chunk that brought the change (`SyncWrite::projection`), so the two never
//! disagree after a crash. [`project`] is a pure function of what the round brought; the store
//! applies it idempotently (messages by id, participants by key, the conversation row
//! rewritten), so a record named twice — Automerge may report a record this replica already
//! held — changes nothing.
//!
//! Derived per-conversation figures (message count, first customer message, first response,
//! last message) are recomputed by the store from the message rows with indexed lookups rather
//! than carried here: messages from a replica that was offline may arrive after later ones, and
//! the rows see every arrival order the same way.

use aisle_sync::{
    Conversation, Delta, Event, Meta, Participant, ParticipantRecord, SessionState, Status,
    SyncError,
};

use crate::metrics::METRICS;
use crate::store::{HubStore, StoreResult};

/// The rows one received round writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Projection {
    pub conversation: ConversationFacts,
    /// New or renamed participants (upserted by conversation and participant key).
    pub participants: Vec<ParticipantRow>,
    /// New messages (inserted once by id).
    pub messages: Vec<MessageRow>,
}

/// The conversation's facts as of this round: meta and the folded session state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationFacts {
    pub id: String,
    /// The store that opened the conversation (`meta.store_id`).
    pub store_id: String,
    pub customer_id: String,
    pub status: &'static str,
    pub agent_id: Option<String>,
    /// The agent's display name from the participant records, if they have one.
    pub agent_name: Option<String>,
    pub created_at_ms: u64,
    /// The wall time of the resolve event while the conversation is resolved; `None` otherwise
    /// (a reopened conversation is not resolved).
    pub resolved_at_ms: Option<u64>,
    /// The latest customer message's intent that is not `greeting` / `other` in this round;
    /// the store keeps the intent it already has when this is `None`.
    pub intent: Option<String>,
}

/// A participant as the HQ API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantRow {
    /// The document's key for the participant (`customer:<id>`, `staff:<id>`, `bot`, `system`).
    pub key: String,
    pub kind: &'static str,
    pub id: Option<String>,
    pub display_name: String,
    pub joined_at_ms: u64,
}

/// One message as the HQ API shows and searches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    pub id: String,
    pub conversation: String,
    /// The conversation's store (where it was opened).
    pub store_id: String,
    pub sender_kind: &'static str,
    pub sender_id: Option<String>,
    /// The sender's display name when the message was projected, if the document has one.
    pub sender_name: Option<String>,
    pub body: String,
    pub sent_at_ms: u64,
    /// JSON of the message's [`aisle_sync::Attachment`], if it has one.
    pub attachment: Option<String>,
    /// The intent the store's model read in a customer message (`None` for other senders).
    pub intent: Option<String>,
}

/// A participant's kind and id, as stored in the projection.
pub fn participant_parts(participant: &Participant) -> (&'static str, Option<String>) {
    match participant {
        Participant::Customer(id) => ("customer", Some(id.to_string())),
        Participant::Staff(id) => ("staff", Some(id.to_string())),
        Participant::Bot => ("bot", None),
        Participant::System => ("system", None),
    }
}

/// The rows for a round that brought `delta`, given the conversation's meta, its folded state,
/// all its events (to date the resolve) and all its participants (to name senders).
pub fn project(
    meta: &Meta,
    state: &SessionState,
    events: &[Event],
    delta: &Delta,
    participants: &[ParticipantRecord],
) -> Projection {
    let name_of = |who: &Participant| {
        participants
            .iter()
            .find(|p| &p.participant == who)
            .map(|p| p.display_name.clone())
    };
    let conversation_id = meta.id.to_string();
    // Only `reopen` leaves `resolved`, so while resolved the head is the resolve event.
    let resolved_at_ms = match (state.status, state.head) {
        (Status::Resolved, Some(head)) => events
            .iter()
            .find(|e| e.id == head)
            .map(|e| e.hlc.wall_ms()),
        _ => None,
    };
    // What the customer came for: their latest message read as something other than a
    // greeting or small talk (a later "thanks" does not turn a refund into a greeting).
    let intent = delta
        .messages
        .iter()
        .filter(|m| matches!(m.sender, Participant::Customer(_)))
        .filter_map(|m| m.intent.as_ref().map(|i| (m.sent_at_ms, m.id, &i.label)))
        .filter(|(_, _, label)| !matches!(label.as_str(), "greeting" | "other"))
        .max()
        .map(|(_, _, label)| label.clone());
    let conversation = ConversationFacts {
        id: conversation_id.clone(),
        store_id: meta.store_id.clone(),
        customer_id: meta.customer.to_string(),
        status: state.status.as_str(),
        agent_id: state.agent.map(|a| a.to_string()),
        agent_name: state.agent.and_then(|a| name_of(&Participant::Staff(a))),
        created_at_ms: meta.created_at_ms,
        resolved_at_ms,
        intent,
    };
    let participants = delta
        .participants
        .iter()
        .map(|p| {
            let (kind, id) = participant_parts(&p.participant);
            ParticipantRow {
                key: p.participant.to_string(),
                kind,
                id,
                display_name: p.display_name.clone(),
                joined_at_ms: p.joined_at_ms,
            }
        })
        .collect();
    let messages = delta
        .messages
        .iter()
        .map(|m| {
            let (sender_kind, sender_id) = participant_parts(&m.sender);
            MessageRow {
                id: m.id.to_string(),
                conversation: conversation_id.clone(),
                store_id: meta.store_id.clone(),
                sender_kind,
                sender_id,
                sender_name: name_of(&m.sender),
                body: m.body.clone(),
                sent_at_ms: m.sent_at_ms,
                attachment: m
                    .attachment
                    .as_ref()
                    .and_then(|a| serde_json::to_string(a).ok()),
                intent: m.intent.as_ref().map(|i| i.label.clone()),
            }
        })
        .collect();
    Projection {
        conversation,
        participants,
        messages,
    }
}

/// The projection of a round just received into `conversation` (complete), given what
/// `changes_since` the heads before the round returned; `None` when the round brought no record
/// to a conversation that has messages (so it was projected before). A conversation without
/// messages is projected anyway: its first round may carry nothing but the skeleton, and it
/// must still be listed; such a document is tiny.
///
/// A record that does not decode is logged and counted
/// (`aisle_hub_projection_failures_total`) and the round is stored without a projection: the
/// document must still reach the hub, and retrying would not fix the record.
pub fn of_round(
    conversation: &Conversation,
    delta: Result<Delta, SyncError>,
) -> Option<Projection> {
    let rows = delta.and_then(|delta| {
        if delta.is_empty() && conversation.message_count() > 0 {
            return Ok(None);
        }
        let meta = conversation.meta()?;
        let events = conversation.events()?;
        let fold = aisle_sync::fold(&events);
        let participants = conversation.participants()?;
        Ok(Some(project(
            &meta,
            &fold.state,
            &events,
            &delta,
            &participants,
        )))
    });
    match rows {
        Ok(rows) => rows,
        Err(err) => {
            tracing::error!(
                conversation = %conversation.id(),
                error = %err,
                "a synced conversation could not be projected for HQ"
            );
            METRICS.projection_failures.inc();
            None
        }
    }
}

/// Projects every conversation document that has no projection row: those a hub stored before
/// schema version 2. Runs at start, before the hub serves, so that no sync round projects the
/// same conversation concurrently with an older state. Returns how many were projected; a
/// document that does not load or project is logged and left for the next start.
pub async fn backfill(store: &dyn HubStore) -> StoreResult<usize> {
    let keys = store.unprojected_documents().await?;
    let mut projected = 0;
    for key in keys {
        let Some(stored) = store.load_document(key.clone()).await? else {
            continue;
        };
        let mut conversation = match Conversation::load(&stored.bytes) {
            Ok(conversation) => conversation,
            Err(err) => {
                tracing::error!(doc = %key, error = %err, "a stored document did not load");
                METRICS.projection_failures.inc();
                continue;
            }
        };
        let delta = conversation.changes_since(&[]);
        if let Some(projection) = of_round(&conversation, delta) {
            store.save_projection(projection).await?;
            projected += 1;
        }
    }
    if projected > 0 {
        tracing::info!(projected, "conversations projected for HQ");
    }
    Ok(projected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aisle_sync::{
        ConversationId, CustomerId, EventId, EventKind, Hlc, MessageId, MessageRecord, StaffId,
    };
    use ulid::Ulid;

    #[test]
    fn a_resolved_conversation_names_its_agent_and_the_resolve_time() {
        let customer = CustomerId::from_ulid(Ulid(2));
        let agent = StaffId::from_ulid(Ulid(7));
        let meta = Meta::new(ConversationId::from_ulid(Ulid(1)), "s1", customer, 1_000);
        let mut c = Conversation::create(&meta).unwrap();
        // A bare skeleton is listed (queued, no messages).
        let bare = c.changes_since(&[]);
        let bare = of_round(&c, bare).expect("a new conversation is projected");
        assert_eq!(
            (bare.conversation.status, bare.messages.len()),
            ("queued", 0)
        );
        let before = c.heads();
        c.put_participant(&ParticipantRecord {
            participant: Participant::Staff(agent),
            display_name: "Sam".into(),
            joined_at_ms: 1_100,
        })
        .unwrap();
        for (n, sender, at) in [
            (10, Participant::Customer(customer), 1_200),
            (11, Participant::Staff(agent), 1_500),
        ] {
            c.add_message(&MessageRecord {
                id: MessageId::from_ulid(Ulid(n)),
                client_msg_id: format!("c{n}"),
                sender,
                body: format!("body {n}"),
                sent_at_ms: at,
                attachment: None,
                intent: None,
            })
            .unwrap();
        }
        let claim = Event {
            id: EventId::from_ulid(Ulid(50)),
            kind: EventKind::Claim { agent },
            actor: Participant::Staff(agent),
            hlc: Hlc::new(1_300, 0),
            prev: None,
        };
        let resolve = Event {
            id: EventId::from_ulid(Ulid(51)),
            kind: EventKind::Resolve,
            actor: Participant::Staff(agent),
            hlc: Hlc::new(1_900, 0),
            prev: Some(claim.id),
        };
        c.add_event(&claim).unwrap();
        c.add_event(&resolve).unwrap();
        let delta = c.changes_since(&before);
        let p = of_round(&c, delta).expect("records arrived");
        assert_eq!(p.conversation.status, "resolved");
        assert_eq!(p.conversation.agent_id, Some(agent.to_string()));
        assert_eq!(p.conversation.agent_name.as_deref(), Some("Sam"));
        assert_eq!(p.conversation.resolved_at_ms, Some(1_900));
        assert_eq!(p.conversation.intent, None);
        assert_eq!(p.participants.len(), 1);
        let senders: Vec<_> = p
            .messages
            .iter()
            .map(|m| (m.sender_kind, m.sender_name.as_deref(), m.sent_at_ms))
            .collect();
        assert_eq!(
            senders,
            vec![("customer", None, 1_200), ("staff", Some("Sam"), 1_500)]
        );
        // Nothing new since: no projection.
        let now = c.heads();
        let delta = c.changes_since(&now);
        assert_eq!(of_round(&c, delta), None);
    }
}

//! Strategies shared by the property tests.

#![allow(dead_code)] // each test binary uses a different subset

use aisle_sync::{
    CustomerId, Event, EventId, EventKind, Hlc, MessageId, MessageRecord, Participant, StaffId,
};
use proptest::prelude::*;
use proptest::sample::Index;
use ulid::Ulid;

/// A small pool of agents so that "transfer to the current agent" and repeated claims happen.
pub fn staff(n: u128) -> StaffId {
    StaffId::from_ulid(Ulid(n))
}

pub fn arb_agent() -> impl Strategy<Value = StaffId> {
    (1u128..=3).prop_map(staff)
}

pub fn arb_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        arb_agent().prop_map(|agent| EventKind::Assign { agent }),
        arb_agent().prop_map(|agent| EventKind::Claim { agent }),
        arb_agent().prop_map(|to| EventKind::Transfer { to }),
        Just(EventKind::Release),
        Just(EventKind::Resolve),
        Just(EventKind::Reopen),
        (0u64..1_000).prop_map(|until_ms| EventKind::Snooze { until_ms }),
        Just(EventKind::Wake),
    ]
}

pub fn arb_actor() -> impl Strategy<Value = Participant> {
    prop_oneof![
        arb_agent().prop_map(Participant::Staff),
        Just(Participant::Customer(CustomerId::from_ulid(Ulid(100)))),
        Just(Participant::Bot),
        Just(Participant::System),
    ]
}

/// A random event set with distinct ids. Each event's `prev` is None, the previous event (to
/// get long applied chains) or any earlier event (to get conflicts and orphans). HLCs come from
/// a small range so that ties (broken by id) are common.
pub fn arb_events(max: usize) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (
            arb_kind(),
            arb_actor(),
            0u64..24,
            0u8..6,
            any::<Index>(),
            any::<u64>(),
        ),
        0..max,
    )
    .prop_map(|raw| {
        let mut events: Vec<Event> = Vec::with_capacity(raw.len());
        for (i, (kind, actor, hlc, prev_mode, pick, id_bits)) in raw.into_iter().enumerate() {
            let prev = match (i, prev_mode) {
                (0, _) | (_, 0) => None,
                (_, 1..=3) => Some(events[i - 1].id),
                _ => Some(events[pick.index(i)].id),
            };
            events.push(Event {
                // Random high bits for random tie-breaking order, index in the low bits for
                // uniqueness.
                id: EventId::from_ulid(Ulid(((id_bits as u128) << 16) | i as u128)),
                kind,
                actor,
                hlc: Hlc(hlc),
                prev,
            });
        }
        events
    })
}

/// Messages with distinct ids and colliding timestamps.
pub fn arb_messages(max: usize) -> impl Strategy<Value = Vec<MessageRecord>> {
    prop::collection::vec((0u64..8, any::<u64>(), "[a-z ]{0,12}"), 0..max).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (sent_at_ms, id_bits, body))| MessageRecord {
                id: MessageId::from_ulid(Ulid(((id_bits as u128) << 16) | i as u128)),
                client_msg_id: format!("client-{i}"),
                sender: Participant::Customer(CustomerId::from_ulid(Ulid(100))),
                body,
                sent_at_ms,
                attachment: None,
                intent: None,
            })
            .collect()
    })
}

//! Properties of the conversation document under replication.

mod common;

use std::collections::BTreeSet;

use aisle_sync::{
    Conversation, ConversationId, CustomerId, Event, EventId, EventKind, Hlc, MessageRecord, Meta,
    Participant, Rejection, Status, fold,
};
use common::{arb_events, arb_messages, staff};
use proptest::prelude::*;
use proptest::sample::Index;
use ulid::Ulid;

fn meta() -> Meta {
    Meta::new(
        ConversationId::from_ulid(Ulid(1)),
        "store-7",
        CustomerId::from_ulid(Ulid(100)),
        0,
    )
}

#[derive(Clone, Debug)]
enum Item {
    Message(MessageRecord),
    Event(Event),
}

fn add(doc: &mut Conversation, item: &Item) {
    match item {
        Item::Message(m) => {
            doc.add_message(m).expect("add message");
        }
        Item::Event(e) => {
            doc.add_event(e).expect("add event");
        }
    }
}

/// Items, where each goes (0 = replica A only, 1 = B only, 2 = both), and each replica's
/// arrival order.
type Scenario = (Vec<Item>, Vec<u8>, Vec<usize>, Vec<usize>);

fn scenario() -> impl Strategy<Value = Scenario> {
    (arb_messages(12), arb_events(12))
        .prop_map(|(messages, events)| {
            messages
                .into_iter()
                .map(Item::Message)
                .chain(events.into_iter().map(Item::Event))
                .collect::<Vec<_>>()
        })
        .prop_flat_map(|items| {
            let n = items.len();
            let order: Vec<usize> = (0..n).collect();
            (
                Just(items),
                prop::collection::vec(0u8..3, n),
                Just(order.clone()).prop_shuffle(),
                Just(order).prop_shuffle(),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Property 2: two replicas receiving the same items in different orders (split between
    /// them, some delivered to both), with an optional midway merge, converge after merging both
    /// ways — same fold, same messages — and agree with the pure fold of the event set.
    /// Replica A also persists save + save_incremental chunks as it goes; loading them
    /// reproduces A.
    #[test]
    fn replicas_converge_regardless_of_arrival_order(
        (items, route, order_a, order_b) in scenario(),
        midway in any::<Option<Index>>(),
        persist_every in 1usize..5,
    ) {
        let mut a = Conversation::create(&meta()).expect("create");
        let mut b = a.fork();
        let mut storage = a.save();

        let for_a: Vec<&Item> = order_a.iter().filter(|&&i| route[i] != 1).map(|&i| &items[i]).collect();
        let for_b: Vec<&Item> = order_b.iter().filter(|&&i| route[i] != 0).map(|&i| &items[i]).collect();
        let midway = midway.map(|ix| ix.index(for_a.len().max(1)));

        for (step, item) in for_a.iter().enumerate() {
            if Some(step) == midway {
                a.merge(&mut b).expect("midway merge");
            }
            add(&mut a, item);
            if step % persist_every == 0 {
                storage.extend(a.save_incremental());
            }
        }
        for item in &for_b {
            add(&mut b, item);
        }
        a.merge(&mut b).expect("merge a <- b");
        b.merge(&mut a).expect("merge b <- a");
        storage.extend(a.save_incremental());

        let all_events: Vec<Event> = items.iter().filter_map(|i| match i {
            Item::Event(e) => Some(e.clone()),
            Item::Message(_) => None,
        }).collect();
        let mut all_messages: Vec<MessageRecord> = items.iter().filter_map(|i| match i {
            Item::Message(m) => Some(m.clone()),
            Item::Event(_) => None,
        }).collect();
        all_messages.sort_by_key(|m| (m.sent_at_ms, m.id));

        let fold_a = a.fold().expect("fold a");
        prop_assert_eq!(&fold_a, &b.fold().expect("fold b"));
        prop_assert_eq!(&fold_a, &fold(&all_events));
        let messages_a = a.messages().expect("messages a");
        prop_assert_eq!(&messages_a, &b.messages().expect("messages b"));
        prop_assert_eq!(&messages_a, &all_messages);
        prop_assert_eq!(a.heads(), b.heads());

        let mut reloaded = Conversation::load(&storage).expect("load persisted chunks");
        prop_assert_eq!(reloaded.messages().expect("messages"), messages_a);
        prop_assert_eq!(reloaded.fold().expect("fold"), fold_a);
        prop_assert_eq!(reloaded.heads(), a.heads());
    }

    /// Property 3: k replicas of a queued conversation each claim it for a different agent while
    /// apart. After merging in random orders all agree; exactly one claim (the smallest
    /// (hlc, id)) is applied and every other one is rejected as a conflict naming the winner.
    #[test]
    fn concurrent_claims_have_exactly_one_winner_and_named_losers(
        k in 2usize..=6,
        hlcs in prop::collection::vec(0u64..4, 6),
        id_bits in prop::collection::vec(any::<u64>(), 6),
        with_history in any::<bool>(),
        gossip in prop::collection::vec((any::<Index>(), any::<Index>()), 0..10),
        final_order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let mut base = Conversation::create(&meta()).expect("create");
        // Optionally the chat was already claimed and released once, so the head is not None.
        let mut head = None;
        if with_history {
            let claim = Event {
                id: EventId::from_ulid(Ulid(1)),
                kind: EventKind::Claim { agent: staff(50) },
                actor: Participant::Staff(staff(50)),
                hlc: Hlc::new(1, 0),
                prev: None,
            };
            let release = Event {
                id: EventId::from_ulid(Ulid(2)),
                kind: EventKind::Release,
                actor: Participant::System,
                hlc: Hlc::new(2, 0),
                prev: Some(claim.id),
            };
            base.add_event(&claim).expect("add");
            base.add_event(&release).expect("add");
            head = Some(release.id);
        }
        let before = base.fold().expect("fold");
        prop_assert_eq!(before.state.status, Status::Queued);
        prop_assert_eq!(before.state.head, head);

        let mut replicas: Vec<Conversation> = (0..k).map(|_| base.fork()).collect();
        let mut claims = Vec::new();
        for (i, replica) in replicas.iter_mut().enumerate() {
            let agent = staff(10 + i as u128);
            let claim = Event {
                id: EventId::from_ulid(Ulid(((id_bits[i] as u128) << 8) | (16 + i as u128))),
                kind: EventKind::Claim { agent },
                actor: Participant::Staff(agent),
                hlc: Hlc::new(10 + hlcs[i], 0),
                prev: head,
            };
            // Locally, each claimant sees its own claim win.
            replica.add_event(&claim).expect("add");
            prop_assert_eq!(replica.fold().expect("fold").state.agent, Some(agent));
            claims.push(claim);
        }

        // Random partial gossip, then a full exchange in a random order.
        for (x, y) in gossip {
            let (x, y) = (x.index(k), y.index(k));
            if x != y {
                merge_pair(&mut replicas, x, y);
            }
        }
        let order: Vec<usize> = final_order.into_iter().filter(|&i| i < k).collect();
        for &x in &order {
            for &y in &order {
                if x != y {
                    merge_pair(&mut replicas, x, y);
                }
            }
        }

        let winner = claims.iter().min_by_key(|c| (c.hlc, c.id)).expect("k >= 2");
        let EventKind::Claim { agent: winner_agent } = winner.kind else { unreachable!() };
        let reference = replicas[0].fold().expect("fold");
        for replica in &mut replicas {
            prop_assert_eq!(&replica.fold().expect("fold"), &reference);
        }
        prop_assert_eq!(reference.state.status, Status::Assigned);
        prop_assert_eq!(reference.state.agent, Some(winner_agent));
        prop_assert_eq!(reference.state.head, Some(winner.id));
        prop_assert_eq!(reference.state.applied, before.state.applied + 1);

        let losers: BTreeSet<EventId> = claims.iter().map(|c| c.id).filter(|&id| id != winner.id).collect();
        let rejected: BTreeSet<EventId> = reference.rejected.iter().map(|r| r.event).collect();
        prop_assert_eq!(&rejected, &losers);
        for r in &reference.rejected {
            prop_assert_eq!(&r.rejection, &Rejection::Conflict { lost_to: winner.id });
        }
    }
}

/// Merges replica `y` into replica `x`.
fn merge_pair(replicas: &mut [Conversation], x: usize, y: usize) {
    assert_ne!(x, y);
    let (lo, hi) = replicas.split_at_mut(x.max(y));
    let (rx, ry) = if x < y {
        (&mut lo[x], &mut hi[0])
    } else {
        (&mut hi[0], &mut lo[y])
    };
    rx.merge(ry).expect("merge");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `changes_since` on a replica after a merge names exactly the records the other replica
    /// had and this one lacked (what the edge and the hub project into their tables).
    #[test]
    fn changes_since_names_exactly_what_a_merge_brought((items, place, _, _) in scenario()) {
        let mut a = Conversation::create(&meta()).expect("create");
        let mut b = a.fork();
        for (item, where_) in items.iter().zip(&place) {
            if *where_ != 1 { add(&mut a, item); }
            if *where_ != 0 { add(&mut b, item); }
        }
        let before = a.heads();
        let had: BTreeSet<_> = a.messages().expect("messages").into_iter().map(|m| m.id).collect();
        let had_events: BTreeSet<_> =
            a.events().expect("events").into_iter().map(|e| e.id).collect();
        a.merge(&mut b).expect("merge");
        let delta = a.changes_since(&before).expect("delta");
        let all_messages = a.messages().expect("messages");
        let all_events = a.events().expect("events");
        // Every record the merge brought is named; anything else named was held already (the
        // same record written on both replicas) and is identical.
        for m in all_messages.iter().filter(|m| !had.contains(&m.id)) {
            prop_assert!(delta.messages.contains(m), "missing message {:?}", m.id);
        }
        for m in &delta.messages {
            prop_assert!(all_messages.contains(m));
        }
        for e in all_events.iter().filter(|e| !had_events.contains(&e.id)) {
            prop_assert!(delta.events.contains(e), "missing event {:?}", e.id);
        }
        for e in &delta.events {
            prop_assert!(all_events.contains(e));
        }
        let mut ids: Vec<_> = delta.messages.iter().map(|m| m.id).collect();
        ids.dedup();
        prop_assert_eq!(ids.len(), delta.messages.len(), "a message named twice");
        // From nothing: everything.
        let all = a.changes_since(&[]).expect("delta from nothing");
        prop_assert_eq!(all.messages, a.messages().expect("messages"));
        let now = a.heads();
        prop_assert_eq!(a.changes_since(&now).expect("no change"), aisle_sync::Delta::default());
    }
}

//! Properties of the pure session fold.

mod common;

use std::collections::HashSet;

use aisle_sync::{
    Event, EventKind, Hlc, HlcClock, Participant, Rejection, SessionState, StaffId, Status, fold,
};
use common::{arb_actor, arb_events, arb_kind};
use proptest::prelude::*;
use proptest::sample::Index;

/// Events, the same events shuffled, and some duplicates to sprinkle in.
fn events_and_permutation() -> impl Strategy<Value = (Vec<Event>, Vec<Event>, Vec<(Index, Index)>)>
{
    arb_events(24).prop_flat_map(|events| {
        (
            Just(events.clone()),
            Just(events).prop_shuffle(),
            prop::collection::vec((any::<Index>(), any::<Index>()), 0..8),
        )
    })
}

proptest! {
    /// Property 1: the fold is a function of the event set — arrival order and duplicates do
    /// not matter.
    #[test]
    fn fold_ignores_order_and_duplicates((events, shuffled, dups) in events_and_permutation()) {
        let reference = fold(&events);

        let mut noisy = shuffled.clone();
        if !events.is_empty() {
            for (which, at) in dups {
                let dup = events[which.index(events.len())].clone();
                noisy.insert(at.index(noisy.len() + 1), dup);
            }
        }
        prop_assert_eq!(&fold(&noisy), &reference);
        prop_assert_eq!(&fold(shuffled.iter().rev()), &reference);

        // Every distinct event is accounted for exactly once.
        prop_assert_eq!(
            reference.state.applied as usize + reference.rejected.len(),
            events.len()
        );
        let rejected: HashSet<_> = reference.rejected.iter().map(|r| r.event).collect();
        prop_assert_eq!(rejected.len(), reference.rejected.len());
        // A Conflict always names an applied event other than the loser.
        for r in &reference.rejected {
            if let Rejection::Conflict { lost_to } = r.rejection {
                prop_assert!(!rejected.contains(&lost_to));
                prop_assert_ne!(lost_to, r.event);
            }
        }
    }

    /// Same-id twins with different content (an upstream bug) still give an order-independent
    /// result.
    #[test]
    fn fold_is_order_independent_even_with_conflicting_twins(
        (events, shuffled, _) in events_and_permutation(),
        twin_of in any::<Index>(),
        twin_kind in arb_kind(),
        twin_hlc in 0u64..24,
    ) {
        prop_assume!(!events.is_empty());
        let mut twin = events[twin_of.index(events.len())].clone();
        twin.kind = twin_kind;
        twin.hlc = Hlc(twin_hlc);
        let mut a = events.clone();
        a.push(twin.clone());
        let mut b = vec![twin];
        b.extend(shuffled);
        prop_assert_eq!(fold(&a), fold(&b));
    }

    /// Property 4: a single writer that always names the current head and only does legal
    /// things has every event applied, and ends where a simple model says.
    #[test]
    fn single_writer_legal_sequences_fully_apply(
        intents in prop::collection::vec((arb_kind(), arb_actor(), -3i64..40), 0..40),
        order_seed in any::<u64>(),
    ) {
        let mut model = Model::initial();
        let mut clock = HlcClock::default();
        let mut wall: i64 = 1_000_000;
        let mut head = None;
        let mut events = Vec::new();
        for (n, (kind, actor, dt)) in intents.into_iter().enumerate() {
            let Some(next) = model.step(&kind) else { continue };
            model = next;
            wall += dt; // wall clock jitters, sometimes backwards
            let event = Event {
                id: aisle_sync::EventId::from_ulid(ulid::Ulid((order_seed as u128) << 32 | n as u128)),
                kind,
                actor,
                hlc: clock.tick(wall as u64),
                prev: head,
            };
            head = Some(event.id);
            events.push(event);
        }
        // Delivery order must not matter either.
        let reversed: Vec<&Event> = events.iter().rev().collect();
        let f = fold(reversed);
        prop_assert!(f.rejected.is_empty(), "rejected: {:?}", f.rejected);
        prop_assert_eq!(f.state.applied as usize, events.len());
        prop_assert_eq!(f.state.head, head);
        prop_assert_eq!(model.as_state(head, events.len()), f.state);
    }

    /// Like property 4 but illegal intents are sent too (with the right head): they are
    /// rejected as `Illegal` from the model's status and change nothing.
    #[test]
    fn single_writer_illegal_events_are_rejected_and_harmless(
        intents in prop::collection::vec(arb_kind(), 0..40),
    ) {
        let mut model = Model::initial();
        let mut head = None;
        let mut applied = 0usize;
        let mut events = Vec::new();
        let mut expected_rejections = Vec::new();
        for (n, kind) in intents.into_iter().enumerate() {
            let event = Event {
                id: aisle_sync::EventId::from_ulid(ulid::Ulid(n as u128 + 1)),
                kind: kind.clone(),
                actor: Participant::System,
                hlc: Hlc::new(1_000 + n as u64, 0),
                prev: head,
            };
            match model.step(&kind) {
                Some(next) => {
                    model = next;
                    head = Some(event.id);
                    applied += 1;
                }
                None => expected_rejections.push((event.id, Rejection::Illegal { from: model.status })),
            }
            events.push(event);
        }
        let f = fold(&events);
        let got: Vec<_> = f.rejected.iter().map(|r| (r.event, r.rejection.clone())).collect();
        prop_assert_eq!(got, expected_rejections);
        prop_assert_eq!(model.as_state(head, applied), f.state);
    }
}

/// An independent restatement of the transition table, organised by event rather than by state,
/// to check `transition` against.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    status: Status,
    agent: Option<StaffId>,
    handed_over_by: Option<StaffId>,
    until: Option<u64>,
}

impl Model {
    fn initial() -> Self {
        Model {
            status: Status::Queued,
            agent: None,
            handed_over_by: None,
            until: None,
        }
    }

    fn step(&self, kind: &EventKind) -> Option<Model> {
        use Status::*;
        let held = matches!(self.status, Assigned | Transferred | Reopened);
        let to = |status, agent| Model {
            status,
            agent,
            handed_over_by: None,
            until: None,
        };
        match *kind {
            EventKind::Assign { agent } => {
                matches!(self.status, Queued | Reopened).then(|| to(Assigned, Some(agent)))
            }
            EventKind::Claim { agent } => (matches!(self.status, Queued | Reopened)
                || (self.status == Snoozed && self.agent.is_none()))
            .then(|| to(Assigned, Some(agent))),
            EventKind::Transfer { to: b } => (held && self.agent != Some(b)).then(|| Model {
                handed_over_by: self.agent,
                ..to(Transferred, Some(b))
            }),
            EventKind::Release => held.then(|| to(Queued, None)),
            EventKind::Resolve => (self.status != Resolved).then(|| to(Resolved, self.agent)),
            EventKind::Reopen => (self.status == Resolved).then(|| to(Reopened, self.agent)),
            EventKind::Snooze { until_ms } => (self.status != Resolved && self.status != Snoozed)
                .then(|| Model {
                    until: Some(until_ms),
                    ..to(Snoozed, self.agent)
                }),
            EventKind::Wake => (self.status == Snoozed).then(|| {
                if self.agent.is_some() {
                    to(Assigned, self.agent)
                } else {
                    to(Queued, None)
                }
            }),
        }
    }

    fn as_state(&self, head: Option<aisle_sync::EventId>, applied: usize) -> SessionState {
        SessionState {
            status: self.status,
            agent: self.agent,
            previous_agent: self.handed_over_by,
            snoozed_until_ms: self.until,
            head,
            applied: applied as u32,
        }
    }
}

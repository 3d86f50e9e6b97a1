//! The session state machine (who holds a chat, is it open), as an event log folded through a
//! transition table.
//!
//! # Why a log and not a field
//!
//! Session state is edited concurrently by peers that may be apart for minutes (a store edge that
//! lost its uplink, the hub, several staff devices). A plain "status" register in the document
//! would merge by last-writer-wins, silently losing e.g. one of two concurrent claims with
//! nobody told. Instead every action is an immutable [`Event`] appended to the document, and the
//! state is [`fold`]ed from the *set* of events, so every replica that has the same events
//! computes the same state regardless of the order they arrived in.
//!
//! # Compare-and-swap
//!
//! Each event names the head of the log its actor saw ([`Event::prev`]). During the fold an event
//! applies only if that is still the head when its turn comes; otherwise it lost a race and is
//! reported in [`Fold::rejected`] with the event that beat it, so the edge can tell the loser
//! ("Sam already took this chat"). Then the [`transition`] table decides whether the action is
//! legal in that state.
//!
//! Wall-clock rules (snooze expiry) deliberately live outside the fold: the fold must be a pure
//! function of the events, and the edge turns the timer firing into an explicit
//! [`EventKind::Wake`] event.

use std::cmp::Ordering;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::hlc::Hlc;
use crate::ids::{EventId, Participant, StaffId};

/// Where a conversation is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a staff member.
    Queued,
    /// Held by a staff member (routed automatically or claimed by hand).
    Assigned,
    /// Held by a staff member who received it from a colleague.
    Transferred,
    /// Closed.
    Resolved,
    /// Closed, then opened again (by the customer writing, or by staff).
    Reopened,
    /// Parked until a time or until someone wakes it.
    Snoozed,
}

impl Status {
    /// Every status, in declaration order (handy for tests and admin UIs).
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Assigned,
        Status::Transferred,
        Status::Resolved,
        Status::Reopened,
        Status::Snoozed,
    ];

    /// The snake_case name, identical to the serde form.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Assigned => "assigned",
            Status::Transferred => "transferred",
            Status::Resolved => "resolved",
            Status::Reopened => "reopened",
            Status::Snoozed => "snoozed",
        }
    }

    /// Whether the conversation still needs attention (everything but `Resolved`; a snoozed chat
    /// is open, just parked).
    pub fn is_open(&self) -> bool {
        !matches!(self, Status::Resolved)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = SyncError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| SyncError::InvalidStatus(s.to_owned()))
    }
}

/// What an event does. The [`transition`] table gives each kind its meaning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// Automatic routing gives the chat to `agent`.
    Assign { agent: StaffId },
    /// A staff member takes a queued chat by hand.
    Claim { agent: StaffId },
    /// Hand the chat to a colleague with full context.
    Transfer { to: StaffId },
    /// Back to the queue (e.g. the agent went offline).
    Release,
    /// Close the chat.
    Resolve,
    /// Open a resolved chat again.
    Reopen,
    /// Park the chat until `until_ms` (the edge emits [`EventKind::Wake`] when the timer fires).
    Snooze { until_ms: u64 },
    /// End a snooze (timer fired, customer wrote, or staff woke it early).
    Wake,
}

/// One immutable entry of the session log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub kind: EventKind,
    pub actor: Participant,
    /// Orders the log; see [`fold`].
    pub hlc: Hlc,
    /// The event that was the head of the log when the actor acted (None = the actor saw the
    /// fresh, queued conversation). This is the compare-and-swap expectation.
    pub prev: Option<EventId>,
}

/// The folded session state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub status: Status,
    /// Who holds the chat. Kept through `Resolved` and `Snoozed` so that a reopen or wake goes
    /// back to the same person.
    pub agent: Option<StaffId>,
    /// Only while `Transferred`: who handed the chat over (None in every other status).
    pub previous_agent: Option<StaffId>,
    /// Only while `Snoozed`: when the snooze ends.
    pub snoozed_until_ms: Option<u64>,
    /// The last applied event: what a new event should name as its `prev`.
    pub head: Option<EventId>,
    /// How many events were applied (a version number; rejected events do not count).
    pub applied: u32,
}

impl SessionState {
    /// A fresh conversation: queued, nobody holding it, empty log.
    pub fn initial() -> Self {
        SessionState {
            status: Status::Queued,
            agent: None,
            previous_agent: None,
            snoozed_until_ms: None,
            head: None,
            applied: 0,
        }
    }
}

impl Default for SessionState {
    fn default() -> Self {
        Self::initial()
    }
}

/// Why an event did not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// Another event answering the same (or an earlier) head won; `lost_to` is the applied event
    /// that consumed the head this event expected.
    Conflict { lost_to: EventId },
    /// Not allowed from the state it expected (e.g. Resolve on a Resolved chat).
    Illegal { from: Status },
    /// The event it expected as head (`expected`) was never applied before it: that event was
    /// itself rejected, is missing from the set, or sorts after this one (only possible with a
    /// misbehaving clock). Look up `expected` in [`Fold::rejected`] to find the original loss.
    Orphaned { expected: EventId },
}

/// An event that did not apply, with enough context to tell its actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub event: EventId,
    pub actor: Participant,
    pub kind: EventKind,
    pub rejection: Rejection,
}

/// The result of folding an event set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    pub state: SessionState,
    /// In fold order, i.e. by `(hlc, id)`.
    pub rejected: Vec<Rejected>,
}

/// The transition table: the one place that says which event is legal in which state.
///
/// Does not touch `head`/`applied`; [`fold`] does. `previous_agent` and `snoozed_until_ms` are
/// cleared on every transition and set only by the rows that enter `Transferred`/`Snoozed`, so
/// they can never go stale.
pub fn transition(state: &SessionState, kind: &EventKind) -> Result<SessionState, Rejection> {
    use EventKind as K;
    use Status as S;

    let mut next = SessionState {
        previous_agent: None,
        snoozed_until_ms: None,
        ..state.clone()
    };
    match (state.status, kind) {
        // Taking a chat: from the queue, after a reopen, or a snoozed chat nobody holds.
        (S::Queued | S::Reopened, K::Assign { agent } | K::Claim { agent }) => {
            next.status = S::Assigned;
            next.agent = Some(*agent);
        }
        (S::Snoozed, K::Claim { agent }) if state.agent.is_none() => {
            next.status = S::Assigned;
            next.agent = Some(*agent);
        }
        // Handing over: only to someone else.
        (S::Assigned | S::Transferred | S::Reopened, K::Transfer { to })
            if state.agent != Some(*to) =>
        {
            next.status = S::Transferred;
            next.previous_agent = state.agent;
            next.agent = Some(*to);
        }
        (S::Assigned | S::Transferred | S::Reopened, K::Release) => {
            next.status = S::Queued;
            next.agent = None;
        }
        // Closing keeps the agent so a reopen goes back to them.
        (S::Queued | S::Assigned | S::Transferred | S::Reopened | S::Snoozed, K::Resolve) => {
            next.status = S::Resolved;
        }
        (S::Queued | S::Assigned | S::Transferred | S::Reopened, K::Snooze { until_ms }) => {
            next.status = S::Snoozed;
            next.snoozed_until_ms = Some(*until_ms);
        }
        (S::Resolved, K::Reopen) => {
            next.status = S::Reopened;
        }
        (S::Snoozed, K::Wake) => {
            next.status = if state.agent.is_some() {
                S::Assigned
            } else {
                S::Queued
            };
        }
        _ => {
            return Err(Rejection::Illegal { from: state.status });
        }
    }
    Ok(next)
}

/// Pure function of the event *set*: sort by (hlc, id), then walk: an event applies only if its
/// `prev` equals the current head (compare-and-swap) AND the table allows it; otherwise it is
/// rejected (Conflict if prev != head, Illegal if the table refuses). Duplicated events (same id)
/// count once.
///
/// When `prev != head`, the rejection is [`Rejection::Conflict`] naming the applied event whose
/// own `prev` was this event's `prev` (the one that "used up" the head it expected), or
/// [`Rejection::Orphaned`] if no applied event ever had that head (it was rejected or unknown).
///
/// Two different events sharing one id is a bug upstream (ids are random ULIDs); to stay a
/// function of the set even then, the copy that sorts first (by hlc, then by content) is kept.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Fold {
    let mut unique: BTreeMap<EventId, &Event> = BTreeMap::new();
    for event in events {
        match unique.entry(event.id) {
            Entry::Vacant(slot) => {
                slot.insert(event);
            }
            Entry::Occupied(mut slot) => {
                if canonical_cmp(event, slot.get()) == Ordering::Less {
                    slot.insert(event);
                }
            }
        }
    }
    let mut ordered: Vec<&Event> = unique.into_values().collect();
    ordered.sort_by_key(|e| (e.hlc, e.id));

    let mut state = SessionState::initial();
    // Which applied event consumed each head (keyed by that event's `prev`). Applied events form a
    // chain, so every applied event except the current head appears here as a key.
    let mut consumed: HashMap<Option<EventId>, EventId> = HashMap::new();
    let mut rejected = Vec::new();

    for event in ordered {
        let outcome = if event.prev == state.head {
            transition(&state, &event.kind)
        } else {
            Err(match (consumed.get(&event.prev), event.prev) {
                (Some(winner), _) => Rejection::Conflict { lost_to: *winner },
                (None, Some(expected)) => Rejection::Orphaned { expected },
                (None, None) => unreachable!(
                    "prev None differs from head, so something applied, and the first applied \
                     event consumed None"
                ),
            })
        };
        match outcome {
            Ok(mut next) => {
                consumed.insert(event.prev, event.id);
                next.head = Some(event.id);
                next.applied = state.applied.saturating_add(1);
                state = next;
            }
            Err(rejection) => rejected.push(Rejected {
                event: event.id,
                actor: event.actor.clone(),
                kind: event.kind.clone(),
                rejection,
            }),
        }
    }
    Fold { state, rejected }
}

/// A total order on events used only to pick one copy among same-id duplicates.
fn canonical_cmp(a: &Event, b: &Event) -> Ordering {
    (a.hlc, a.prev)
        .cmp(&(b.hlc, b.prev))
        .then_with(|| format!("{:?}", a.actor).cmp(&format!("{:?}", b.actor)))
        .then_with(|| format!("{:?}", a.kind).cmp(&format!("{:?}", b.kind)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulid::Ulid;

    fn staff(n: u128) -> StaffId {
        StaffId::from_ulid(Ulid(n))
    }

    fn eid(n: u128) -> EventId {
        EventId::from_ulid(Ulid(n))
    }

    fn with(status: Status, agent: Option<StaffId>) -> SessionState {
        SessionState {
            status,
            agent,
            snoozed_until_ms: (status == Status::Snoozed).then_some(99),
            ..SessionState::initial()
        }
    }

    fn ok(state: &SessionState, kind: EventKind) -> SessionState {
        match transition(state, &kind) {
            Ok(next) => next,
            Err(r) => panic!("{kind:?} from {state:?} rejected: {r:?}"),
        }
    }

    fn illegal(state: &SessionState, kind: EventKind) {
        assert_eq!(
            transition(state, &kind),
            Err(Rejection::Illegal { from: state.status }),
            "{kind:?} from {state:?} should be illegal"
        );
    }

    fn expect(status: Status, agent: Option<StaffId>) -> SessionState {
        SessionState {
            status,
            agent,
            ..SessionState::initial()
        }
    }

    const A: u128 = 1;
    const B: u128 = 2;

    #[test]
    fn status_strings() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().ok(), Some(s));
            assert_eq!(
                serde_json::to_string(&s).expect("serialise"),
                format!("\"{}\"", s.as_str())
            );
            assert_eq!(s.is_open(), s != Status::Resolved);
        }
        assert!(matches!(
            "closed".parse::<Status>(),
            Err(SyncError::InvalidStatus(_))
        ));
    }

    #[test]
    fn queued_rows() {
        let q = SessionState::initial();
        assert_eq!(
            ok(&q, EventKind::Assign { agent: staff(A) }),
            expect(Status::Assigned, Some(staff(A)))
        );
        assert_eq!(
            ok(&q, EventKind::Claim { agent: staff(A) }),
            expect(Status::Assigned, Some(staff(A)))
        );
        assert_eq!(ok(&q, EventKind::Resolve), expect(Status::Resolved, None));
        assert_eq!(
            ok(&q, EventKind::Snooze { until_ms: 7 }),
            SessionState {
                snoozed_until_ms: Some(7),
                ..expect(Status::Snoozed, None)
            }
        );
        illegal(&q, EventKind::Transfer { to: staff(A) });
        illegal(&q, EventKind::Release);
        illegal(&q, EventKind::Reopen);
        illegal(&q, EventKind::Wake);
    }

    #[test]
    fn assigned_and_transferred_rows() {
        for status in [Status::Assigned, Status::Transferred] {
            let s = SessionState {
                previous_agent: (status == Status::Transferred).then(|| staff(9)),
                ..with(status, Some(staff(A)))
            };
            assert_eq!(
                ok(&s, EventKind::Transfer { to: staff(B) }),
                SessionState {
                    previous_agent: Some(staff(A)),
                    ..expect(Status::Transferred, Some(staff(B)))
                }
            );
            illegal(&s, EventKind::Transfer { to: staff(A) });
            assert_eq!(ok(&s, EventKind::Release), expect(Status::Queued, None));
            assert_eq!(
                ok(&s, EventKind::Resolve),
                expect(Status::Resolved, Some(staff(A)))
            );
            assert_eq!(
                ok(&s, EventKind::Snooze { until_ms: 5 }),
                SessionState {
                    snoozed_until_ms: Some(5),
                    ..expect(Status::Snoozed, Some(staff(A)))
                }
            );
            // A second claim/assign is how a lost race shows up when prev happened to match.
            illegal(&s, EventKind::Claim { agent: staff(B) });
            illegal(&s, EventKind::Assign { agent: staff(B) });
            illegal(&s, EventKind::Reopen);
            illegal(&s, EventKind::Wake);
        }
    }

    #[test]
    fn resolved_rows() {
        let r = with(Status::Resolved, Some(staff(A)));
        assert_eq!(
            ok(&r, EventKind::Reopen),
            expect(Status::Reopened, Some(staff(A)))
        );
        illegal(&r, EventKind::Resolve);
        illegal(&r, EventKind::Claim { agent: staff(B) });
        illegal(&r, EventKind::Assign { agent: staff(B) });
        illegal(&r, EventKind::Transfer { to: staff(B) });
        illegal(&r, EventKind::Release);
        illegal(&r, EventKind::Snooze { until_ms: 1 });
        illegal(&r, EventKind::Wake);
    }

    #[test]
    fn reopened_rows() {
        let r = with(Status::Reopened, Some(staff(A)));
        assert_eq!(
            ok(&r, EventKind::Assign { agent: staff(B) }),
            expect(Status::Assigned, Some(staff(B)))
        );
        assert_eq!(
            ok(&r, EventKind::Claim { agent: staff(A) }),
            expect(Status::Assigned, Some(staff(A)))
        );
        assert_eq!(
            ok(&r, EventKind::Transfer { to: staff(B) }),
            SessionState {
                previous_agent: Some(staff(A)),
                ..expect(Status::Transferred, Some(staff(B)))
            }
        );
        illegal(&r, EventKind::Transfer { to: staff(A) });
        assert_eq!(ok(&r, EventKind::Release), expect(Status::Queued, None));
        assert_eq!(
            ok(&r, EventKind::Resolve),
            expect(Status::Resolved, Some(staff(A)))
        );
        assert_eq!(
            ok(&r, EventKind::Snooze { until_ms: 3 }),
            SessionState {
                snoozed_until_ms: Some(3),
                ..expect(Status::Snoozed, Some(staff(A)))
            }
        );
        illegal(&r, EventKind::Reopen);
        illegal(&r, EventKind::Wake);
    }

    #[test]
    fn snoozed_rows() {
        let held = with(Status::Snoozed, Some(staff(A)));
        let unheld = with(Status::Snoozed, None);
        assert_eq!(
            ok(&held, EventKind::Wake),
            expect(Status::Assigned, Some(staff(A)))
        );
        assert_eq!(ok(&unheld, EventKind::Wake), expect(Status::Queued, None));
        assert_eq!(
            ok(&held, EventKind::Resolve),
            expect(Status::Resolved, Some(staff(A)))
        );
        assert_eq!(
            ok(&unheld, EventKind::Claim { agent: staff(B) }),
            expect(Status::Assigned, Some(staff(B)))
        );
        illegal(&held, EventKind::Claim { agent: staff(B) });
        illegal(&unheld, EventKind::Assign { agent: staff(B) });
        illegal(&held, EventKind::Snooze { until_ms: 1 });
        illegal(&held, EventKind::Transfer { to: staff(B) });
        illegal(&held, EventKind::Release);
        illegal(&held, EventKind::Reopen);
    }

    fn ev(id: u128, kind: EventKind, hlc: u64, prev: Option<u128>) -> Event {
        Event {
            id: eid(id),
            kind,
            actor: Participant::System,
            hlc: Hlc(hlc),
            prev: prev.map(eid),
        }
    }

    #[test]
    fn fold_applies_a_chain_and_counts_versions() {
        let log = [
            ev(10, EventKind::Claim { agent: staff(A) }, 1, None),
            ev(11, EventKind::Transfer { to: staff(B) }, 2, Some(10)),
            ev(12, EventKind::Resolve, 3, Some(11)),
        ];
        let f = fold(log.iter().rev());
        assert!(f.rejected.is_empty(), "{:?}", f.rejected);
        assert_eq!(f.state.status, Status::Resolved);
        assert_eq!(f.state.agent, Some(staff(B)));
        assert_eq!(f.state.head, Some(eid(12)));
        assert_eq!(f.state.applied, 3);
    }

    #[test]
    fn fold_reports_conflicts_illegal_and_orphans() {
        let log = [
            ev(10, EventKind::Claim { agent: staff(A) }, 1, None),
            // Concurrent claim: same prev, later hlc.
            ev(20, EventKind::Claim { agent: staff(B) }, 2, None),
            // B acted on their own (lost) claim.
            ev(21, EventKind::Resolve, 3, Some(20)),
            // Right head, but illegal.
            ev(11, EventKind::Reopen, 4, Some(10)),
            ev(12, EventKind::Release, 5, Some(10)),
        ];
        let f = fold(&log);
        assert_eq!(f.state.status, Status::Queued);
        assert_eq!(f.state.head, Some(eid(12)));
        let reasons: Vec<_> = f
            .rejected
            .iter()
            .map(|r| (r.event, r.rejection.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (eid(20), Rejection::Conflict { lost_to: eid(10) }),
                (eid(21), Rejection::Orphaned { expected: eid(20) }),
                (
                    eid(11),
                    Rejection::Illegal {
                        from: Status::Assigned
                    }
                ),
            ]
        );
    }

    #[test]
    fn fold_ties_on_hlc_break_by_id_and_duplicates_count_once() {
        let a = ev(5, EventKind::Claim { agent: staff(A) }, 1, None);
        let b = ev(4, EventKind::Claim { agent: staff(B) }, 1, None);
        let f = fold([&a, &b, &a, &b]);
        assert_eq!(f.state.agent, Some(staff(B)));
        assert_eq!(f.state.applied, 1);
        assert_eq!(f.rejected.len(), 1);
        assert_eq!(
            f.rejected[0].rejection,
            Rejection::Conflict { lost_to: eid(4) }
        );
    }

    #[test]
    fn conflict_names_the_consumer_of_the_expected_head_not_the_current_head() {
        let log = [
            ev(10, EventKind::Claim { agent: staff(A) }, 1, None),
            ev(11, EventKind::Resolve, 2, Some(10)),
            // Loser with a fast clock sorts after the winner's follow-up.
            ev(30, EventKind::Claim { agent: staff(B) }, 3, None),
        ];
        let f = fold(&log);
        assert_eq!(
            f.rejected[0].rejection,
            Rejection::Conflict { lost_to: eid(10) }
        );
    }

    #[test]
    fn empty_fold_is_initial() {
        let f = fold(std::iter::empty());
        assert_eq!(f.state, SessionState::initial());
        assert!(f.rejected.is_empty());
    }

    #[test]
    fn event_json_shape() {
        let e = ev(1, EventKind::Snooze { until_ms: 9 }, 3, None);
        let v: serde_json::Value = serde_json::to_value(&e).expect("serialise");
        assert_eq!(v["kind"]["kind"], "snooze");
        assert_eq!(v["kind"]["until_ms"], 9);
        assert_eq!(v["hlc"], 3);
        assert!(v["prev"].is_null());
        let r = Rejection::Conflict { lost_to: eid(1) };
        let v = serde_json::to_value(&r).expect("serialise");
        assert_eq!(v["reason"], "conflict");
    }
}

//! The per-peer, per-document sync driver: pure logic, no transport, no clock.
//!
//! One [`PeerSync`] per connected peer (the edge holds one for its hub; the hub one per connected
//! store). It keeps, per document, the Automerge [`sync::State`] for that peer and the session's
//! bookkeeping (which documents wait for an answer, which wait for a free slot), and turns
//! documents and received messages into [`Frame`]s. The caller owns the documents, the socket and
//! the storage.
//!
//! # The rules it implements
//!
//! - **Every `Sync` gets exactly one answer** about the same document: a `Sync` when Automerge has
//!   more to say, an `Ack` (the answerer's heads) when it has not, or a per-document `Error`.
//!   So a side always learns when a round is over, which is what the window below counts.
//! - **Back-pressure:** a side has at most [`Limits::max_docs_in_flight`] documents with a `Sync`
//!   sent and not answered. [`PeerSync::generate`] for another document queues it instead (see
//!   [`PeerSync::next_ready`]). Answers ([`PeerSync::answer`]) are never held back, so two full
//!   windows cannot deadlock; a connection carries at most the sum of both windows.
//! - **Durable before sent:** the caller persists a document (and then its sync state) before it
//!   sends any frame about it. The heads in a `Sync` and in an `Ack` are therefore held durably
//!   by their sender, and [`PeerSync::remote_heads`] is what the peer is known to hold.
//! - **Reconnect:** Automerge's sync assumes reliable, in-order delivery within one session.
//!   Anything lost ends the session; both sides then start over from their persisted states
//!   ([`PeerSync::save_state`] / [`PeerSync::load_state`], or [`PeerSync::reset`]). A persisted
//!   state is only the shared heads (~1 + 32·n bytes), enough for the next session to send just
//!   what changed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::ChangeHash;
use automerge::sync;

use crate::conversation::Conversation;
use crate::error::SyncError;
use crate::protocol::{
    DocumentKey, Frame, Head, Limits, ManifestDiff, ManifestEntry, ProtocolError, diff_manifests,
    heads_to_wire,
};

/// A document that can take part in the sync protocol. Implemented by [`Conversation`]; a
/// settings document (or any later kind) implements it the same way.
pub trait SyncedDoc {
    /// The next encoded Automerge sync message for the peer whose state is `state`, if any.
    fn generate_sync_message(&mut self, state: &mut sync::State) -> Option<Vec<u8>>;
    /// Applies an encoded Automerge sync message; on error the document and `state` must be left
    /// unchanged.
    fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<(), SyncError>;
    /// The document's current heads.
    fn heads(&mut self) -> Vec<ChangeHash>;
}

impl SyncedDoc for Conversation {
    fn generate_sync_message(&mut self, state: &mut sync::State) -> Option<Vec<u8>> {
        Conversation::generate_sync_message(self, state)
    }

    fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<(), SyncError> {
        Conversation::receive_sync_message(self, state, message)
    }

    fn heads(&mut self) -> Vec<ChangeHash> {
        Conversation::heads(self)
    }
}

/// Sync bookkeeping for one peer: per-document Automerge states plus this session's window.
#[derive(Debug)]
pub struct PeerSync {
    limits: Limits,
    /// Per document: the Automerge state for this peer. Loaded lazily by the caller
    /// ([`Self::load_state`]); a document without one starts from a fresh state.
    states: BTreeMap<DocumentKey, sync::State>,
    /// Documents with a `Sync` sent and no answer received yet (this session).
    awaiting: BTreeSet<DocumentKey>,
    /// Documents that want to start a round but found the window full, oldest first.
    waiting: VecDeque<DocumentKey>,
    waiting_set: BTreeSet<DocumentKey>,
    /// Documents whose round ended in an error this session: not synced again until
    /// [`Self::reset`].
    failed: BTreeSet<DocumentKey>,
    /// Heads the peer is known to hold durably (from its manifest, `Sync`s and `Ack`s).
    remote_heads: BTreeMap<DocumentKey, Vec<Head>>,
    /// Per document: a hash of the last message received and how many times in a row it came.
    last_received: BTreeMap<DocumentKey, (u64, u32)>,
}

/// The same sync message received this many times in a row for one document means the two
/// sides are stuck ([`ProtocolError::Stalled`]). A duplicate is harmless; Automerge never repeats
/// a message while the exchange makes progress.
pub const MAX_REPEATED_MESSAGES: u32 = 4;

impl PeerSync {
    /// A peer with no persisted state (every document starts from a fresh Automerge state).
    pub fn new(limits: Limits) -> Self {
        PeerSync {
            limits,
            states: BTreeMap::new(),
            awaiting: BTreeSet::new(),
            waiting: VecDeque::new(),
            waiting_set: BTreeSet::new(),
            failed: BTreeSet::new(),
            remote_heads: BTreeMap::new(),
            last_received: BTreeMap::new(),
        }
    }

    /// The limits this peer applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Installs a persisted state (from [`Self::save_state`] of an earlier session) for `key`,
    /// replacing any state held. Call before the document's first frame of the session. Bad bytes
    /// are an error and leave the current state; the caller may then simply go on without (a
    /// fresh state costs one bloom filter more, not correctness).
    pub fn load_state(&mut self, key: DocumentKey, bytes: &[u8]) -> Result<(), ProtocolError> {
        let state = sync::State::decode(bytes).map_err(|err| ProtocolError::BadState {
            doc: key.clone(),
            reason: err.to_string(),
        })?;
        self.states.insert(key, state);
        Ok(())
    }

    /// True if a state for `key` is held (loaded or created this session).
    pub fn has_state(&self, key: &DocumentKey) -> bool {
        self.states.contains_key(key)
    }

    /// The persistent part of `key`'s state, to store per (peer, document) after the document
    /// itself was stored. A fresh state if none is held.
    pub fn save_state(&self, key: &DocumentKey) -> Vec<u8> {
        self.states
            .get(key)
            .map(sync::State::encode)
            .unwrap_or_else(|| sync::State::new().encode())
    }

    /// Drops `key`'s state from memory (after persisting it), e.g. when the document leaves the
    /// cache. Only for a document with no round in progress ([`Self::is_awaiting`] false).
    pub fn forget(&mut self, key: &DocumentKey) {
        self.states.remove(key);
    }

    /// The connection is gone: every state goes back to its persistent part (exactly what
    /// [`Self::save_state`] + [`Self::load_state`] would give) and the session's bookkeeping is
    /// cleared. Use a fresh `PeerSync` plus `load_state` instead when the persisted states may be
    /// older than the ones in memory.
    pub fn reset(&mut self) {
        for state in self.states.values_mut() {
            // A state always decodes from its own encoding; a fresh one would also be correct.
            *state = sync::State::decode(&state.encode()).unwrap_or_default();
        }
        self.awaiting.clear();
        self.waiting.clear();
        self.waiting_set.clear();
        self.failed.clear();
        self.remote_heads.clear();
        self.last_received.clear();
    }

    /// Compares the manifests (this side's and the peer's complete one), remembers the peer's
    /// heads as held by it, and says which documents need a round. The side that sent `Hello`
    /// then calls [`Self::want`] for each of `diff.to_sync()`; the other side only answers.
    pub fn on_manifest(
        &mut self,
        local: &[ManifestEntry],
        remote: &[ManifestEntry],
    ) -> ManifestDiff {
        for (key, heads) in remote {
            self.remote_heads.insert(key.clone(), heads.clone());
        }
        diff_manifests(local, remote)
    }

    /// `key` should start a round (it changed locally, or the manifests differ): queued until the
    /// window has room. Idempotent.
    pub fn want(&mut self, key: DocumentKey) {
        if !self.failed.contains(&key) && self.waiting_set.insert(key.clone()) {
            self.waiting.push_back(key);
        }
    }

    /// The next wanted document that may start a round now, if the window has room (or if the
    /// document already has a round open, which does not take another slot). Call
    /// [`Self::generate`] for it next.
    pub fn next_ready(&mut self) -> Option<DocumentKey> {
        let position = if self.awaiting.len() < self.limits.max_docs_in_flight {
            if self.waiting.is_empty() {
                None
            } else {
                Some(0)
            }
        } else {
            self.waiting.iter().position(|k| self.awaiting.contains(k))
        }?;
        let key = self.waiting.remove(position)?;
        self.waiting_set.remove(&key);
        Some(key)
    }

    /// Starts or continues a round for `key` (a local change, a wanted document): a `Sync` frame
    /// when Automerge has something to send, `None` when it has not (in sync, or its previous
    /// message is still unanswered) or when the window is full — then the document is queued and
    /// comes back from [`Self::next_ready`]. May also return a per-document `Error` frame (the
    /// message would exceed `max_document_bytes`; the document is then skipped this session).
    pub fn generate<D: SyncedDoc + ?Sized>(
        &mut self,
        key: &DocumentKey,
        doc: &mut D,
    ) -> Option<Frame> {
        if self.failed.contains(key) {
            return None;
        }
        if !self.awaiting.contains(key) && self.awaiting.len() >= self.limits.max_docs_in_flight {
            self.want(key.clone());
            return None;
        }
        if self.waiting_set.remove(key) {
            self.waiting.retain(|k| k != key);
        }
        let state = self.states.entry(key.clone()).or_default();
        let message = doc.generate_sync_message(state)?;
        Some(self.outgoing(key, message))
    }

    /// Applies a `Sync` from the peer. Any frame about `key` answers this side's open round, so
    /// the document leaves the window. On success the caller persists the document, then
    /// [`Self::save_state`], then sends [`Self::answer`]. On error (nothing was applied) it sends
    /// `err.to_frame()` instead, and the document is skipped for the rest of the session; if
    /// [`ProtocolError::ends_session`], it closes the connection after that frame.
    pub fn receive<D: SyncedDoc + ?Sized>(
        &mut self,
        key: &DocumentKey,
        doc: &mut D,
        message: &[u8],
    ) -> Result<(), ProtocolError> {
        self.awaiting.remove(key);
        if message.len() > self.limits.max_document_bytes {
            self.fail(key);
            return Err(ProtocolError::DocumentTooLarge {
                doc: key.clone(),
                bytes: message.len(),
                max_bytes: self.limits.max_document_bytes,
            });
        }
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            message.hash(&mut hasher);
            hasher.finish()
        };
        let repeats = match self.last_received.get(key) {
            Some(&(last, n)) if last == hash => n + 1,
            _ => 1,
        };
        self.last_received.insert(key.clone(), (hash, repeats));
        if repeats >= MAX_REPEATED_MESSAGES {
            self.fail(key);
            return Err(ProtocolError::Stalled {
                doc: key.clone(),
                repeats,
            });
        }
        let state = self.states.entry(key.clone()).or_default();
        if let Err(source) = doc.receive_sync_message(state, message) {
            self.fail(key);
            return Err(ProtocolError::Document {
                doc: key.clone(),
                source: Box::new(source),
            });
        }
        if let Some(heads) = &state.their_heads {
            self.remote_heads.insert(key.clone(), heads_to_wire(heads));
        }
        Ok(())
    }

    /// The answer to the `Sync` just received for `key` (call after persisting): a `Sync` if
    /// Automerge has more to say, otherwise an `Ack` with this side's heads. Never held back by
    /// the window.
    pub fn answer<D: SyncedDoc + ?Sized>(&mut self, key: &DocumentKey, doc: &mut D) -> Frame {
        let state = self.states.entry(key.clone()).or_default();
        match doc.generate_sync_message(state) {
            Some(message) => self.outgoing(key, message),
            None => Frame::Ack {
                doc: key.clone(),
                heads: heads_to_wire(&doc.heads()),
            },
        }
    }

    /// The peer answered with an `Ack`: the round is over, and the peer durably holds `heads`.
    pub fn on_ack(&mut self, key: &DocumentKey, heads: &[Head]) {
        self.awaiting.remove(key);
        self.remote_heads.insert(key.clone(), heads.to_vec());
    }

    /// The peer answered with a per-document `Error`: the round is over and the document is not
    /// synced again this session (the error is the caller's to log and count).
    pub fn on_error(&mut self, key: &DocumentKey) {
        self.fail(key);
    }

    /// Documents with a `Sync` sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.awaiting.len()
    }

    /// True if a `Sync` for `key` is waiting for its answer.
    pub fn is_awaiting(&self, key: &DocumentKey) -> bool {
        self.awaiting.contains(key)
    }

    /// Documents waiting for a free slot in the window.
    pub fn queued(&self) -> usize {
        self.waiting.len()
    }

    /// Nothing in flight and nothing queued: this side has nothing more to send until a document
    /// changes.
    pub fn is_idle(&self) -> bool {
        self.awaiting.is_empty() && self.waiting.is_empty()
    }

    /// True if `key`'s round ended in an error this session.
    pub fn has_failed(&self, key: &DocumentKey) -> bool {
        self.failed.contains(key)
    }

    /// The heads the peer is known to hold durably for `key` (this session: from its manifest,
    /// its `Sync`s and its `Ack`s). The edge compares them with its own heads to know what the hub
    /// holds.
    pub fn remote_heads(&self, key: &DocumentKey) -> Option<&[Head]> {
        self.remote_heads.get(key).map(Vec::as_slice)
    }

    /// A message to send: a `Sync`, or an `Error` if it exceeds the document limit.
    fn outgoing(&mut self, key: &DocumentKey, message: Vec<u8>) -> Frame {
        if message.len() > self.limits.max_document_bytes {
            let frame = ProtocolError::DocumentTooLarge {
                doc: key.clone(),
                bytes: message.len(),
                max_bytes: self.limits.max_document_bytes,
            }
            .to_frame();
            self.fail(key);
            return frame;
        }
        self.awaiting.insert(key.clone());
        Frame::Sync {
            doc: key.clone(),
            message,
        }
    }

    fn fail(&mut self, key: &DocumentKey) {
        self.awaiting.remove(key);
        if self.waiting_set.remove(key) {
            self.waiting.retain(|k| k != key);
        }
        self.failed.insert(key.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{MessageRecord, Meta};
    use crate::ids::{ConversationId, CustomerId, MessageId, Participant};
    use ulid::Ulid;

    fn key(n: u128) -> DocumentKey {
        DocumentKey::Conversation(ConversationId::from_ulid(Ulid(n)))
    }

    fn created(n: u128) -> Conversation {
        let meta = Meta::new(
            ConversationId::from_ulid(Ulid(n)),
            "store-1",
            CustomerId::from_ulid(Ulid(1000)),
            0,
        );
        let mut doc = Conversation::create(&meta).expect("create");
        doc.add_message(&MessageRecord {
            id: MessageId::from_ulid(Ulid(n * 100)),
            client_msg_id: "c".into(),
            sender: Participant::Bot,
            body: "hello".into(),
            sent_at_ms: 1,
            attachment: None,
            intent: None,
        })
        .expect("add");
        doc
    }

    /// Delivers `frame` (from the side owning `from`) to `to`, returning its answer, if any.
    fn deliver(
        frame: Frame,
        to: &mut PeerSync,
        docs: &mut BTreeMap<DocumentKey, Conversation>,
    ) -> Option<Frame> {
        match frame {
            Frame::Sync { doc, message } => {
                let id = doc.conversation_id().expect("conversation");
                let replica = docs
                    .entry(doc.clone())
                    .or_insert_with(|| Conversation::empty_for_sync(id));
                Some(match to.receive(&doc, replica, &message) {
                    Ok(()) => to.answer(&doc, replica),
                    Err(err) => err.to_frame(),
                })
            }
            Frame::Ack { doc, heads } => {
                to.on_ack(&doc, &heads);
                None
            }
            Frame::Error { doc: Some(doc), .. } => {
                to.on_error(&doc);
                None
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_sync_is_answered_until_an_ack_ends_the_round() {
        let mut a = PeerSync::new(Limits::default());
        let mut b = PeerSync::new(Limits::default());
        let mut a_docs = BTreeMap::from([(key(1), created(1))]);
        let mut b_docs = BTreeMap::new();

        let mut frame = a.generate(&key(1), a_docs.get_mut(&key(1)).expect("doc"));
        assert!(a.is_awaiting(&key(1)));
        let mut hops = 0;
        let mut a_turn = false;
        while let Some(f) = frame.take() {
            hops += 1;
            frame = if a_turn {
                deliver(f, &mut a, &mut a_docs)
            } else {
                deliver(f, &mut b, &mut b_docs)
            };
            a_turn = !a_turn;
        }
        assert!(hops <= 5, "{hops} frames");
        assert!(a.is_idle() && b.is_idle());
        let a_heads = heads_to_wire(&a_docs.get_mut(&key(1)).expect("a").heads());
        let b_doc = b_docs.get_mut(&key(1)).expect("b has it");
        assert!(b_doc.is_complete());
        assert_eq!(heads_to_wire(&b_doc.heads()), a_heads);
        assert_eq!(a.remote_heads(&key(1)), Some(a_heads.as_slice()));
        assert_eq!(b.remote_heads(&key(1)), Some(a_heads.as_slice()));
        // Nothing new: no frame at all.
        assert!(
            a.generate(&key(1), a_docs.get_mut(&key(1)).expect("a"))
                .is_none()
        );
    }

    #[test]
    fn the_window_bounds_initiated_rounds_but_never_answers() {
        let limits = Limits {
            max_docs_in_flight: 2,
            ..Limits::default()
        };
        let mut a = PeerSync::new(limits.clone());
        let mut b = PeerSync::new(limits);
        let mut a_docs: BTreeMap<_, _> = (1..=5).map(|n| (key(n), created(n))).collect();
        let mut b_docs = BTreeMap::new();

        let mut sent = Vec::new();
        for n in 1..=5 {
            if let Some(f) = a.generate(&key(n), a_docs.get_mut(&key(n)).expect("doc")) {
                sent.push(f);
            }
        }
        assert_eq!(sent.len(), 2);
        assert_eq!(a.in_flight(), 2);
        assert_eq!(a.queued(), 3);
        assert_eq!(a.next_ready(), None, "window full");

        // B starts a round of its own while A's window is full; A still answers it.
        let mut b_own = created(9);
        let b_frame = b.generate(&key(9), &mut b_own).expect("b starts");
        b_docs.insert(key(9), b_own);
        let answer = deliver(b_frame, &mut a, &mut a_docs).expect("answered");
        assert!(matches!(answer, Frame::Sync { .. }));
        assert_eq!(a.in_flight(), 3, "answers may exceed the window");

        // Reliable delivery until both sides are quiet; A refills its window as slots free.
        let mut to_b: VecDeque<Frame> = sent.into_iter().chain([answer]).collect();
        let mut to_a: VecDeque<Frame> = VecDeque::new();
        let mut started = Vec::new();
        let mut max_in_flight = 0;
        while !(to_a.is_empty() && to_b.is_empty()) {
            if let Some(f) = to_b.pop_front()
                && let Some(reply) = deliver(f, &mut b, &mut b_docs)
            {
                to_a.push_back(reply);
            }
            if let Some(f) = to_a.pop_front()
                && let Some(reply) = deliver(f, &mut a, &mut a_docs)
            {
                to_b.push_back(reply);
            }
            while let Some(k) = a.next_ready() {
                started.push(k.clone());
                if let Some(f) = a.generate(&k, a_docs.get_mut(&k).expect("doc")) {
                    to_b.push_back(f);
                }
            }
            max_in_flight = max_in_flight.max(a.in_flight());
        }
        assert_eq!(started, vec![key(3), key(4), key(5)], "oldest first");
        assert!(max_in_flight <= 3, "window 2 + one answer: {max_in_flight}");
        assert!(a.is_idle() && b.is_idle());
        for n in [1, 2, 3, 4, 5, 9] {
            let a_heads = a_docs.get_mut(&key(n)).expect("a").heads();
            assert_eq!(b_docs.get_mut(&key(n)).expect("b").heads(), a_heads);
        }
    }

    /// Reliable delivery between two sides until neither sends; returns the first error.
    fn exchange(
        first: Option<Frame>,
        a: &mut PeerSync,
        a_docs: &mut BTreeMap<DocumentKey, Conversation>,
        b: &mut PeerSync,
        b_docs: &mut BTreeMap<DocumentKey, Conversation>,
    ) -> Result<usize, ProtocolError> {
        let mut frame = first;
        let mut to_b = true;
        let mut hops = 0;
        while let Some(f) = frame.take() {
            hops += 1;
            assert!(hops < 100, "no end");
            let (me, docs) = if to_b {
                (&mut *b, &mut *b_docs)
            } else {
                (&mut *a, &mut *a_docs)
            };
            frame = match f {
                Frame::Sync { doc, message } => {
                    let replica = docs.get_mut(&doc).expect("doc");
                    me.receive(&doc, replica, &message)?;
                    Some(me.answer(&doc, replica))
                }
                other => deliver(other, me, docs),
            };
            to_b = !to_b;
        }
        Ok(hops)
    }

    #[test]
    fn a_lost_frame_stalls_the_session_instead_of_ping_ponging_forever() {
        let mut a = PeerSync::new(Limits::default());
        let mut b = PeerSync::new(Limits::default());
        let mut a_docs = BTreeMap::from([(key(1), created(1))]);
        let mut b_docs = BTreeMap::from([(
            key(1),
            Conversation::empty_for_sync(ConversationId::from_ulid(Ulid(1))),
        )]);
        let first = a.generate(&key(1), a_docs.get_mut(&key(1)).expect("a"));
        exchange(first, &mut a, &mut a_docs, &mut b, &mut b_docs).expect("in sync");

        let add = |docs: &mut BTreeMap<DocumentKey, Conversation>, n: u128| {
            let doc = docs.get_mut(&key(1)).expect("doc");
            doc.add_message(&MessageRecord {
                id: MessageId::from_ulid(Ulid(5000 + n)),
                client_msg_id: format!("c{n}"),
                sender: Participant::Bot,
                body: "more".into(),
                sent_at_ms: 2,
                attachment: None,
                intent: None,
            })
            .expect("add");
            doc.save_incremental();
        };
        // A pushes a change and the frame is lost; A's next push carries only the next change,
        // which B cannot apply without the lost one. Automerge asks for it forever (it never
        // resends a change within a session); the driver notices the repetition.
        add(&mut a_docs, 1);
        let lost = a.generate(&key(1), a_docs.get_mut(&key(1)).expect("a"));
        assert!(matches!(lost, Some(Frame::Sync { .. })));
        add(&mut a_docs, 2);
        let second = a.generate(&key(1), a_docs.get_mut(&key(1)).expect("a"));
        let err = exchange(second, &mut a, &mut a_docs, &mut b, &mut b_docs).expect_err("stalls");
        assert!(matches!(err, ProtocolError::Stalled { .. }), "{err}");
        assert!(err.ends_session());
        assert!(matches!(err.to_frame(), Frame::Error { doc: None, .. }));

        // A new session from the persisted (= reset) states catches up.
        a.reset();
        b.reset();
        let first = a.generate(&key(1), a_docs.get_mut(&key(1)).expect("a"));
        exchange(first, &mut a, &mut a_docs, &mut b, &mut b_docs).expect("caught up");
        let heads = a_docs.get_mut(&key(1)).expect("a").heads();
        assert_eq!(b_docs.get_mut(&key(1)).expect("b").heads(), heads);
        assert_eq!(b_docs.get_mut(&key(1)).expect("b").message_count(), 3);
    }

    #[test]
    fn oversize_documents_fail_alone() {
        let limits = Limits {
            max_document_bytes: 64,
            max_frame_bytes: 64 + crate::protocol::FRAME_OVERHEAD_BYTES,
            ..Limits::default()
        };
        let mut a = PeerSync::new(Limits::default());
        let mut doc = created(1);
        // A fresh state's first message is small; the one carrying the changes is not.
        let first = a.generate(&key(1), &mut doc).expect("first");
        let mut b = PeerSync::new(limits.clone());
        let mut b_docs = BTreeMap::new();
        let reply = deliver(first, &mut b, &mut b_docs).expect("reply");
        let Some(Frame::Sync { message, .. }) =
            deliver(reply, &mut a, &mut BTreeMap::from([(key(1), created(1))]))
        else {
            panic!("a sends its changes");
        };
        assert!(message.len() > 64);
        let target = b_docs.get_mut(&key(1)).expect("b's empty replica");
        assert!(matches!(
            b.receive(&key(1), target, &message),
            Err(ProtocolError::DocumentTooLarge { .. })
        ));
        assert!(b.has_failed(&key(1)));
        assert!(target.heads().is_empty(), "nothing applied");

        // The sender side refuses to send it too, and says why.
        let mut small = PeerSync::new(limits);
        let mut replica = Conversation::empty_for_sync(ConversationId::from_ulid(Ulid(1)));
        let mut probe = PeerSync::new(Limits::default());
        let hello = probe.generate(&key(1), &mut replica).expect("probe");
        let Frame::Sync { message, .. } = hello else {
            panic!()
        };
        small
            .receive(&key(1), &mut doc, &message)
            .expect("small message fits");
        match small.answer(&key(1), &mut doc) {
            Frame::Error { code, doc, .. } => {
                assert_eq!(code, crate::protocol::codes::DOCUMENT_TOO_LARGE);
                assert_eq!(doc, Some(key(1)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(small.has_failed(&key(1)));
        assert!(small.generate(&key(1), &mut doc).is_none());
        small.reset();
        assert!(!small.has_failed(&key(1)), "a new session tries again");
    }

    #[test]
    fn states_persist_as_shared_heads_only() {
        let mut a = PeerSync::new(Limits::default());
        assert_eq!(a.save_state(&key(1)), sync::State::new().encode());
        assert!(a.load_state(key(1), b"junk").is_err());
        assert!(!a.has_state(&key(1)));
        let mut doc = created(1);
        let mut b = PeerSync::new(Limits::default());
        let mut b_docs = BTreeMap::new();
        let mut a_docs = BTreeMap::new();
        let mut frame = a.generate(&key(1), &mut doc);
        a_docs.insert(key(1), doc);
        let mut to_b = true;
        while let Some(f) = frame.take() {
            frame = if to_b {
                deliver(f, &mut b, &mut b_docs)
            } else {
                deliver(f, &mut a, &mut a_docs)
            };
            to_b = !to_b;
        }
        let saved = a.save_state(&key(1));
        let heads = a_docs.get_mut(&key(1)).expect("a").heads();
        assert_eq!(saved.len(), 2 + 32 * heads.len());
        let mut again = PeerSync::new(Limits::default());
        again.load_state(key(1), &saved).expect("load");
        assert!(again.has_state(&key(1)));
        a.reset();
        assert_eq!(a.save_state(&key(1)), saved);
        assert!(a.is_idle());
    }
}

//! The sync protocol end to end, over a simulated network: frames go through the real codec
//! (`encode_frame`/`decode_frame`), the per-peer driver (`PeerSync`) and real documents, with the
//! storage discipline the edge and hub follow (document chunk first, then the sync state, then
//! the answer).
//!
//! Property: several replicas (one creator per document, the others start empty) edit at random
//! while a network between every pair duplicates, reorders and drops frames and reconnects
//! (both sides rebuild their sync states from what they persisted); replicas also restart from
//! their stored chunks. After a final reliable, in-order session on every link until nobody has
//! anything to send, every replica holds every document with the same messages, fold and heads,
//! its stored chunks load to the same, and every side knows the heads its peer holds.
//!
//! Plus the byte costs the design cares about (run with `--nocapture` to see them).

mod common;

use std::collections::{BTreeMap, VecDeque};

use aisle_sync::protocol::codes;
use aisle_sync::{
    Conversation, ConversationId, Credential, CustomerId, DocumentKey, Event, EventId, EventKind,
    Frame, Hlc, Limits, ManifestEntry, MessageId, MessageRecord, Meta, Participant, PeerSync,
    decode_frame, encode_frame, manifest_frames,
};
use common::arb_kind;
use proptest::prelude::*;
use proptest::sample::Index;
use ulid::Ulid;

const REGION: &str = "eu-west";

fn doc_key(d: usize) -> DocumentKey {
    DocumentKey::Conversation(ConversationId::from_ulid(Ulid(1 + d as u128)))
}

fn meta(d: usize, creator: usize) -> Meta {
    Meta::new(
        ConversationId::from_ulid(Ulid(1 + d as u128)),
        format!("store-{creator}"),
        CustomerId::from_ulid(Ulid(100)),
        0,
    )
}

/// One machine: its live documents, what it stored, and its persisted sync states.
struct Replica {
    docs: BTreeMap<DocumentKey, Conversation>,
    /// Per document: `save()` followed by every `save_incremental()` chunk.
    storage: BTreeMap<DocumentKey, Vec<u8>>,
    /// Per (peer replica, document): the last `PeerSync::save_state`.
    states: BTreeMap<(usize, DocumentKey), Vec<u8>>,
}

impl Replica {
    /// The manifest: every complete document with its heads.
    fn manifest(&mut self) -> Vec<ManifestEntry> {
        self.docs
            .iter_mut()
            .filter(|(_, doc)| doc.is_complete())
            .map(|(key, doc)| {
                (
                    key.clone(),
                    aisle_sync::protocol::heads_to_wire(&doc.heads()),
                )
            })
            .collect()
    }

    /// The document, or an empty replica waiting for its skeleton.
    fn doc_or_empty(&mut self, key: &DocumentKey) -> &mut Conversation {
        self.docs.entry(key.clone()).or_insert_with(|| {
            Conversation::empty_for_sync(key.conversation_id().expect("conversations only"))
        })
    }

    /// Appends whatever changed to the stored chunks (only complete documents are stored).
    fn persist_doc(&mut self, key: &DocumentKey) {
        let doc = self.docs.get_mut(key).expect("doc");
        if !doc.is_complete() {
            return;
        }
        let chunk = doc.save_incremental();
        self.storage.entry(key.clone()).or_default().extend(chunk);
    }
}

/// One direction of a link: the receiving side's driver and its inbox of encoded frames.
struct Side {
    peer: PeerSync,
    inbox: VecDeque<Vec<u8>>,
}

/// A connection between replicas `a` (the client: sends hello, starts rounds after the
/// manifests) and `b` (the server).
struct Link {
    a: usize,
    b: usize,
    /// `sides[0]` is a's view of b (frames to a), `sides[1]` b's view of a.
    sides: [Side; 2],
    bytes: usize,
    frames: BTreeMap<&'static str, usize>,
    /// Every frame sent since the last `reset_counters`: (type, encoded bytes), in order.
    log: Vec<(&'static str, usize)>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    Duplicate,
    Drop,
    Reorder(Index),
}

struct World {
    limits: Limits,
    replicas: Vec<Replica>,
    links: Vec<Link>,
    next_id: u128,
    clock: u64,
    errors: Vec<String>,
    /// Sessions ended because a document's sync stalled (frames were lost): allowed while the
    /// network is faulty, never on a reliable one.
    stalls: usize,
}

impl World {
    /// `n` replicas, every pair linked; replica `d` creates document `d` for each `d < docs`.
    fn new(n: usize, docs: usize, limits: Limits) -> World {
        let mut replicas: Vec<Replica> = (0..n)
            .map(|_| Replica {
                docs: BTreeMap::new(),
                storage: BTreeMap::new(),
                states: BTreeMap::new(),
            })
            .collect();
        for d in 0..docs {
            let creator = &mut replicas[d % n];
            let mut doc = Conversation::create(&meta(d, d % n)).expect("create");
            creator.storage.insert(doc_key(d), doc.save());
            creator.docs.insert(doc_key(d), doc);
        }
        let mut links = Vec::new();
        for a in 0..n {
            for b in a + 1..n {
                links.push(Link {
                    a,
                    b,
                    sides: [
                        Side {
                            peer: PeerSync::new(limits.clone()),
                            inbox: VecDeque::new(),
                        },
                        Side {
                            peer: PeerSync::new(limits.clone()),
                            inbox: VecDeque::new(),
                        },
                    ],
                    bytes: 0,
                    frames: BTreeMap::new(),
                    log: Vec::new(),
                });
            }
        }
        let mut world = World {
            limits,
            replicas,
            links,
            next_id: 1_000,
            clock: 1,
            errors: Vec::new(),
            stalls: 0,
        };
        for l in 0..world.links.len() {
            world.connect(l);
        }
        world
    }

    fn replica_of(&self, l: usize, side: usize) -> usize {
        if side == 0 {
            self.links[l].a
        } else {
            self.links[l].b
        }
    }

    /// Sends `frame` from `from_side` of link `l` to the other side.
    fn send(&mut self, l: usize, from_side: usize, frame: &Frame) {
        let bytes = encode_frame(frame, self.limits.max_frame_bytes).expect("encode");
        let link = &mut self.links[l];
        link.bytes += bytes.len();
        *link.frames.entry(frame.kind()).or_default() += 1;
        link.log.push((frame.kind(), bytes.len()));
        link.sides[1 - from_side].inbox.push_back(bytes);
    }

    /// A new session on link `l`: queues dropped, both sides' drivers rebuilt from persisted
    /// states, the client says hello.
    fn connect(&mut self, l: usize) {
        for side in 0..2 {
            let me = self.replica_of(l, side);
            let peer = self.replica_of(l, 1 - side);
            let mut driver = PeerSync::new(self.limits.clone());
            for ((p, key), bytes) in &self.replicas[me].states {
                if *p == peer {
                    driver
                        .load_state(key.clone(), bytes)
                        .expect("persisted state");
                }
            }
            self.links[l].sides[side] = Side {
                peer: driver,
                inbox: VecDeque::new(),
            };
        }
        let a = self.links[l].a;
        let hello = Frame::Hello {
            store_id: format!("store-{a}"),
            region: REGION.into(),
            credential: Credential("secret".into()),
            edge_version: "test".into(),
        };
        self.send(l, 0, &hello);
    }

    fn send_manifest(&mut self, l: usize, side: usize) {
        let me = self.replica_of(l, side);
        let manifest = self.replicas[me].manifest();
        for frame in manifest_frames(manifest, self.limits.max_frame_bytes).expect("manifest") {
            self.send(l, side, &frame);
        }
    }

    /// Starts the rounds the window allows for `side` of link `l`.
    fn pump(&mut self, l: usize, side: usize) {
        let me = self.replica_of(l, side);
        while let Some(key) = self.links[l].sides[side].peer.next_ready() {
            let doc = self.replicas[me].doc_or_empty(&key);
            if let Some(frame) = self.links[l].sides[side].peer.generate(&key, doc) {
                self.send(l, side, &frame);
            }
        }
    }

    /// `key` changed on replica `me` (except through link `except`): push it on every other link.
    fn changed(&mut self, me: usize, key: &DocumentKey, except: Option<usize>) {
        for l in 0..self.links.len() {
            if Some(l) == except {
                continue;
            }
            let side = if self.links[l].a == me {
                0
            } else if self.links[l].b == me {
                1
            } else {
                continue;
            };
            self.links[l].sides[side].peer.want(key.clone());
            self.pump(l, side);
        }
    }

    /// Delivers the next frame to `side` of link `l`, with a fault. False if the inbox is empty.
    fn deliver(&mut self, l: usize, side: usize, fault: Fault) -> bool {
        let inbox = &mut self.links[l].sides[side].inbox;
        let bytes = match fault {
            _ if inbox.is_empty() => return false,
            Fault::None => inbox.pop_front(),
            Fault::Duplicate => inbox.front().cloned(),
            Fault::Drop => {
                inbox.pop_front();
                return true;
            }
            Fault::Reorder(ix) => inbox.remove(ix.index(inbox.len())),
        }
        .expect("not empty");
        self.handle(l, side, &bytes);
        true
    }

    /// What a replica does with one received frame.
    fn handle(&mut self, l: usize, side: usize, bytes: &[u8]) {
        let frame = decode_frame(bytes, self.limits.max_frame_bytes).expect("decode");
        let me = self.replica_of(l, side);
        let peer = self.replica_of(l, 1 - side);
        match frame {
            Frame::Hello { region, .. } => {
                if region == REGION {
                    let welcome = Frame::Welcome {
                        region,
                        hub_id: format!("hub-{me}"),
                        resolved_retention_secs: 0,
                    };
                    self.send(l, side, &welcome);
                    self.send_manifest(l, side);
                } else {
                    let refused = Frame::Refused {
                        code: codes::WRONG_REGION.into(),
                        message: String::new(),
                    };
                    self.send(l, side, &refused);
                }
            }
            Frame::Welcome { .. } => self.send_manifest(l, side),
            Frame::Manifest { docs, more } => {
                assert!(!more, "small manifests fit one frame");
                let local = self.replicas[me].manifest();
                let driver = &mut self.links[l].sides[side].peer;
                let diff = driver.on_manifest(&local, &docs);
                if side == 0 {
                    for key in diff.to_sync() {
                        driver.want(key);
                    }
                }
            }
            Frame::Sync { doc: key, message } => {
                let replica = &mut self.replicas[me];
                let doc = replica.doc_or_empty(&key);
                let before = doc.heads();
                let driver = &mut self.links[l].sides[side].peer;
                match driver.receive(&key, doc, &message) {
                    Ok(()) => {
                        // Durable before sent: the document, then the state, then the answer.
                        let changed = doc.heads() != before;
                        replica.persist_doc(&key);
                        let state = driver.save_state(&key);
                        replica.states.insert((peer, key.clone()), state);
                        let doc = replica.docs.get_mut(&key).expect("doc");
                        let answer = driver.answer(&key, doc);
                        self.send(l, side, &answer);
                        if changed {
                            self.changed(me, &key, Some(l));
                        }
                    }
                    Err(err) if err.ends_session() => {
                        // Send the error and close: both sides start a new session.
                        assert_eq!(err.code(), codes::SYNC_STALLED, "{err}");
                        self.stalls += 1;
                        self.connect(l);
                        return;
                    }
                    Err(err) => {
                        self.errors.push(format!("{me} <- {peer}: {err}"));
                        self.send(l, side, &err.to_frame());
                    }
                }
            }
            Frame::Ack { doc, heads } => self.links[l].sides[side].peer.on_ack(&doc, &heads),
            Frame::Error {
                doc: Some(doc),
                code,
                message,
            } => {
                self.errors
                    .push(format!("{me} told by {peer}: {code} {message}"));
                self.links[l].sides[side].peer.on_error(&doc);
            }
            other => self.errors.push(format!("{me} got unexpected {other:?}")),
        }
        self.pump(l, side);
    }

    /// A local edit on replica `me`, if it holds the document (stored first, then pushed).
    fn edit(&mut self, me: usize, d: usize, edit: &Edit) {
        let key = doc_key(d);
        self.clock += 1;
        self.next_id += 1;
        let (id, clock) = (self.next_id, self.clock);
        let Some(doc) = self.replicas[me].docs.get_mut(&key) else {
            return;
        };
        if !doc.is_complete() {
            return;
        }
        match edit {
            Edit::Message(body) => {
                doc.add_new_message(&MessageRecord {
                    id: MessageId::from_ulid(Ulid(id)),
                    client_msg_id: format!("c{id}"),
                    sender: Participant::Customer(CustomerId::from_ulid(Ulid(100))),
                    body: body.clone(),
                    sent_at_ms: clock,
                    attachment: None,
                    intent: None,
                })
                .expect("add message");
            }
            Edit::Event(kind) => {
                // Compare-and-swap on what this replica sees: replicas apart from each other
                // answer the same head, e.g. two concurrent claims.
                let head = doc.fold().expect("fold").state.head;
                doc.add_event(&Event {
                    id: EventId::from_ulid(Ulid(id)),
                    kind: kind.clone(),
                    actor: Participant::System,
                    hlc: Hlc::new(clock, me as u16),
                    prev: head,
                })
                .expect("add event");
            }
        }
        self.replicas[me].persist_doc(&key);
        self.changed(me, &key, None);
    }

    /// Replica `me` restarts: its documents come back from its stored chunks, and every
    /// connection it had starts a new session.
    fn restart(&mut self, me: usize) {
        let replica = &mut self.replicas[me];
        replica.docs = replica
            .storage
            .iter()
            .map(|(key, bytes)| {
                (
                    key.clone(),
                    Conversation::load(bytes).expect("stored chunks load"),
                )
            })
            .collect();
        for l in 0..self.links.len() {
            if self.links[l].a == me || self.links[l].b == me {
                self.connect(l);
            }
        }
    }

    /// Reliable, in-order delivery on every link until no side has anything to send.
    fn quiesce(&mut self) {
        for step in 0.. {
            assert!(step < 100_000, "no quiescence");
            let mut progressed = false;
            for l in 0..self.links.len() {
                for side in 0..2 {
                    progressed |= self.deliver(l, side, Fault::None);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Reliable, in-order delivery on link `l` only, until both directions are empty.
    fn settle(&mut self, l: usize) {
        for step in 0.. {
            assert!(step < 10_000, "no quiescence on link {l}");
            let progressed = self.deliver(l, 0, Fault::None) | self.deliver(l, 1, Fault::None);
            if !progressed {
                return;
            }
        }
    }

    fn reset_counters(&mut self) {
        for link in &mut self.links {
            link.bytes = 0;
            link.frames.clear();
            link.log.clear();
        }
    }
}

#[derive(Clone, Debug)]
enum Edit {
    Message(String),
    Event(EventKind),
}

#[derive(Clone, Debug)]
enum Op {
    Edit {
        replica: Index,
        doc: Index,
        edit: Edit,
    },
    /// Up to a few frames on one link, alternating directions, each with its fault.
    Deliver {
        link: Index,
        faults: Vec<Fault>,
    },
    /// Reliable delivery on one link until both directions are empty (a pair gossips).
    Settle {
        link: Index,
    },
    Reconnect {
        link: Index,
    },
    Restart {
        replica: Index,
    },
}

fn arb_fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        8 => Just(Fault::None),
        1 => Just(Fault::Duplicate),
        1 => Just(Fault::Drop),
        1 => any::<Index>().prop_map(Fault::Reorder),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let edit = prop_oneof![
        "[a-z ]{0,8}".prop_map(Edit::Message),
        arb_kind().prop_map(Edit::Event),
    ];
    prop_oneof![
        6 => (any::<Index>(), any::<Index>(), edit)
            .prop_map(|(replica, doc, edit)| Op::Edit { replica, doc, edit }),
        8 => (any::<Index>(), prop::collection::vec(arb_fault(), 1..8))
            .prop_map(|(link, faults)| Op::Deliver { link, faults }),
        2 => any::<Index>().prop_map(|link| Op::Settle { link }),
        1 => any::<Index>().prop_map(|link| Op::Reconnect { link }),
        1 => any::<Index>().prop_map(|replica| Op::Restart { replica }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn replicas_converge_over_a_faulty_network(
        replicas in 2usize..=4,
        docs in 1usize..=2,
        window in 1usize..=3,
        ops in prop::collection::vec(arb_op(), 0..80),
    ) {
        let limits = Limits { max_docs_in_flight: window, ..Limits::default() };
        let mut world = World::new(replicas, docs, limits);
        for op in &ops {
            match op {
                Op::Edit { replica, doc, edit } => {
                    world.edit(replica.index(replicas), doc.index(docs), edit);
                }
                Op::Deliver { link, faults } => {
                    let l = link.index(world.links.len());
                    for (i, fault) in faults.iter().enumerate() {
                        if !world.deliver(l, i % 2, *fault) {
                            world.deliver(l, 1 - i % 2, *fault);
                        }
                    }
                }
                Op::Settle { link } => world.settle(link.index(world.links.len())),
                Op::Reconnect { link } => {
                    let l = link.index(world.links.len());
                    world.connect(l);
                }
                Op::Restart { replica } => world.restart(replica.index(replicas)),
            }
        }

        // Whatever happened, a fresh reliable session on every link converges.
        for l in 0..world.links.len() {
            world.connect(l);
        }
        let stalls = world.stalls;
        world.quiesce();
        prop_assert_eq!(world.stalls, stalls, "a reliable session never stalls");

        prop_assert!(world.errors.is_empty(), "errors: {:?}", world.errors);
        for d in 0..docs {
            let key = doc_key(d);
            let mut reference = None;
            for (r, replica) in world.replicas.iter_mut().enumerate() {
                let doc = replica.docs.get_mut(&key).expect("every replica holds every document");
                prop_assert!(doc.is_complete(), "replica {} doc {}", r, d);
                let seen = (doc.messages().expect("messages"), doc.fold().expect("fold"), doc.heads());
                let mut stored = Conversation::load(&replica.storage[&key]).expect("stored chunks");
                prop_assert_eq!(&stored.heads(), &seen.2, "replica {} stored everything", r);
                match &reference {
                    None => reference = Some(seen),
                    Some(first) => prop_assert_eq!(first, &seen, "replica {} doc {}", r, d),
                }
            }
            let heads = aisle_sync::protocol::heads_to_wire(&reference.expect("replicas").2);
            for link in &world.links {
                for side in &link.sides {
                    prop_assert!(side.peer.is_idle());
                    prop_assert_eq!(side.peer.remote_heads(&key), Some(heads.as_slice()));
                }
            }
        }
    }
}

fn msg(n: u128) -> MessageRecord {
    MessageRecord {
        id: MessageId::from_ulid(Ulid(10_000 + n)),
        client_msg_id: format!("client-{n}"),
        sender: Participant::Customer(CustomerId::from_ulid(Ulid(100))),
        body: format!("Do you have size {n} in blue?"),
        sent_at_ms: n as u64,
        attachment: None,
        intent: None,
    }
}

/// An edge (replica 0) that created one conversation of `messages` messages, fully synced with
/// its hub (replica 1), counters reset.
fn synced_pair(messages: u128) -> World {
    let mut world = World::new(2, 1, Limits::default());
    for n in 0..messages {
        world.replicas[0]
            .docs
            .get_mut(&doc_key(0))
            .expect("doc")
            .add_new_message(&msg(n))
            .expect("add");
        // One commit (one Automerge change) per message, as the edge's writer does.
        world.replicas[0].persist_doc(&doc_key(0));
    }
    world.quiesce();
    assert!(world.errors.is_empty(), "{:?}", world.errors);
    world.reset_counters();
    world
}

/// Bytes of one session of a link, counted on the wire (envelopes included).
#[test]
fn a_reconnect_with_nothing_new_costs_a_few_hundred_bytes() {
    // A 1,000-message conversation (one change per message), fully synced.
    let mut world = synced_pair(1_000);
    world.connect(0);
    world.quiesce();
    let session = world.links[0].bytes;
    let frames = world.links[0].frames.clone();
    eprintln!(
        "reconnect, nothing new, 1 document: {session} B: {:?}",
        world.links[0].log
    );
    assert_eq!(
        frames.get("sync"),
        None,
        "equal manifests: no sync round at all"
    );
    assert!(session < 400, "{session} bytes");

    // The same reconnect when the document is synced anyway (e.g. the manifests were skipped):
    // with the persisted state it is one small exchange, with a fresh state a bloom filter more.
    world.reset_counters();
    world.connect(0);
    world.quiesce();
    world.links[0].sides[0].peer.want(doc_key(0));
    world.pump(0, 0);
    world.quiesce();
    let sync_bytes = world.links[0].bytes - session;
    eprintln!(
        "forced round, persisted state: {sync_bytes} B: {:?}",
        &world.links[0].log[4..]
    );
    assert!(sync_bytes < 450, "{sync_bytes} bytes");

    world.replicas[0].states.clear();
    world.replicas[1].states.clear();
    world.reset_counters();
    world.connect(0);
    world.quiesce();
    world.links[0].sides[0].peer.want(doc_key(0));
    world.pump(0, 0);
    world.quiesce();
    let fresh = world.links[0].bytes - session;
    assert!(
        fresh > sync_bytes,
        "the persisted state saves the bloom filter of the history"
    );
    eprintln!(
        "forced round, fresh state: {fresh} B: {:?}",
        &world.links[0].log[4..]
    );
    assert!(world.errors.is_empty(), "{:?}", world.errors);
}

#[test]
fn one_new_message_costs_one_round_trip() {
    let mut world = synced_pair(50);
    world.edit(0, 0, &Edit::Message("Is the blue one in stock?".into()));
    world.quiesce();
    let link = &world.links[0];
    eprintln!(
        "one new message, live push: {} B: {:?}",
        link.bytes, link.log
    );
    assert_eq!(link.frames.get("sync"), Some(&2), "push + answer");
    assert_eq!(
        link.frames.get("ack"),
        Some(&1),
        "the round ends with an ack"
    );
    assert!(link.bytes < 1_000, "{} bytes", link.bytes);
    let mut edge = world.replicas[0].docs.remove(&doc_key(0)).expect("edge");
    let hub = world.replicas[1].docs.get_mut(&doc_key(0)).expect("hub");
    assert_eq!(hub.heads(), edge.heads());
    let heads = aisle_sync::protocol::heads_to_wire(&edge.heads());
    assert_eq!(
        world.links[0].sides[0].peer.remote_heads(&doc_key(0)),
        Some(heads.as_slice()),
        "the edge knows the hub holds it"
    );
}

#[test]
fn first_sync_of_a_long_conversation() {
    let mut world = World::new(2, 1, Limits::default());
    world.reset_counters();
    for n in 0..1_000 {
        let doc = world.replicas[0].docs.get_mut(&doc_key(0)).expect("doc");
        doc.add_new_message(&msg(n)).expect("add");
        world.replicas[0].persist_doc(&doc_key(0));
    }
    world.connect(0);
    world.quiesce();
    let link = &world.links[0];
    eprintln!(
        "first sync, 1,000 messages: {} B: {:?}",
        link.bytes, link.log
    );
    assert!(world.errors.is_empty(), "{:?}", world.errors);
    let hub = world.replicas[1].docs.get_mut(&doc_key(0)).expect("hub");
    assert_eq!(hub.message_count(), 1_000);
}

#[test]
fn a_peer_with_a_second_skeleton_is_told_and_the_rest_goes_on() {
    let mut world = World::new(2, 2, Limits::default());
    // Replica 1 wrongly creates document 0 a second time.
    let mut twin = Conversation::create(&meta(0, 1)).expect("create");
    world.replicas[1].storage.insert(doc_key(0), twin.save());
    world.replicas[1].docs.insert(doc_key(0), twin);
    world.connect(0);
    world.quiesce();
    assert!(
        world
            .errors
            .iter()
            .any(|e| e.contains(codes::FOREIGN_DOCUMENT)),
        "{:?}",
        world.errors
    );
    // Document 1 synced normally; document 0 is unchanged on both sides.
    let mut heads = Vec::new();
    for replica in &mut world.replicas {
        heads.push(replica.docs.get_mut(&doc_key(1)).expect("doc 1").heads());
        assert_eq!(
            replica
                .docs
                .get_mut(&doc_key(0))
                .expect("doc 0")
                .heads()
                .len(),
            1
        );
    }
    assert_eq!(heads[0], heads[1]);
    for link in &world.links {
        for side in &link.sides {
            assert!(side.peer.is_idle());
        }
    }
}

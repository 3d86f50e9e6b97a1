//! What the fuzz targets share: the fixed documents and keys their inputs are read against,
//! and the one piece of input shaping that is not the product's (Automerge chunk checksums).
//!
//! Nothing here decodes untrusted bytes itself: every target hands the bytes to the product's
//! own function. This crate only builds known-good documents (through `aisle-sync`'s API, as
//! the edge does) so that a target can apply a hostile sync message to a document that already
//! holds a conversation, the case a hub meets on every round.

use aisle_sync::{
    Conversation, ConversationId, CustomerId, Event, EventId, EventKind, Hlc, MessageId,
    MessageRecord, Meta, Participant, ParticipantRecord, Settings, StaffId,
};
use sha2::{Digest, Sha256};
use ulid::Ulid;

/// The conversation every seed and every "existing document" is about.
pub const CONVERSATION: ConversationId =
    ConversationId::from_ulid(Ulid(0x0193_0000_0000_0000_0001));
/// The store of the settings documents.
pub const STORE_ID: &str = "store-fuzz";

/// Automerge's chunk magic bytes (`storage/chunk.rs`): every stored document and change starts
/// with them.
pub const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// A conversation as the edge writes it: skeleton, two participants, three messages (one with
/// an intent), a claim and a resolve.
pub fn conversation() -> Conversation {
    let customer = CustomerId::from_ulid(Ulid(2));
    let agent = StaffId::from_ulid(Ulid(7));
    let meta = Meta::new(CONVERSATION, STORE_ID, customer, 1_700_000_000_000);
    let mut doc = Conversation::create(&meta).expect("a skeleton is created");
    doc.put_participant(&ParticipantRecord {
        participant: Participant::Customer(customer),
        display_name: "Wang Fang".into(),
        joined_at_ms: 1_700_000_000_000,
    })
    .expect("participant");
    doc.put_participant(&ParticipantRecord {
        participant: Participant::Staff(agent),
        display_name: "Li Lei".into(),
        joined_at_ms: 1_700_000_001_000,
    })
    .expect("participant");
    for (n, (sender, body)) in [
        (
            Participant::Customer(customer),
            "你好, do you have size 42?",
        ),
        (Participant::Staff(agent), "Yes, aisle 3."),
        (Participant::Customer(customer), "thanks"),
    ]
    .into_iter()
    .enumerate()
    {
        doc.add_message(&MessageRecord {
            id: MessageId::from_ulid(Ulid(100 + n as u128)),
            client_msg_id: format!("c{n}"),
            sender,
            body: body.into(),
            sent_at_ms: 1_700_000_000_500 + n as u64,
            attachment: None,
            intent: (n == 0).then(|| aisle_sync::IntentRecord {
                label: "product_availability".into(),
                confidence: 0.93,
                model: "intent-v1".into(),
            }),
        })
        .expect("message");
    }
    let claim = Event {
        id: EventId::from_ulid(Ulid(200)),
        kind: EventKind::Claim { agent },
        actor: Participant::Staff(agent),
        hlc: Hlc::new(1_700_000_000_600, 0),
        prev: None,
    };
    let resolve = Event {
        id: EventId::from_ulid(Ulid(201)),
        kind: EventKind::Resolve,
        actor: Participant::Staff(agent),
        hlc: Hlc::new(1_700_000_000_700, 0),
        prev: Some(claim.id),
    };
    doc.add_event(&claim).expect("event");
    doc.add_event(&resolve).expect("event");
    doc
}

/// A store's settings document as the hub writes it, with one canned reply.
pub fn settings() -> Settings {
    let mut doc = Settings::create(STORE_ID).expect("settings");
    doc.put_canned_reply(&aisle_sync::CannedReply {
        id: "r1".into(),
        shortcut: "/hours".into(),
        title: "Opening hours".into(),
        body: "9:00 to 21:00 every day".into(),
        updated_at_ms: 1_700_000_000_000,
    })
    .expect("canned reply");
    doc
}

/// Assembles Automerge chunks with correct headers from `[type u8][len u16 le][body]` records,
/// so that mutated chunk bodies get past the checksum and into the parsers behind it. Without
/// this nearly every mutation of a stored document dies at the checksum (4 bytes of SHA-256 a
/// fuzzer cannot guess), and the column decoders would never see hostile input. A truncated
/// last record takes what is left.
pub fn chunks_with_checksums(mut input: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while let Some((&kind, rest)) = input.split_first() {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            _ => (rest.len(), &rest[rest.len()..]),
        };
        let len = len.min(rest.len());
        let (body, rest) = rest.split_at(len);
        // Chunk types 0 (document), 1 (change), 2 (compressed change); anything else is kept
        // as is so the "unknown chunk type" path is reached too.
        chunks.push(chunk(kind % 4, body));
        input = rest;
    }
    chunks
}

/// One chunk: magic, checksum (first 4 bytes of SHA-256 over type, LEB128 length, body), type,
/// LEB128 length, body.
pub fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut typed = vec![kind];
    leb128(&mut typed, body.len() as u64);
    let mut hash = Sha256::new();
    hash.update(&typed);
    hash.update(body);
    let hash = hash.finalize();
    let mut out = CHUNK_MAGIC.to_vec();
    out.extend_from_slice(&hash[..4]);
    out.extend_from_slice(&typed);
    out.extend_from_slice(body);
    out
}

/// The inverse of [`chunks_with_checksums`] for well-formed chunks (seed corpora): each chunk
/// as `[type][len u16 le][body]`.
pub fn chunk_records(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while bytes.len() > 9 && bytes[..4] == CHUNK_MAGIC {
        let kind = bytes[8];
        let mut len = 0u64;
        let mut shift = 0;
        let mut at = 9;
        while at < bytes.len() {
            let b = bytes[at];
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = (at + len as usize).min(bytes.len());
        let body = &bytes[at..end];
        out.push(kind);
        out.extend_from_slice(&(body.len().min(u16::MAX as usize) as u16).to_le_bytes());
        out.extend_from_slice(body);
        bytes = &bytes[end..];
    }
    out
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The test-only update signing key of the `bundle_manifest` target (its public half is the
/// one key that target trusts). A fixed, published key: never a key of a real image.
pub fn bundle_signing_key() -> aisle_update::SecretKey {
    aisle_update::SecretKey::from_line(&format!(
        "{} {}",
        aisle_update::key::SECRET_KEY_PREFIX,
        "f0".repeat(32)
    ))
    .expect("a well-formed key line")
}

//! Inputs found by the fuzz targets (`fuzz/`), minimised, each replayed through the same
//! public call a peer's bytes reach. Every one of them crashed the product before its fix.

use aisle_sync::{
    Conversation, ConversationId, CustomerId, MessageId, MessageRecord, Meta, Participant,
    Settings, SyncError,
};
use automerge::sync::{ChunkList, Message, MessageVersion, State};
use ulid::Ulid;

/// A document chunk whose column data makes Automerge 0.12's column reader panic
/// ("RawColumnIter::take would cross slab boundary") instead of returning an error. Found by
/// `automerge_load` as the change of a sync message; the same chunk handed to `load` reaches
/// the same reader.
const COLUMN_PANIC: &[u8] = include_bytes!("fuzz/automerge-column-panic.chunks");

fn meta() -> Meta {
    Meta::new(
        ConversationId::from_ulid(Ulid(1)),
        "store-42",
        CustomerId::from_ulid(Ulid(2)),
        1_000,
    )
}

fn message_carrying(chunk: &[u8]) -> Vec<u8> {
    Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(vec![chunk.to_vec()]),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

#[test]
fn a_document_that_panics_automerge_is_refused_on_load() {
    let err = Conversation::load(COLUMN_PANIC).expect_err("the chunk is not a document");
    assert!(matches!(err, SyncError::Panicked(_)), "{err}");
    let err = Settings::load(COLUMN_PANIC).expect_err("the chunk is not a document");
    assert!(matches!(err, SyncError::Panicked(_)), "{err}");
}

#[test]
fn a_sync_message_that_panics_automerge_is_refused_and_changes_nothing() {
    let message = message_carrying(COLUMN_PANIC);

    // A replica that never held the conversation.
    let mut fresh = Conversation::empty_for_sync(meta().id);
    let mut state = State::new();
    let err = fresh
        .receive_sync_message(&mut state, &message)
        .expect_err("refused");
    assert!(matches!(err, SyncError::Panicked(_)), "{err}");
    assert!(fresh.heads().is_empty());

    // A replica holding the conversation: refused, unchanged, and still usable.
    let mut held = Conversation::create(&meta()).expect("create");
    let before = held.heads();
    let mut state = State::new();
    let err = held
        .receive_sync_message(&mut state, &message)
        .expect_err("refused");
    assert!(matches!(err, SyncError::Panicked(_)), "{err}");
    assert_eq!(held.heads(), before);
    let added = held
        .add_message(&MessageRecord {
            id: MessageId::from_ulid(Ulid(10)),
            client_msg_id: "c1".into(),
            sender: Participant::Customer(meta().customer),
            body: "still here".into(),
            sent_at_ms: 2_000,
            attachment: None,
            intent: None,
        })
        .expect("the replica still takes writes");
    assert!(added);
    let reloaded = Conversation::load(&held.save()).expect("and still saves and loads");
    assert_eq!(reloaded.messages().expect("messages").len(), 1);

    // The store's settings document goes through the same guard.
    let mut settings = Settings::empty_for_sync("store-42");
    let mut state = State::new();
    let err = aisle_sync::SyncedDoc::receive_sync_message(&mut settings, &mut state, &message)
        .expect_err("refused");
    assert!(matches!(err, SyncError::Panicked(_)), "{err}");
}

/// `automerge_load` input (mode 7: the rest is `[type u8][len u16 le][body]` records, made into
/// checksummed chunks and sent as one sync message's changes) for which Automerge accepted the
/// changes into a settings document that then saved to bytes that did not load again
/// (`MismatchingHeads`): a store would have kept settings it could not reopen.
const SETTINGS_SAVE: &[u8] = include_bytes!("fuzz/settings-save-does-not-load.bin");

/// The fuzz harness's chunk assembly (`fuzz/src/lib.rs`, `chunks_with_checksums`).
fn chunks_with_checksums(mut input: &[u8]) -> Vec<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let mut chunks = Vec::new();
    while let Some((&kind, rest)) = input.split_first() {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            _ => (rest.len(), &rest[rest.len()..]),
        };
        let len = len.min(rest.len());
        let (body, rest) = rest.split_at(len);
        let mut typed = vec![kind % 4];
        let mut value = body.len() as u64;
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                typed.push(byte);
                break;
            }
            typed.push(byte | 0x80);
        }
        let hash = Sha256::new()
            .chain_update(&typed)
            .chain_update(body)
            .finalize();
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83];
        chunk.extend_from_slice(&hash[..4]);
        chunk.extend_from_slice(&typed);
        chunk.extend_from_slice(body);
        chunks.push(chunk);
        input = rest;
    }
    chunks
}

#[test]
fn settings_a_sync_message_leaves_always_save_and_load_again() {
    let (&mode, records) = SETTINGS_SAVE.split_first().expect("input");
    assert_eq!(mode % 8, 7, "the input is a mode-7 record list");
    let message = Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(chunks_with_checksums(records)),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode();
    let mut held = Settings::create("store-fuzz").expect("settings");
    held.put_canned_reply(&aisle_sync::CannedReply {
        id: "r1".into(),
        shortcut: "/hours".into(),
        title: "Opening hours".into(),
        body: "9:00 to 21:00 every day".into(),
        updated_at_ms: 1_700_000_000_000,
    })
    .expect("reply");
    let held = held.save();
    let mut fresh = Settings::empty_for_sync("store-fuzz");
    let mut held = Settings::load(&held).expect("held settings");
    for doc in [&mut fresh, &mut held] {
        let mut state = State::new();
        let before = aisle_sync::SyncedDoc::heads(doc);
        match aisle_sync::SyncedDoc::receive_sync_message(doc, &mut state, &message) {
            Ok(()) => {
                let saved = doc.save();
                Settings::load(&saved).expect("what a received message left saves and loads");
            }
            Err(_) => assert_eq!(
                aisle_sync::SyncedDoc::heads(doc),
                before,
                "refused, unchanged"
            ),
        }
    }
}

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

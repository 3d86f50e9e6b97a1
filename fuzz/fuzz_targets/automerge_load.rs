//! A conversation (or settings) document received from a peer, and a received sync message
//! applied to a document:
//!
//! - `Conversation::load` of bytes from the hub (`edge/src/store/writer/replica.rs::import`,
//!   a conversation continued at this store) and what the edge and the hub read right after:
//!   meta, participants, messages, events, the fold, `changes_since(&[])` (the edge's adoption,
//!   the hub's backfill) and the hub's HQ projection (`projection::of_round`); a loaded
//!   document must save and load again.
//! - `receive_sync_message`, as the hub applies a store's round and a store applies its hub's:
//!   into a replica that has never held the document (`empty_for_sync`) and into one that holds
//!   the conversation already, then the delta and the projection of what it brought. A
//!   refused message must leave the document exactly as it was.
//! - The same for the store's settings document (`Settings`).
//!
//! The first byte picks the case; in the "checksummed" cases the rest is a list of
//! `[type][len u16][body]` chunk records that the harness wraps with correct Automerge chunk
//! headers (see `aisle_fuzz::chunks_with_checksums`), so mutations reach the column decoders
//! instead of stopping at the checksum.
#![no_main]

use std::sync::LazyLock;

use aisle_fuzz::{CONVERSATION, STORE_ID};
use aisle_sync::{Conversation, Settings};
use automerge::sync::{self, Message};
use libfuzzer_sys::fuzz_target;

/// The existing replica, saved once; every input starts from a fresh load of it.
static HELD: LazyLock<Vec<u8>> = LazyLock::new(|| aisle_fuzz::conversation().save());
static HELD_SETTINGS: LazyLock<Vec<u8>> = LazyLock::new(|| aisle_fuzz::settings().save());

fuzz_target!(
    init: {
        // libfuzzer-sys aborts on every panic from its hook, even one the product catches:
        // `aisle-sync` catches Automerge's panics on hostile bytes (`SyncError::Panicked`), so
        // here a panic only prints. One that escapes the product still aborts: libfuzzer-sys
        // catches the unwind at the target's boundary and aborts, and the input is saved.
        std::panic::set_hook(Box::new(|info| eprintln!("panic (caught or fatal): {info}")));
    },
    |data: &[u8]| {
        let Some((&case, rest)) = data.split_first() else {
            return;
        };
        match case % 8 {
            0 => load_conversation(rest),
            1 => load_conversation(&aisle_fuzz::chunks_with_checksums(rest).concat()),
            2 => receive_conversation(rest),
            3 => receive_conversation(&message_of(rest)),
            4 => load_settings(rest),
            5 => load_settings(&aisle_fuzz::chunks_with_checksums(rest).concat()),
            6 => receive_settings(rest),
            _ => receive_settings(&message_of(rest)),
        }
    }
);

/// A sync message carrying the checksummed chunks of `records` as its changes.
fn message_of(records: &[u8]) -> Vec<u8> {
    Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: aisle_fuzz::chunks_with_checksums(records).into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode()
}

fn load_conversation(bytes: &[u8]) {
    let Ok(mut doc) = Conversation::load(bytes) else {
        return;
    };
    read_all(&mut doc, &[]);
    // What loaded is stored by the edge and the hub: it must load again.
    let saved = doc.save();
    Conversation::load(&saved).expect("a loaded document saves and loads again");
}

fn receive_conversation(message: &[u8]) {
    // A replica that never held the conversation (the first round of a document).
    let mut fresh = Conversation::empty_for_sync(CONVERSATION);
    receive_into(&mut fresh, message);
    // The replica that holds it (every later round).
    let mut held = Conversation::load(&HELD).expect("the held document loads");
    receive_into(&mut held, message);
}

fn receive_into(doc: &mut Conversation, message: &[u8]) {
    let mut state = sync::State::new();
    let before = doc.heads();
    match doc.receive_sync_message(&mut state, message) {
        Ok(()) => {
            read_all(doc, &before);
            // The edge answers every round: generating the next message must not fail.
            let _ = doc.generate_sync_message(&mut state);
            if doc.is_complete() {
                let saved = doc.save();
                Conversation::load(&saved).expect("a synced document saves and loads again");
            }
        }
        Err(_) => {
            // Sync never corrupts a replica: refused means unchanged.
            assert_eq!(
                doc.heads(),
                before,
                "a refused message changed the document"
            );
        }
    }
}

/// What the edge (`Records::read`, `project`) and the hub (`projection::of_round`) read from a
/// document that changed since `before`.
fn read_all(doc: &mut Conversation, before: &[automerge::ChangeHash]) {
    let _ = doc.id();
    if !doc.is_complete() {
        return;
    }
    let _ = doc.meta();
    let _ = doc.participants();
    let _ = doc.messages();
    let _ = doc.message_count();
    let _ = doc.events();
    let _ = doc.fold();
    let delta = doc.changes_since(before);
    let _ = aisle_hub::projection::of_round(doc, delta);
}

fn load_settings(bytes: &[u8]) {
    let Ok(mut doc) = Settings::load(bytes) else {
        return;
    };
    let _ = doc.store_id();
    let _ = doc.canned_replies();
    let saved = doc.save();
    Settings::load(&saved).expect("loaded settings save and load again");
}

fn receive_settings(message: &[u8]) {
    let mut fresh = Settings::empty_for_sync(STORE_ID);
    let mut held = Settings::load(&HELD_SETTINGS).expect("the held settings load");
    for doc in [&mut fresh, &mut held] {
        let mut state = sync::State::new();
        let before = doc.heads();
        match aisle_sync::SyncedDoc::receive_sync_message(doc, &mut state, message) {
            Ok(()) => {
                if doc.is_complete() {
                    let _ = doc.canned_replies();
                    let saved = doc.save();
                    Settings::load(&saved).expect("synced settings save and load again");
                }
            }
            Err(_) => assert_eq!(doc.heads(), before, "refused settings changed"),
        }
    }
}

//! The edge ↔ hub sync envelope, both directions: one binary WebSocket frame as the hub reads
//! it from a store (`hub/src/sync.rs`, the hub's `max_frame_bytes`) and as a store reads it from
//! its hub (`edge/src/uplink.rs`, the edge's `max_sync_frame_bytes`): `wire::decode_frame`
//! (length, version byte, CBOR into `protocol::Frame`), then what each side's `PeerSync` does
//! with the frame: manifests diffed, acks and errors booked, a `Sync` applied to a document
//! the receiver has never held (the first round of a document) and answered, and every error
//! turned into the `Error` frame sent back.
#![no_main]

use aisle_sync::{
    Conversation, DocumentKey, Frame, ManifestEntry, PeerSync, Settings, decode_frame, encode_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hub = aisle_hub::limits::Limits::default().sync();
    let edge = aisle_edge::limits::Limits::default().sync();
    for limits in [hub, edge] {
        receive(data, limits);
    }
});

fn receive(data: &[u8], limits: aisle_sync::Limits) {
    let frame = match decode_frame(data, limits.max_frame_bytes) {
        Ok(frame) => frame,
        Err(err) => {
            // The answer to an undecodable frame is itself a frame the peer can decode.
            answered(&err.to_frame());
            return;
        }
    };
    // What decodes re-encodes to the same frame: nothing is lost or invented by the codec.
    let bytes = encode_frame(&frame, usize::MAX).expect("a decoded frame encodes");
    assert_eq!(
        decode_frame(&bytes, usize::MAX).expect("an encoded frame decodes"),
        frame
    );
    let _ = frame.kind();

    let mut peer = PeerSync::new(limits);
    match &frame {
        Frame::Manifest { docs, .. } => {
            let local: Vec<ManifestEntry> = Vec::new();
            let diff = peer.on_manifest(&local, docs);
            for key in diff.to_sync() {
                peer.want(key);
            }
            while peer.next_ready().is_some() {}
        }
        Frame::Sync { doc: key, message } => {
            let outcome = match key {
                DocumentKey::Conversation(id) => {
                    let mut doc = Conversation::empty_for_sync(*id);
                    let outcome = peer.receive(key, &mut doc, message);
                    if outcome.is_ok() {
                        answered(&peer.answer(key, &mut doc));
                    }
                    outcome
                }
                DocumentKey::Settings(store) => {
                    let mut doc = Settings::empty_for_sync(store);
                    let outcome = peer.receive(key, &mut doc, message);
                    if outcome.is_ok() {
                        answered(&peer.answer(key, &mut doc));
                    }
                    outcome
                }
                _ => return,
            };
            if let Err(err) = outcome {
                assert!(err.doc().is_some() || err.ends_session());
                answered(&err.to_frame());
            }
        }
        Frame::Ack { doc, heads } => peer.on_ack(doc, heads),
        Frame::Error { doc: Some(doc), .. } => peer.on_error(doc),
        _ => {}
    }
}

/// A frame this side sends back must encode, and decode again on the other side.
fn answered(frame: &Frame) {
    let bytes = encode_frame(frame, usize::MAX).expect("an answer encodes");
    decode_frame(&bytes, usize::MAX).expect("an answer decodes");
}

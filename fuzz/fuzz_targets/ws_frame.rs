//! The edge's WebSocket client frames: the bytes of one text frame, as a customer's phone or a
//! staff tablet sends them, through what `connection.rs` does with them before any command
//! reaches the writer: the `max_frame_bytes` gate, `frame::parse` (typed parse, then the
//! `bad_json` / `unknown_type` / `bad_frame` diagnosis with the ids to echo), the echo of a
//! parsed frame, and the error frame written back.
#![no_main]

use aisle_edge::frame::{self, ClientFrame};
use aisle_edge::limits::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The socket layer hands the connection only UTF-8 text frames (a binary frame is refused
    // with `unsupported_frame` before any parsing), so non-UTF-8 bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The connection refuses a longer frame without parsing it (`frame_too_large`).
    if text.len() > Limits::default().max_frame_bytes {
        return;
    }
    match frame::parse(text) {
        Ok(parsed) => {
            let echo = frame::echo_of(&parsed);
            // Echoed ids are the frame's own: a conversation id is a valid ULID string.
            if let Some(id) = &echo.conversation_id {
                assert!(id.parse::<aisle_sync::ConversationId>().is_ok(), "{id}");
            }
            if let ClientFrame::Send { client_msg_id, .. } = &parsed {
                assert_eq!(echo.client_msg_id.as_deref(), Some(client_msg_id.as_str()));
            }
        }
        Err((err, echo)) => {
            // What the client receives: a JSON error frame with a stable code.
            let reply = frame::error_text(&err, &echo);
            let value: serde_json::Value =
                serde_json::from_str(&reply).expect("an error frame is JSON");
            assert_eq!(value["type"], "error");
            assert_eq!(value["code"], err.code.as_str());
            assert!(
                matches!(err.code.as_str(), "bad_json" | "unknown_type" | "bad_frame"),
                "{}",
                err.code.as_str()
            );
        }
    }
});

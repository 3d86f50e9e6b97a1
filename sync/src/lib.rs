//! `aisle-sync`: the conversation as an Automerge document, the session state machine, and the
//! edge ↔ hub sync protocol ([`protocol`] frames, [`wire`] codec, [`peer`] per-document driver).
//!
//! Pure logic over bytes — no I/O, no async — so the same code runs on the store edge, on the
//! hub and in tests.
//!
//! # Layout
//!
//! One Automerge document per conversation (see [`conversation`] for the exact layout): a root
//! map with `meta` (JSON bytes of [`Meta`]) and three maps — `participants`, `messages`,
//! `events` — each holding JSON byte scalars keyed by id.
//!
//! # Invariants
//!
//! 1. **Only the creator creates the skeleton.** The peer that opens a conversation calls
//!    [`Conversation::create`]; everyone else loads or syncs those bytes. Two independently
//!    created documents would each have their own `messages` map under the same root key, and
//!    Automerge would show only one of them after a merge.
//! 2. **Messages are immutable and keyed by id.** Adding is idempotent (retries are safe), two
//!    peers adding different messages never conflict, and display order is `(sent_at_ms, id)` —
//!    never Automerge's insertion order, which differs between replicas.
//! 3. **Session state is a pure function of the event set.** Events are never edited; the state
//!    is [`fold`]ed from all of them (sorted by [`Hlc`], compare-and-swap on [`Event::prev`],
//!    then the [`transition`] table), so replicas with the same events agree, and the loser of a
//!    race is named in [`Fold::rejected`] instead of being silently overwritten.
//! 4. **Sync never corrupts a replica.** A peer that has never held a conversation starts from
//!    [`Conversation::empty_for_sync`] and receives everything by sync; a received second
//!    skeleton, another conversation's skeleton or an undecodable message is refused and leaves
//!    the document and its sync state exactly as they were. Every `Sync` frame is answered by
//!    one frame, each side persists a document before it sends anything about it, and anything
//!    lost ends the session (see [`peer`] and `docs/sync-protocol.md`).

pub mod conversation;
pub mod error;
pub mod hlc;
pub mod ids;
pub mod peer;
pub mod protocol;
pub mod session;
pub mod settings;
pub mod wire;

/// Automerge's change hash (document heads), re-exported so users need not depend on automerge.
pub use automerge::ChangeHash;
pub use conversation::{
    Attachment, Conversation, Delta, IntentRecord, MessageRecord, Meta, ParticipantRecord,
};
pub use error::SyncError;
pub use hlc::{Hlc, HlcClock};
pub use ids::{AttachmentId, ConversationId, CustomerId, EventId, MessageId, Participant, StaffId};
pub use peer::{PeerSync, SyncedDoc};
pub use protocol::{
    Credential, DocumentKey, Frame, Head, Limits, ManifestDiff, ManifestEntry, PROTOCOL_VERSION,
    ProtocolError, diff_manifests,
};
pub use session::{
    Event, EventKind, Fold, Rejected, Rejection, SessionState, Status, fold, transition,
};
pub use settings::{CannedReply, HqLayer, LayerScope, Settings};
pub use wire::{decode_frame, encode_frame, manifest_frames};

/// Version of the document layout described in [`conversation`]; stored in [`Meta`].
pub const SCHEMA_VERSION: u32 = 1;

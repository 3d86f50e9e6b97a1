//! The one error type of the crate.
//!
//! Kept deliberately small: callers (the edge, later the hub) mostly need to tell "the bytes are
//! bad" (`Automerge`, `Corrupt`, `MissingSchema`) apart from "the caller passed something bad"
//! (`InvalidId`, `InvalidStatus`, `ForeignDocument`).

/// Everything that can go wrong in `aisle-sync`.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A string that should have been a ULID was not (the offending input is kept for the log).
    #[error("invalid id {0:?}")]
    InvalidId(String),

    /// A string that should have been a session [`Status`](crate::Status) was not.
    #[error("invalid session status {0:?}")]
    InvalidStatus(String),

    /// Automerge refused the bytes or the operation (bad checksum, truncated chunk, ...).
    #[error(transparent)]
    Automerge(#[from] automerge::AutomergeError),

    /// A value in the document did not decode as the record it should hold. Reported instead of
    /// panicking because documents arrive from other machines and may have been written by a
    /// buggy or newer peer.
    #[error("corrupt {what} at key {key:?}")]
    Corrupt {
        /// Which kind of record failed (`"meta"`, `"message"`, `"event"`, `"participant"`, ...).
        what: &'static str,
        /// The map key under which it was found.
        key: String,
    },

    /// One of the root containers (`meta`, `participants`, `messages`, `events`) is absent: the
    /// bytes are not a conversation document (or are one that never received its skeleton).
    #[error("document has no {0:?} container")]
    MissingSchema(&'static str),

    /// Bytes handed to [`Conversation::receive_sync_message`](crate::Conversation::receive_sync_message)
    /// that are not an Automerge sync message (the decoder's complaint is kept for the log).
    #[error("bad sync message: {0}")]
    BadSyncMessage(String),

    /// Automerge panicked on bytes from another machine (a decoder bug inside Automerge,
    /// found by fuzzing: `fuzz/`, target `automerge_load`). Caught where the bytes enter
    /// ([`Conversation::load`](crate::Conversation::load), `receive_sync_message`) and reported
    /// like any undecodable input, so one hostile peer cannot take down the edge's writer
    /// thread or a hub's sync task. The panic's message is kept for the log.
    #[error("the document library failed on this input: {0}")]
    Panicked(String),

    /// `merge` was asked to combine two documents that do not share a skeleton, or a sync would
    /// have delivered one: either different conversations, or the same conversation created twice
    /// (which would hide one side's data).
    #[error("refusing to merge: {0}")]
    ForeignDocument(&'static str),
}

//! The edge ↔ hub sync protocol: frames, document keys, limits and errors.
//!
//! One WebSocket per store, binary frames only. Every frame is the envelope of [`crate::wire`]:
//! one byte [`PROTOCOL_VERSION`], then one CBOR-encoded [`Frame`]. The session (hello →
//! welcome/refused → manifests → per-document sync rounds → acks, live pushes, reconnect) is
//! described in `docs/sync-protocol.md`; the per-document bookkeeping is [`crate::peer`].
//!
//! Everything here is plain data: the types serialise with serde (CBOR on the wire; any serde
//! format works for logs and tests), and nothing does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use automerge::ChangeHash;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SyncError;
use crate::ids::ConversationId;

/// The first byte of every binary frame. A peer that reads another value refuses the frame with
/// [`ProtocolError::WrongVersion`] (and the hub answers `Refused { code: "unsupported_version" }`
/// when it is the `Hello`).
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes a [`Frame::Sync`] adds around its Automerge message (version byte, CBOR map, field names,
/// the longest document key): `max_frame_bytes` must exceed `max_document_bytes` by this much.
pub const FRAME_OVERHEAD_BYTES: usize = 512;

/// Most entries a peer's manifest may list in one session (its frames together); a longer
/// manifest ends the session (`bad_frame`). A store with more conversations than this would
/// need a paged manifest.
pub const MAX_MANIFEST_ENTRIES: usize = 1_000_000;

/// Longest store id accepted in a [`DocumentKey::Settings`] key.
pub const MAX_STORE_ID_BYTES: usize = 128;

/// The codes of [`Frame::Refused`] and [`Frame::Error`]. Strings on the wire so that a newer peer
/// can send a code an older one does not know (it logs it and treats it as fatal for the frame's
/// scope).
pub mod codes {
    /// Refused: the hub does not know this store id.
    pub const UNKNOWN_STORE: &str = "unknown_store";
    /// Refused: the store's credential was revoked (re-enrol the appliance).
    pub const REVOKED: &str = "revoked";
    /// Refused: the store belongs to another region (data never leaves its region).
    pub const WRONG_REGION: &str = "wrong_region";
    /// Refused: the credential does not match the store.
    pub const BAD_CREDENTIAL: &str = "bad_credential";
    /// Refused or Error: the envelope's version byte is not one this peer speaks.
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// Error: the frame did not decode, or is not valid in this state of the session.
    pub const BAD_FRAME: &str = "bad_frame";
    /// Error: the frame is longer than the receiver's `max_frame_bytes`.
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    /// Error (per document): a sync message longer than `max_document_bytes`.
    pub const DOCUMENT_TOO_LARGE: &str = "document_too_large";
    /// Error (per document): the sync message did not decode or its changes were rejected.
    pub const BAD_SYNC_MESSAGE: &str = "bad_sync_message";
    /// Error (per document): the document is not a replica of the one the receiver holds (a
    /// second skeleton, or another conversation's).
    pub const FOREIGN_DOCUMENT: &str = "foreign_document";
    /// Error (per document): the sender may not sync this document (not this store's).
    pub const NOT_ALLOWED: &str = "not_allowed";
    /// Error (ends the session): a document's sync stopped making progress (the peer sent the
    /// same message again and again), which only happens when frames were lost; both sides
    /// reconnect and start again from their persisted states.
    pub const SYNC_STALLED: &str = "sync_stalled";
    /// Error: something failed on the sender's side (storage); the session may be retried.
    pub const INTERNAL: &str = "internal";
    /// Error (per document): the receiver erased this document (a customer's deletion request or
    /// the region's retention period); it is never synced again. An [`Frame::Erase`] follows so
    /// the sender erases its copy too.
    pub const ERASED: &str = "erased";
}

/// Most documents one [`Frame::Erase`] lists; longer lists are split over several frames.
pub const MAX_ERASE_DOCS: usize = 1024;

/// Which document a frame is about.
///
/// On the wire a string `<kind>:<id>`: `conversation:01J9...` (a [`ConversationId`]) or
/// `settings:<store id>` (the store's settings document, pushed by the hub). New kinds get a new
/// prefix; a peer refuses a key whose kind it does not know ([`ProtocolError::BadDocumentKey`]),
/// so the hub only lists kinds that the edge's `edge_version` supports.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DocumentKey {
    /// One conversation (`conversation:<ulid>`).
    Conversation(ConversationId),
    /// A store's settings (`settings:<store id>`): canned replies, routing settings.
    Settings(String),
}

impl DocumentKey {
    const CONVERSATION: &'static str = "conversation";
    const SETTINGS: &'static str = "settings";

    /// The settings document of `store_id`, checked like a parsed key.
    pub fn settings(store_id: impl Into<String>) -> Result<Self, ProtocolError> {
        let store_id = store_id.into();
        check_store_id(&store_id)?;
        Ok(DocumentKey::Settings(store_id))
    }

    /// The conversation this key names, if it names one.
    pub fn conversation_id(&self) -> Option<ConversationId> {
        match self {
            DocumentKey::Conversation(id) => Some(*id),
            DocumentKey::Settings(_) => None,
        }
    }
}

impl From<ConversationId> for DocumentKey {
    fn from(id: ConversationId) -> Self {
        DocumentKey::Conversation(id)
    }
}

impl fmt::Display for DocumentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocumentKey::Conversation(id) => write!(f, "{}:{id}", Self::CONVERSATION),
            DocumentKey::Settings(store) => write!(f, "{}:{store}", Self::SETTINGS),
        }
    }
}

impl FromStr for DocumentKey {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtocolError::BadDocumentKey(s.chars().take(80).collect());
        let (kind, id) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            Self::CONVERSATION => id
                .parse::<ConversationId>()
                .map(DocumentKey::Conversation)
                .map_err(|_| bad()),
            Self::SETTINGS => {
                check_store_id(id).map_err(|_| bad())?;
                Ok(DocumentKey::Settings(id.to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

fn check_store_id(store_id: &str) -> Result<(), ProtocolError> {
    if store_id.is_empty()
        || store_id.len() > MAX_STORE_ID_BYTES
        || store_id.chars().any(char::is_control)
    {
        return Err(ProtocolError::BadDocumentKey(
            store_id.chars().take(80).collect(),
        ));
    }
    Ok(())
}

impl Serialize for DocumentKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DocumentKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = DocumentKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a document key such as \"conversation:<ulid>\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DocumentKey, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// One Automerge change hash (a document head), 32 bytes; a CBOR byte string on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Head(pub [u8; 32]);

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Head({})", ChangeHash(self.0))
    }
}

impl From<ChangeHash> for Head {
    fn from(hash: ChangeHash) -> Self {
        Head(hash.0)
    }
}

impl From<Head> for ChangeHash {
    fn from(head: Head) -> Self {
        ChangeHash(head.0)
    }
}

/// Heads as they go on the wire (Automerge returns them sorted; the order is kept).
pub fn heads_to_wire(heads: &[ChangeHash]) -> Vec<Head> {
    heads.iter().copied().map(Head::from).collect()
}

/// Heads as stored by the edge and the hub (`conversations.heads`, `documents.heads`): 32
/// bytes each, concatenated.
pub fn heads_to_bytes(heads: &[Head]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

/// The inverse of [`heads_to_bytes`] (a trailing partial hash is ignored).
pub fn heads_from_bytes(bytes: &[u8]) -> Vec<Head> {
    bytes
        .chunks_exact(32)
        .filter_map(|h| <[u8; 32]>::try_from(h).ok().map(Head))
        .collect()
}

impl Serialize for Head {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = crate::wire::serde_bytes::deserialize(deserializer)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Head)
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))
    }
}

/// The store's enrolment credential. A newtype only so that `Debug` (and therefore logs of
/// frames) never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credential(pub String);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// One manifest entry: a document and the sender's heads for it.
pub type ManifestEntry = (DocumentKey, Vec<Head>);

/// Every frame of the protocol. CBOR map with a `"type"` field (`"hello"`, `"sync"`, ...) and the
/// variant's fields; unknown fields are ignored (a newer peer may add optional ones without a
/// version bump), an unknown `type` is a decode error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// Edge → hub, the first frame of a session.
    Hello {
        store_id: String,
        region: String,
        credential: Credential,
        /// The edge's software version (the hub uses it to pick which document kinds and
        /// optional fields the edge understands).
        edge_version: String,
    },
    /// Hub → edge: the store is authenticated and belongs to this region. `hub_id` names the
    /// hub's storage: the edge keeps its sync states per `hub_id`.
    Welcome {
        region: String,
        hub_id: String,
        /// The region's retention period: resolved conversations are erased this long after they
        /// were resolved, at the hub and at every store (0: kept until erased by request). The
        /// store keeps applying the last value it was told while its uplink is down.
        #[serde(default, skip_serializing_if = "is_zero")]
        resolved_retention_secs: u64,
    },
    /// Hub → edge, then the hub closes: see [`codes`] (`unknown_store`, `revoked`,
    /// `wrong_region`, `bad_credential`, `unsupported_version`).
    Refused { code: String, message: String },
    /// Both ways, once per session after the welcome: the sender's documents (those it shares
    /// with this peer) with their heads. Split over several frames when it would not fit one:
    /// every frame but the last has `more: true`.
    Manifest {
        docs: Vec<ManifestEntry>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Both ways: one encoded Automerge sync message for one document. Every `Sync` is answered
    /// by exactly one frame about the same document: a `Sync`, an `Ack` or a per-document
    /// `Error`. The heads inside the message are held durably by its sender.
    Sync {
        doc: DocumentKey,
        #[serde(with = "crate::wire::serde_bytes")]
        message: Vec<u8>,
    },
    /// The answer to a `Sync` when the answering side has nothing more to send: "I hold these
    /// heads durably". Usually hub → edge; the edge sends it too when it answers a hub push.
    Ack { doc: DocumentKey, heads: Vec<Head> },
    /// Both ways: the sender erased these documents and holds only a tombstone of their keys
    /// (no content). The receiver erases its copy, keeps a tombstone so the document is never
    /// synced again, and drops it from this session. The hub answers a store's `Erase` with an
    /// `Erase` of the documents it erased (the store then knows no copy is left at the hub) and
    /// tells every other store holding a copy; a store does not answer the hub's. At most
    /// [`MAX_ERASE_DOCS`] keys per frame.
    Erase { docs: Vec<DocumentKey> },
    /// Liveness probe; answered by `Pong`.
    Ping,
    /// Answer to `Ping`.
    Pong,
    /// Something went wrong. With `doc`, only that document's round is over for this session
    /// (the other documents go on); without, the sender closes the connection after it.
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocumentKey>,
    },
}

impl Frame {
    /// The frame's `type` string (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Refused { .. } => "refused",
            Frame::Manifest { .. } => "manifest",
            Frame::Sync { .. } => "sync",
            Frame::Ack { .. } => "ack",
            Frame::Erase { .. } => "erase",
            Frame::Ping => "ping",
            Frame::Pong => "pong",
            Frame::Error { .. } => "error",
        }
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The protocol's limits, each named with its unit. Both sides apply their own; the defaults fit
/// the edge's own `max_document_bytes` (8 MiB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest binary frame (envelope included) either side sends or accepts. Longer incoming
    /// frames are refused before decoding.
    pub max_frame_bytes: usize,
    /// Documents this side may have with a `Sync` sent and not yet answered; further documents
    /// wait their turn ([`crate::peer::PeerSync::next_ready`]). Answers are never held back.
    pub max_docs_in_flight: usize,
    /// Longest Automerge sync message for one document, sent or accepted. A first sync of a
    /// document carries the whole document in one message, so this bounds the documents that
    /// can be synced at all.
    pub max_document_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 8 * 1024 * 1024 + 64 * 1024,
            max_docs_in_flight: 32,
            max_document_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Checks that the values make sense together (call once at start).
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_docs_in_flight", self.max_docs_in_flight),
            ("max_document_bytes", self.max_document_bytes),
        ] {
            if value == 0 {
                return Err(format!("sync limits: {name} must be positive"));
            }
        }
        if self.max_frame_bytes < self.max_document_bytes.saturating_add(FRAME_OVERHEAD_BYTES) {
            return Err(format!(
                "sync limits: max_frame_bytes must be at least max_document_bytes + {FRAME_OVERHEAD_BYTES}"
            ));
        }
        Ok(())
    }
}

/// Everything that can go wrong with a frame or a document's sync. Never a panic: frames come from
/// another machine.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A binary frame with no bytes at all (not even the version).
    #[error("empty frame")]
    Empty,

    /// The envelope's first byte is not [`PROTOCOL_VERSION`].
    #[error("protocol version {found}, this peer speaks {PROTOCOL_VERSION}")]
    WrongVersion { found: u8 },

    /// Refused before decoding (incoming) or not sent (outgoing).
    #[error("frame of {bytes} bytes exceeds max_frame_bytes ({max_bytes})")]
    FrameTooLarge { bytes: usize, max_bytes: usize },

    /// The bytes after the version are not one CBOR-encoded [`Frame`] (truncated, garbage,
    /// unknown type, missing field, trailing bytes, ...).
    #[error("undecodable frame: {0}")]
    Decode(String),

    /// A frame could not be encoded (not expected with this crate's types).
    #[error("frame could not be encoded: {0}")]
    Encode(String),

    /// A string that is not a [`DocumentKey`] (the start of it is kept for the log).
    #[error("bad document key {0:?}")]
    BadDocumentKey(String),

    /// A sync message for one document longer than `max_document_bytes`.
    #[error("sync message of {bytes} bytes for {doc} exceeds max_document_bytes ({max_bytes})")]
    DocumentTooLarge {
        doc: DocumentKey,
        bytes: usize,
        max_bytes: usize,
    },

    /// The peer sent the same sync message for `doc` several times in a row: Automerge's state on
    /// one side no longer matches the stream (frames were lost), and the two would ping-pong
    /// forever. Ends the session; the reconnect starts from the persisted states.
    #[error("sync of {doc} stalled: the same message arrived {repeats} times in a row")]
    Stalled { doc: DocumentKey, repeats: u32 },

    /// Persisted sync-state bytes that Automerge could not decode.
    #[error("bad sync state for {doc}: {reason}")]
    BadState { doc: DocumentKey, reason: String },

    /// The document refused the sync message (undecodable message, rejected changes, foreign
    /// skeleton, ...). The document and its sync state are unchanged.
    #[error("document {doc}: {source}")]
    Document {
        doc: DocumentKey,
        /// Boxed: Automerge's error is large, and this enum travels in every `Result` here.
        #[source]
        source: Box<SyncError>,
    },
}

impl ProtocolError {
    /// The [`codes`] value to put in the [`Frame::Error`] sent to the peer.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::WrongVersion { .. } => codes::UNSUPPORTED_VERSION,
            ProtocolError::FrameTooLarge { .. } => codes::FRAME_TOO_LARGE,
            ProtocolError::Empty | ProtocolError::Decode(_) | ProtocolError::BadDocumentKey(_) => {
                codes::BAD_FRAME
            }
            ProtocolError::DocumentTooLarge { .. } => codes::DOCUMENT_TOO_LARGE,
            ProtocolError::Stalled { .. } => codes::SYNC_STALLED,
            ProtocolError::Document { source, .. } => match **source {
                SyncError::ForeignDocument(_) => codes::FOREIGN_DOCUMENT,
                _ => codes::BAD_SYNC_MESSAGE,
            },
            ProtocolError::Encode(_) | ProtocolError::BadState { .. } => codes::INTERNAL,
        }
    }

    /// The document the error is about, if it is about one.
    pub fn doc(&self) -> Option<&DocumentKey> {
        match self {
            ProtocolError::DocumentTooLarge { doc, .. }
            | ProtocolError::Stalled { doc, .. }
            | ProtocolError::BadState { doc, .. }
            | ProtocolError::Document { doc, .. } => Some(doc),
            _ => None,
        }
    }

    /// True if the connection must end (send [`Self::to_frame`], close, reconnect later); false
    /// if only the document's round ends and the session goes on.
    pub fn ends_session(&self) -> bool {
        !matches!(
            self,
            ProtocolError::DocumentTooLarge { .. }
                | ProtocolError::BadState { .. }
                | ProtocolError::Document { .. }
        )
    }

    /// The [`Frame::Error`] telling the peer about this error: with `doc` when only that
    /// document's round ends, without when the session ends.
    pub fn to_frame(&self) -> Frame {
        Frame::Error {
            code: self.code().to_owned(),
            message: self.to_string(),
            doc: if self.ends_session() {
                None
            } else {
                self.doc().cloned()
            },
        }
    }
}

/// How two manifests differ. Every key appears in at most one list; each list is sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestDiff {
    /// Listed by the peer only: this side starts from an empty document
    /// ([`crate::Conversation::empty_for_sync`]) and receives it whole.
    pub only_remote: Vec<DocumentKey>,
    /// Listed by this side only: the peer will receive it whole.
    pub only_local: Vec<DocumentKey>,
    /// Listed by both with different heads (as sets).
    pub differing: Vec<DocumentKey>,
}

impl ManifestDiff {
    /// True when both sides hold the same heads for every document: nothing to sync.
    pub fn is_empty(&self) -> bool {
        self.only_remote.is_empty() && self.only_local.is_empty() && self.differing.is_empty()
    }

    /// Every document that needs a sync round, in key order.
    pub fn to_sync(&self) -> Vec<DocumentKey> {
        let mut keys: Vec<DocumentKey> = self
            .only_remote
            .iter()
            .chain(&self.only_local)
            .chain(&self.differing)
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

/// Compares this side's manifest with the peer's: documents whose heads are equal (as sets) need
/// no sync at all. A key listed twice in one manifest counts with its last entry.
pub fn diff_manifests(local: &[ManifestEntry], remote: &[ManifestEntry]) -> ManifestDiff {
    let as_map = |entries: &[ManifestEntry]| -> BTreeMap<DocumentKey, Vec<Head>> {
        entries
            .iter()
            .map(|(key, heads)| {
                let mut heads = heads.clone();
                heads.sort();
                heads.dedup();
                (key.clone(), heads)
            })
            .collect()
    };
    let local = as_map(local);
    let mut remote = as_map(remote);
    let mut diff = ManifestDiff::default();
    for (key, heads) in local {
        match remote.remove(&key) {
            None => diff.only_local.push(key),
            Some(theirs) if theirs != heads => diff.differing.push(key),
            Some(_) => {}
        }
    }
    diff.only_remote = remote.into_keys().collect();
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulid::Ulid;

    fn conv(n: u128) -> DocumentKey {
        DocumentKey::Conversation(ConversationId::from_ulid(Ulid(n)))
    }

    #[test]
    fn document_keys_round_trip_as_strings() {
        let c = conv(7);
        assert_eq!(c.to_string(), "conversation:00000000000000000000000007");
        assert_eq!(c.to_string().parse::<DocumentKey>().expect("parse"), c);
        let s = DocumentKey::settings("store-42").expect("settings");
        assert_eq!(s.to_string(), "settings:store-42");
        assert_eq!(
            "settings:store-42".parse::<DocumentKey>().expect("parse"),
            s
        );
        assert_eq!(
            c.conversation_id(),
            Some(ConversationId::from_ulid(Ulid(7)))
        );
        assert_eq!(s.conversation_id(), None);
        for bad in [
            "",
            "conversation",
            "conversation:",
            "conversation:not-a-ulid",
            "settings:",
            "settings:a\nb",
            "inventory:42",
        ] {
            assert!(
                matches!(
                    bad.parse::<DocumentKey>(),
                    Err(ProtocolError::BadDocumentKey(_))
                ),
                "{bad:?}"
            );
        }
        assert!(DocumentKey::settings("x".repeat(MAX_STORE_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn credentials_are_not_printed() {
        let hello = Frame::Hello {
            store_id: "s".into(),
            region: "r".into(),
            credential: Credential("hunter2".into()),
            edge_version: "0.1.0".into(),
        };
        assert!(!format!("{hello:?}").contains("hunter2"));
    }

    #[test]
    fn default_limits_are_valid_and_validation_catches_mistakes() {
        Limits::default().validate().expect("defaults");
        let l = Limits {
            max_docs_in_flight: 0,
            ..Limits::default()
        };
        assert!(l.validate().is_err());
        let l = Limits {
            max_frame_bytes: Limits::default().max_document_bytes,
            ..Limits::default()
        };
        assert!(l.validate().is_err());
    }

    #[test]
    fn manifest_diff_compares_heads_as_sets() {
        let h = |n: u8| Head([n; 32]);
        let local = vec![
            (conv(1), vec![h(1)]),
            (conv(2), vec![h(2), h(3)]),
            (conv(3), vec![h(4)]),
            (conv(4), vec![]),
        ];
        let remote = vec![
            (conv(2), vec![h(3), h(2)]),
            (conv(3), vec![h(5)]),
            (conv(5), vec![h(6)]),
            (conv(4), vec![]),
        ];
        let diff = diff_manifests(&local, &remote);
        assert_eq!(diff.only_local, vec![conv(1)]);
        assert_eq!(diff.only_remote, vec![conv(5)]);
        assert_eq!(diff.differing, vec![conv(3)]);
        assert_eq!(diff.to_sync(), vec![conv(1), conv(3), conv(5)]);
        assert!(!diff.is_empty());
        assert!(diff_manifests(&local, &local).is_empty());
        assert!(diff_manifests(&[], &[]).is_empty());
    }

    #[test]
    fn errors_map_to_codes_and_document_scope() {
        let e = ProtocolError::Document {
            doc: conv(1),
            source: Box::new(SyncError::ForeignDocument("twice")),
        };
        assert_eq!(e.code(), codes::FOREIGN_DOCUMENT);
        match e.to_frame() {
            Frame::Error { code, doc, .. } => {
                assert_eq!(code, "foreign_document");
                assert_eq!(doc, Some(conv(1)));
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = ProtocolError::WrongVersion { found: 9 };
        assert_eq!(e.code(), codes::UNSUPPORTED_VERSION);
        assert_eq!(e.doc(), None);
    }
}

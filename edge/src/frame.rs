//! The WebSocket frames of docs/protocol.md, as types.
//!
//! Client frames are parsed straight into `ClientFrame`; only when that fails is the text
//! looked at again to tell `bad_json` from `unknown_type` from `bad_frame`, so the common path
//! parses once.

use aisle_sync::{
    Attachment, AttachmentId, ConversationId, CustomerId, EventKind, IntentRecord, MessageId,
    MessageRecord, Participant, StaffId, Status,
};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Code};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Staff,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        role: Role,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        resume_token: Option<String>,
        #[serde(default)]
        display_name: Option<String>,
    },
    Start {
        #[serde(default)]
        request_id: Option<String>,
        #[serde(default)]
        display_name: Option<String>,
    },
    Send {
        conversation_id: ConversationId,
        client_msg_id: String,
        /// Required; may be `""` when an image is attached.
        body: String,
        /// An image uploaded by this sender with `POST /api/attachments`.
        #[serde(default)]
        attachment_id: Option<AttachmentId>,
    },
    Typing {
        conversation_id: ConversationId,
        active: bool,
    },
    Read {
        conversation_id: ConversationId,
        seq: u64,
    },
    Resume {
        conversation_id: ConversationId,
        #[serde(default)]
        after_seq: u64,
    },
    Claim {
        conversation_id: ConversationId,
        #[serde(default)]
        request_id: Option<String>,
    },
    Transfer {
        conversation_id: ConversationId,
        to: StaffId,
        #[serde(default)]
        note: Option<String>,
        #[serde(default)]
        request_id: Option<String>,
    },
    Release {
        conversation_id: ConversationId,
        #[serde(default)]
        request_id: Option<String>,
    },
    Resolve {
        conversation_id: ConversationId,
        #[serde(default)]
        request_id: Option<String>,
    },
    Reopen {
        conversation_id: ConversationId,
        #[serde(default)]
        request_id: Option<String>,
    },
    Snooze {
        conversation_id: ConversationId,
        until_ms: u64,
        #[serde(default)]
        request_id: Option<String>,
    },
    Wake {
        conversation_id: ConversationId,
        #[serde(default)]
        request_id: Option<String>,
    },
    Handoff {
        conversation_id: ConversationId,
    },
    Ping,
}

const CLIENT_TYPES: &[&str] = &[
    "hello", "start", "send", "typing", "read", "resume", "claim", "transfer", "release",
    "resolve", "reopen", "snooze", "wake", "handoff", "ping",
];

/// Ids echoed in an error so the client can match it to what it sent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Echo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// The ids a frame carries, to echo in an error about it.
pub fn echo_of(frame: &ClientFrame) -> Echo {
    use ClientFrame::*;
    let (request_id, conversation_id, client_msg_id) = match frame {
        Hello { .. } | Ping => (None, None, None),
        Start { request_id, .. } => (request_id.clone(), None, None),
        Send {
            conversation_id,
            client_msg_id,
            ..
        } => (None, Some(*conversation_id), Some(client_msg_id.clone())),
        Typing {
            conversation_id, ..
        }
        | Read {
            conversation_id, ..
        }
        | Resume {
            conversation_id, ..
        }
        | Handoff { conversation_id } => (None, Some(*conversation_id), None),
        Claim {
            conversation_id,
            request_id,
        }
        | Transfer {
            conversation_id,
            request_id,
            ..
        }
        | Release {
            conversation_id,
            request_id,
        }
        | Resolve {
            conversation_id,
            request_id,
        }
        | Reopen {
            conversation_id,
            request_id,
        }
        | Snooze {
            conversation_id,
            request_id,
            ..
        }
        | Wake {
            conversation_id,
            request_id,
        } => (request_id.clone(), Some(*conversation_id), None),
    };
    Echo {
        request_id,
        conversation_id: conversation_id.map(|c| c.to_string()),
        client_msg_id,
    }
}

/// Parses a text frame; on failure says which of the three parse errors it is, with the ids
/// the frame carried so the error can echo them.
pub fn parse(text: &str) -> Result<ClientFrame, (ApiError, Echo)> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(frame),
        Err(typed_err) => Err(diagnose(text, &typed_err)),
    }
}

fn diagnose(text: &str, typed_err: &serde_json::Error) -> (ApiError, Echo) {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            return (
                ApiError::new(Code::BadJson, format!("not valid JSON: {err}")),
                Echo::default(),
            );
        }
    };
    let Some(object) = value.as_object() else {
        return (
            ApiError::new(Code::BadJson, "a frame must be a JSON object"),
            Echo::default(),
        );
    };
    let field = |name: &str| object.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let echo = Echo {
        request_id: field("request_id"),
        conversation_id: field("conversation_id"),
        client_msg_id: field("client_msg_id"),
    };
    match object.get("type").and_then(|t| t.as_str()) {
        None => (
            ApiError::new(Code::UnknownType, "the frame has no \"type\""),
            echo,
        ),
        Some(kind) if !CLIENT_TYPES.contains(&kind) => (
            ApiError::new(Code::UnknownType, format!("unknown frame type {kind:?}")),
            echo,
        ),
        Some(kind) => (
            ApiError::new(Code::BadFrame, format!("bad {kind:?} frame: {typed_err}")),
            echo,
        ),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StaffRef {
    pub id: StaffId,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomerRef {
    pub id: CustomerId,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub id: ConversationId,
    pub status: Status,
    pub agent: Option<StaffRef>,
    pub customer: CustomerRef,
    pub last_seq: u64,
    pub created_at_ms: u64,
    pub last_message_at_ms: Option<u64>,
    /// `high` once the customer has complained or asked for a person (from the intents of
    /// their messages): such chats go to people only and first.
    pub priority: Priority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Normal,
    High,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageView {
    pub seq: u64,
    pub id: MessageId,
    pub client_msg_id: String,
    pub sender: Participant,
    pub body: String,
    pub sent_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentView>,
    /// A customer message's intent as the store's model read it (label, confidence, model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentRecord>,
}

impl MessageView {
    /// The view of a document record that got `seq` on this appliance.
    pub fn of(seq: u64, record: MessageRecord) -> Self {
        Self {
            seq,
            id: record.id,
            attachment: record.attachment.as_ref().map(Into::into),
            client_msg_id: record.client_msg_id,
            sender: record.sender,
            body: record.body,
            sent_at_ms: record.sent_at_ms,
            intent: record.intent,
        }
    }
}

/// An attached image as clients see it: the document's record plus where to fetch the bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttachmentView {
    pub id: AttachmentId,
    pub mime: String,
    pub bytes: u64,
    pub url: String,
}

impl From<&Attachment> for AttachmentView {
    fn from(a: &Attachment) -> Self {
        Self {
            id: a.id,
            mime: a.mime.clone(),
            bytes: a.bytes,
            url: format!("/api/attachments/{}", a.id),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateView {
    pub status: Status,
    pub agent: Option<StaffRef>,
    pub previous_agent: Option<StaffRef>,
    pub snoozed_until_ms: Option<u64>,
    pub version: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub id: aisle_sync::EventId,
    #[serde(flatten)]
    pub kind: EventKind,
    pub actor: Participant,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub conversation_id: ConversationId,
    pub client_msg_id: String,
    pub message_id: MessageId,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StaffView {
    pub id: StaffId,
    pub username: String,
    pub name: String,
    pub role: String,
    /// Open chats at once: the account's own, or the store's `routing.capacity_per_staff`
    /// when `capacity_follows_store`.
    pub capacity: u32,
    pub capacity_follows_store: bool,
    /// What routing rules can name (`assign.team`, `assign.skill`).
    pub team: Option<String>,
    pub skills: Vec<String>,
    pub disabled: bool,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        role: Role,
        #[serde(skip_serializing_if = "Option::is_none")]
        customer_id: Option<CustomerId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        staff: Option<&'a StaffView>,
        conversations: &'a [Summary],
    },
    Started {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        conversation_id: ConversationId,
        created: bool,
        last_seq: u64,
    },
    Ack(&'a Ack),
    Message {
        conversation_id: ConversationId,
        #[serde(flatten)]
        message: &'a MessageView,
    },
    Typing {
        conversation_id: ConversationId,
        active: bool,
        from: &'a Participant,
    },
    Read {
        conversation_id: ConversationId,
        seq: u64,
        by: &'a Participant,
    },
    State {
        conversation_id: ConversationId,
        #[serde(flatten)]
        state: &'a StateView,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a EventView>,
    },
    Resumed {
        conversation_id: ConversationId,
        last_seq: u64,
        more: bool,
    },
    Handoff {
        conversation_id: ConversationId,
        code: &'a str,
        url: &'a str,
        expires_at_ms: u64,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    Pong,
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(flatten)]
        echo: &'a Echo,
    },
    Bye {
        code: &'static str,
        message: &'a str,
    },
}

impl ServerFrame<'_> {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

pub fn error_text(err: &ApiError, echo: &Echo) -> String {
    crate::metrics::METRICS.error(err.code);
    ServerFrame::Error {
        code: err.code.as_str(),
        message: &err.message,
        echo,
    }
    .to_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> Code {
        parse(text).unwrap_err().0.code
    }

    #[test]
    fn parse_errors_are_classified() {
        assert_eq!(code_of("{nope"), Code::BadJson);
        assert_eq!(code_of("[1,2]"), Code::BadJson);
        assert_eq!(code_of(r#"{"x":1}"#), Code::UnknownType);
        assert_eq!(code_of(r#"{"type":"dance"}"#), Code::UnknownType);
        assert_eq!(code_of(r#"{"type":"send","body":"hi"}"#), Code::BadFrame);
        assert_eq!(
            code_of(r#"{"type":"send","conversation_id":"nope","client_msg_id":"a","body":"b"}"#),
            Code::BadFrame
        );
    }

    #[test]
    fn bad_frame_echoes_ids() {
        let (_, echo) =
            parse(r#"{"type":"send","conversation_id":"x","client_msg_id":"c1"}"#).unwrap_err();
        assert_eq!(echo.client_msg_id.as_deref(), Some("c1"));
        assert_eq!(echo.conversation_id.as_deref(), Some("x"));
    }

    #[test]
    fn send_parses() {
        let id = ConversationId::new();
        let text = format!(
            r#"{{"type":"send","conversation_id":"{id}","client_msg_id":"c1","body":"你好"}}"#
        );
        match parse(&text).unwrap() {
            ClientFrame::Send {
                conversation_id,
                body,
                ..
            } => {
                assert_eq!(conversation_id, id);
                assert_eq!(body, "你好");
            }
            other => panic!("{other:?}"),
        }
    }
}

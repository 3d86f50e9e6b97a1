//! Read queries, run on reader threads (`Reader::read`).

use aisle_sync::{
    Attachment, ConversationId, CustomerId, IntentRecord, Participant, StaffId, Status,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{ApiError, Code};
use crate::frame::{CustomerRef, MessageView, Priority, StaffRef, StaffView, StateView, Summary};

/// A signed-in staff member.
#[derive(Clone, Debug)]
pub struct StaffSession {
    pub staff: StaffView,
    /// When the session token stops working; open connections are closed then too.
    pub expires_at_ms: u64,
}

impl StaffSession {
    pub fn is_admin(&self) -> bool {
        self.staff.role == "admin"
    }
}

const STAFF_COLUMNS: &str =
    "id, username, name, role, capacity, disabled, capacity_follows_store, team, skills";

/// A staff account's skills as stored (a JSON array of strings).
fn skills_of(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

fn staff_row(row: &Row<'_>) -> rusqlite::Result<StaffView> {
    let id: String = row.get(0)?;
    Ok(StaffView {
        id: id.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        username: row.get(1)?,
        name: row.get(2)?,
        role: row.get(3)?,
        capacity: row.get(4)?,
        disabled: row.get(5)?,
        capacity_follows_store: row.get(6)?,
        team: row.get(7)?,
        skills: skills_of(row.get(8)?),
    })
}

pub fn staff_by_session(
    conn: &Connection,
    token_hash: &[u8],
    now_ms: u64,
) -> Result<StaffSession, ApiError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT s.expires_at_ms, {} FROM sessions s JOIN staff t ON t.id = s.staff_id
             WHERE s.token_hash = ?1",
            STAFF_COLUMNS
                .split(", ")
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?
        .query_row([token_hash], |r| {
            let expires: i64 = r.get(0)?;
            let staff = StaffView {
                id: r.get::<_, String>(1)?.parse().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                username: r.get(2)?,
                name: r.get(3)?,
                role: r.get(4)?,
                capacity: r.get(5)?,
                disabled: r.get(6)?,
                capacity_follows_store: r.get(7)?,
                team: r.get(8)?,
                skills: skills_of(r.get(9)?),
            };
            Ok((expires, staff))
        })
        .optional()?;
    match row {
        None => Err(ApiError::new(Code::Unauthorized, "unknown session token")),
        Some((_, staff)) if staff.disabled => Err(ApiError::new(
            Code::Unauthorized,
            "this account is disabled",
        )),
        Some((expires, _)) if expires as u64 <= now_ms => Err(ApiError::new(
            Code::TokenExpired,
            "session expired; log in again",
        )),
        Some((expires, staff)) => Ok(StaffSession {
            staff,
            expires_at_ms: expires as u64,
        }),
    }
}

/// The account and its password hash, for login.
pub fn staff_for_login(
    conn: &Connection,
    username: &str,
) -> Result<Option<(StaffView, String)>, ApiError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {STAFF_COLUMNS}, password_hash FROM staff WHERE username = ?1"
        ))?
        .query_row([username], |r| Ok((staff_row(r)?, r.get(9)?)))
        .optional()?)
}

pub fn staff_by_id(conn: &Connection, id: StaffId) -> Result<Option<StaffView>, ApiError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {STAFF_COLUMNS} FROM staff WHERE id = ?1"))?
        .query_row([id.to_string()], staff_row)
        .optional()?)
}

pub fn list_staff(conn: &Connection) -> Result<Vec<(StaffView, u32)>, ApiError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {STAFF_COLUMNS},
            (SELECT COUNT(*) FROM conversations c WHERE c.agent_id = staff.id
             AND c.status IN ('assigned', 'transferred', 'reopened'))
         FROM staff ORDER BY name"
    ))?;
    let rows = statement
        .query_map([], |r| Ok((staff_row(r)?, r.get(9)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn count_staff(conn: &Connection) -> Result<u64, ApiError> {
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM staff", [], |r| r.get(0))?;
    Ok(count as u64)
}

/// Which conversations to list.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// `None`: any; `Some(None)`: open (not resolved); `Some(Some(s))`: exactly `s`.
    pub status: Option<Option<Status>>,
    pub agent: Option<StaffId>,
    pub customer: Option<CustomerId>,
    pub before: Option<ConversationId>,
    pub limit: usize,
}

// A holder from another store (a continued conversation) is named from `remote_staff`.
// `urgent` is derived from the messages' intents (a complaint or a request for a person),
// never stored beside them.
const SUMMARY_SELECT: &str = concat!(
    "SELECT c.id, c.status, c.agent_id, coalesce(s.name, rs.name),
        c.customer_id, cu.display_name, c.last_seq, c.created_at_ms, c.last_message_at_ms,
        EXISTS (SELECT 1 FROM messages m WHERE m.conversation = c.rowid
                AND m.intent IN ",
    crate::urgent_intents_sql!(),
    ")
    FROM conversations c
    LEFT JOIN staff s ON s.id = c.agent_id
    LEFT JOIN remote_staff rs ON rs.id = c.agent_id
    LEFT JOIN customers cu ON cu.id = c.customer_id"
);

fn parse<T: std::str::FromStr>(index: usize, text: String) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn summary_row(r: &Row<'_>) -> rusqlite::Result<Summary> {
    let agent: Option<String> = r.get(2)?;
    Ok(Summary {
        id: parse(0, r.get(0)?)?,
        status: parse(1, r.get(1)?)?,
        agent: match agent {
            Some(id) => Some(StaffRef {
                id: parse(2, id)?,
                name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            }),
            None => None,
        },
        customer: CustomerRef {
            id: parse(4, r.get(4)?)?,
            name: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
        },
        last_seq: r.get::<_, i64>(6)? as u64,
        created_at_ms: r.get::<_, i64>(7)? as u64,
        last_message_at_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        priority: if r.get::<_, bool>(9)? {
            Priority::High
        } else {
            Priority::Normal
        },
    })
}

pub fn conversations(conn: &Connection, filter: &Filter) -> Result<Vec<Summary>, ApiError> {
    let mut sql = String::from(SUMMARY_SELECT);
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    match &filter.status {
        None => {}
        Some(None) => clauses.push("c.status != 'resolved'".into()),
        Some(Some(status)) => {
            values.push(status.as_str().into());
            clauses.push(format!("c.status = ?{}", values.len()));
        }
    }
    if let Some(agent) = filter.agent {
        values.push(agent.to_string());
        clauses.push(format!("c.agent_id = ?{}", values.len()));
    }
    if let Some(customer) = filter.customer {
        values.push(customer.to_string());
        clauses.push(format!("c.customer_id = ?{}", values.len()));
    }
    if let Some(before) = filter.before {
        values.push(before.to_string());
        clauses.push(format!(
            "c.rowid < (SELECT rowid FROM conversations WHERE id = ?{})",
            values.len()
        ));
    }
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY c.rowid DESC LIMIT {}", filter.limit));
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(values.iter()), summary_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// What a staff member sees on connecting: their open chats and the queue.
pub fn staff_inbox(
    conn: &Connection,
    staff: StaffId,
    limit: usize,
) -> Result<Vec<Summary>, ApiError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SUMMARY_SELECT}
         WHERE (c.agent_id = ?1 AND c.status != 'resolved')
            OR c.status = 'queued' OR (c.status = 'reopened' AND c.agent_id IS NULL)
         ORDER BY c.rowid DESC LIMIT ?2"
    ))?;
    let rows = statement
        .query_map(params![staff.to_string(), limit as i64], summary_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn summary(conn: &Connection, id: ConversationId) -> Result<Option<Summary>, ApiError> {
    Ok(conn
        .prepare_cached(&format!("{SUMMARY_SELECT} WHERE c.id = ?1"))?
        .query_row([id.to_string()], summary_row)
        .optional()?)
}

/// The session state as indexed in the conversation's row (rewritten from the document's
/// fold in the same transaction as every event).
pub fn state(conn: &Connection, id: ConversationId) -> Result<Option<StateView>, ApiError> {
    let row = conn
        .prepare_cached(
            "SELECT c.status, c.agent_id, coalesce(a.name, ra.name), c.previous_agent_id,
                    coalesce(p.name, rp.name), c.snoozed_until_ms, c.state_version
             FROM conversations c
             LEFT JOIN staff a ON a.id = c.agent_id
             LEFT JOIN remote_staff ra ON ra.id = c.agent_id
             LEFT JOIN staff p ON p.id = c.previous_agent_id
             LEFT JOIN remote_staff rp ON rp.id = c.previous_agent_id
             WHERE c.id = ?1",
        )?
        .query_row([id.to_string()], |r| {
            let staff =
                |id: Option<String>, name: Option<String>| -> rusqlite::Result<Option<StaffRef>> {
                    Ok(match id {
                        Some(id) => Some(StaffRef {
                            id: parse(1, id)?,
                            name: name.unwrap_or_default(),
                        }),
                        None => None,
                    })
                };
            Ok(StateView {
                status: parse(0, r.get(0)?)?,
                agent: staff(r.get(1)?, r.get(2)?)?,
                previous_agent: staff(r.get(3)?, r.get(4)?)?,
                snoozed_until_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                version: r.get(6)?,
            })
        })
        .optional()?;
    Ok(row)
}

pub fn conversation_customer(
    conn: &Connection,
    id: ConversationId,
) -> Result<Option<CustomerId>, ApiError> {
    let row: Option<String> = conn
        .prepare_cached("SELECT customer_id FROM conversations WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()?;
    row.map(|s| s.parse().map_err(ApiError::internal))
        .transpose()
}

/// A page of history: messages with `seq > after_seq`, in order.
pub struct History {
    pub messages: Vec<MessageView>,
    pub last_seq: u64,
    pub more: bool,
    /// Every participant's read cursor (`read_cursors`), so a device that resumes shows what
    /// the other side has read without waiting for its next `read`.
    pub reads: Vec<(Participant, u64)>,
}

pub fn history(
    conn: &Connection,
    id: ConversationId,
    after_seq: u64,
    limit: usize,
) -> Result<Option<History>, ApiError> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT rowid, last_seq FROM conversations WHERE id = ?1")?
        .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((rowid, last_seq)) = row else {
        return Ok(None);
    };
    let mut statement = conn.prepare_cached(
        "SELECT seq, id, client_msg_id, sender_kind, sender_id, body, sent_at_ms, attachment,
                intent, intent_confidence, intent_model
         FROM messages WHERE conversation = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let messages = statement
        .query_map(params![rowid, after_seq as i64, limit as i64], |r| {
            let kind: String = r.get(3)?;
            let sender_id: Option<String> = r.get(4)?;
            let sender = match (kind.as_str(), sender_id) {
                ("customer", Some(id)) => Participant::Customer(parse(4, id)?),
                ("staff", Some(id)) => Participant::Staff(parse(4, id)?),
                ("bot", _) => Participant::Bot,
                _ => Participant::System,
            };
            Ok(MessageView {
                seq: r.get::<_, i64>(0)? as u64,
                id: parse(1, r.get(1)?)?,
                client_msg_id: r.get(2)?,
                sender,
                body: r.get(5)?,
                sent_at_ms: r.get::<_, i64>(6)? as u64,
                attachment: attachment_column(7, r.get(7)?)?.as_ref().map(Into::into),
                intent: match (r.get::<_, Option<String>>(8)?, r.get::<_, Option<f64>>(9)?) {
                    (Some(label), Some(confidence)) => Some(IntentRecord {
                        label,
                        confidence: confidence as f32,
                        model: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
                    }),
                    _ => None,
                },
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // A client that claims to have seen more than exists (a stale or foreign cursor) is
    // answered with the real last seq, so it does not skip messages still to come.
    let last_seen = messages
        .last()
        .map(|m| m.seq)
        .unwrap_or(after_seq.min(last_seq as u64));
    let reads = conn
        .prepare_cached("SELECT participant, seq FROM read_cursors WHERE conversation = ?1")?
        .query_map([rowid], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter_map(|(key, seq)| {
            let (kind, id) = key.split_once(':')?;
            let who = match kind {
                "customer" => Participant::Customer(id.parse().ok()?),
                "staff" => Participant::Staff(id.parse().ok()?),
                _ => return None,
            };
            Some((who, seq.max(0) as u64))
        })
        .collect();
    Ok(Some(History {
        more: last_seen < last_seq as u64,
        last_seq: last_seen,
        messages,
        reads,
    }))
}

/// The conversation's document, loaded from its stored chunks (for inspection; the writer
/// holds the live copy).
pub fn document(
    conn: &Connection,
    id: ConversationId,
) -> Result<Option<aisle_sync::Conversation>, ApiError> {
    let rowid: Option<i64> = conn
        .prepare_cached("SELECT rowid FROM conversations WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()?;
    let Some(rowid) = rowid else { return Ok(None) };
    let mut bytes = Vec::new();
    let mut statement =
        conn.prepare_cached("SELECT bytes FROM doc_chunks WHERE conversation = ?1 ORDER BY n")?;
    let mut rows = statement.query([rowid])?;
    while let Some(row) = rows.next()? {
        let chunk: Vec<u8> = row.get(0)?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(aisle_sync::Conversation::load(&bytes)?))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CannedReply {
    pub id: String,
    pub shortcut: String,
    pub title: String,
    pub body: String,
    /// `store` (the store's admin manages it) or `hq` (set by HQ at the hub; read only here).
    pub source: String,
    /// The intent this reply answers: suggested to staff for it; sent by the bot when the
    /// store's bot policy allows that intent.
    pub intent: Option<String>,
}

pub fn canned_replies(conn: &Connection) -> Result<Vec<CannedReply>, ApiError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, shortcut, title, body, source, intent FROM canned_replies ORDER BY shortcut, title",
    )?;
    let rows = statement
        .query_map([], |r| {
            Ok(CannedReply {
                id: r.get(0)?,
                shortcut: r.get(1)?,
                title: r.get(2)?,
                body: r.get(3)?,
                source: r.get(4)?,
                intent: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The `messages.attachment` column: JSON of [`Attachment`], NULL for text only.
pub fn attachment_column(
    index: usize,
    json: Option<String>,
) -> rusqlite::Result<Option<Attachment>> {
    json.map(|text| {
        serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })
    })
    .transpose()
}

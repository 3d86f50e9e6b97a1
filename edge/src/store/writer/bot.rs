//! The writer's side of the guarded bot ([`crate::bot`]): in the transaction that stores a
//! customer's message, decide whether the bot answers it, write the answer and its audit row.

use aisle_sync::{ConversationId, IntentRecord, MessageId, Participant};
use rusqlite::{Connection, OptionalExtension, params};

use super::{NewMessage, Outbox, State, append_message};
use crate::bot::is_urgent;
use crate::error::ApiError;
use crate::metrics::METRICS;
use crate::now_ms;

/// Answers `message` (just written, read as `intent`) if the store's policy allows it.
pub(super) fn answer(
    db: &Connection,
    state: &mut State,
    conversation: ConversationId,
    message: MessageId,
    intent: &IntentRecord,
    out: &mut Outbox,
) -> Result<(), ApiError> {
    if is_urgent(&intent.label) {
        return Ok(());
    }
    let in_force = state.live.current();
    if !in_force
        .resolved
        .settings
        .bot
        .allows(&intent.label, f64::from(intent.confidence))
    {
        return Ok(());
    }
    // Once the customer has complained or asked for a person, only people answer.
    let escalated: bool = db
        .prepare_cached(concat!(
            "SELECT EXISTS (SELECT 1 FROM messages
               WHERE conversation = (SELECT rowid FROM conversations WHERE id = ?1)
                 AND intent IN ",
            crate::urgent_intents_sql!(),
            ")"
        ))?
        .query_row([conversation.to_string()], |r| r.get(0))?;
    if escalated {
        return Ok(());
    }
    let reply: Option<(String, String)> = db
        .prepare_cached(
            "SELECT id, body FROM canned_replies WHERE intent = ?1 ORDER BY shortcut, title LIMIT 1",
        )?
        .query_row([intent.label.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((reply_id, body)) = reply else {
        return Ok(());
    };
    assert!(
        !is_urgent(&intent.label),
        "the bot must never answer {}",
        intent.label
    );
    let answered = append_message(
        db,
        state,
        conversation,
        NewMessage {
            sender: Participant::Bot,
            client_msg_id: format!("bot#{message}"),
            body,
            attachment: None,
            intent: None,
        },
        None,
        out,
    )?;
    db.prepare_cached(
        "INSERT INTO bot_answers (message_id, conversation, answered_id, intent, confidence, model,
                                  canned_reply, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        answered.id.to_string(),
        conversation.to_string(),
        message.to_string(),
        intent.label,
        intent.confidence as f64,
        intent.model,
        reply_id,
        now_ms() as i64
    ])?;
    crate::audit::append(
        db,
        crate::audit::actor::BOT,
        "bot_answer",
        &conversation.to_string(),
        serde_json::json!({
            "intent": intent.label,
            "message_id": answered.id,
            "answered_message_id": message,
            "canned_reply_id": reply_id,
        }),
    )?;
    METRICS
        .bot_answers
        .with_label_values(&[&intent.label])
        .inc();
    tracing::info!(%conversation, intent = %intent.label, confidence = intent.confidence, "bot answered");
    Ok(())
}

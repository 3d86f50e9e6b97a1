//! The guarded bot: the store admin allows it some intents and a confidence threshold; for a
//! customer message the model reads as one of them, at or above the threshold, the bot sends
//! the store's canned reply for that intent, marked as the bot, and the answer is audited
//! (`bot_answers`: what was read, how surely, by which model, what was sent).
//!
//! Never for `complaint` or `human_agent` — those go to a person at once — and never again in
//! a conversation where the customer has complained or asked for a person: a policy naming
//! them is refused, and the writer checks again before answering.

use aisle_models::Intent;
use rusqlite::{Connection, OptionalExtension};

use crate::error::{ApiError, Code};

/// Intents the bot may never answer, whatever a policy says.
pub const NEVER: [Intent; 2] = [Intent::Complaint, Intent::HumanAgent];

/// [`NEVER`] as an SQL list, for the queries that derive urgency from `messages.intent`
/// (a macro so it can be `concat!`ed into `const` SQL; a test keeps it equal to `NEVER`).
#[macro_export]
macro_rules! urgent_intents_sql {
    () => {
        "('complaint', 'human_agent')"
    };
}

/// Intents that make a conversation urgent: it goes to a person and up the queue.
pub fn is_urgent(label: &str) -> bool {
    NEVER.iter().any(|i| i.as_str() == label)
}

const SETTINGS_KEY: &str = "bot_policy";

/// What the store admin allows the bot: the live settings' `bot` section
/// ([`aisle_settings::BotPolicy`], validated by the same code as every other layer).
pub use aisle_settings::BotPolicy;

/// Refuses unknown labels, `complaint` / `human_agent`, a label named twice, and thresholds
/// outside [`aisle_settings::MIN_BOT_CONFIDENCE`, 1], as 400 `bad_request`.
pub fn validate(policy: &BotPolicy) -> Result<(), ApiError> {
    policy
        .validate()
        .map_err(|err| ApiError::new(Code::BadRequest, err.to_string()))
}

/// The admin's saved policy, if they ever saved one.
fn saved(conn: &Connection) -> Result<Option<BotPolicy>, ApiError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([SETTINGS_KEY], |r| r.get(0))
        .optional()?;
    json.map(|text| serde_json::from_str(&text).map_err(ApiError::internal))
        .transpose()
}

/// Validates and stores the admin's policy.
pub fn save(conn: &Connection, policy: &BotPolicy) -> Result<(), ApiError> {
    validate(policy)?;
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([
        SETTINGS_KEY,
        &serde_json::to_string(policy).map_err(ApiError::internal)?,
    ])?;
    Ok(())
}

/// The store admin's layer of the live settings: the bot policy they saved, if any.
pub fn admin_layer(conn: &Connection) -> Result<serde_json::Value, ApiError> {
    Ok(match saved(conn)? {
        Some(policy) => serde_json::json!({ "bot": policy }),
        None => serde_json::Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `policy` lets the bot answer a message read as `label` with `confidence`.
    fn answers(policy: &BotPolicy, label: &str, confidence: f64) -> bool {
        policy.allows(label, confidence)
    }

    #[test]
    fn the_sql_list_of_urgent_intents_is_never() {
        let listed = NEVER
            .iter()
            .map(|i| format!("'{}'", i.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(urgent_intents_sql!(), format!("({listed})"));
        // And the settings' list, which validates every layer's bot policy.
        let labels: Vec<&str> = NEVER.iter().map(|i| i.as_str()).collect();
        assert_eq!(labels, aisle_settings::BOT_NEVER);
    }

    #[test]
    fn complaints_and_requests_for_a_person_are_never_the_bots() {
        for label in ["complaint", "human_agent"] {
            let policy = BotPolicy {
                intents: vec![label.into()],
                min_confidence: 0.5,
            };
            assert!(validate(&policy).is_err(), "{label} must be refused");
            assert!(!answers(&policy, label, 1.0), "{label} never answered");
        }
    }

    #[test]
    fn the_bot_answers_only_allowed_intents_above_the_threshold() {
        let policy = BotPolicy {
            intents: vec!["store_info".into()],
            min_confidence: 0.8,
        };
        validate(&policy).unwrap();
        assert!(answers(&policy, "store_info", 0.81));
        assert!(!answers(&policy, "store_info", 0.79));
        assert!(!answers(&policy, "payment", 0.99));
        assert!(
            !answers(&BotPolicy::default(), "store_info", 1.0),
            "off by default"
        );
        let bad = BotPolicy {
            intents: vec!["weather".into()],
            min_confidence: 0.9,
        };
        assert!(validate(&bad).is_err());
        let low = BotPolicy {
            intents: vec![],
            min_confidence: 0.2,
        };
        assert!(validate(&low).is_err());
        let twice = BotPolicy {
            intents: vec!["store_info".into(), "store_info".into()],
            min_confidence: 0.9,
        };
        assert!(validate(&twice).is_err());
    }
}

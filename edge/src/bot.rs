//! The guarded bot: the store admin allows it some intents and a confidence threshold; for a
//! customer message the model reads as one of them, at or above the threshold, the bot sends
//! the store's canned reply for that intent, marked as the bot, and the answer is audited
//! (`bot_answers`: what was read, how surely, by which model, what was sent).
//!
//! Never for `complaint` or `human_agent` — those go to a person at once — and never again in
//! a conversation where the customer has complained or asked for a person: a policy naming
//! them is refused, and the writer checks again before answering.

use aisle_models::Intent;
use aisle_sync::IntentRecord;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

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

/// Lowest threshold an admin may set: below it the bot would answer on a coin toss.
pub const MIN_CONFIDENCE_FLOOR: f64 = 0.5;

const SETTINGS_KEY: &str = "bot_policy";

/// What the store admin allows the bot. Off by default (no intents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotPolicy {
    /// Intent labels the bot may answer alone.
    #[serde(default)]
    pub intents: Vec<String>,
    /// The model's probability a message must reach for the bot to answer it.
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f64,
}

fn default_min_confidence() -> f64 {
    0.85
}

impl Default for BotPolicy {
    fn default() -> Self {
        Self {
            intents: Vec::new(),
            min_confidence: default_min_confidence(),
        }
    }
}

impl BotPolicy {
    /// Refuses unknown labels, `complaint` / `human_agent`, a label named twice, and thresholds
    /// outside [`MIN_CONFIDENCE_FLOOR`, 1].
    pub fn validate(&self) -> Result<(), ApiError> {
        for (i, label) in self.intents.iter().enumerate() {
            if self.intents[..i].contains(label) {
                return Err(ApiError::new(
                    Code::BadRequest,
                    format!("intent {label:?} is named twice"),
                ));
            }
            let intent: Intent = label.parse().map_err(|_| {
                ApiError::new(Code::BadRequest, format!("unknown intent {label:?}"))
            })?;
            if NEVER.contains(&intent) {
                return Err(ApiError::new(
                    Code::BadRequest,
                    format!("the bot never answers {label}: those go to a person"),
                ));
            }
        }
        if !(MIN_CONFIDENCE_FLOOR..=1.0).contains(&self.min_confidence) {
            return Err(ApiError::new(
                Code::BadRequest,
                format!("min_confidence must be between {MIN_CONFIDENCE_FLOOR} and 1"),
            ));
        }
        Ok(())
    }

    /// Whether the bot may answer a message read as `intent`.
    pub fn allows(&self, intent: &IntentRecord) -> bool {
        !is_urgent(&intent.label)
            && f64::from(intent.confidence) >= self.min_confidence
            && self.intents.contains(&intent.label)
    }

    /// The admin's saved policy as a settings layer (`{"bot": …}`; null when never saved):
    /// it sits above the box's file and under HQ's layers (crate::settings).
    pub fn saved(conn: &Connection) -> Result<Option<Self>, ApiError> {
        let json: Option<String> = conn
            .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
            .query_row([SETTINGS_KEY], |r| r.get(0))
            .optional()?;
        json.map(|text| serde_json::from_str(&text).map_err(ApiError::internal))
            .transpose()
    }

    pub fn save(&self, conn: &Connection) -> Result<(), ApiError> {
        self.validate()?;
        conn.prepare_cached(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute([
            SETTINGS_KEY,
            &serde_json::to_string(self).map_err(ApiError::internal)?,
        ])?;
        Ok(())
    }
}

/// The store admin's layer of the live settings: the bot policy they saved, if any.
pub fn admin_layer(conn: &Connection) -> Result<serde_json::Value, ApiError> {
    Ok(match BotPolicy::saved(conn)? {
        Some(policy) => serde_json::json!({ "bot": policy }),
        None => serde_json::Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(label: &str, confidence: f32) -> IntentRecord {
        IntentRecord {
            label: label.into(),
            confidence,
            model: "m".into(),
        }
    }

    #[test]
    fn the_sql_list_of_urgent_intents_is_never() {
        let listed = NEVER
            .iter()
            .map(|i| format!("'{}'", i.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(urgent_intents_sql!(), format!("({listed})"));
    }

    #[test]
    fn complaints_and_requests_for_a_person_are_never_the_bots() {
        for label in ["complaint", "human_agent"] {
            let policy = BotPolicy {
                intents: vec![label.into()],
                min_confidence: 0.5,
            };
            assert!(policy.validate().is_err(), "{label} must be refused");
            assert!(!policy.allows(&read(label, 1.0)), "{label} never answered");
        }
    }

    #[test]
    fn the_bot_answers_only_allowed_intents_above_the_threshold() {
        let policy = BotPolicy {
            intents: vec!["store_info".into()],
            min_confidence: 0.8,
        };
        policy.validate().unwrap();
        assert!(policy.allows(&read("store_info", 0.81)));
        assert!(!policy.allows(&read("store_info", 0.79)));
        assert!(!policy.allows(&read("payment", 0.99)));
        assert!(
            !BotPolicy::default().allows(&read("store_info", 1.0)),
            "off by default"
        );
        let bad = BotPolicy {
            intents: vec!["weather".into()],
            min_confidence: 0.9,
        };
        assert!(bad.validate().is_err());
        let low = BotPolicy {
            intents: vec![],
            min_confidence: 0.2,
        };
        assert!(low.validate().is_err());
        let twice = BotPolicy {
            intents: vec!["store_info".into(), "store_info".into()],
            min_confidence: 0.9,
        };
        assert!(twice.validate().is_err());
    }
}

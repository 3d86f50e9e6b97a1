//! The typed model of a store's live settings, its defaults, and its validation.
//!
//! Every struct denies unknown keys, so a misspelt setting in a file or an HQ push is refused
//! with its name rather than silently ignored.

use serde::{Deserialize, Serialize};

use crate::error::SettingsError;
use crate::rules::Rule;

/// The intent labels of the on-device model, in its output order (the contract of
/// `aisle-models`' `Intent`; a test in the edge keeps the two equal). Rules and the bot policy
/// may only name these.
pub const INTENT_LABELS: [&str; 12] = [
    "order_status",
    "return_refund",
    "product_availability",
    "product_info",
    "price_promotion",
    "store_info",
    "payment",
    "membership",
    "complaint",
    "human_agent",
    "greeting",
    "other",
];

/// Intents the bot never answers, whatever a policy says: those go to a person.
pub const BOT_NEVER: [&str; 2] = ["complaint", "human_agent"];

/// Lowest confidence threshold the bot may be given: below it the bot answers on a coin toss.
pub const MIN_BOT_CONFIDENCE: f64 = 0.5;

/// Limits of the model itself (TIGER_STYLE: everything has a bound).
pub mod limits {
    /// Routing rules in a set.
    pub const MAX_RULES: usize = 64;
    /// Values in one condition list (intents, languages, stores) or in the bot's intents.
    pub const MAX_LIST_ITEMS: usize = 32;
    /// Bytes of a name, team, skill, username or store id.
    pub const MAX_NAME_BYTES: usize = 64;
    /// Opening periods of the business hours.
    pub const MAX_OPENING_PERIODS: usize = 21;
    /// Characters of the offline message.
    pub const MAX_OFFLINE_MESSAGE_CHARS: usize = 1000;
    /// Highest capacity of a staff member (open chats).
    pub const MAX_CAPACITY_CHATS: u32 = 1000;
    /// Bytes of one HQ settings layer as JSON.
    pub const MAX_LAYER_BYTES: usize = 64 * 1024;
}

/// A store's live settings: what may change while the appliance runs, without a restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub routing: Routing,
    pub bot: BotPolicy,
    pub hours: BusinessHours,
    pub retention: Retention,
}

/// Who gets a chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// Open chats a staff member holds at once, for accounts that do not set their own.
    pub capacity_per_staff: u32,
    /// Tried in order; the first rule that matches the chat and has someone online with room
    /// chooses among them. Empty: every chat goes by the fallback.
    pub rules: Vec<Rule>,
    /// When no rule chose anyone.
    pub fallback: Fallback,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            capacity_per_staff: 8,
            rules: Vec::new(),
            fallback: Fallback::LeastLoaded,
        }
    }
}

/// What happens to a chat no rule placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The least-loaded online staff member with room (the customer's previous agent first).
    LeastLoaded,
    /// It waits in the queue for someone to claim it.
    Queue,
}

/// What the bot may answer alone. Off by default (no intents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotPolicy {
    /// Intent labels the bot may answer with the store's canned reply for them.
    pub intents: Vec<String>,
    /// The model's probability a message must reach for the bot to answer it.
    pub min_confidence: f64,
}

impl Default for BotPolicy {
    fn default() -> Self {
        Self {
            intents: Vec::new(),
            min_confidence: 0.85,
        }
    }
}

/// When the store answers chats. No periods: always open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusinessHours {
    /// The store's offset from UTC, in minutes (480 for China Standard Time).
    pub utc_offset_minutes: i32,
    /// Opening periods in the store's local time.
    pub open: Vec<OpeningPeriod>,
    /// Sent to a customer who starts a chat while the store is closed (empty: nothing sent).
    pub offline_message: String,
}

/// Days of the week in the order `chrono` and ISO use, Monday first.
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One opening period: `days` from `from` to `to` (local `HH:MM`, `to` after `from`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpeningPeriod {
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
}

/// How long resolved conversations are kept at the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// A resolved conversation is erased this long after it was resolved. 0: kept until
    /// erased on request.
    pub resolved_conversation_secs: u64,
}

impl StoreSettings {
    /// Every check a set must pass before it applies; the first fault is returned with its
    /// path.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let r = &self.routing;
        if r.capacity_per_staff > limits::MAX_CAPACITY_CHATS {
            return Err(SettingsError::invalid(
                "routing.capacity_per_staff",
                format!("at most {}", limits::MAX_CAPACITY_CHATS),
            ));
        }
        if r.rules.len() > limits::MAX_RULES {
            return Err(SettingsError::invalid(
                "routing.rules",
                format!("at most {} rules", limits::MAX_RULES),
            ));
        }
        for (i, rule) in r.rules.iter().enumerate() {
            rule.validate(&format!("routing.rules[{i}]"))?;
            if r.rules[..i].iter().any(|earlier| earlier.name == rule.name) {
                return Err(SettingsError::invalid(
                    format!("routing.rules[{i}].name"),
                    format!("{:?} names two rules", rule.name),
                ));
            }
        }
        self.bot.validate()?;
        self.hours.validate()?;
        Ok(())
    }
}

impl BotPolicy {
    /// Known, distinct intents, never `complaint` or `human_agent`, and a threshold in
    /// [`MIN_BOT_CONFIDENCE`, 1].
    pub fn validate(&self) -> Result<(), SettingsError> {
        check_list("bot.intents", &self.intents)?;
        for label in &self.intents {
            check_intent("bot.intents", label)?;
            if BOT_NEVER.contains(&label.as_str()) {
                return Err(SettingsError::invalid(
                    "bot.intents",
                    format!("the bot never answers {label}: those go to a person"),
                ));
            }
        }
        if !(MIN_BOT_CONFIDENCE..=1.0).contains(&self.min_confidence) {
            return Err(SettingsError::invalid(
                "bot.min_confidence",
                format!("between {MIN_BOT_CONFIDENCE} and 1"),
            ));
        }
        Ok(())
    }

    /// Whether the bot may answer a message read as `label` with `confidence`.
    pub fn allows(&self, label: &str, confidence: f64) -> bool {
        !BOT_NEVER.contains(&label)
            && confidence >= self.min_confidence
            && self.intents.iter().any(|i| i == label)
    }
}

impl BusinessHours {
    fn validate(&self) -> Result<(), SettingsError> {
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err(SettingsError::invalid(
                "hours.utc_offset_minutes",
                "between -840 and 840",
            ));
        }
        if self.open.len() > limits::MAX_OPENING_PERIODS {
            return Err(SettingsError::invalid(
                "hours.open",
                format!("at most {} periods", limits::MAX_OPENING_PERIODS),
            ));
        }
        if self.offline_message.chars().count() > limits::MAX_OFFLINE_MESSAGE_CHARS {
            return Err(SettingsError::invalid(
                "hours.offline_message",
                format!("at most {} characters", limits::MAX_OFFLINE_MESSAGE_CHARS),
            ));
        }
        for (i, period) in self.open.iter().enumerate() {
            let path = format!("hours.open[{i}]");
            if period.days.is_empty() {
                return Err(SettingsError::invalid(
                    format!("{path}.days"),
                    "names no day",
                ));
            }
            for day in &period.days {
                if !WEEKDAYS.contains(&day.as_str()) {
                    return Err(SettingsError::invalid(
                        format!("{path}.days"),
                        format!("{day:?} is not one of {}", WEEKDAYS.join(", ")),
                    ));
                }
            }
            let from = minute_of_day(&period.from)
                .ok_or_else(|| SettingsError::invalid(format!("{path}.from"), "not HH:MM"))?;
            let to = minute_of_day(&period.to)
                .ok_or_else(|| SettingsError::invalid(format!("{path}.to"), "not HH:MM"))?;
            if to <= from {
                return Err(SettingsError::invalid(
                    format!("{path}.to"),
                    "must be after from (a night shift is two periods)",
                ));
            }
        }
        Ok(())
    }

    /// Whether the store is open at `now_ms` (Unix milliseconds). Always open when no period
    /// is set.
    pub fn is_open(&self, now_ms: u64) -> bool {
        if self.open.is_empty() {
            return true;
        }
        let local_secs = now_ms as i64 / 1000 + i64::from(self.utc_offset_minutes) * 60;
        let days = local_secs.div_euclid(86_400);
        let minute = (local_secs.rem_euclid(86_400) / 60) as u32;
        // 1970-01-01 was a Thursday (index 3, Monday first).
        let weekday = WEEKDAYS[(days + 3).rem_euclid(7) as usize];
        self.open.iter().any(|p| {
            p.days.iter().any(|d| d == weekday)
                && minute_of_day(&p.from).is_some_and(|f| minute >= f)
                && minute_of_day(&p.to).is_some_and(|t| minute < t)
        })
    }
}

/// `HH:MM` (00:00 to 24:00) as minutes since midnight.
fn minute_of_day(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let minute = h * 60 + m;
    (m < 60 && minute <= 24 * 60).then_some(minute)
}

pub(crate) fn check_intent(path: &str, label: &str) -> Result<(), SettingsError> {
    if INTENT_LABELS.contains(&label) {
        Ok(())
    } else {
        Err(SettingsError::invalid(
            path,
            format!("unknown intent {label:?}"),
        ))
    }
}

pub(crate) fn check_list(path: &str, items: &[String]) -> Result<(), SettingsError> {
    if items.len() > limits::MAX_LIST_ITEMS {
        return Err(SettingsError::invalid(
            path,
            format!("at most {} items", limits::MAX_LIST_ITEMS),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        check_name(path, item)?;
        if items[..i].contains(item) {
            return Err(SettingsError::invalid(
                path,
                format!("{item:?} is named twice"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_name(path: &str, name: &str) -> Result<(), SettingsError> {
    if name.trim().is_empty() || name.len() > limits::MAX_NAME_BYTES {
        return Err(SettingsError::invalid(
            path,
            format!("names must be 1 to {} bytes", limits::MAX_NAME_BYTES),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        StoreSettings::default().validate().unwrap();
    }

    #[test]
    fn bot_never_answers_complaints() {
        let mut s = StoreSettings::default();
        s.bot.intents = vec!["complaint".into()];
        let err = s.validate().unwrap_err().to_string();
        assert!(err.starts_with("bot.intents"), "{err}");
        s.bot.intents = vec!["store_info".into()];
        s.validate().unwrap();
        assert!(s.bot.allows("store_info", 0.9));
        assert!(!s.bot.allows("store_info", 0.5));
        assert!(!s.bot.allows("payment", 0.99));
    }

    #[test]
    fn opening_hours_in_local_time() {
        let hours = BusinessHours {
            utc_offset_minutes: 480,
            open: vec![OpeningPeriod {
                days: vec!["mon".into(), "tue".into()],
                from: "09:00".into(),
                to: "21:00".into(),
            }],
            offline_message: "closed".into(),
        };
        hours.validate().unwrap();
        // 2026-11-23 is a Monday. 01:00 UTC = 09:00 in UTC+8.
        let monday_0100_utc = 1_795_395_600_000;
        assert!(hours.is_open(monday_0100_utc));
        assert!(!hours.is_open(monday_0100_utc - 60_000));
        // 13:00 UTC = 21:00 local: closed.
        assert!(!hours.is_open(monday_0100_utc + 12 * 3_600_000));
        // Wednesday.
        assert!(!hours.is_open(monday_0100_utc + 2 * 86_400_000));
        assert!(BusinessHours::default().is_open(monday_0100_utc));
    }

    #[test]
    fn bad_hours_are_named() {
        let mut hours = BusinessHours::default();
        hours.open.push(OpeningPeriod {
            days: vec!["monday".into()],
            from: "09:00".into(),
            to: "21:00".into(),
        });
        assert!(hours.validate().unwrap_err().to_string().contains("monday"));
        hours.open[0].days = vec!["mon".into()];
        hours.open[0].to = "08:00".into();
        assert!(hours.validate().unwrap_err().to_string().contains("after"));
        hours.open[0].to = "9pm".into();
        assert!(hours.validate().unwrap_err().to_string().contains("HH:MM"));
    }
}

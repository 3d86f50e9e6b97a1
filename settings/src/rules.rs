//! Routing rules as data: ordered rules that match a chat on what is known of it and choose a
//! team, a skill or a person.
//!
//! The evaluation is pure: the edge's writer gathers the [`Facts`] of a chat and the online
//! staff, asks [`Routing::plan`] for the order in which to try targets, and assigns the chat to
//! the least-loaded member with room of the first target that has one.

use serde::{Deserialize, Serialize};

use crate::error::SettingsError;
use crate::model::{Fallback, Routing, check_intent, check_list, check_name};

/// Languages a rule may name, as [`language_of`] tells them.
pub const LANGUAGES: [&str; 4] = ["zh", "ja", "ko", "en"];

/// One routing rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique in the set; shown in the log and the audit entry of an assignment.
    pub name: String,
    /// Every condition given must hold (an empty `when` matches every chat).
    #[serde(default)]
    pub when: Conditions,
    /// Who may get the chat.
    pub assign: Target,
}

/// What a rule matches on. Lists match when the chat's value is one of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    /// The intent the model read in the customer's first message.
    pub intents: Vec<String>,
    /// The language of the customer's first message ([`LANGUAGES`]).
    pub languages: Vec<String>,
    /// The store the chat is at (for a rule set HQ pushes to the whole region).
    pub stores: Vec<String>,
    /// Within (true) or outside (false) the store's business hours.
    pub within_hours: Option<bool>,
    /// At least this many chats waiting in the store's queue.
    pub min_queue_length: Option<u32>,
    /// The customer had a conversation at this store before (true) or not (false).
    pub returning_customer: Option<bool>,
}

/// Who a rule gives the chat to: exactly one of a person (username), a team or a skill.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Target {
    pub staff: Option<String>,
    pub team: Option<String>,
    pub skill: Option<String>,
}

/// What is known of a chat when it is routed.
#[derive(Clone, Debug, Default)]
pub struct Facts<'a> {
    /// None until the customer's first message was read.
    pub intent: Option<&'a str>,
    pub language: Option<&'a str>,
    pub store_id: &'a str,
    pub within_hours: bool,
    pub queue_length: u32,
    pub returning_customer: bool,
}

/// A staff member as the targets see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaffProfile {
    pub username: String,
    pub team: Option<String>,
    pub skills: Vec<String>,
}

/// One step of a routing plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Try the staff this matching rule admits.
    Rule { name: &'a str, target: &'a Target },
    /// No rule placed the chat: anyone with room.
    Anyone,
}

impl Rule {
    pub(crate) fn validate(&self, path: &str) -> Result<(), SettingsError> {
        check_name(&format!("{path}.name"), &self.name)?;
        let w = &self.when;
        check_list(&format!("{path}.when.intents"), &w.intents)?;
        for label in &w.intents {
            check_intent(&format!("{path}.when.intents"), label)?;
        }
        check_list(&format!("{path}.when.languages"), &w.languages)?;
        if let Some(lang) = w
            .languages
            .iter()
            .find(|l| !LANGUAGES.contains(&l.as_str()))
        {
            return Err(SettingsError::invalid(
                format!("{path}.when.languages"),
                format!("{lang:?} is not one of {}", LANGUAGES.join(", ")),
            ));
        }
        check_list(&format!("{path}.when.stores"), &w.stores)?;
        let t = &self.assign;
        let named = [&t.staff, &t.team, &t.skill];
        if named.iter().filter(|v| v.is_some()).count() != 1 {
            return Err(SettingsError::invalid(
                format!("{path}.assign"),
                "name exactly one of staff, team or skill",
            ));
        }
        for value in named.into_iter().flatten() {
            check_name(&format!("{path}.assign"), value)?;
        }
        Ok(())
    }

    /// Whether every condition of the rule holds for the chat. A condition on the first
    /// message (intent, language) does not hold before there is one.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let w = &self.when;
        let listed = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|l| l == v))
        };
        listed(&w.intents, facts.intent)
            && listed(&w.languages, facts.language)
            && listed(&w.stores, Some(facts.store_id))
            && w.within_hours.is_none_or(|h| h == facts.within_hours)
            && w.min_queue_length.is_none_or(|n| facts.queue_length >= n)
            && w.returning_customer
                .is_none_or(|r| r == facts.returning_customer)
    }

    /// Whether the rule needs the customer's first message to decide.
    fn reads_first_message(&self) -> bool {
        !self.when.intents.is_empty() || !self.when.languages.is_empty()
    }
}

impl Target {
    /// Whether this staff member is one the target names.
    pub fn admits(&self, staff: &StaffProfile) -> bool {
        if let Some(username) = &self.staff {
            return &staff.username == username;
        }
        if let Some(team) = &self.team {
            return staff.team.as_ref() == Some(team);
        }
        if let Some(skill) = &self.skill {
            return staff.skills.contains(skill);
        }
        false
    }
}

impl Routing {
    /// Whether chats wait for the customer's first message before they are routed: some rule
    /// matches on its intent or language, so routing at `start` would decide blind.
    pub fn waits_for_first_message(&self) -> bool {
        self.rules.iter().any(Rule::reads_first_message)
    }

    /// The targets to try for a chat, in order: the matching rules, then anyone (unless the
    /// fallback is the queue).
    pub fn plan<'a>(&'a self, facts: &Facts<'_>) -> Vec<Step<'a>> {
        let mut steps: Vec<Step<'a>> = self
            .rules
            .iter()
            .filter(|r| r.matches(facts))
            .map(|r| Step::Rule {
                name: &r.name,
                target: &r.assign,
            })
            .collect();
        if self.fallback == Fallback::LeastLoaded {
            steps.push(Step::Anyone);
        }
        steps
    }
}

/// The language of a customer's message by its script: `zh` for Chinese characters, `ja` for
/// kana, `ko` for Hangul, `en` for Latin letters; None for text without letters (emoji,
/// digits). Script is what a store can route on without a language model; Latin-script text
/// in another language counts as `en`.
pub fn language_of(text: &str) -> Option<&'static str> {
    let (mut han, mut kana, mut hangul, mut latin) = (0usize, 0usize, 0usize, 0usize);
    for c in text.chars() {
        match c as u32 {
            0x3040..=0x30FF | 0x31F0..=0x31FF => kana += 1,
            0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => hangul += 1,
            0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF => han += 1,
            _ if c.is_ascii_alphabetic() || ('\u{C0}'..='\u{24F}').contains(&c) => latin += 1,
            _ => {}
        }
    }
    if kana > 0 {
        Some("ja")
    } else if hangul > 0 {
        Some("ko")
    } else if han > 0 {
        Some("zh")
    } else if latin > 0 {
        Some("en")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreSettings;

    fn rule(name: &str, when: Conditions, target: Target) -> Rule {
        Rule {
            name: name.into(),
            when,
            assign: target,
        }
    }

    fn skill(s: &str) -> Target {
        Target {
            skill: Some(s.into()),
            ..Target::default()
        }
    }

    #[test]
    fn first_matching_rule_first_then_anyone() {
        let routing = Routing {
            rules: vec![
                rule(
                    "returns",
                    Conditions {
                        intents: vec!["return_refund".into()],
                        ..Conditions::default()
                    },
                    skill("returns"),
                ),
                rule(
                    "chinese",
                    Conditions {
                        languages: vec!["zh".into()],
                        ..Conditions::default()
                    },
                    skill("mandarin"),
                ),
            ],
            ..Routing::default()
        };
        assert!(routing.waits_for_first_message());
        let facts = Facts {
            intent: Some("return_refund"),
            language: Some("zh"),
            store_id: "s1",
            ..Facts::default()
        };
        let plan = routing.plan(&facts);
        assert_eq!(plan.len(), 3);
        assert!(matches!(
            plan[0],
            Step::Rule {
                name: "returns",
                ..
            }
        ));
        assert!(matches!(
            plan[1],
            Step::Rule {
                name: "chinese",
                ..
            }
        ));
        assert_eq!(plan[2], Step::Anyone);
        // Before the first message, neither rule matches.
        let blind = Facts {
            store_id: "s1",
            ..Facts::default()
        };
        assert_eq!(routing.plan(&blind), vec![Step::Anyone]);
        let queue_only = Routing {
            fallback: Fallback::Queue,
            ..routing
        };
        assert!(queue_only.plan(&blind).is_empty());
    }

    #[test]
    fn conditions_on_hours_queue_history_and_store() {
        let r = rule(
            "busy evenings",
            Conditions {
                stores: vec!["s1".into()],
                within_hours: Some(false),
                min_queue_length: Some(3),
                returning_customer: Some(true),
                ..Conditions::default()
            },
            Target {
                team: Some("night".into()),
                ..Target::default()
            },
        );
        let mut facts = Facts {
            store_id: "s1",
            within_hours: false,
            queue_length: 3,
            returning_customer: true,
            ..Facts::default()
        };
        assert!(r.matches(&facts));
        facts.queue_length = 2;
        assert!(!r.matches(&facts));
        facts.queue_length = 5;
        facts.store_id = "s2";
        assert!(!r.matches(&facts));
        facts.store_id = "s1";
        facts.within_hours = true;
        assert!(!r.matches(&facts));
    }

    #[test]
    fn targets_admit_by_name_team_or_skill() {
        let alice = StaffProfile {
            username: "alice".into(),
            team: Some("floor".into()),
            skills: vec!["returns".into()],
        };
        assert!(skill("returns").admits(&alice));
        assert!(!skill("mandarin").admits(&alice));
        let by_name = Target {
            staff: Some("alice".into()),
            ..Target::default()
        };
        assert!(by_name.admits(&alice));
        let team = Target {
            team: Some("floor".into()),
            ..Target::default()
        };
        assert!(team.admits(&alice));
    }

    #[test]
    fn a_bad_rule_is_refused_with_its_path() {
        let mut s = StoreSettings::default();
        s.routing.rules = vec![rule(
            "r",
            Conditions {
                intents: vec!["refunds".into()],
                ..Conditions::default()
            },
            skill("x"),
        )];
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("routing.rules[0].when.intents"), "{err}");
        assert!(err.contains("refunds"), "{err}");
        s.routing.rules = vec![rule("r", Conditions::default(), Target::default())];
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("exactly one"), "{err}");
        s.routing.rules = vec![
            rule("r", Conditions::default(), skill("a")),
            rule("r", Conditions::default(), skill("b")),
        ];
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("rules[1].name"), "{err}");
    }

    #[test]
    fn language_by_script() {
        assert_eq!(language_of("我想退货"), Some("zh"));
        assert_eq!(language_of("返品したい"), Some("ja"));
        assert_eq!(language_of("환불하고 싶어요"), Some("ko"));
        assert_eq!(language_of("I want a refund"), Some("en"));
        assert_eq!(language_of("123 !!"), None);
    }
}

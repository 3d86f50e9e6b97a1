//! `aisle-settings`: a store's live settings — what a retail chain tunes while its stores are
//! open (routing rules and capacity, the bot policy, business hours, retention) — as one typed
//! model with layers and provenance.
//!
//! The edge resolves the layers it holds (its file, its admin's edits, and HQ's layers from the
//! store's settings document) into a [`Resolved`] set and swaps it in whole; the hub validates
//! what HQ pushes with the same code before it is written, so a set a store would refuse is
//! refused at HQ already.
//!
//! ```
//! use aisle_settings::{Source, resolve};
//! let file = serde_json::json!({"routing": {"capacity_per_staff": 4}});
//! let hq = serde_json::json!({"routing": {"capacity_per_staff": 6}});
//! let r = resolve(&[(Source::File, &file), (Source::HqRegion, &hq)]).unwrap();
//! assert_eq!(r.settings.routing.capacity_per_staff, 6);
//! assert_eq!(r.sources["routing.capacity_per_staff"], Source::HqRegion);
//! ```

mod error;
mod layer;
mod model;
mod rules;

pub use error::SettingsError;
pub use layer::{Resolved, Source, live_part, resolve, validate_layer};
pub use model::{
    BOT_NEVER, BotPolicy, BusinessHours, Fallback, INTENT_LABELS, MIN_BOT_CONFIDENCE,
    OpeningPeriod, Retention, Routing, StoreSettings, WEEKDAYS, limits,
};
pub use rules::{Conditions, Facts, LANGUAGES, Rule, StaffProfile, Step, Target, language_of};

//! Why a settings layer or a resolved set was refused.

/// A refused setting: the dotted path of the value at fault and the reason, for the API's
/// error body, the log and the admin page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A value is out of range or contradicts another one.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    /// The layer does not have the model's shape (unknown key, wrong type).
    #[error("{0}")]
    Shape(String),
}

impl SettingsError {
    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        SettingsError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

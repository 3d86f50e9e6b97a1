//! Layered configuration into one typed struct: embedded defaults → TOML file → environment
//! (`<PREFIX>NAME`, `__` for nesting). Flags are the caller's, applied after.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from its defaults, then `file` (which must exist if given), then the environment
/// variables starting with `env_prefix` (the `CONFIG` variable names the file and is skipped).
/// Unknown keys are errors when `T` denies them, so typos fail loudly.
pub fn layered<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let figment = Figment::from(Serialized::defaults(T::default()));
    Ok(file_then_env(figment, file, env_prefix)?
        .extract()
        .map_err(Box::new)?)
}

/// `figment`, then `file` (which must exist if given), then the environment variables
/// starting with `env_prefix` (the `CONFIG` variable names the file and is skipped).
fn file_then_env(
    mut figment: Figment,
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<Figment, ConfigError> {
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::MissingFile(file.to_path_buf()));
        }
        figment = figment.merge(Toml::file(file));
    }
    Ok(figment.merge(Env::prefixed(env_prefix).split("__").ignore(&["config"])))
}

/// What `file` and the environment set, without the defaults: the box's own layer of settings
/// that are also set elsewhere (the edge's live settings), so that a value the box never set
/// is not mistaken for one it chose. A missing file contributes nothing.
pub fn file_and_env(
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    Ok(file_then_env(Figment::new(), file, env_prefix)?
        .extract()
        .map_err(Box::new)?)
}

//! Configuration errors, each naming the field it is about (`servers[0].policy.rules[2].allow`),
//! and `typed`, which reads one part of the configuration into its Rust type and names the
//! field where serde stopped. A leaf module: every part of the configuration (issuers, policies,
//! pins, DPoP, revocation feeds) loads itself with these, and none of them imports `config`.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes `value` as `T`, naming `field` in the error.
pub(crate) fn typed<T: DeserializeOwned>(value: Value, field: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        // Where inside `value` it went wrong (`audiences`, `rules[2].scopes[0]`, or nothing).
        let inner = e.path().to_string();
        let at = match (field.is_empty(), inner.as_str()) {
            (_, ".") => field.to_string(),
            (true, p) => p.to_string(),
            (false, p) if p.starts_with('[') => format!("{field}{p}"),
            (false, p) => format!("{field}.{p}"),
        };
        let message = clean_serde_message(e.inner());
        // Point at the member itself: `servers[0].credential.header: is required`.
        let member = |prefix: &str| {
            let rest = message.strip_prefix(prefix)?;
            let name = rest.strip_prefix('`')?.split('`').next()?;
            Some(
                if at.is_empty() || at == name || at.ends_with(&format!(".{name}")) {
                    if at.is_empty() {
                        name.to_string()
                    } else {
                        at.clone()
                    }
                } else if at.is_empty() {
                    name.to_string()
                } else {
                    format!("{at}.{name}")
                },
            )
        };
        if let Some(path) = member("missing field ") {
            ConfigError::new(path, "is required")
        } else if let Some(path) = member("unknown field ") {
            ConfigError::new(path, format!("is not a known field ({message})"))
        } else {
            ConfigError::new(at, message)
        }
    })
}

/// serde_json appends "at line 1 column 2" positions that mean nothing for a `Value`.
fn clean_serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(at) => text.get(..at).unwrap_or(&text).to_string(),
        None => text,
    }
}

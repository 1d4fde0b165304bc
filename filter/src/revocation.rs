//! Revocation feeds: per issuer, a document listing revoked token ids (`jti`) and, per subject,
//! a "not before" time — every token issued to that subject before it is refused (the leaver,
//! the stolen laptop). Given inline in the configuration (pushed by ECDS) or fetched through an
//! Envoy cluster every few seconds, like a key set: one fetch serves every worker VM (a lease
//! in shared data), the last good copy stays in use while the source is down.
//!
//! The format (JSON Schema: `docs/revocation-feed.schema.json`):
//!
//! ```json
//! { "issuer": "https://login.example.com/",
//!   "revoked_jti": ["5f1c…", "a8e2…"],
//!   "not_before": { "alice@example.com": 1767225600 } }
//! ```
//!
//! Fetching is in [`crate::feeds`].

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{typed, ConfigError};
use crate::url::split_url;

/// Default and largest accepted size of a fetched feed.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
pub const LIMIT_MAX_BYTES: usize = 8 * 1024 * 1024;
/// The least default `max_stale_seconds` (the default is ten refresh intervals, at least this).
pub const DEFAULT_MIN_STALE_SECONDS: u64 = 300;
/// Most entries (revoked ids plus subjects) a feed may list.
pub const MAX_ENTRIES: usize = 200_000;

/// A parsed revocation document.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revocations {
    revoked_jti: HashSet<String>,
    not_before: HashMap<String, i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    revoked_jti: Vec<String>,
    #[serde(default)]
    not_before: HashMap<String, i64>,
}

/// Why a token is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Its `jti` is listed.
    Jti,
    /// It was issued (`iat`) before its subject's "not before" time, or has no `iat` while its
    /// subject has one.
    NotBefore,
}

impl Revoked {
    pub fn describe(self) -> &'static str {
        match self {
            Revoked::Jti => "token revoked (its jti is listed in the revocation feed)",
            Revoked::NotBefore => {
                "token revoked (issued before its subject's not-before time in the revocation feed)"
            }
        }
    }
}

impl Revocations {
    /// Parses a feed. `issuer`, when the document names one, must be this issuer's.
    pub fn from_json(value: Value, issuer: &str) -> Result<Revocations, String> {
        if !value.is_object() {
            return Err("the feed must be a JSON object".into());
        }
        let raw: RawFeed = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if raw.issuer.as_deref().is_some_and(|i| i != issuer) {
            return Err("the feed names another issuer".into());
        }
        if raw.revoked_jti.len().saturating_add(raw.not_before.len()) > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        if raw.revoked_jti.iter().any(String::is_empty) {
            return Err("revoked_jti: empty id".into());
        }
        if raw.not_before.values().any(|t| *t < 0) {
            return Err("not_before: times are Unix seconds, never negative".into());
        }
        Ok(Revocations {
            revoked_jti: raw.revoked_jti.into_iter().collect(),
            not_before: raw.not_before,
        })
    }

    /// Whether the token with these (verified) claims is revoked.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), Revoked> {
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            if self.revoked_jti.contains(jti) {
                return Err(Revoked::Jti);
            }
        }
        if let Some(sub) = claims.get("sub").and_then(Value::as_str) {
            if let Some(not_before) = self.not_before.get(sub) {
                // Fail closed: a token without a usable `iat` cannot show it is newer.
                let issued = claims.get("iat").and_then(Value::as_f64);
                if issued.is_none_or(|iat| iat < *not_before as f64) {
                    return Err(Revoked::NotBefore);
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.revoked_jti.len() + self.not_before.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a feed is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFeed {
    pub cluster: String,
    pub uri: String,
    pub refresh_ms: u64,
    pub timeout_ms: u64,
    pub max_bytes: usize,
    /// A copy fetched longer ago than this is no longer used: requests are refused (503) as
    /// before the first copy, until a fetch succeeds again.
    pub max_stale_ms: u64,
}

/// One issuer's revocation feed and the copy in use.
#[derive(Debug)]
pub struct Feed {
    /// `None`: inline.
    pub remote: Option<RemoteFeed>,
    current: RefCell<Option<Rc<Revocations>>>,
}

/// `issuers[].revocation`: the feed inline, or where to fetch it.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFeedConfig {
    /// The feed document itself.
    #[serde(default)]
    #[schemars(schema_with = "feed_schema")]
    inline: Option<Value>,
    /// Where the feed is fetched.
    #[serde(default)]
    uri: Option<String>,
    /// The Envoy cluster that serves it (default: the issuer's `cluster`).
    #[serde(default)]
    cluster: Option<String>,
    /// How often it is fetched, in seconds (default 30).
    #[serde(default)]
    refresh_seconds: Option<u64>,
    /// Fetch timeout, in milliseconds (default 5000).
    #[serde(default)]
    fetch_timeout_ms: Option<u64>,
    /// Largest feed accepted, in bytes (default 1048576, at most 8388608).
    #[serde(default)]
    max_bytes: Option<usize>,
    /// How old, in seconds, the copy in use may grow while fetches fail before requests are
    /// refused (503) rather than checked against it (default: ten refresh intervals, at least
    /// 300; at least twice `refresh_seconds`).
    #[serde(default)]
    max_stale_seconds: Option<u64>,
}

fn feed_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "$ref": "../docs/revocation-feed.schema.json" })
}

impl Feed {
    /// `issuers[i].revocation`: `{ "inline": {…} }` or `{ "uri", "cluster", … }`.
    /// `default_cluster` is the issuer's own `cluster`, used when none is given.
    pub fn from_config(
        value: Value,
        field: &str,
        issuer: &str,
        default_cluster: Option<&str>,
    ) -> Result<Feed, ConfigError> {
        let raw: RawFeedConfig = typed(value, field)?;
        let at = |name: &str| format!("{field}.{name}");
        match (raw.inline, raw.uri) {
            (Some(doc), None) => {
                if raw.cluster.is_some()
                    || raw.refresh_seconds.is_some()
                    || raw.max_stale_seconds.is_some()
                {
                    return Err(ConfigError::new(
                        at("inline"),
                        "an inline feed takes no cluster, refresh_seconds or max_stale_seconds",
                    ));
                }
                let list = Revocations::from_json(doc, issuer)
                    .map_err(|m| ConfigError::new(at("inline"), m))?;
                Ok(Feed {
                    remote: None,
                    current: RefCell::new(Some(Rc::new(list))),
                })
            }
            (None, Some(uri)) => {
                split_url(&uri).map_err(|m| ConfigError::new(at("uri"), m))?;
                let cluster = raw
                    .cluster
                    .or(default_cluster.map(str::to_string))
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        ConfigError::new(
                            at("cluster"),
                            "is required with uri: the Envoy cluster that serves the feed",
                        )
                    })?;
                let refresh = raw.refresh_seconds.unwrap_or(30);
                if refresh == 0 {
                    return Err(ConfigError::new(at("refresh_seconds"), "must be positive"));
                }
                let max_stale = raw
                    .max_stale_seconds
                    .unwrap_or(refresh.saturating_mul(10).max(DEFAULT_MIN_STALE_SECONDS));
                if max_stale < refresh.saturating_mul(2) {
                    return Err(ConfigError::new(
                        at("max_stale_seconds"),
                        "must be at least twice refresh_seconds",
                    ));
                }
                let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
                if max_bytes == 0 || max_bytes > LIMIT_MAX_BYTES {
                    return Err(ConfigError::new(
                        at("max_bytes"),
                        format!("must be between 1 and {LIMIT_MAX_BYTES}"),
                    ));
                }
                Ok(Feed {
                    remote: Some(RemoteFeed {
                        cluster,
                        uri,
                        refresh_ms: refresh.saturating_mul(1000),
                        timeout_ms: raw.fetch_timeout_ms.unwrap_or(5000).max(1),
                        max_bytes,
                        max_stale_ms: max_stale.saturating_mul(1000),
                    }),
                    current: RefCell::new(None),
                })
            }
            (Some(_), Some(_)) => Err(ConfigError::new(
                field,
                "give either \"inline\" or \"uri\", not both",
            )),
            (None, None) => Err(ConfigError::new(
                field,
                "give \"inline\" (the feed document) or \"uri\" (where to fetch it)",
            )),
        }
    }

    /// The list in use; `None` until a fetched feed arrived the first time.
    pub fn current(&self) -> Option<Rc<Revocations>> {
        self.current.borrow().clone()
    }

    pub fn install(&self, list: Revocations) {
        *self.current.borrow_mut() = Some(Rc::new(list));
    }

    /// Stops using the copy in use (it grew older than `max_stale_seconds`): requests are
    /// refused as before the first copy until a fetch succeeds.
    pub fn uninstall(&self) {
        *self.current.borrow_mut() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn jti_and_not_before() {
        let list = Revocations::from_json(
            json!({"revoked_jti": ["j1"], "not_before": {"alice": 1000}}),
            "https://idp",
        )
        .unwrap();
        assert_eq!(
            list.check(&claims(json!({"jti": "j1", "sub": "bob", "iat": 5}))),
            Err(Revoked::Jti)
        );
        assert_eq!(
            list.check(&claims(json!({"jti": "j2", "sub": "bob", "iat": 5}))),
            Ok(())
        );
        assert_eq!(
            list.check(&claims(json!({"sub": "alice", "iat": 999}))),
            Err(Revoked::NotBefore)
        );
        assert_eq!(
            list.check(&claims(json!({"sub": "alice", "iat": 1000}))),
            Ok(())
        );
        // No iat: cannot show it is newer.
        assert_eq!(
            list.check(&claims(json!({"sub": "alice"}))),
            Err(Revoked::NotBefore)
        );
        assert_eq!(
            list.check(&claims(json!({"sub": "alice", "iat": "1500"}))),
            Err(Revoked::NotBefore)
        );
    }

    #[test]
    fn bad_feeds_are_refused() {
        for (doc, why) in [
            (json!({"revoked": []}), "unknown field"),
            (json!({"issuer": "https://other"}), "another issuer"),
            (json!({"not_before": {"a": -1}}), "negative"),
            (json!({"not_before": {"a": "soon"}}), "invalid type"),
            (json!({"revoked_jti": [""]}), "empty id"),
            (json!([]), "JSON object"),
        ] {
            let err = Revocations::from_json(doc, "https://idp").unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn config_fields_are_checked() {
        let err = |v: Value| {
            Feed::from_config(v, "issuers[0].revocation", "https://idp", None)
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({})).starts_with("issuers[0].revocation: give"));
        assert!(err(json!({"uri": "https://idp/revoked"}))
            .starts_with("issuers[0].revocation.cluster: is required"));
        assert!(
            err(json!({"uri": "https://idp/r", "cluster": "c", "refresh_seconds": 0}))
                .starts_with("issuers[0].revocation.refresh_seconds")
        );
        assert!(
            err(json!({"uri": "https://idp/r", "cluster": "c", "max_bytes": 0}))
                .starts_with("issuers[0].revocation.max_bytes")
        );
        assert!(err(json!({"inline": {"revoked_jti": [1]}}))
            .starts_with("issuers[0].revocation.inline"));
        let feed = Feed::from_config(
            json!({"uri": "https://idp/r"}),
            "f",
            "https://idp",
            Some("idp"),
        )
        .unwrap();
        assert_eq!(feed.remote.unwrap().cluster, "idp");
        let inline = Feed::from_config(
            json!({"inline": {"revoked_jti": ["x"]}}),
            "f",
            "https://idp",
            None,
        )
        .unwrap();
        assert_eq!(inline.current().unwrap().len(), 1);
    }
}

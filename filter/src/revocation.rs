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
//! Coordination between VMs goes through Envoy shared data, as for keys ([`crate::jwks`]):
//! `mcp-guard:revocation:<issuer>` holds the last good document and when it was fetched;
//! `mcp-guard:revocation-lease:<issuer>` says who fetches.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{typed, ConfigError};
use crate::host::{self, Host};
use crate::jwks::{FetchOutcome, Report};
use crate::jwt::Authenticator;
use crate::oauth::split_url;

/// Default and largest accepted size of a fetched feed.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
pub const LIMIT_MAX_BYTES: usize = 8 * 1024 * 1024;
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

    pub fn from_bytes(bytes: &[u8], issuer: &str) -> Result<Revocations, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        Revocations::from_json(value, issuer)
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
}

/// One issuer's revocation feed and the copy in use.
#[derive(Debug)]
pub struct Feed {
    /// `None`: inline.
    pub remote: Option<RemoteFeed>,
    current: RefCell<Option<Rc<Revocations>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeedConfig {
    #[serde(default)]
    inline: Option<Value>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    refresh_seconds: Option<u64>,
    #[serde(default)]
    fetch_timeout_ms: Option<u64>,
    #[serde(default)]
    max_bytes: Option<usize>,
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
                if raw.cluster.is_some() || raw.refresh_seconds.is_some() {
                    return Err(ConfigError::new(
                        at("inline"),
                        "an inline feed takes no cluster or refresh_seconds",
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
}

// ---- fetching ---------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Published {
    fetched_ms: u64,
    feed: Value,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct Lease {
    until_ms: u64,
    attempt_ms: u64,
    failures: u32,
}

#[derive(Default, Clone)]
struct Local {
    adopted: Option<u32>,
    fetched_ms: u64,
}

/// Drives the fetched revocation feeds of one configuration, in one VM. Its [`Report`]s name
/// issuers by index, as the key manager's do, so requests waiting for a feed are released the
/// same way.
pub struct FeedManager {
    local: Vec<Local>,
    /// Fetches this VM started: call token → (issuer, when the attempt began).
    inflight: HashMap<u32, (usize, u64)>,
}

fn doc_key(issuer: &str) -> String {
    format!("mcp-guard:revocation:{issuer}")
}

fn lease_key(issuer: &str) -> String {
    format!("mcp-guard:revocation-lease:{issuer}")
}

fn backoff_ms(failures: u32) -> u64 {
    if failures == 0 {
        return 0;
    }
    500u64.saturating_mul(1u64 << failures.min(6)).min(30_000)
}

impl FeedManager {
    pub fn new(auth: &Authenticator) -> Self {
        FeedManager {
            local: vec![Local::default(); auth.issuers().len()],
            inflight: HashMap::new(),
        }
    }

    /// Whether any issuer has a feed to fetch.
    pub fn has_remote(auth: &Authenticator) -> bool {
        auth.issuers()
            .iter()
            .any(|i| i.revocation.as_ref().is_some_and(|f| f.remote.is_some()))
    }

    /// Whether `token` is one of this manager's calls.
    pub fn owns(&self, token: u32) -> bool {
        self.inflight.contains_key(&token)
    }

    /// Adopts feeds other VMs published and starts the fetches that are due.
    pub fn tick(&mut self, auth: &Authenticator, host: &mut dyn Host) -> Report {
        let mut report = Report::default();
        let now = host.now_millis();
        for (index, issuer) in auth.issuers().iter().enumerate() {
            let Some(feed) = issuer.revocation.as_ref() else {
                continue;
            };
            let Some(remote) = feed.remote.as_ref() else {
                continue;
            };
            if self.adopt(index, &issuer.issuer, feed, host) {
                report.changed.push(index);
            }
            if self.inflight.values().any(|(i, _)| *i == index) {
                continue;
            }
            let (lease, cas) = read_lease(&issuer.issuer, host);
            if lease.until_ms > now {
                continue;
            }
            let local = self.local.get(index).cloned().unwrap_or_default();
            let since_attempt = now.saturating_sub(lease.attempt_ms);
            let due = if feed.current().is_none() {
                since_attempt >= backoff_ms(lease.failures).max(500)
            } else {
                now.saturating_sub(local.fetched_ms) >= remote.refresh_ms
                    && since_attempt >= backoff_ms(lease.failures).max(remote.refresh_ms / 2)
            };
            if !due {
                continue;
            }
            let taken = Lease {
                until_ms: now.saturating_add(remote.timeout_ms).saturating_add(1000),
                attempt_ms: now,
                failures: lease.failures,
            };
            if !write_lease(&issuer.issuer, &taken, cas, host) {
                continue; // another VM took it first
            }
            let started = split_url(&remote.uri).ok().and_then(|(authority, path)| {
                host::http_get(host, &remote.cluster, authority, path, remote.timeout_ms)
            });
            match started {
                Some(token) => {
                    self.inflight.insert(token, (index, now));
                }
                None => {
                    log::warn!(
                        "mcp-guard: could not dispatch a revocation feed fetch through cluster {:?} (is it defined?)",
                        remote.cluster
                    );
                    finish(
                        index,
                        &issuer.issuer,
                        FetchOutcome::Unreachable,
                        now,
                        host,
                        &mut report,
                    );
                }
            }
        }
        report
    }

    /// Handles the answer to a fetch this VM started. `None` status: no answer at all; `body`
    /// is `None` when it was larger than the feed's `max_bytes`.
    pub fn on_response(
        &mut self,
        auth: &Authenticator,
        host: &mut dyn Host,
        token: u32,
        status: Option<u32>,
        body: Option<&[u8]>,
    ) -> Report {
        let mut report = Report::default();
        let Some((index, attempt)) = self.inflight.remove(&token) else {
            return report;
        };
        let Some(issuer) = auth.issuers().get(index) else {
            return report;
        };
        let Some(feed) = issuer.revocation.as_ref() else {
            return report;
        };
        let max_bytes = feed.remote.as_ref().map_or(0, |r| r.max_bytes);
        let outcome = match (status, body) {
            (None, _) | (Some(0), _) => FetchOutcome::Unreachable,
            (Some(200), Some(body)) if body.len() <= max_bytes => {
                match self.accept(index, &issuer.issuer, feed, body, host) {
                    Ok(()) => {
                        report.changed.push(index);
                        FetchOutcome::Ok
                    }
                    Err(why) => {
                        log::warn!(
                            "mcp-guard: revocation feed for issuer {:?}: {why}",
                            issuer.issuer
                        );
                        FetchOutcome::Invalid
                    }
                }
            }
            (Some(200), _) => {
                log::warn!(
                    "mcp-guard: revocation feed for issuer {:?} is larger than max_bytes ({max_bytes})",
                    issuer.issuer
                );
                FetchOutcome::Invalid
            }
            (Some(_), _) => FetchOutcome::HttpError,
        };
        if outcome != FetchOutcome::Ok {
            log::warn!(
                "mcp-guard: fetching the revocation feed for issuer {:?} failed ({}, HTTP status {:?}); the last good copy stays in use",
                issuer.issuer,
                outcome.as_str(),
                status
            );
        }
        finish(index, &issuer.issuer, outcome, attempt, host, &mut report);
        report
    }

    fn accept(
        &mut self,
        index: usize,
        issuer: &str,
        feed: &Feed,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Result<(), String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let list = Revocations::from_json(value.clone(), issuer)?;
        let now = host.now_millis();
        let published = Published {
            fetched_ms: now,
            feed: value,
        };
        let bytes = serde_json::to_vec(&published).map_err(|e| e.to_string())?;
        host.shared_set_cas(&doc_key(issuer), &bytes, None);
        feed.install(list);
        let adopted = host.shared_get_cas(&doc_key(issuer)).and_then(|(_, c)| c);
        if let Some(local) = self.local.get_mut(index) {
            *local = Local {
                adopted,
                fetched_ms: now,
            };
        }
        Ok(())
    }

    fn adopt(&mut self, index: usize, issuer: &str, feed: &Feed, host: &mut dyn Host) -> bool {
        let Some((bytes, cas)) = host.shared_get_cas(&doc_key(issuer)) else {
            return false;
        };
        let Some(local) = self.local.get_mut(index) else {
            return false;
        };
        if cas.is_some() && cas == local.adopted {
            return false;
        }
        let Ok(published) = serde_json::from_slice::<Published>(&bytes) else {
            return false;
        };
        let Ok(list) = Revocations::from_json(published.feed, issuer) else {
            return false;
        };
        feed.install(list);
        *local = Local {
            adopted: cas,
            fetched_ms: published.fetched_ms,
        };
        true
    }
}

fn finish(
    index: usize,
    issuer: &str,
    outcome: FetchOutcome,
    attempt: u64,
    host: &mut dyn Host,
    report: &mut Report,
) {
    report.settled.push(index);
    report.outcomes.push((index, outcome));
    let (lease, cas) = read_lease(issuer, host);
    if lease.attempt_ms != attempt {
        return;
    }
    let done = Lease {
        until_ms: 0,
        attempt_ms: lease.attempt_ms,
        failures: if outcome == FetchOutcome::Ok {
            0
        } else {
            lease.failures.saturating_add(1)
        },
    };
    if !write_lease(issuer, &done, cas, host) {
        write_lease(issuer, &done, None, host);
    }
}

fn read_lease(issuer: &str, host: &mut dyn Host) -> (Lease, Option<u32>) {
    let key = lease_key(issuer);
    if host.shared_get_cas(&key).is_none() {
        write_lease(issuer, &Lease::default(), None, host);
    }
    match host.shared_get_cas(&key) {
        Some((bytes, cas)) => (serde_json::from_slice(&bytes).unwrap_or_default(), cas),
        None => (Lease::default(), None),
    }
}

fn write_lease(issuer: &str, lease: &Lease, cas: Option<u32>, host: &mut dyn Host) -> bool {
    match serde_json::to_vec(lease) {
        Ok(bytes) => host.shared_set_cas(&lease_key(issuer), &bytes, cas),
        Err(_) => false,
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

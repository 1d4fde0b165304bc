//! Fetching revocation feeds ([`crate::revocation`]) through an Envoy cluster: one fetch serves
//! every worker VM (a lease in shared data), the last good copy stays in use while the source
//! is down. Coordination goes through Envoy shared data, as for keys ([`crate::jwks`]):
//! `mcp-guard:revocation:<issuer>:<source>` holds the last good document and when it was fetched;
//! `mcp-guard:revocation-lease:<issuer>:<source>` says who fetches (`<source>`: a tag of the
//! cluster and URL, [`crate::lease::source_tag`]).
//!
//! Apart from [`crate::revocation`] (the documents, and the checks on a token), so that the
//! issuers ([`crate::jwt`]) can hold a feed without importing what drives them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::host::{self, Host};
use crate::jwks::{FetchOutcome, Report};
use crate::jwt::Authenticator;
use crate::lease;
use crate::revocation::{Feed, Revocations};
use crate::url::split_url;

#[derive(Serialize, Deserialize)]
struct Published {
    fetched_ms: u64,
    feed: Value,
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

/// The issuer and where its feed comes from ([`crate::lease::source_tag`]).
fn scope(issuer: &str, feed: &Feed) -> String {
    let tag = feed.remote.as_ref().map_or(String::new(), |r| {
        crate::lease::source_tag(&[&r.cluster, &r.uri])
    });
    format!("{issuer}:{tag}")
}

fn doc_key(scope: &str) -> String {
    format!("mcp-guard:revocation:{scope}")
}

fn lease_key(scope: &str) -> String {
    format!("mcp-guard:revocation-lease:{scope}")
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
            // A copy older than `max_stale_seconds` (every fetch since failed, through this
            // Envoy) is not used: another replica that can fetch refuses what the source lists
            // now, so this one must not let it through. Refused (503) as before the first copy.
            let fetched_ms = self.local.get(index).map_or(0, |l| l.fetched_ms);
            if feed.current().is_some() && now.saturating_sub(fetched_ms) > remote.max_stale_ms {
                log::warn!(
                    "mcp-guard: the revocation feed for issuer {:?} could not be fetched for {} s (max_stale_seconds); requests are refused until a fetch succeeds",
                    issuer.issuer,
                    now.saturating_sub(fetched_ms) / 1000
                );
                feed.uninstall();
            }
            if self.inflight.values().any(|(i, _)| *i == index) {
                continue;
            }
            let (lease, cas) = lease::read(&lease_key(&scope(&issuer.issuer, feed)), host);
            if lease.until_ms > now {
                continue;
            }
            let local = self.local.get(index).cloned().unwrap_or_default();
            let since_attempt = now.saturating_sub(lease.attempt_ms);
            let due = if feed.current().is_none() {
                since_attempt >= lease.backoff_ms().max(500)
            } else {
                now.saturating_sub(local.fetched_ms) >= remote.refresh_ms
                    && since_attempt >= lease.backoff_ms().max(remote.refresh_ms / 2)
            };
            if !due {
                continue;
            }
            let taken = lease.taken(now, remote.timeout_ms);
            if !lease::write(&lease_key(&scope(&issuer.issuer, feed)), &taken, cas, host) {
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
                        &scope(&issuer.issuer, feed),
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
        let scope = scope(&issuer.issuer, feed);
        finish(index, &scope, outcome, attempt, host, &mut report);
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
        host.shared_set_cas(&doc_key(&scope(issuer, feed)), &bytes, None);
        feed.install(list);
        let adopted = host
            .shared_get_cas(&doc_key(&scope(issuer, feed)))
            .and_then(|(_, c)| c);
        if let Some(local) = self.local.get_mut(index) {
            *local = Local {
                adopted,
                fetched_ms: now,
            };
        }
        Ok(())
    }

    fn adopt(&mut self, index: usize, issuer: &str, feed: &Feed, host: &mut dyn Host) -> bool {
        let Some((bytes, cas)) = host.shared_get_cas(&doc_key(&scope(issuer, feed))) else {
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
    scope: &str,
    outcome: FetchOutcome,
    attempt: u64,
    host: &mut dyn Host,
    report: &mut Report,
) {
    report.settled.push(index);
    report.outcomes.push((index, outcome));
    lease::finish(
        &lease_key(scope),
        attempt,
        outcome == FetchOutcome::Ok,
        host,
    );
}

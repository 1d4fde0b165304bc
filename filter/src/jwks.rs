//! Key lifecycle for issuers whose JWKS is fetched: start-up fetch, periodic refresh,
//! rate-limited re-fetch on unknown `kid`, last-good keys on failure — and one fetch for all
//! worker VMs.
//!
//! Coordination between VMs goes through Envoy shared data (process-wide):
//! - `mcp-guard:jwks:<issuer>:<source>` holds the last good JWKS and when it was fetched. Every VM
//!   adopts a new version on its next tick.
//! - `mcp-guard:lease:<issuer>:<source>` says who fetches: a VM takes the lease with compare-and-swap
//!   before it dispatches, so one fetch serves every VM. The lease also keeps the time of the
//!   last attempt and the failure count, from which every VM computes the back-off and the
//!   unknown-`kid` re-fetch interval.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::host::{self, Host};
use crate::jwt::{Authenticator, Issuer, KeySet, KeySource};
use crate::lease::{self, Lease};
use crate::url::split_url;

/// Largest JWKS or discovery document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// The outcome of one fetch, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Ok,
    /// The IdP answered, but not 200.
    HttpError,
    /// The document was not a usable JWKS / discovery document.
    Invalid,
    /// No answer (timeout, connection failure) or the call could not be dispatched.
    Unreachable,
}

impl FetchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchOutcome::Ok => "ok",
            FetchOutcome::HttpError => "http_error",
            FetchOutcome::Invalid => "invalid",
            FetchOutcome::Unreachable => "unreachable",
        }
    }
}

/// What happened during a tick or a response, for the adapter to act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Issuers whose keys this VM now uses changed.
    pub changed: Vec<usize>,
    /// Issuers for which a fetch finished (well or not) — waiting requests re-check.
    pub settled: Vec<usize>,
    pub outcomes: Vec<(usize, FetchOutcome)>,
}

#[derive(Serialize, Deserialize)]
struct Published {
    fetched_ms: u64,
    jwks: Value,
    #[serde(default)]
    jwks_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Discovery,
    Jwks,
}

#[derive(Default, Clone)]
struct Local {
    /// CAS of the published document this VM adopted.
    adopted: Option<u32>,
    fetched_ms: u64,
    jwks_uri: Option<String>,
}

/// Drives key fetching for the remote issuers of one configuration, in one VM.
pub struct KeyManager {
    local: Vec<Local>,
    /// Fetches this VM started: call token → (issuer, stage, when the attempt began).
    inflight: HashMap<u32, (usize, Stage, u64)>,
}

/// The issuer and where its keys come from ([`crate::lease::source_tag`]).
fn scope(issuer: &Issuer) -> String {
    let tag = match &issuer.source {
        KeySource::Remote(r) => lease::source_tag(&[
            &r.cluster,
            r.jwks_uri.as_deref().unwrap_or(""),
            r.discovery_uri.as_deref().unwrap_or(""),
        ]),
        KeySource::Inline => String::new(),
    };
    format!("{}:{tag}", issuer.issuer)
}

fn doc_key(issuer: &Issuer) -> String {
    format!("mcp-guard:jwks:{}", scope(issuer))
}

fn lease_key(issuer: &Issuer) -> String {
    format!("mcp-guard:lease:{}", scope(issuer))
}

impl KeyManager {
    pub fn new(auth: &Authenticator) -> Self {
        KeyManager {
            local: vec![Local::default(); auth.issuers().len()],
            inflight: HashMap::new(),
        }
    }

    /// Whether any issuer needs fetching at all (else the adapter need not tick).
    pub fn has_remote(auth: &Authenticator) -> bool {
        auth.issuers().iter().any(|i| i.remote().is_some())
    }

    /// Adopts keys other VMs published and starts the fetches that are due.
    pub fn tick(&mut self, auth: &Authenticator, host: &mut dyn Host) -> Report {
        let mut report = Report::default();
        let now = host.now_millis();
        for (index, issuer) in auth.issuers().iter().enumerate() {
            let Some(remote) = issuer.remote() else {
                continue;
            };
            if self.adopt(index, issuer, now, host) {
                report.changed.push(index);
            }
            // Keys older than `max_stale_seconds` (every fetch since failed, through this Envoy)
            // are not used: a key the IdP withdrew (a compromised one) would otherwise still
            // verify here while every replica that can fetch refuses it. 503 until a fetch
            // succeeds, as before the first one.
            let fetched_ms = self.local.get(index).map_or(0, |l| l.fetched_ms);
            if issuer.keys().is_some() && now.saturating_sub(fetched_ms) > remote.max_stale_ms {
                log::warn!(
                    "mcp-guard: the keys of issuer {:?} could not be fetched for {} s (max_stale_seconds); its tokens are refused until a fetch succeeds",
                    issuer.issuer,
                    now.saturating_sub(fetched_ms) / 1000
                );
                issuer.uninstall_keys();
                report.changed.push(index);
            }
            let (lease, cas) = lease::read(&lease_key(issuer), host);
            issuer.note_attempt(lease.attempt_ms);
            let refetch = issuer.take_refetch_request();
            if lease.until_ms > now || self.inflight.values().any(|(i, _, _)| *i == index) {
                continue;
            }
            let local = self.local.get(index).cloned().unwrap_or_default();
            let since_attempt = now.saturating_sub(lease.attempt_ms);
            let due = if issuer.keys().is_none() {
                since_attempt >= lease.backoff_ms().max(500)
            } else {
                let refresh_due = now.saturating_sub(local.fetched_ms) >= remote.refresh_ms
                    && since_attempt >= lease.backoff_ms();
                refresh_due || (refetch && since_attempt >= remote.min_refetch_ms)
            };
            if !due {
                continue;
            }
            let taken = lease.taken(now, remote.timeout_ms);
            if !lease::write(&lease_key(issuer), &taken, cas, host) {
                continue; // another VM took it first
            }
            issuer.note_attempt(now);
            let uri = remote.jwks_uri.clone().or(local.jwks_uri.clone());
            let (stage, url) = match (uri, &remote.discovery_uri) {
                (Some(uri), _) => (Stage::Jwks, uri),
                (None, Some(discovery)) => (Stage::Discovery, discovery.clone()),
                (None, None) => continue,
            };
            if !self.start(index, issuer, stage, &url, now, host) {
                self.finish(
                    index,
                    issuer,
                    FetchOutcome::Unreachable,
                    now,
                    host,
                    &mut report,
                );
            }
        }
        report
    }

    /// Handles the answer to a fetch this VM started. `None` status: no answer at all.
    pub fn on_response(
        &mut self,
        auth: &Authenticator,
        host: &mut dyn Host,
        token: u32,
        status: Option<u32>,
        body: Option<&[u8]>,
    ) -> Report {
        let mut report = Report::default();
        let Some((index, stage, attempt)) = self.inflight.remove(&token) else {
            return report;
        };
        let Some(issuer) = auth.issuers().get(index) else {
            return report;
        };
        let outcome = match (status, body) {
            (None, _) | (Some(0), _) => FetchOutcome::Unreachable,
            (Some(200), Some(body)) if body.len() <= MAX_DOCUMENT_BYTES => {
                match self.accept(index, issuer, stage, body, host) {
                    Ok(Some(next_url)) => {
                        // Discovery done: go straight on to the JWKS, with the lease renewed
                        // so that no other VM starts a fetch meanwhile.
                        renew_lease(issuer, attempt, host);
                        if self.start(index, issuer, Stage::Jwks, &next_url, attempt, host) {
                            return report;
                        }
                        FetchOutcome::Unreachable
                    }
                    Ok(None) => {
                        report.changed.push(index);
                        FetchOutcome::Ok
                    }
                    Err(why) => {
                        log::warn!("mcp-guard: keys for issuer {:?}: {why}", issuer.issuer);
                        FetchOutcome::Invalid
                    }
                }
            }
            (Some(200), _) => FetchOutcome::Invalid,
            (Some(_), _) => FetchOutcome::HttpError,
        };
        if outcome != FetchOutcome::Ok {
            log::warn!(
                "mcp-guard: fetching keys for issuer {:?} failed ({}, HTTP status {:?}); the last good keys stay in use",
                issuer.issuer,
                outcome.as_str(),
                status
            );
        }
        self.finish(index, issuer, outcome, attempt, host, &mut report);
        report
    }

    fn start(
        &mut self,
        index: usize,
        issuer: &Issuer,
        stage: Stage,
        url: &str,
        attempt: u64,
        host: &mut dyn Host,
    ) -> bool {
        let Some(remote) = issuer.remote() else {
            return false;
        };
        let Ok((authority, path)) = split_url(url) else {
            return false;
        };
        match host::http_get(host, &remote.cluster, authority, path, remote.timeout_ms) {
            Some(token) => {
                self.inflight.insert(token, (index, stage, attempt));
                true
            }
            None => {
                log::warn!(
                    "mcp-guard: could not dispatch a key fetch through cluster {:?} (is it defined?)",
                    remote.cluster
                );
                false
            }
        }
    }

    /// Takes a fetched document. Returns the JWKS URL to fetch next after discovery.
    fn accept(
        &mut self,
        index: usize,
        issuer: &Issuer,
        stage: Stage,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Result<Option<String>, String> {
        let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        match stage {
            Stage::Discovery => {
                if doc.get("issuer").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
                    return Err("the discovery document names another issuer".into());
                }
                let uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("the discovery document has no jwks_uri")?;
                split_url(uri).map_err(|m| format!("jwks_uri {m}"))?;
                if let Some(local) = self.local.get_mut(index) {
                    local.jwks_uri = Some(uri.to_string());
                }
                Ok(Some(uri.to_string()))
            }
            Stage::Jwks => {
                let keys = KeySet::from_json(&doc)?;
                let now = host.now_millis();
                let jwks_uri = self.local.get(index).and_then(|l| l.jwks_uri.clone());
                let published = Published {
                    fetched_ms: now,
                    jwks: doc,
                    jwks_uri: jwks_uri.clone(),
                };
                let bytes = serde_json::to_vec(&published).map_err(|e| e.to_string())?;
                host.shared_set_cas(&doc_key(issuer), &bytes, None);
                issuer.install_keys(keys);
                let adopted = host
                    .shared_get_cas(&doc_key(issuer))
                    .and_then(|(_, cas)| cas);
                if let Some(local) = self.local.get_mut(index) {
                    *local = Local {
                        adopted,
                        fetched_ms: now,
                        jwks_uri,
                    };
                }
                Ok(None)
            }
        }
    }

    /// Ends a fetch: records success or failure in the lease for every VM to see.
    fn finish(
        &mut self,
        index: usize,
        issuer: &Issuer,
        outcome: FetchOutcome,
        attempt: u64,
        host: &mut dyn Host,
        report: &mut Report,
    ) {
        report.settled.push(index);
        report.outcomes.push((index, outcome));
        lease::finish(
            &lease_key(issuer),
            attempt,
            outcome == FetchOutcome::Ok,
            host,
        );
    }

    /// Adopts the JWKS another VM published, if newer than ours. Returns whether keys changed.
    fn adopt(&mut self, index: usize, issuer: &Issuer, now: u64, host: &mut dyn Host) -> bool {
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
        let max_stale = issuer.remote().map_or(u64::MAX, |r| r.max_stale_ms);
        if now.saturating_sub(published.fetched_ms) > max_stale {
            return false; // too old to use (see `tick`)
        }
        let Ok(keys) = KeySet::from_json(&published.jwks) else {
            return false;
        };
        issuer.install_keys(keys);
        *local = Local {
            adopted: cas,
            fetched_ms: published.fetched_ms,
            jwks_uri: published.jwks_uri,
        };
        true
    }
}

/// Extends our lease while a fetch goes on (discovery, then the JWKS itself).
fn renew_lease(issuer: &Issuer, attempt: u64, host: &mut dyn Host) {
    let Some(remote) = issuer.remote() else {
        return;
    };
    let (lease, cas) = lease::read(&lease_key(issuer), host);
    if lease.attempt_ms == attempt {
        let renewed = Lease {
            until_ms: host
                .now_millis()
                .saturating_add(remote.timeout_ms)
                .saturating_add(1000),
            ..lease
        };
        lease::write(&lease_key(issuer), &renewed, cas, host);
    }
}

//! The "waiting for keys" phase: a request whose token cannot be decided yet (the issuer's keys,
//! its revocation feed or an introspection answer are not there) is held until they arrive,
//! a fetch settles, or its deadline passes. [`Waiting`] is a VM's list of such requests; the
//! adapter only stores it and resumes what it hands back.

use super::headers::AuthFailure;
use super::{Action, Phase, Stream};
use crate::host::Host;
use crate::jwks::Report;
use crate::jwt::AuthError;

/// A request held until an issuer's keys arrive (first fetch, or re-fetch for an unknown `kid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub issuer: usize,
    pub deadline_ms: u64,
}

impl Wait {
    /// Whether the request should re-check now, after `report` at `now_ms`.
    pub fn over(&self, report: &Report, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms
            || report.changed.contains(&self.issuer)
            || report.settled.contains(&self.issuer)
    }
}

/// The requests of one VM that wait, by context id. Bounded by the VM's open streams: a stream
/// leaves when it resumes or ends ([`Waiting::remove`]).
pub struct Waiting<T> {
    entries: Vec<(u32, T)>,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Waiting {
            entries: Vec::new(),
        }
    }
}

impl<T> Waiting<T> {
    pub fn add(&mut self, id: u32, request: T) {
        self.entries.push((id, request));
    }

    /// The stream `id` ended: it no longer waits.
    pub fn remove(&mut self, id: u32) {
        self.entries.retain(|(i, _)| *i != id);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes out the requests to resume after `report` at `now_ms`: those whose issuer's keys,
    /// feed or introspection answer changed or settled, whose deadline passed, or that no
    /// longer wait (`wait_of` gives a request's [`Wait`]).
    pub fn ready(
        &mut self,
        report: &Report,
        now_ms: u64,
        wait_of: impl Fn(&T) -> Option<Wait>,
    ) -> Vec<(u32, T)> {
        let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(_, request)| wait_of(request).is_none_or(|w| w.over(report, now_ms)));
        self.entries = still;
        ready
    }
}

impl Stream {
    /// Set while the request waits for keys; the adapter calls [`Stream::resume`] when the
    /// issuer's keys change, a fetch settles, or the deadline passes (see [`Waiting`]).
    pub fn waiting(&self) -> Option<Wait> {
        match self.phase {
            Phase::WaitingForKeys(wait) | Phase::ConfirmingCaller { wait, .. } => Some(wait),
            _ => None,
        }
    }

    /// Re-runs authentication once the awaited keys arrived (or the wait timed out); for a
    /// standing stream whose caller was being confirmed, lets its held events go on or cuts it
    /// (`flow/confirm.rs`).
    pub fn resume(&mut self, host: &mut dyn Host) -> Action {
        let waited = match std::mem::replace(&mut self.phase, Phase::Headers) {
            Phase::WaitingForKeys(wait) => wait,
            Phase::ConfirmingCaller {
                events,
                wait,
                ended,
                held,
            } => return self.resume_confirming(host, events, wait, ended, held),
            other => {
                self.phase = other;
                return Action::Pause;
            }
        };
        let action = self.authorize(host, Some(waited));
        self.forwarded_on(action)
    }

    /// Whether a failed authentication should wait for keys instead of answering now.
    pub(super) fn should_wait(
        &self,
        failure: &AuthFailure,
        now_ms: u64,
        waited: Option<Wait>,
    ) -> Option<Wait> {
        let issuers = self.config.authenticator.issuers();
        match failure {
            AuthFailure::Token(
                AuthError::NoKeys { issuer }
                | AuthError::NoRevocations { issuer }
                | AuthError::IntrospectionPending { issuer },
            ) => {
                // The deadline is fixed when the request first waits, however often it resumes.
                let deadline_ms = waited
                    .map(|w| w.deadline_ms)
                    .unwrap_or_else(|| now_ms.saturating_add(self.config.key_wait_ms));
                (now_ms < deadline_ms).then_some(Wait {
                    issuer: *issuer,
                    deadline_ms,
                })
            }
            AuthFailure::Token(AuthError::UnknownKey { issuer }) if waited.is_none() => {
                let trusted = issuers.get(*issuer)?;
                let remote = trusted.remote()?;
                if !trusted.request_refetch(now_ms) {
                    return None;
                }
                let budget = remote
                    .timeout_ms
                    .saturating_add(500)
                    .min(self.config.key_wait_ms);
                Some(Wait {
                    issuer: *issuer,
                    deadline_ms: now_ms.saturating_add(budget),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_takes_out_the_changed_settled_and_late_and_keeps_the_rest() {
        let mut waiting = Waiting::default();
        let wait = |issuer, deadline_ms| {
            Some(Wait {
                issuer,
                deadline_ms,
            })
        };
        waiting.add(1, wait(0, 1_000));
        waiting.add(2, wait(1, 1_000));
        waiting.add(3, wait(2, 500));
        waiting.add(4, None);
        let report = Report {
            changed: vec![0],
            ..Report::default()
        };
        let ready: Vec<u32> = waiting
            .ready(&report, 600, |w| *w)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ready, vec![1, 3, 4]);
        assert_eq!(waiting.len(), 1);
        let settled = Report {
            settled: vec![1],
            ..Report::default()
        };
        assert_eq!(waiting.ready(&settled, 600, |w| *w).len(), 1);
        assert!(waiting.is_empty());
        waiting.add(5, wait(0, 1_000));
        waiting.remove(5);
        assert!(waiting.is_empty());
    }
}

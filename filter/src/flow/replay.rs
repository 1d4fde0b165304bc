//! Waiting for the fleet's answer on a DPoP proof (`dpop.replay: fleet`). A proof this Envoy has
//! not seen may have been used on another replica: before the request goes on, the proof is
//! spent at the rate limit service every replica shares, as one hit on the descriptor
//! `[mcp_limit=dpop_proof, mcp_key=<proof id>]`, which the service allows once. Over the limit:
//! a replay, refused like one seen here (401 `invalid_dpop_proof`). No answer: 503, nothing
//! forwarded (a replay check that did not run is not passed).

use super::headers::AuthFailure;
use super::{Action, Phase, Stream};
use crate::audit::Record;
use crate::dpop::{SenderError, FLEET_LIMIT};
use crate::host::Host;
use crate::jwt::Identity;
use crate::policy::limit::{Rate, Unit};
use crate::refusal::Refusal;
use crate::rls;

/// A request whose proof waits for the rate limit service.
pub(super) struct PendingProof {
    token: u32,
    record: Record,
    identity: Identity,
}

impl PendingProof {
    /// The request's record, when it ends while waiting.
    pub(super) fn into_record(self) -> Record {
        self.record
    }
}

impl Stream {
    /// Spends the proof `id` at the rate limit service; the request waits for the answer.
    pub(super) fn spend_proof(
        &mut self,
        host: &mut dyn Host,
        record: Record,
        identity: Identity,
        id: &str,
    ) -> Action {
        let config = std::rc::Rc::clone(&self.config);
        let sent = config.rate_limit_service.as_ref().and_then(|service| {
            let ask = rls::Ask {
                limit: FLEET_LIMIT,
                key: id,
                // For services that take the rate from the request: once a day. The service's
                // own limit must keep a key at least `max_age_seconds` plus twice the skew from
                // its first hit (docs/identity.md).
                rate: Rate {
                    amount: 1,
                    unit: Unit::Day,
                },
                cost: 1,
            };
            rls::call(host, service, &ask)
        });
        let Some(token) = sent else {
            return self.replay_unchecked(
                host,
                record,
                "the rate limit service could not be called",
            );
        };
        self.phase = Phase::WaitingForProof(Box::new(PendingProof {
            token,
            record,
            identity,
        }));
        Action::Pause
    }

    /// Whether the request waits for the fleet's answer on its proof.
    pub(super) fn waiting_for_proof(&self, token: u32) -> bool {
        matches!(&self.phase, Phase::WaitingForProof(p) if p.token == token)
    }

    /// The rate limit service answered call `token` about the proof.
    pub(super) fn proof_answer(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        status: u32,
        body: Option<&[u8]>,
    ) -> Action {
        let PendingProof {
            record, identity, ..
        } = match std::mem::replace(&mut self.phase, Phase::Headers) {
            Phase::WaitingForProof(pending) if pending.token == token => *pending,
            other => {
                self.phase = other;
                return Action::Pause;
            }
        };
        let config = std::rc::Rc::clone(&self.config);
        let Some(server) = self.server.and_then(|i| config.servers.get(i)) else {
            return Action::Pause;
        };
        match rls::answer(status, body, 1).as_deref() {
            // No limit matched the proof's descriptor: the service counted nothing, and would
            // let the same proof through every replica.
            Ok([v]) if v.applied == Some(false) => self.replay_unchecked(
                host,
                record,
                "the rate limit service has no limit for the descriptor dpop_proof: configure one",
            ),
            // A limit of more than one use per key would pass the same proof through that
            // many replicas (or through one, again and again): not a replay check.
            Ok([v]) if !v.over_limit && v.per_unit.is_some_and(|n| n > 1) => {
                let why = format!(
                    "the rate limit service's dpop_proof limit allows {} uses of a proof: configure 1",
                    v.per_unit.unwrap_or_default()
                );
                self.replay_unchecked(host, record, &why)
            }
            // A window shorter than a proof stays fresh forgets the proof while another
            // replica would still take it: not a replay check either.
            Ok([v])
                if !v.over_limit && v.window_seconds.is_some_and(|w| w < proof_life(&config)) =>
            {
                let why = format!(
                    "the rate limit service's dpop_proof limit counts per {} s, shorter than a \
                     proof stays fresh ({} s: dpop.max_age_seconds plus twice \
                     clock_skew_seconds): configure 1 per at least that",
                    v.window_seconds.unwrap_or_default(),
                    proof_life(&config)
                );
                self.replay_unchecked(host, record, &why)
            }
            Ok([v]) if !v.over_limit => self.admit(host, server, record, identity),
            Ok([_]) => {
                let replayed = SenderError::Proof(
                    "the proof was used before (jti), through another replica".into(),
                );
                self.refuse_auth(host, server, record, AuthFailure::Sender(replayed))
            }
            Ok(_) => self.replay_unchecked(host, record, "an answer without the proof's verdict"),
            Err(why) => self.replay_unchecked(host, record, why),
        }
    }

    /// The fleet could not say whether the proof is new: 503, nothing forwarded.
    fn replay_unchecked(&mut self, host: &mut dyn Host, record: Record, why: &str) -> Action {
        let refusal = Refusal::AuthUnavailable {
            code: "dpop_replay_unchecked",
            description: format!(
                "the DPoP proof could not be checked against the fleet's used proofs ({why}); \
                 retry with a fresh proof"
            ),
        };
        self.refuse(host, record, refusal)
    }
}

/// How long a proof can be accepted after its first use (seconds): its `iat` may be up to the
/// clock skew ahead, and it stays fresh `max_age_seconds` plus the skew after its `iat`.
fn proof_life(config: &crate::config::Config) -> u64 {
    let skew = config.authenticator.skew_seconds();
    u64::try_from(
        config
            .dpop
            .max_age_seconds
            .saturating_add(skew.saturating_mul(2)),
    )
    .unwrap_or(0)
}

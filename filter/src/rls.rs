//! Envoy's rate limit service API (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`):
//! the messages global limits send and read, declared by hand after the `.proto` files
//! (`envoy/service/ratelimit/v3/rls.proto`, `envoy/extensions/common/ratelimit/v3/
//! ratelimit.proto`, only the fields used) and encoded with `prost`.
//!
//! One request per global limit a message spends from, each with one descriptor:
//!
//! ```text
//! domain: <rate_limit_service.domain>, hits_addend: <cost>
//! descriptors: [{ entries: [{key: "mcp_limit", value: <limit name>},
//!                           {key: "mcp_key",   value: <the limit's key>}],
//!                 limit: { requests_per_unit: N, unit: SECOND|MINUTE|HOUR|DAY },  # the policy's rate
//!                 hits_addend: <cost> }]
//! ```

use prost::Message;

use crate::policy::limit::{Rate, Unit};

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";
/// The descriptor entries' keys.
pub const LIMIT_ENTRY: &str = "mcp_limit";
pub const KEY_ENTRY: &str = "mcp_key";

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
    /// `google.protobuf.UInt64Value`.
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitOverride {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `envoy.type.v3.RateLimitUnit`: SECOND = 1, MINUTE = 2, HOUR = 3, DAY = 4.
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct UInt64Value {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    /// UNKNOWN = 0, OK = 1, OVER_LIMIT = 2.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The limit that applied; a service sends none when no limit matched the descriptor.
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<CurrentLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    /// `google.protobuf.Duration`.
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`, read for its presence (and rate).
#[derive(Clone, PartialEq, Message)]
pub struct CurrentLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `envoy.config.core.v3.GrpcService` naming an Envoy cluster: what proxy-wasm's gRPC call
/// takes as its upstream. Passing the bare cluster name also works, unless those bytes happen
/// to parse as this message.
#[derive(Clone, PartialEq, Message)]
pub struct GrpcService {
    #[prost(message, optional, tag = "1")]
    pub envoy_grpc: Option<EnvoyGrpc>,
}

#[derive(Clone, PartialEq, Message)]
pub struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    pub cluster_name: String,
}

pub const OK: i32 = 1;
pub const OVER_LIMIT: i32 = 2;

/// One global limit's part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<'a> {
    pub limit: &'a str,
    pub key: &'a str,
    pub rate: Rate,
    pub cost: u64,
}

fn unit(u: Unit) -> i32 {
    match u {
        Unit::Second => 1,
        Unit::Minute => 2,
        Unit::Hour => 3,
        Unit::Day => 4,
    }
}

/// The encoded `ShouldRateLimit` request for one limit: one descriptor, its cost both in the
/// descriptor's `hits_addend` (Envoy's reference service) and in the request's (limitador-server,
/// whose descriptor has no such field). One limit per request, so a service that names
/// descriptors by position (`descriptors[0]` in Limitador's conditions) always finds it first.
pub fn request(domain: &str, a: &Ask<'_>) -> Vec<u8> {
    let descriptor = RateLimitDescriptor {
        entries: vec![
            Entry {
                key: LIMIT_ENTRY.into(),
                value: a.limit.into(),
            },
            Entry {
                key: KEY_ENTRY.into(),
                value: a.key.into(),
            },
        ],
        limit: Some(RateLimitOverride {
            requests_per_unit: u32::try_from(a.rate.amount).unwrap_or(u32::MAX),
            unit: unit(a.rate.unit),
        }),
        hits_addend: Some(UInt64Value { value: a.cost }),
    };
    RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![descriptor],
        hits_addend: u32::try_from(a.cost).unwrap_or(u32::MAX),
    }
    .encode_to_vec()
}

/// Asks `service` about one limit: the call's token, `None` when it could not be made.
pub fn call(
    host: &mut dyn crate::host::Host,
    service: &crate::config::RateLimitService,
    ask: &Ask<'_>,
) -> Option<u32> {
    let body = request(&service.domain, ask);
    host.grpc_call(&service.cluster, SERVICE, METHOD, &body, service.timeout_ms)
}

/// A descriptor's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub over_limit: bool,
    pub remaining: u64,
    /// When the window resets, when the service says.
    pub reset_ms: Option<u64>,
    /// Whether a limit applied to the descriptor: `Some(false)` when the service answered for
    /// it without one (no limit matched: it counts nothing), `None` when it sent no
    /// per-descriptor statuses (limitador's own server) and the overall code decides.
    pub applied: Option<bool>,
    /// The applied limit's `requests_per_unit`, when the service named one.
    pub per_unit: Option<u32>,
    /// The applied limit's window in seconds, when the service named a unit (a service whose
    /// windows are no calendar unit, limitador's, says `UNKNOWN`: `None`).
    pub window_seconds: Option<u64>,
}

/// The seconds of a `RateLimitResponse.RateLimit.Unit`; `None` for `UNKNOWN` and values this
/// filter does not know.
fn unit_seconds(code: i32) -> Option<u64> {
    const DAY: u64 = 86_400;
    let rate = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day]
        .into_iter()
        .find(|u| unit(*u) == code);
    match (rate, code) {
        (Some(u), _) => Some(u.millis() / 1000),
        (None, 5) => Some(28 * DAY),  // MONTH: at least
        (None, 6) => Some(365 * DAY), // YEAR
        (None, 7) => Some(7 * DAY),   // WEEK
        _ => None,
    }
}

/// Reads a `ShouldRateLimit` answer: one verdict per descriptor sent (`expected`), or why the
/// answer is not one.
pub fn response(bytes: &[u8], expected: usize) -> Result<Vec<Verdict>, String> {
    let r = RateLimitResponse::decode(bytes).map_err(|e| format!("undecodable answer: {e}"))?;
    if r.overall_code != OK && r.overall_code != OVER_LIMIT {
        return Err(format!("answer code {}", r.overall_code));
    }
    let verdicts: Vec<Verdict> = r
        .statuses
        .iter()
        .map(|s| Verdict {
            over_limit: s.code == OVER_LIMIT,
            remaining: u64::from(s.limit_remaining),
            reset_ms: s.duration_until_reset.as_ref().map(|d| {
                u64::try_from(d.seconds)
                    .unwrap_or(0)
                    .saturating_mul(1000)
                    .saturating_add(u64::try_from(d.nanos).unwrap_or(0) / 1_000_000)
            }),
            applied: Some(s.current_limit.is_some()),
            per_unit: s.current_limit.as_ref().map(|l| l.requests_per_unit),
            window_seconds: s.current_limit.as_ref().and_then(|l| unit_seconds(l.unit)),
        })
        .collect();
    // The overall code is what Envoy's own rate limit filter acts on: statuses that leave an
    // OVER_LIMIT answer with no descriptor over its limit do not overrule it.
    let consistent = r.overall_code != OVER_LIMIT || verdicts.iter().any(|v| v.over_limit);
    if verdicts.len() == expected && consistent {
        return Ok(verdicts);
    }
    // A service may leave statuses out: the overall code still decides, for every limit.
    Ok((0..expected)
        .map(|_| Verdict {
            over_limit: r.overall_code == OVER_LIMIT,
            remaining: 0,
            reset_ms: None,
            applied: None,
            per_unit: None,
            window_seconds: None,
        })
        .collect())
}

/// The verdicts in a call's answer as the host hands it over: gRPC `status` (0: OK) and body.
pub fn answer(status: u32, body: Option<&[u8]>, expected: usize) -> Result<Vec<Verdict>, String> {
    match (status, body) {
        (0, Some(bytes)) => response(bytes, expected),
        (0, None) => Err("empty answer".to_string()),
        (s, _) => Err(format!("gRPC status {s}")),
    }
}

/// The upstream argument of proxy-wasm's gRPC call for an Envoy cluster.
pub fn upstream(cluster: &str) -> Vec<u8> {
    GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: cluster.into(),
        }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_name_key_rate_and_cost() {
        let rate = Rate {
            amount: 5000,
            unit: Unit::Hour,
        };
        let bytes = request(
            "mcp",
            &Ask {
                limit: "company-email",
                key: "acme",
                rate,
                cost: 3,
            },
        );
        let r = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(r.domain, "mcp");
        let d = &r.descriptors[0];
        assert_eq!(
            d.entries,
            vec![
                Entry {
                    key: "mcp_limit".into(),
                    value: "company-email".into()
                },
                Entry {
                    key: "mcp_key".into(),
                    value: "acme".into()
                }
            ]
        );
        assert_eq!(d.limit.as_ref().unwrap().unit, 3);
        assert_eq!(d.hits_addend.as_ref().unwrap().value, 3);
        assert_eq!((r.descriptors.len(), r.hits_addend), (1, 3));
    }

    #[test]
    fn answers_are_read_or_refused() {
        let answer = RateLimitResponse {
            overall_code: OVER_LIMIT,
            statuses: vec![DescriptorStatus {
                code: OVER_LIMIT,
                current_limit: Some(CurrentLimit {
                    requests_per_unit: 1,
                    unit: 4,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration {
                    seconds: 12,
                    nanos: 500_000_000,
                }),
            }],
        }
        .encode_to_vec();
        assert_eq!(
            response(&answer, 1).unwrap(),
            vec![Verdict {
                over_limit: true,
                remaining: 0,
                reset_ms: Some(12_500),
                applied: Some(true),
                per_unit: Some(1),
                window_seconds: Some(86_400),
            }]
        );
        // A status without a limit: no limit matched; no statuses: the overall code decides.
        let unmatched = RateLimitResponse {
            overall_code: OK,
            statuses: vec![DescriptorStatus::default()],
        }
        .encode_to_vec();
        assert_eq!(response(&unmatched, 1).unwrap()[0].applied, Some(false));
        let overall = RateLimitResponse {
            overall_code: OK,
            statuses: vec![],
        }
        .encode_to_vec();
        assert_eq!(response(&overall, 1).unwrap()[0].applied, None);
        let unknown = RateLimitResponse {
            overall_code: 0,
            statuses: vec![],
        }
        .encode_to_vec();
        assert!(response(&unknown, 1).is_err());
        assert!(response(b"\xff\xff\xff", 1).is_err());
    }
}

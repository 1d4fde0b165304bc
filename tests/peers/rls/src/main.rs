//! A test rate limit service: `mcp-guard-test-rls LISTEN REDIS_URL LIMITS_JSON`.
//!
//! LIMITS_JSON is a list of `{"domain", "limit", "max", "seconds"}`: the descriptor
//! `[mcp_limit=<limit>, mcp_key=<key>]` sent in `domain` is counted per key, `max` hits per
//! `seconds`, by limitador on Redis (the condition and the variable read the descriptor's
//! entries, as limitador-server exposes them).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use limitador::limit::Limit;
use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;
use serde::Deserialize;
use tonic::{Request, Response, Status};

#[derive(Deserialize)]
struct LimitSpec {
    domain: String,
    limit: String,
    max: u64,
    seconds: u64,
}

struct Service {
    limiter: Arc<AsyncRateLimiter>,
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = request.into_inner();
        let namespace = req.domain.as_str().into();
        let mut statuses = Vec::new();
        let mut overall = Code::Ok;
        for descriptor in &req.descriptors {
            let entries: HashMap<String, String> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let hits = descriptor
                .hits_addend
                .as_ref()
                .map(|h| h.value)
                .unwrap_or(if req.hits_addend == 0 { 1 } else { u64::from(req.hits_addend) });
            let hits = i64::try_from(hits).unwrap_or(i64::MAX);
            let result = self
                .limiter
                .check_rate_limited_and_update(&namespace, &entries, hits, true)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let remaining = result
                .counters
                .iter()
                .filter_map(|c| c.remaining())
                .min()
                .unwrap_or(i64::from(u32::MAX))
                .max(0);
            let code = if result.limited { Code::OverLimit } else { Code::Ok };
            if result.limited {
                overall = Code::OverLimit;
            }
            // The limit that applied, as the reference service reports it: none when no limit
            // matched the descriptor (it counted nothing).
            let current_limit = result.counters.first().map(|c| RateLimit {
                name: String::new(),
                requests_per_unit: u32::try_from(c.max_value()).unwrap_or(u32::MAX),
                unit: match c.seconds() {
                    1 => Unit::Second,
                    60 => Unit::Minute,
                    3600 => Unit::Hour,
                    86400 => Unit::Day,
                    _ => Unit::Unknown,
                } as i32,
            });
            statuses.push(DescriptorStatus {
                code: code as i32,
                current_limit,
                limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                ..Default::default()
            });
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(redis), Some(limits)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: mcp-guard-test-rls LISTEN REDIS_URL LIMITS_JSON".into());
    };
    let specs: Vec<LimitSpec> = serde_json::from_str(limits)?;
    let storage = AsyncRedisStorage::new(redis).await?;
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    for spec in specs {
        let condition = format!("mcp_limit == \"{}\"", spec.limit);
        let limit = Limit::new(
            spec.domain.as_str(),
            i64::try_from(spec.max)?,
            spec.seconds,
            vec![condition.as_str()],
            vec!["mcp_key"],
        );
        limiter.add_limit(limit);
    }
    let addr: std::net::SocketAddr = listen.parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Service {
            limiter: Arc::new(limiter),
        }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

//! The small surface of Envoy the filter needs, as one interface: the request's headers and
//! answer, filter state (audit), counters, shared data, the clock and callouts. The proxy-wasm
//! adapter (`filter/wasm`) implements it with hostcalls; tests implement it with plain data.
//! The core crate has no other way to reach Envoy.
//!
//! Calls that change the request or its answer return a [`Result`]: the flow fails closed when
//! one does not take effect (a client credential that could not be removed, a service key that
//! could not be set, a session id that could not be replaced).

use std::fmt;

/// An HTTP header as (lower-case name, value).
pub type Header = (String, String);

/// The host did not carry out a call that changes the request or its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError;

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host refused the call")
    }
}

impl std::error::Error for HostError {}

pub trait Host {
    // ---- the request and its answer -----------------------------------------------------------

    /// All request headers, pseudo-headers (`:path`, `:method`, …) included, in order.
    fn request_headers(&self) -> Vec<Header>;
    /// Sets a request header, replacing every existing value.
    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError>;
    /// Removes every value of a request header.
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError>;
    fn response_headers(&self) -> Vec<Header>;
    /// Sets a response header, replacing every existing value.
    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError>;
    fn remove_response_header(&mut self, name: &str) -> Result<(), HostError>;
    /// The answer's trailers (read in their callback). None by default.
    fn response_trailers(&self) -> Vec<Header> {
        Vec::new()
    }
    /// Sets a response trailer, replacing every existing value. Callers fail closed on an
    /// error: the default, for hosts that cannot.
    fn set_response_trailer(&mut self, _name: &str, _value: &str) -> Result<(), HostError> {
        Err(HostError)
    }
    /// Removes every value of a response trailer (fails by default, as above).
    fn remove_response_trailer(&mut self, _name: &str) -> Result<(), HostError> {
        Err(HostError)
    }
    /// An Envoy attribute such as `["source", "address"]`.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Answers the request locally; nothing (more) reaches the upstream or comes from it.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Cuts a response that is already streaming downstream.
    fn reset_response(&mut self);
    /// Replaces the whole request body (the first `old_len` bytes Envoy holds: all of it) before
    /// it is forwarded. Callers fail closed on an error: the default, for hosts that cannot.
    fn replace_request_body(&mut self, _old_len: usize, _body: &[u8]) -> Result<(), HostError> {
        Err(HostError)
    }

    /// The first value of a request header.
    fn request_header(&self, name: &str) -> Option<String> {
        self.request_headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn property_string(&self, path: &[&str]) -> Option<String> {
        self.property(path).and_then(|b| String::from_utf8(b).ok())
    }

    // ---- audit and metrics --------------------------------------------------------------------

    /// Stores the audit record where the access log reads it (`wasm.mcp.audit`).
    fn write_audit(&mut self, record: &[u8]);
    /// Stores one audit field under its own key (`wasm.mcp.<name>`), for per-field log columns.
    fn write_audit_column(&mut self, _name: &str, _value: &str) {}
    /// Increments the counter `name` (created on first use).
    fn count(&mut self, name: &str, by: u64);

    // ---- shared data and time -----------------------------------------------------------------

    /// Process-wide data shared by every worker VM.
    fn shared_get(&self, key: &str) -> Option<Vec<u8>>;
    fn shared_set(&mut self, key: &str, value: &[u8]);
    /// Shared data with its compare-and-swap token (keys, feeds, limits). The defaults, for
    /// hosts without concurrent VMs, ignore the token; the proxy-wasm adapter honours it.
    /// Read through [`shared_read`] when the write back must also hold for a missing entry.
    fn shared_get_cas(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        self.shared_get(key).map(|v| (v, None))
    }
    /// Writes only if the entry is unchanged since read with `cas`: `None` writes
    /// unconditionally, [`ABSENT`] only while no entry exists; false on a mismatch or failure.
    fn shared_set_cas(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        if cas == ABSENT && self.shared_get(key).is_some() {
            return false;
        }
        self.shared_set(key, value);
        true
    }
    /// Fills `out` with random bytes (Wasm: WASI `random_get`, which Envoy serves from its own
    /// random source); false when the host has none. Only for what must be unknown to clients
    /// and is shared through shared data, never per request (the DPoP replay store's slot key).
    fn random(&mut self, _out: &mut [u8]) -> bool {
        false
    }
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
    /// Nanoseconds since the Unix epoch, for timing the filter's own work (`filter_us`).
    fn now_nanos(&self) -> u64 {
        self.now_millis().saturating_mul(1_000_000)
    }

    // ---- callouts -----------------------------------------------------------------------------

    /// Starts an HTTP call through `cluster` (headers include the pseudo-headers); returns the
    /// call's token, or `None` when it could not be dispatched. The answer comes back to the
    /// root context (keys, feeds) or to [`crate::jwt::Authenticator::on_introspection_response`].
    fn http_call(
        &mut self,
        _cluster: &str,
        _headers: &[(&str, &str)],
        _body: &[u8],
        _timeout_ms: u64,
    ) -> Option<u32> {
        None
    }

    /// Sends a unary gRPC request to an Envoy cluster (global limits); the answer comes back
    /// to the stream as [`crate::flow::Stream::on_grpc_answer`]. `None` when it cannot be sent.
    fn grpc_call(
        &mut self,
        _cluster: &str,
        _service: &str,
        _method: &str,
        _message: &[u8],
        _timeout_ms: u64,
    ) -> Option<u32> {
        None
    }
}

/// The CAS a read-modify-write passes when its read found no entry: the write then takes
/// effect only while the key is still absent, so two VMs that both found it missing cannot both
/// "create" it (the second would overwrite the first: two fetches for one lease, two uses of
/// one DPoP proof). Envoy never hands out 0 as a CAS (to it, 0 means "unconditionally"); the
/// adapter turns this value into a write Envoy refuses when the entry exists.
pub const ABSENT: Option<u32> = Some(0);

/// Reads `key` for a compare-and-swap: its bytes and CAS, or no bytes and [`ABSENT`].
pub fn shared_read(host: &dyn Host, key: &str) -> (Vec<u8>, Option<u32>) {
    host.shared_get_cas(key).unwrap_or((Vec::new(), ABSENT))
}

/// Starts `GET https://<authority><path>` (a JSON document: keys, discovery, a revocation feed)
/// through `cluster`; the call's token, or `None` when it could not be dispatched.
pub fn http_get(
    host: &mut dyn Host,
    cluster: &str,
    authority: &str,
    path: &str,
    timeout_ms: u64,
) -> Option<u32> {
    let headers = [
        (":method", "GET"),
        (":path", path),
        (":authority", authority),
        ("accept", "application/json"),
    ];
    host.http_call(cluster, &headers, &[], timeout_ms)
}

//! The small surface of Envoy the filter logic needs. The proxy-wasm adapter implements it with
//! hostcalls; unit tests implement it with plain data.

/// An HTTP header as (lower-case name, value).
pub type Header = (String, String);

pub trait Host {
    /// All request headers, pseudo-headers (`:path`, `:method`, …) included, in order.
    fn request_headers(&self) -> Vec<Header>;
    /// Sets a request header, replacing every existing value.
    fn set_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    fn response_headers(&self) -> Vec<Header>;
    fn set_response_header(&mut self, name: &str, value: &str);
    fn remove_response_header(&mut self, name: &str);
    /// An Envoy attribute such as `["source", "address"]`.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Answers the request locally; nothing (more) reaches the upstream or comes from it.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Cuts a response that is already streaming downstream.
    fn reset_response(&mut self);
    /// Stores the audit record where the access log reads it (`wasm.mcp.audit`).
    fn write_audit(&mut self, record: &[u8]);
    /// Process-wide data shared by every worker VM.
    fn shared_get(&self, key: &str) -> Option<Vec<u8>>;
    fn shared_set(&mut self, key: &str, value: &[u8]);
    /// Shared data with its compare-and-swap token (local limits). The defaults, for hosts
    /// without concurrent VMs, ignore the token; the proxy-wasm adapter honours it.
    fn shared_get_cas(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        self.shared_get(key).map(|v| (v, None))
    }
    /// Writes only if the entry is unchanged since read with `cas` (`None`: unconditionally);
    /// false on a mismatch or failure.
    fn shared_set_cas(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let _ = cas;
        self.shared_set(key, value);
        true
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
    /// Increments the counter `name` (created on first use).
    fn count(&mut self, name: &str, by: u64);
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
    /// Nanoseconds since the Unix epoch, for timing the filter's own work (`filter_us`).
    fn now_nanos(&self) -> u64 {
        self.now_millis().saturating_mul(1_000_000)
    }
    /// Sets a request header, replacing every existing value, and says whether it was set.
    /// For headers whose old value must never go on (the session id): fail closed on `false`.
    fn replace_request_header(&mut self, name: &str, value: &str) -> bool {
        self.set_request_header(name, value);
        true
    }
    /// As [`Host::replace_request_header`], for the response.
    fn replace_response_header(&mut self, name: &str, value: &str) -> bool {
        self.set_response_header(name, value);
        true
    }
    /// Replaces the whole request body (the first `old_len` bytes Envoy holds: all of it) before
    /// it is forwarded, and says whether it was replaced. Callers fail closed on `false`: the
    /// default, for hosts that cannot.
    fn replace_request_body(&mut self, _old_len: usize, _body: &[u8]) -> bool {
        false
    }
    /// Stores one audit field under its own key (`wasm.mcp.<name>`), for per-field log columns.
    fn write_audit_column(&mut self, _name: &str, _value: &str) {}

    /// Starts an HTTP call through `cluster` (headers include the pseudo-headers); returns the
    /// call's token, or `None` when it could not be dispatched. The answer comes back to
    /// [`crate::jwt::Authenticator::on_introspection_response`].
    fn http_call(
        &mut self,
        _cluster: &str,
        _headers: &[(&str, &str)],
        _body: &[u8],
        _timeout_ms: u64,
    ) -> Option<u32> {
        None
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
}

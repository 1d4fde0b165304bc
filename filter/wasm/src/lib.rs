//! The proxy-wasm adapter: turns Envoy callbacks into [`mcp_guard::flow`] and [`mcp_guard::jwks`] calls
//! and implements their host traits with hostcalls. No decisions are made here.
//! wasm32 only: natively this crate is empty (the core is tested natively through its `Host`).
#![cfg(target_arch = "wasm32")]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as WasmAction, BufferType, ContextType, LogLevel, MapType, MetricType, Status,
};

use mcp_guard::config::{Config, Environment};
use mcp_guard::crypto::{self, SignatureHost, Signatures, VerifyRequest};
use mcp_guard::feeds::FeedManager;
use mcp_guard::flow::{Action, BodyAction, Idle, Stream, Waiting, MAX_STANDING_STREAMS};
use mcp_guard::host::{Header, Host, HostError};
use mcp_guard::jwks::{KeyManager, Report};
use mcp_guard::metrics;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, config: None, keys: None, feeds: None, next_look_ms: 0 })
    });
}}

/// How often the root context looks at shared keys and due fetches.
const TICK: Duration = Duration::from_millis(100);
/// How often the standing streams are looked at between their events.
const LOOK_EVERY_MS: u64 = 1_000;

thread_local! {
    /// Requests of this VM waiting for keys, by context id.
    static WAITING: RefCell<Waiting<Rc<RefCell<Exchange>>>> = RefCell::new(Waiting::default());
    /// Counter ids by name, defined on first use in this VM.
    static METRICS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    /// This VM's standing streams (a GET stream, a subscription), by context id, looked at
    /// between their events ([`look_at_standing_streams`]). A stream leaves when it ends.
    static STANDING: RefCell<HashMap<u32, Weak<RefCell<Exchange>>>> = RefCell::new(HashMap::new());
}

/// `vm_config.environment_variables`, which Envoy exposes to the VM as its WASI environment.
struct VmEnv;

impl Environment for VmEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

struct Root {
    id: u32,
    config: Option<Rc<Config>>,
    keys: Option<KeyManager>,
    /// Fetched revocation feeds (only when an issuer has one).
    feeds: Option<FeedManager>,
    /// When the standing streams are looked at next.
    next_look_ms: u64,
}

impl Root {
    /// After keys changed or a fetch settled: count, and let the waiting requests go on.
    fn release_waiting(&mut self, report: &Report) {
        self.release(report, metrics::count_fetch);
    }

    fn release(&mut self, report: &Report, count: fn(&mut dyn Host, &str)) {
        for (_, outcome) in &report.outcomes {
            count(&mut Envoy, outcome.as_str());
        }
        release(report, self.id);
    }
}

/// Lets the waiting requests whose issuer's keys, feed or introspection answer changed (or
/// whose deadline passed) go on; then makes `back_to` the effective context again.
fn release(report: &Report, back_to: u32) {
    let now = Host::now_millis(&Envoy);
    let ready = WAITING.with(|w| {
        w.borrow_mut()
            .ready(report, now, |ex| ex.borrow().stream.waiting())
    });
    for (id, exchange) in ready {
        if hostcalls::set_effective_context(id).is_ok() {
            exchange.borrow_mut().resume(id, &exchange);
        }
    }
    let _ = hostcalls::set_effective_context(back_to);
}

/// Has each standing stream's caller checked between events ([`Stream::check_idle`]): one
/// whose token ended is cut (as the context it is, so that Envoy resets that stream), one whose
/// IdP is asked waits like a request; then makes `back_to` the effective context again.
fn look_at_standing_streams(back_to: u32) {
    let streams: Vec<(u32, Weak<RefCell<Exchange>>)> = STANDING.with(|s| {
        s.borrow()
            .iter()
            .map(|(id, ex)| (*id, ex.clone()))
            .collect()
    });
    let mut over = Vec::new();
    for (id, exchange) in streams {
        let Some(exchange) = exchange.upgrade() else {
            over.push(id);
            continue;
        };
        let Ok(mut ex) = exchange.try_borrow_mut() else {
            continue;
        };
        if hostcalls::set_effective_context(id).is_err() {
            over.push(id);
            continue;
        }
        match ex.stream.check_idle(&mut Envoy) {
            Idle::Open => {}
            Idle::Asked => WAITING.with(|w| w.borrow_mut().add(id, Rc::clone(&exchange))),
            Idle::Over => over.push(id),
        }
    }
    STANDING.with(|s| {
        let mut s = s.borrow_mut();
        for id in over {
            s.remove(&id);
        }
    });
    let _ = hostcalls::set_effective_context(back_to);
}

/// An introspection answer, whichever context the call was dispatched from.
fn introspection_response(config: &Config, token: u32, body_size: usize, back_to: u32) -> bool {
    if !config.authenticator.owns_introspection_call(token) {
        return false;
    }
    let status =
        header_value(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.parse().ok());
    let body = call_body(body_size, mcp_guard::introspection::MAX_ANSWER_BYTES);
    let settled =
        config
            .authenticator
            .on_introspection_response(token, status, body.as_deref(), &mut Envoy);
    let report = Report {
        settled: settled.into_iter().collect(),
        ..Report::default()
    };
    release(&report, back_to);
    true
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(config) = self.config.clone() else {
            return;
        };
        if introspection_response(&config, token, body_size, self.id) {
            return;
        }
        let status =
            header_value(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.parse().ok());
        if let Some(feeds) = self.feeds.as_mut().filter(|f| f.owns(token)) {
            let body = call_body(body_size, mcp_guard::revocation::LIMIT_MAX_BYTES);
            let report = feeds.on_response(
                &config.authenticator,
                &mut Envoy,
                token,
                status,
                body.as_deref(),
            );
            self.release(&report, metrics::count_feed_fetch);
            return;
        }
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let body = call_body(body_size, mcp_guard::jwks::MAX_DOCUMENT_BYTES);
        let report = keys.on_response(
            &config.authenticator,
            &mut Envoy,
            token,
            status,
            body.as_deref(),
        );
        self.release_waiting(&report);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            _ => {
                log::error!("mcp-guard: rejected configuration: no plugin configuration given");
                return false;
            }
        };
        match Config::from_json(&bytes, &VmEnv) {
            Ok(mut config) => {
                for w in &config.warnings {
                    log::warn!("mcp-guard: {w}");
                }
                for (i, server) in config.servers.iter().enumerate() {
                    for w in &server.policy.warnings {
                        log::warn!("mcp-guard: servers[{i}].policy: {w}");
                    }
                }
                let signatures = Signatures::new(Rc::new(EnvoyCrypto::default()));
                config.authenticator.set_signature_host(signatures.clone());
                config.dpop.signatures = signatures;
                mcp_guard::limits::prepare(&mut Envoy, &config);
                let remote = KeyManager::has_remote(&config.authenticator);
                self.keys = remote.then(|| KeyManager::new(&config.authenticator));
                let feeds = FeedManager::has_remote(&config.authenticator);
                self.feeds = feeds.then(|| FeedManager::new(&config.authenticator));
                self.config = Some(Rc::new(config));
                // Always: standing streams are looked at between their events, whatever the
                // configuration (a token's `exp` ends them too).
                let _ = hostcalls::set_tick_period(TICK);
                true
            }
            Err(e) => {
                log::error!("mcp-guard: rejected configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config.clone() else {
            return;
        };
        if let Some(keys) = self.keys.as_mut() {
            let report = keys.tick(&config.authenticator, &mut Envoy);
            self.release_waiting(&report);
        }
        if let Some(feeds) = self.feeds.as_mut() {
            let report = feeds.tick(&config.authenticator, &mut Envoy);
            self.release(&report, metrics::count_feed_fetch);
        }
        if config.authenticator.has_introspection() {
            let settled = config.authenticator.introspection_tick(&mut Envoy);
            let report = Report {
                settled,
                ..Report::default()
            };
            // Also releases the requests whose wait deadline passed.
            release(&report, self.id);
        }
        let now = Host::now_millis(&Envoy);
        if now >= self.next_look_ms {
            self.next_look_ms = now.saturating_add(LOOK_EVERY_MS);
            look_at_standing_streams(self.id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Http {
            id: context_id,
            exchange: Rc::new(RefCell::new(Exchange {
                stream: Stream::new(config),
            })),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request's state, shared with the waiting list while it waits for keys.
struct Exchange {
    stream: Stream,
}

impl Exchange {
    /// Continues a request that waited for keys; runs with `id` as the effective context.
    fn resume(&mut self, id: u32, me: &Rc<RefCell<Exchange>>) {
        self.timed(|ex| {
            let mut action = ex.stream.resume(&mut Envoy);
            if ex.stream.waiting().is_some() {
                WAITING.with(|w| w.borrow_mut().add(id, Rc::clone(me)));
                return;
            }
            // A standing stream's caller confirmed: its held events are checked, then go on.
            if let Some(ended) = ex.stream.take_due_answer() {
                if ex.check_response_body(usize::MAX, ended) == WasmAction::Continue {
                    let _ = hostcalls::resume_http_response();
                }
                return;
            }
            if ex.stream.body_due() {
                action = ex.decide_body();
            }
            if action == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        })
    }

    /// Runs one callback's work, adding its duration to the stream's `filter_us`.
    fn timed<R>(&mut self, work: impl FnOnce(&mut Exchange) -> R) -> R {
        let entered = Host::now_nanos(&Envoy);
        self.stream.enter(entered);
        CALLBACK_CLOCK.with(|c| c.set(Some(entered)));
        let result = work(self);
        CALLBACK_CLOCK.with(|c| c.set(None));
        self.stream.leave(Host::now_nanos(&Envoy));
        result
    }

    fn decide_body(&mut self) -> Action {
        match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, usize::MAX) {
            Ok(body) => self
                .stream
                .on_request_body(&mut Envoy, &body.unwrap_or_default()),
            Err(_) => {
                // Fail closed: without the body there is no decision.
                self.stream.fail(
                    &mut Envoy,
                    "request_body_unavailable",
                    "the request body could not be read from Envoy",
                );
                Action::Pause
            }
        }
    }
}

/// Test builds only: `x-mcp-guard-fault: trap` aborts the VM, as a bug would.
#[cfg(feature = "fault-injection")]
#[allow(clippy::panic)]
fn injected_fault() {
    if fault("trap") {
        panic!("mcp-guard: injected fault");
    }
}

/// Test builds only: whether the request asked for this fault (`x-mcp-guard-fault`):
/// `response-body-unavailable` (Envoy cannot hand the response body over),
/// `response-body-write` (the filtered body cannot be written back).
#[cfg(feature = "fault-injection")]
fn fault(name: &str) -> bool {
    Host::request_header(&Envoy, "x-mcp-guard-fault").as_deref() == Some(name)
}

struct Http {
    id: u32,
    exchange: Rc<RefCell<Exchange>>,
}

impl Drop for Http {
    fn drop(&mut self) {
        let id = self.id;
        WAITING.with(|w| w.borrow_mut().remove(id));
        STANDING.with(|s| s.borrow_mut().remove(&id));
    }
}

impl Context for Http {
    /// Introspection calls dispatched while this request's callbacks ran answer here, and the
    /// server's `tools/list` a call's decision waits for (its tool's parameter headers).
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let mut ex = self.exchange.borrow_mut();
        if ex.stream.waiting_for_declarations(token) {
            ex.timed(|ex| {
                let status = header_value(MapType::HttpCallResponseHeaders, ":status")
                    .and_then(|s| s.parse().ok());
                let content_type = header_value(MapType::HttpCallResponseHeaders, "content-type")
                    .unwrap_or_default();
                let body = call_body(body_size, mcp_guard::flow::MAX_DECLARATIONS_ANSWER);
                let mut action = ex.stream.on_declarations(
                    &mut Envoy,
                    token,
                    status,
                    &content_type,
                    body.as_deref(),
                );
                if ex.stream.body_due() {
                    action = ex.decide_body();
                }
                if action == Action::Continue {
                    let _ = hostcalls::resume_http_request();
                }
            });
            return;
        }
        let config = Rc::clone(ex.stream.config());
        drop(ex);
        introspection_response(&config, token, body_size, self.id);
    }

    /// The rate limit service answered (status 0, the body) or failed (gRPC status, no body):
    /// about the message's global limits, or about its DPoP proof (`dpop.replay: fleet`).
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let mut ex = self.exchange.borrow_mut();
        ex.timed(|ex| {
            let body = if status == 0 && size <= MAX_GRPC_ANSWER {
                hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
                    .ok()
                    .flatten()
            } else {
                None
            };
            let mut action = ex
                .stream
                .on_grpc_answer(&mut Envoy, token, status, body.as_deref());
            // A request admitted after its proof was spent may have its whole body already.
            if ex.stream.body_due() {
                action = ex.decide_body();
            }
            if action == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        })
    }
}

/// A rate limit service answer larger than this is not read (and fails as unreadable).
const MAX_GRPC_ANSWER: usize = 64 * 1024;

/// The body of an HTTP call's answer, unless it is larger than `max` (then it is not read).
fn call_body(size: usize, max: usize) -> Option<Vec<u8>> {
    if size > max {
        return None;
    }
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

fn action(a: Action) -> WasmAction {
    match a {
        Action::Continue => WasmAction::Continue,
        Action::Pause => WasmAction::Pause,
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> WasmAction {
        #[cfg(feature = "fault-injection")]
        injected_fault();
        let id = self.id;
        let exchange = Rc::clone(&self.exchange);
        let mut ex = self.exchange.borrow_mut();
        ex.timed(|ex| {
            let a = ex.stream.on_request_headers(&mut Envoy, end_of_stream);
            if ex.stream.waiting().is_some() {
                WAITING.with(|w| w.borrow_mut().add(id, exchange));
            }
            action(a)
        })
    }

    fn on_http_request_body(&mut self, _size: usize, end_of_stream: bool) -> WasmAction {
        let mut ex = self.exchange.borrow_mut();
        if !end_of_stream {
            return WasmAction::Pause;
        }
        ex.timed(|ex| {
            if !ex.stream.request_body_ended() {
                return WasmAction::Pause;
            }
            action(ex.decide_body())
        })
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> WasmAction {
        let mut ex = self.exchange.borrow_mut();
        ex.timed(|ex| {
            // One read of the map serves the status and the flow's own read of the headers.
            let headers = header_map(MapType::HttpResponseHeaders);
            let status = headers
                .iter()
                .find(|(name, _)| name == ":status")
                .and_then(|(_, value)| value.parse().ok());
            RESPONSE_HEADERS.with(|h| h.replace(Some(headers)));
            let a = ex
                .stream
                .on_response_headers(&mut Envoy, status, end_of_stream);
            RESPONSE_HEADERS.with(|h| h.replace(None));
            if ex.stream.is_standing() {
                STANDING.with(|s| {
                    let mut s = s.borrow_mut();
                    if s.len() < MAX_STANDING_STREAMS {
                        s.insert(self.id, Rc::downgrade(&self.exchange));
                    }
                });
            }
            action(a)
        })
    }

    fn on_log(&mut self) {
        let mut ex = self.exchange.borrow_mut();
        ex.timed(|ex| ex.stream.on_log(&mut Envoy));
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> WasmAction {
        let mut ex = self.exchange.borrow_mut();
        if ex.stream.holds_response_chunk(size, end_of_stream) {
            return WasmAction::Pause;
        }
        let waited = ex.stream.waiting().is_some();
        ex.timed(|ex| {
            let a = ex.check_response_body(size, end_of_stream);
            // A standing stream's events are held while its caller is confirmed (once listed).
            if !waited && ex.stream.waiting().is_some() {
                let exchange = Rc::clone(&self.exchange);
                WAITING.with(|w| w.borrow_mut().add(self.id, exchange));
            }
            a
        })
    }

    /// Trailers end the request: refused unless it was decided and forwarded (see
    /// [`Stream::on_request_trailers`]); Envoy would forward an undecided one on `Continue`.
    fn on_http_request_trailers(&mut self, _n: usize) -> WasmAction {
        let mut ex = self.exchange.borrow_mut();
        ex.timed(|ex| action(ex.stream.on_request_trailers(&mut Envoy)))
    }

    /// Trailers end the answer: a body held whole is checked now, as at its last chunk.
    /// The service key is redacted from the trailers first (see [`Stream::on_response_trailers`]).
    fn on_http_response_trailers(&mut self, _n: usize) -> WasmAction {
        let mut ex = self.exchange.borrow_mut();
        ex.timed(|ex| {
            if ex.stream.on_response_trailers(&mut Envoy) == BodyAction::Pause {
                return WasmAction::Pause;
            }
            if !ex.stream.holds_unchecked_answer() {
                return WasmAction::Continue;
            }
            ex.check_response_body(usize::MAX, true)
        })
    }
}

impl Exchange {
    /// Reads the response body Envoy holds (its first `size` bytes), has it checked, and
    /// writes back what replaces it. Fails closed when it cannot be read or written.
    fn check_response_body(&mut self, size: usize, end_of_stream: bool) -> WasmAction {
        let body = match read_response_body(size) {
            Ok(b) => b,
            Err(()) => {
                // Fail closed: an uninspectable response does not go on.
                self.stream
                    .response_failed(&mut Envoy, "response_body_unavailable");
                return WasmAction::Pause;
            }
        };
        match self
            .stream
            .on_response_body(&mut Envoy, &body, end_of_stream)
        {
            BodyAction::Continue => WasmAction::Continue,
            BodyAction::Pause => WasmAction::Pause,
            BodyAction::Replace(bytes) => {
                if write_response_body(body.len(), &bytes).is_err() {
                    self.stream
                        .response_failed(&mut Envoy, "response_body_write_failed");
                    return WasmAction::Pause;
                }
                WasmAction::Continue
            }
        }
    }
}

/// The response body Envoy holds (the first `size` bytes).
fn read_response_body(size: usize) -> Result<Vec<u8>, ()> {
    #[cfg(feature = "fault-injection")]
    if fault("response-body-unavailable") {
        return Err(());
    }
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        .map(Option::unwrap_or_default)
        .map_err(|_| ())
}

/// Replaces the first `size` bytes of the response body Envoy holds.
fn write_response_body(size: usize, bytes: &[u8]) -> Result<(), ()> {
    #[cfg(feature = "fault-injection")]
    if fault("response-body-write") {
        return Err(());
    }
    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, bytes).map_err(|_| ())
}

/// Envoy's own crypto through its `verify_signature` foreign function ([`mcp_guard::crypto`]).
/// Each VM logs once that Envoy checks its signatures, or once why it cannot (then they are
/// checked in Wasm). No counter: the set of counters is part of the documented metrics.
#[derive(Debug, Default)]
struct EnvoyCrypto {
    /// Set when this Envoy has no such function (then every check stays in Wasm).
    missing: Cell<bool>,
    announced: Cell<bool>,
    warned: Cell<bool>,
}

impl SignatureHost for EnvoyCrypto {
    fn verify(&self, request: &VerifyRequest<'_>) -> Option<bool> {
        if self.missing.get() {
            return None;
        }
        let arguments = crypto::encode_arguments(request);
        let answer = hostcalls::call_foreign_function(crypto::VERIFY_SIGNATURE, Some(&arguments));
        let verdict = match &answer {
            Ok(bytes) => crypto::decode_result(bytes.as_deref().unwrap_or_default()),
            Err(Status::NotFound) => {
                self.missing.set(true);
                None
            }
            Err(_) => None,
        };
        if verdict.is_some() && !self.announced.replace(true) {
            log::info!("mcp-guard: signatures are checked by Envoy's crypto (verify_signature)");
        }
        if verdict.is_none() && !self.warned.replace(true) {
            log::warn!(
                "mcp-guard: Envoy's verify_signature could not check a {} signature ({:?}); such signatures are checked in Wasm",
                request.hash,
                answer.err()
            );
        }
        verdict
    }
}

/// A header map as (name, value) text. proxy-wasm's `get_map` / `get_map_value` unwrap a UTF-8
/// conversion: one header value that is not UTF-8 (`x-foo: caf\xe9`, from any client, before
/// authentication; or from the upstream) would panic, trap the VM, and FAIL_CLOSED keeps that
/// worker answering 503 until Envoy restarts. Values are read as bytes instead; bytes that are
/// not UTF-8 read as U+FFFD, so such a value never equals what the filter expects (a token, a
/// session id, `application/json`) and is refused or ignored. Headers are forwarded unchanged.
fn header_map(map: MapType) -> Vec<Header> {
    hostcalls::get_map_bytes(map)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, text(value)))
        .collect()
}

fn header_value(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(text)
}

/// A header value as text: its own bytes when they are UTF-8 (no copy), else with U+FFFD.
fn text(value: Vec<u8>) -> String {
    String::from_utf8(value)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

thread_local! {
    /// The response headers as read at the start of the response-headers callback, handed to
    /// the flow's first read of them (then gone: a later read asks Envoy again). Dropped when
    /// the filter changes a response header, and when the callback ends.
    static RESPONSE_HEADERS: RefCell<Option<Vec<Header>>> = const { RefCell::new(None) };
    /// When the stream callback being run was entered (ns): within one callback the filter's
    /// clock stands still (expiry checks, audit timestamps, token buckets read it several times;
    /// one hostcall instead of one each). `now_nanos` still reads Envoy's clock.
    static CALLBACK_CLOCK: Cell<Option<u64>> = const { Cell::new(None) };
}

/// [`Host`] over proxy-wasm hostcalls. Reads that fail read as absent values (the flow fails
/// closed on anything it needs and does not get); changes that fail return [`HostError`].
struct Envoy;

fn changed(result: Result<(), Status>) -> Result<(), HostError> {
    result.map_err(|_| HostError)
}

impl Host for Envoy {
    fn request_headers(&self) -> Vec<Header> {
        header_map(MapType::HttpRequestHeaders)
    }
    fn request_header(&self, name: &str) -> Option<String> {
        header_value(MapType::HttpRequestHeaders, name)
    }
    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        changed(hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            name,
            Some(value),
        ))
    }
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        changed(hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            name,
            None,
        ))
    }
    fn response_headers(&self) -> Vec<Header> {
        RESPONSE_HEADERS
            .with(RefCell::take)
            .unwrap_or_else(|| header_map(MapType::HttpResponseHeaders))
    }
    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        RESPONSE_HEADERS.with(|h| h.replace(None));
        changed(hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            name,
            Some(value),
        ))
    }
    fn replace_request_body(&mut self, old_len: usize, body: &[u8]) -> Result<(), HostError> {
        changed(hostcalls::set_buffer(
            BufferType::HttpRequestBody,
            0,
            old_len,
            body,
        ))
    }
    fn remove_response_header(&mut self, name: &str) -> Result<(), HostError> {
        RESPONSE_HEADERS.with(|h| h.replace(None));
        changed(hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            name,
            None,
        ))
    }
    fn response_trailers(&self) -> Vec<Header> {
        header_map(MapType::HttpResponseTrailers)
    }
    fn set_response_trailer(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        changed(hostcalls::set_map_value(
            MapType::HttpResponseTrailers,
            name,
            Some(value),
        ))
    }
    fn remove_response_trailer(&mut self, name: &str) -> Result<(), HostError> {
        changed(hostcalls::set_map_value(
            MapType::HttpResponseTrailers,
            name,
            None,
        ))
    }
    fn reset_response(&mut self) {
        let _ = hostcalls::reset_http_response();
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key).ok().and_then(|(v, _)| v)
    }
    fn shared_set(&mut self, key: &str, value: &[u8]) {
        let _ = hostcalls::set_shared_data(key, Some(value), None);
    }
    fn shared_get_cas(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas)),
            _ => None,
        }
    }
    fn shared_set_cas(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let cas = match cas {
            mcp_guard::host::ABSENT => match foreign_cas() {
                Some(guard) => Some(guard),
                None => return false,
            },
            cas => cas,
        };
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => true,
            Err(Status::CasMismatch) => false,
            Err(e) => {
                log::warn!("mcp-guard: shared data {key:?} not written: {e:?}");
                false
            }
        }
    }
    fn grpc_call(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        // The cluster as an encoded GrpcService: a bare name could happen to parse as one.
        let upstream = String::from_utf8(mcp_guard::rls::upstream(cluster))
            .unwrap_or_else(|_| cluster.to_string());
        hostcalls::dispatch_grpc_call(
            &upstream,
            service,
            method,
            vec![],
            Some(message),
            Duration::from_millis(timeout_ms),
        )
        .ok()
    }
    fn count(&mut self, name: &str, by: u64) {
        METRICS.with(|m| {
            let mut ids = m.borrow_mut();
            let id = match ids.get(name) {
                Some(id) => Some(*id),
                None => hostcalls::define_metric(MetricType::Counter, name)
                    .ok()
                    .inspect(|id| {
                        ids.insert(name.to_string(), *id);
                    }),
            };
            if let Some(id) = id {
                let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
            }
        });
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        RESPONSE_HEADERS.with(|h| h.replace(None));
        let _ = hostcalls::send_http_response(status, headers.to_vec(), Some(body));
    }
    fn write_audit(&mut self, record: &[u8]) {
        if let Err(e) = hostcalls::set_property(vec!["mcp.audit"], Some(record)) {
            log::warn!("mcp-guard: could not write the audit record: {e:?}");
        }
        // The same record ending in a newline: an access log printing only
        // `%FILTER_STATE(wasm.mcp.audit_line:PLAIN)%` with `omit_empty_values` writes one line
        // per record and nothing for exchanges without one, so it needs no CEL filter (about
        // 4% of the proxy's CPU per request at one connection, `make bench`).
        let mut line = Vec::with_capacity(record.len() + 1);
        line.extend_from_slice(record);
        line.push(b'\n');
        if let Err(e) = hostcalls::set_property(vec!["mcp.audit_line"], Some(&line)) {
            log::warn!("mcp-guard: could not write the audit record: {e:?}");
        }
    }
    fn random(&mut self, out: &mut [u8]) -> bool {
        getrandom::getrandom(out).is_ok()
    }
    fn now_millis(&self) -> u64 {
        if let Some(entered) = CALLBACK_CLOCK.with(Cell::get) {
            return entered / 1_000_000;
        }
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    fn now_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
    fn write_audit_column(&mut self, name: &str, value: &str) {
        let key = format!("mcp.{name}");
        let _ = hostcalls::set_property(vec![key.as_str()], Some(value.as_bytes()));
    }
    fn http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            (!body.is_empty()).then_some(body),
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .ok()
    }
}

/// A CAS that no entry but the anchor's can hold: Envoy creates a missing key whatever CAS a
/// write passes, and refuses a present one whose CAS differs, but it has no "only if absent"
/// write. Every write gets the next value of one process-wide counter, so a CAS just handed to
/// the anchor's write belongs to no other key (until the counter wraps, 2^32 writes later):
/// passed with a write of another key, it creates the key if missing and changes nothing if
/// another VM created it meanwhile.
fn foreign_cas() -> Option<u32> {
    const ANCHOR: &str = "mcp-guard:cas-anchor";
    hostcalls::set_shared_data(ANCHOR, Some(b"1"), None).ok()?;
    hostcalls::get_shared_data(ANCHOR).ok()?.1
}

//! Micro-benchmarks of the filter's core, natively (no Envoy, no V8):
//! `CARGO_PROFILE_BENCH_PANIC=unwind cargo bench -p mcp-guard --bench core` (`make bench` runs
//! them too). The variable keeps Cargo from building the library twice: benchmarks always
//! unwind, the `mcp-guard` binary built alongside would abort, and the two copies of a cdylib
//! collide on file names (a warning, then at times a failed link).
//!
//! Inputs are the files in bench/fixtures/ (written by `python bench/workload.py`), the same
//! messages `make bench` sends through Envoy, so the two can be compared.
//!
//! A small self-contained harness (`harness = false`, no extra dependency): each benchmark is
//! warmed up, then timed in batches sized to ~1/30 of the measurement time; the median time per
//! iteration across batches is reported with the 10th–90th percentile spread.
//!
//! Environment: `BENCH_TIME_MS` (measurement time per benchmark, default 2000),
//! `BENCH_FILTER` (run only benchmarks whose name contains it, or, ending in `$`, is it), `BENCH_JSON` (also append one
//! JSON object per benchmark to this file; `make bench` reads it), `BENCH_ITERS` (run each
//! benchmark exactly this many times and time nothing: on a noisy machine, compare instruction
//! counts instead, e.g. `valgrind --tool=callgrind` at two counts, the difference per iteration).
//! Extra arguments (`cargo bench -p mcp-guard --bench core -- jwt`) filter by name too.

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use mcp_guard::config::{Config, ProcessEnv};
use mcp_guard::discovery::{self, Filtered, ListKind};
use mcp_guard::flow::{Action, BodyAction, Stream};
use mcp_guard::host::{Header, Host, HostError};
use mcp_guard::mcp::{self, Target};
use mcp_guard::policy::{Input, Item, Outcome, Policy, RequestFacts};
use mcp_guard::sse::{Rewrite, SseRewriter};

// ---- inputs -----------------------------------------------------------------------------------

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../bench/fixtures/",
            $name
        ))
    };
}

const JWKS: &str = fixture!("jwks.json");
const TOKENS: &str = fixture!("tokens.json");
const POLICY_10: &str = fixture!("policy-10.json");
const POLICY_100: &str = fixture!("policy-100.json");
const CALL_1K: &str = fixture!("call-1k.json");
const CALL_100K: &str = fixture!("call-100k.json");
const TOOLS_LIST_SSE: &str = fixture!("tools-list-500.sse");
const CALL_ANSWER: &str = fixture!("call-answer.json");
const ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

struct Fixtures {
    tokens: Value,
    now: i64,
    jwks: Value,
    /// bench/policy.yaml as JSON: the 4-rule policy of the Envoy bench.
    policy_4: Value,
}

impl Fixtures {
    fn load() -> Self {
        let tokens: Value = serde_json::from_str(TOKENS).expect("tokens.json");
        let now = tokens["now"].as_i64().expect("tokens.json: now");
        let policy_10: Value = serde_json::from_str(POLICY_10).expect("policy-10.json");
        // The generated rules come first; the last four are bench/policy.yaml's.
        let rules = policy_10["rules"].as_array().expect("rules");
        let base = rules[rules.len() - 4..].to_vec();
        let policy_4 =
            json!({"name": "bench-crm", "version": "1", "default": "deny", "rules": base});
        Fixtures {
            tokens,
            now,
            jwks: serde_json::from_str(JWKS).expect("jwks.json"),
            policy_4,
        }
    }

    fn token(&self, alg: &str) -> &str {
        self.tokens["tokens"][alg].as_str().expect("token")
    }

    /// The plugin configuration of the Envoy bench, with `policy`.
    fn config(&self, policy: &Value) -> Rc<Config> {
        let config = json!({
            "issuers": [{
                "issuer": self.tokens["issuer"],
                "audiences": [self.tokens["audience"]],
                "algorithms": ALGS,
                "jwks": self.jwks,
            }],
            "servers": [{
                "name": "bench",
                "path": "/mcp",
                "resource": self.tokens["audience"],
                "authorization_servers": [self.tokens["issuer"]],
                "credential": {"header": "x-api-key", "value": "bench-service-key-0001"},
                "policy": policy,
            }],
            "sessions": {"key": "YmVuY2gtb25seSBzZXNzaW9uIHNlYWxpbmcga2V5ISE="},
        });
        let bytes = serde_json::to_vec(&config).expect("config");
        Rc::new(Config::from_json(&bytes, &ProcessEnv).expect("bench configuration is valid"))
    }
}

fn policy_of(value: &Value) -> Policy {
    Policy::from_config(value.clone(), "policy").expect("bench policy is valid")
}

// ---- harness ----------------------------------------------------------------------------------

struct Harness {
    time: Duration,
    /// `BENCH_ITERS`: a fixed count, nothing timed.
    iters: Option<u64>,
    filters: Vec<String>,
    json: Option<std::fs::File>,
    ran: usize,
}

impl Harness {
    fn from_env() -> Self {
        let ms = std::env::var("BENCH_TIME_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        let mut filters: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        filters.extend(std::env::var("BENCH_FILTER").ok().filter(|f| !f.is_empty()));
        let json = std::env::var("BENCH_JSON").ok().map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("BENCH_JSON file")
        });
        println!(
            "{:<52} {:>12} {:>25} {:>12}",
            "benchmark", "median", "p10 .. p90", "throughput"
        );
        Harness {
            time: Duration::from_millis(ms),
            iters: std::env::var("BENCH_ITERS")
                .ok()
                .and_then(|v| v.parse().ok()),
            filters,
            json,
            ran: 0,
        }
    }

    fn wanted(&self, name: &str) -> bool {
        // A filter ending in `$` names one benchmark exactly (`…/call-1k$` without its variants).
        self.filters.is_empty()
            || self.filters.iter().any(|f| match f.strip_suffix('$') {
                Some(exact) => name == exact,
                None => name.contains(f.as_str()),
            })
    }

    /// Times `f`. `bytes`: input size per iteration, for a throughput column.
    fn bench<R>(&mut self, name: &str, bytes: Option<usize>, mut f: impl FnMut() -> R) {
        if !self.wanted(name) {
            return;
        }
        self.ran += 1;
        if let Some(n) = self.iters {
            for _ in 0..n {
                black_box(f());
            }
            println!("{name:<52} {n} iterations");
            return;
        }
        // Warm up (caches, allocator, branch predictors) and estimate one iteration.
        let warm_until = Instant::now() + self.time / 5;
        let mut warm_iters = 0u64;
        let warm_start = Instant::now();
        while Instant::now() < warm_until || warm_iters < 3 {
            black_box(f());
            warm_iters += 1;
        }
        let per_iter = warm_start.elapsed().as_secs_f64() / warm_iters as f64;
        let sample_target = self.time.as_secs_f64() / 30.0;
        let batch = ((sample_target / per_iter).floor() as u64).max(1);

        let mut samples = Vec::new();
        let until = Instant::now() + self.time;
        while Instant::now() < until || samples.len() < 10 {
            let start = Instant::now();
            for _ in 0..batch {
                black_box(f());
            }
            samples.push(start.elapsed().as_secs_f64() / batch as f64);
        }
        samples.sort_by(f64::total_cmp);
        let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        let (median, p10, p90) = (pick(0.5), pick(0.1), pick(0.9));
        let iterations = batch * samples.len() as u64;
        let throughput = bytes
            .map(|b| format!("{:.1} MB/s", b as f64 / median / 1e6))
            .unwrap_or_default();
        println!(
            "{name:<52} {:>12} {:>25} {throughput:>12}",
            human(median),
            format!("{} .. {}", human(p10), human(p90)),
        );
        if let Some(file) = self.json.as_mut() {
            let line = json!({
                "name": name, "median_ns": median * 1e9, "p10_ns": p10 * 1e9, "p90_ns": p90 * 1e9,
                "iterations": iterations, "bytes": bytes,
            });
            let _ = writeln!(file, "{line}");
        }
    }
}

fn human(seconds: f64) -> String {
    let ns = seconds * 1e9;
    let mut s = String::new();
    if ns < 1e3 {
        let _ = write!(s, "{ns:.0} ns");
    } else if ns < 1e6 {
        let _ = write!(s, "{:.2} µs", ns / 1e3);
    } else {
        let _ = write!(s, "{:.2} ms", ns / 1e6);
    }
    s
}

// ---- the host, for whole-request benchmarks ---------------------------------------------------

/// An in-memory Envoy: the request's and response's headers, shared data, a fixed clock.
#[derive(Default)]
struct BenchHost {
    headers: Vec<Header>,
    response_headers: Vec<Header>,
    shared: std::collections::HashMap<String, Vec<u8>>,
    now_ms: u64,
    sent: Option<u32>,
    reset: bool,
    audit_bytes: usize,
}

fn set(headers: &mut Vec<Header>, name: &str, value: Option<&str>) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    if let Some(value) = value {
        headers.push((name.to_string(), value.to_string()));
    }
}

impl Host for BenchHost {
    fn request_headers(&self) -> Vec<Header> {
        self.headers.clone()
    }
    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        set(&mut self.headers, name, Some(value));
        Ok(())
    }
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        set(&mut self.headers, name, None);
        Ok(())
    }
    fn response_headers(&self) -> Vec<Header> {
        self.response_headers.clone()
    }
    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        set(&mut self.response_headers, name, Some(value));
        Ok(())
    }
    fn remove_response_header(&mut self, name: &str) -> Result<(), HostError> {
        set(&mut self.response_headers, name, None);
        Ok(())
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["source", "address"] => Some(b"127.0.0.1:43210".to_vec()),
            ["xds", "route_name"] => Some(b"mcp".to_vec()),
            ["xds", "cluster_name"] => Some(b"mcp_upstream".to_vec()),
            _ => None,
        }
    }
    fn send_response(&mut self, status: u32, _headers: &[(&str, &str)], _body: &[u8]) {
        self.sent = Some(status);
    }
    fn reset_response(&mut self) {
        self.reset = true;
    }
    fn write_audit(&mut self, record: &[u8]) {
        self.audit_bytes += record.len();
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.get(key).cloned()
    }
    fn shared_set(&mut self, key: &str, value: &[u8]) {
        self.shared.insert(key.to_string(), value.to_vec());
    }
    fn count(&mut self, _name: &str, _by: u64) {}
    fn now_millis(&self) -> u64 {
        self.now_ms
    }
    fn http_call(&mut self, _: &str, _: &[(&str, &str)], _: &[u8], _: u64) -> Option<u32> {
        Some(1)
    }
}

/// The headers wrk sends in the Envoy bench, as Envoy hands them to the filter.
fn request_headers(token: &str, body_len: usize) -> Vec<Header> {
    [
        (":authority", "127.0.0.1:10000"),
        (":path", "/mcp"),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-11-25"),
        ("authorization", &format!("Bearer {token}")),
        ("content-length", &body_len.to_string()),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5f1d2c3b-0a9e-4f7d-8c6b-3e2a1d0f9b8c"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The upstream's answer in the Envoy bench: content type, body.
struct Answer<'a> {
    content_type: &'a str,
    body: &'a [u8],
    /// The upstream opens a new session on this answer (a new `Mcp-Session-Id` every time).
    new_session: bool,
}

/// Tells the session ids [`whole_request`] makes up apart.
static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One allowed request through the whole filter path, as Envoy drives it: request headers
/// (token verification, credential swap), request body (strict parse, policy, audit), response
/// headers, response body in 16 KiB chunks (list filtering, key-leak check). Returns the bytes
/// sent downstream.
fn whole_request(
    config: &Rc<Config>,
    headers: &[Header],
    body: &[u8],
    answer: &Answer,
    now_ms: u64,
) -> usize {
    let mut host = BenchHost {
        headers: headers.to_vec(),
        now_ms,
        ..BenchHost::default()
    };
    let mut stream = Stream::new(Rc::clone(config));
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    let action = stream.on_request_body(&mut host, body);
    assert!(
        action == Action::Continue && host.sent.is_none(),
        "the bench call must be allowed"
    );
    host.response_headers = vec![
        (":status".to_string(), "200".to_string()),
        ("content-type".to_string(), answer.content_type.to_string()),
        ("content-length".to_string(), answer.body.len().to_string()),
    ];
    if answer.new_session {
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        host.response_headers
            .push(("mcp-session-id".to_string(), format!("{n:032x}")));
    }
    // A JSON answer is held (Pause) and handed over whole at the end; SSE streams chunk by chunk.
    stream.on_response_headers(&mut host, Some(200), false);
    let mut sent = 0;
    let mut held: Vec<u8> = Vec::new();
    let chunks: Vec<&[u8]> = answer.body.chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        held.extend_from_slice(chunk);
        match stream.on_response_body(&mut host, &held, i + 1 == chunks.len()) {
            BodyAction::Continue => sent += std::mem::take(&mut held).len(),
            BodyAction::Replace(bytes) => {
                sent += bytes.len();
                held.clear();
            }
            BodyAction::Pause => {}
        }
    }
    assert!(
        host.sent.is_none() && !host.reset,
        "the answer must go through"
    );
    sent
}

// ---- benchmarks -------------------------------------------------------------------------------

/// How a token is verified: every time in full (a cache miss), or from the verified-token
/// cache (verified once before the timed loop, then every call is a hit).
#[derive(Clone, Copy, PartialEq)]
enum Verify {
    Uncached,
    Cached,
}

impl Verify {
    fn name(self) -> &'static str {
        match self {
            Verify::Uncached => "uncached",
            Verify::Cached => "cached",
        }
    }
}

fn bench_jwt(h: &mut Harness, fx: &Fixtures) {
    let config = fx.config(&fx.policy_4);
    for mode in [Verify::Uncached, Verify::Cached] {
        for alg in ALGS {
            let token = fx.token(alg);
            let auth = &config.authenticator;
            let verify = || match mode {
                Verify::Uncached => auth
                    .verify_uncached(black_box(token), fx.now)
                    .map(|(i, _)| i),
                Verify::Cached => auth.verify(black_box(token), fx.now),
            };
            assert!(verify().is_ok(), "{alg} fixture token must verify");
            h.bench(&format!("jwt/verify/{alg}/{}", mode.name()), None, verify);
        }
    }
    // A token another worker VM verified: what reading its entry in the shared token cache
    // costs (the digest, the shared-data read, the claims parsed); the checks that follow
    // are those of a cached token.
    let token = fx.token("RS256");
    let mut host = BenchHost::default();
    config
        .authenticator
        .verify_shared(token, fx.now, &mut host)
        .expect("fixture token");
    h.bench("jwt/verify/RS256/shared-cache-entry", None, || {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(black_box(token).as_bytes()).into();
        mcp_guard::token_cache::lookup(&host, &digest).is_some()
    });
}

fn claims(fx: &Fixtures) -> Map<String, Value> {
    let config = fx.config(&fx.policy_4);
    config
        .authenticator
        .verify(fx.token("RS256"), fx.now)
        .expect("token")
        .claims
        .as_ref()
        .clone()
}

fn bench_policy(h: &mut Harness, fx: &Fixtures) {
    let claims = claims(fx);
    let headers = request_headers(fx.token("RS256"), CALL_1K.len());
    let policies = [
        ("4", fx.policy_4.clone()),
        ("10", serde_json::from_str(POLICY_10).expect("policy-10")),
        ("100", serde_json::from_str(POLICY_100).expect("policy-100")),
    ];
    for (body_name, body) in [("call-1k", CALL_1K), ("call-100k", CALL_100K)] {
        let message = mcp::parse_message(body.as_bytes(), mcp::DEFAULT_MAX_DEPTH).expect("message");
        let Target::Tool { name, arguments } = &message.target else {
            panic!("a tools/call fixture")
        };
        for (rules, value) in &policies {
            if body_name == "call-100k" && *rules != "4" {
                continue; // The argument conversion, not the rules, is what 100 KiB measures.
            }
            let policy = policy_of(value);
            let input = Input {
                claims: Some(&claims),
                method: &message.method,
                tool: Some((name.as_str(), Some(arguments))),
                prompt: None,
                resource_uri: None,
                session_id: None,
                request: RequestFacts {
                    path: "/mcp",
                    host: "127.0.0.1:10000",
                    method: "POST",
                    headers: &headers,
                    removed: &[],
                },
                source_address: "127.0.0.1:43210",
                mtls: false,
                now: fx.now,
                ..Input::default()
            };
            let decision = policy.evaluate(&input);
            assert_eq!(
                decision.outcome,
                Outcome::Allow,
                "{rules} rules: {decision:?}"
            );
            assert_eq!(decision.rule.as_deref(), Some("read-only-tools"));
            h.bench(
                &format!("policy/evaluate/{rules}-rules/{body_name}"),
                None,
                || policy.evaluate(&input),
            );
        }
    }
}

/// A tools/call whose arguments hold 256 keys (lower case, camelCase, and non-ASCII ones that
/// take the Unicode folding path) and 64 small objects of 4 keys each: what the key-collision
/// check costs per key.
fn call_many_keys() -> String {
    let mut args: Vec<String> = (0..256)
        .map(|i| match i % 4 {
            0 => format!("\"field_{i}\":{i}"),
            1 => format!("\"someField{i}\":\"v\""),
            2 => format!("\"Gr\u{f6}\u{df}e{i}\":true"),
            _ => format!("\"KEY_{i}\":null"),
        })
        .collect();
    args.extend((0..64).map(|i| format!("\"obj{i}\":{{\"a\":1,\"b\":2,\"Id\":3,\"name\":\"x\"}}")));
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search_customers","arguments":{{{}}}}}}}"#,
        args.join(",")
    )
}

fn bench_parse(h: &mut Harness) {
    let many_keys = call_many_keys();
    for (name, body) in [
        ("call-1k", CALL_1K),
        ("call-100k", CALL_100K),
        ("call-many-keys", many_keys.as_str()),
    ] {
        let bytes = body.as_bytes();
        h.bench(
            &format!("mcp/parse_message/{name}"),
            Some(bytes.len()),
            || mcp::parse_message(black_box(bytes), mcp::DEFAULT_MAX_DEPTH).expect("valid"),
        );
        // As the filter parses when no rule and no audit setting reads the arguments: checked
        // as strictly, not kept.
        h.bench(
            &format!("mcp/parse_message/{name}/arguments-unread"),
            Some(bytes.len()),
            || {
                mcp::parse_message_for(
                    black_box(bytes),
                    mcp::DEFAULT_MAX_DEPTH,
                    mcp::Arguments::Check,
                )
                .expect("valid")
            },
        );
        // Reference point: what a plain, non-strict serde_json parse costs.
        h.bench(
            &format!("baseline/serde_json-to-Value/{name}"),
            Some(bytes.len()),
            || serde_json::from_slice::<Value>(black_box(bytes)).expect("valid"),
        );
    }
}

/// The JSON-RPC message inside the fixture's single SSE event.
fn tools_list_json() -> &'static str {
    TOOLS_LIST_SSE
        .strip_prefix("event: message\ndata: ")
        .and_then(|s| s.strip_suffix("\n\n"))
        .expect("one event with one data line")
}

fn bench_discovery(h: &mut Harness, fx: &Fixtures) {
    let claims = claims(fx);
    let policy = policy_of(&fx.policy_4);
    let id = json!(1);
    let json = tools_list_json().as_bytes();
    let sse = TOOLS_LIST_SSE.as_bytes();
    // Whether the caller sees `name`: the policy's listing check, as the filter asks it (the
    // caller's facts built once per list, each tool evaluated as a call without arguments).
    let listing = Input {
        claims: Some(&claims),
        method: "tools/list",
        now: fx.now,
        ..Input::default()
    };
    let kept = |out: &Filtered| match out {
        Filtered::Rewritten { hidden, .. } => *hidden,
        _ => 0,
    };

    let out = discovery::filter_result(json, ListKind::Tools, Some(&id), &mut |n| {
        n.starts_with("read_")
    });
    assert_eq!(kept(&out), 250, "half the tools are hidden");
    h.bench(
        "discovery/filter_result/500-tools/name-check",
        Some(json.len()),
        || {
            discovery::filter_result(black_box(json), ListKind::Tools, Some(&id), &mut |n| {
                n.starts_with("read_")
            })
        },
    );
    let by_policy = || {
        let mut lister = policy.lister(&listing);
        discovery::filter_result(black_box(json), ListKind::Tools, Some(&id), &mut |n| {
            lister.visible(Item::Tool(n))
        })
    };
    assert_eq!(kept(&by_policy()), 250, "the policy hides the write_ tools");
    h.bench(
        "discovery/filter_result/500-tools/policy",
        Some(json.len()),
        by_policy,
    );

    // Tool pinning on: every tool the caller sees is parsed, canonicalized (RFC 8785) and hashed.
    let pins = {
        let mut all = std::collections::HashMap::new();
        discovery::filter_entries(json, ListKind::Tools, Some(&id), &mut |n, entry| {
            if let Some(d) = mcp_guard::pins::digest_bytes(ListKind::Tools, entry) {
                all.insert(n.to_string(), d);
            }
            true
        });
        mcp_guard::pins::Pins::new(mcp_guard::pins::Mode::Enforce, all, None)
    };
    let by_policy_and_pins = || {
        let mut lister = policy.lister(&listing);
        discovery::filter_entries(
            black_box(json),
            ListKind::Tools,
            Some(&id),
            &mut |n, entry| {
                lister.visible(Item::Tool(n))
                    && pins.check(ListKind::Tools, n, entry) == mcp_guard::pins::Check::Matches
            },
        )
    };
    assert_eq!(
        kept(&by_policy_and_pins()),
        250,
        "every visible tool matches its pin"
    );
    h.bench(
        "discovery/filter_result/500-tools/policy+pins",
        Some(json.len()),
        by_policy_and_pins,
    );

    // The response path as Envoy feeds it: the SSE body in 16 KiB chunks, each event's data
    // filtered, the rewritten event re-encoded.
    let sse_filter = |chunk_size: usize| {
        let mut lister = policy.lister(&listing);
        let mut rewriter = SseRewriter::new(4 << 20);
        let mut out = 0usize;
        let mut chunks = sse.chunks(chunk_size).peekable();
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let forwarded = rewriter
                .push(chunk, last, &mut |event| match discovery::filter_result(
                    event.data.as_bytes(),
                    ListKind::Tools,
                    Some(&id),
                    &mut |n| lister.visible(Item::Tool(n)),
                ) {
                    Filtered::Rewritten { body, .. } => Rewrite::Replace(body),
                    _ => Rewrite::Keep,
                })
                .expect("within the event limit");
            out += forwarded.len();
        }
        out
    };
    assert!(
        sse_filter(16 * 1024) < sse.len() * 6 / 10,
        "the SSE list is filtered"
    );
    h.bench(
        "sse+discovery/tools-list-500/16KiB-chunks/policy",
        Some(sse.len()),
        || sse_filter(16 * 1024),
    );
}

fn bench_whole_request(h: &mut Harness, fx: &Fixtures) {
    let token = fx.token("RS256");
    let now_ms = u64::try_from(fx.now).expect("positive") * 1000;
    let policy_100: Value = serde_json::from_str(POLICY_100).expect("policy-100");
    let call_answer = Answer {
        content_type: "application/json",
        body: CALL_ANSWER.as_bytes(),
        new_session: false,
    };
    let new_session_answer = Answer {
        new_session: true,
        ..call_answer
    };
    let list_answer = Answer {
        content_type: "text/event-stream",
        body: TOOLS_LIST_SSE.as_bytes(),
        new_session: false,
    };
    let tools_list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    // One local limit per caller (a budget never spent out: what is priced is the counting).
    let mut limited = fx.policy_4.clone();
    limited["limits"] =
        json!([{"name": "per-user", "key": "jwt.sub", "rate": "1000000000/second"}]);
    let cases = [
        (
            "tools-call/4-rules/call-1k",
            &fx.policy_4,
            CALL_1K,
            &call_answer,
        ),
        (
            "tools-call/4-rules/call-1k/new-session",
            &fx.policy_4,
            CALL_1K,
            &new_session_answer,
        ),
        (
            "tools-call/4-rules/call-1k/local-limit",
            &limited,
            CALL_1K,
            &call_answer,
        ),
        (
            "tools-call/100-rules/call-1k",
            &policy_100,
            CALL_1K,
            &call_answer,
        ),
        (
            "tools-call/4-rules/call-100k",
            &fx.policy_4,
            CALL_100K,
            &call_answer,
        ),
        (
            "tools-list/4-rules/sse-500-tools",
            &fx.policy_4,
            tools_list,
            &list_answer,
        ),
    ];
    for (name, policy, body, answer) in cases {
        let config = fx.config(policy);
        let headers = request_headers(token, body.len());
        let sent = whole_request(&config, &headers, body.as_bytes(), answer, now_ms);
        if name.starts_with("tools-list") {
            assert!(
                sent < answer.body.len() * 6 / 10,
                "the list is filtered ({sent} bytes sent)"
            );
        }
        h.bench(&format!("flow/RS256/{name}"), None, || {
            whole_request(&config, &headers, body.as_bytes(), answer, now_ms)
        });
    }
}

/// Sealing and opening a session handle (every answer that carries a session id, every request
/// that presents one).
/// The audit record of an allowed `tools/call` (the fields the Envoy bench's records carry),
/// encoded as the one line the access log reads.
fn bench_audit(h: &mut Harness) {
    use mcp_guard::audit::{Record, Verdict};
    let mut r = Record::new(1_764_839_306_839, "POST");
    r.request_id = Some("faa842ee-a064-449c-a8ff-ecc31c8c66f7".into());
    r.source = Some("127.0.0.1:35754".into());
    r.route = Some("mcp-demo".into());
    r.upstream = Some("mcp_upstream".into());
    r.server = Some("demo".into());
    r.protocol_version = Some("2025-11-25".into());
    r.iss = Some("https://bench-idp.example".into());
    r.sub = Some("alice".into());
    r.user = Some("alice@corp.example".into());
    r.groups = Some(vec!["sales".into(), "support".into()]);
    r.client_id = Some("bench-client".into());
    r.method = Some("tools/call".into());
    r.jsonrpc_id = Some(json!(1));
    r.tool = Some("search_customers".into());
    r.decision = Verdict::Allow;
    r.rule = Some("read-only-tools".into());
    r.policy = Some("bench-crm-4".into());
    r.policy_version = Some("1".into());
    r.upstream_status = Some(200);
    r.filter_us = Some(829);
    r.total_ms = Some(2);
    h.bench("audit/record/tools-call", None, || r.to_line());
}

fn bench_seal(h: &mut Harness) {
    use mcp_guard::seal::{Binding, Cipher, Keys};
    let keys = Keys::new(&[7; 32], Some(&[9; 32]));
    let binding = Binding {
        purpose: "session",
        issuer: "https://login.example.com/",
        caller: "00u1a2b3c4d5e6f7g8h9",
        by_client: false,
        server: "crm",
    };
    let id = b"6f1c2a9e4b7d4c3e8a5f0b1d2c3e4f5a";
    h.bench("seal/session-id", None, || keys.seal(&binding, id));
    // A new session on every answer: each id sealed once (the memo never hits).
    let mut n = 0u64;
    h.bench("seal/session-id/new", None, || {
        n += 1;
        keys.seal(&binding, format!("{n:032x}").as_bytes())
    });
    let handle = keys.seal(&binding, id).expect("sealed");
    h.bench("open/session-id", None, || keys.open(&handle, &binding));
    // Natively the AES work runs on AES instructions, which Wasm lacks: compare the two ciphers
    // built for wasm32 (seal.rs) rather than here.
    for (name, cipher) in Cipher::ALL {
        let keys = Keys::new(&[7; 32], None).sealing_with(cipher);
        let mut n = 0u64;
        h.bench(&format!("seal/session-id/new/{name}"), None, || {
            n += 1;
            keys.seal(&binding, format!("{n:032x}").as_bytes())
        });
        // Handles this VM never saw (more than its memo keeps), opened in turn.
        let handles: Vec<String> = (0..4096u64)
            .filter_map(|i| {
                Keys::new(&[7; 32], None)
                    .sealing_with(cipher)
                    .seal(&binding, format!("{i:032x}").as_bytes())
            })
            .collect();
        let mut i = 0;
        h.bench(&format!("open/session-id/new/{name}"), None, || {
            i = (i + 1) % handles.len();
            keys.open(&handles[i], &binding)
        });
    }
}

/// Revocation and sender constraints: a cached introspection answer (what an opaque token
/// costs once the IdP answered), the revocation-feed check on a cached JWT, and a DPoP proof
/// check (signature, thumbprint, claims; the replay store's shared-data write is not included).
fn bench_identity(h: &mut Harness, fx: &Fixtures) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use sha2::Digest as _;

    let now_ms = u64::try_from(fx.now).expect("now") * 1000;
    let issuer = fx.tokens["issuer"].as_str().expect("issuer");
    let audience = fx.tokens["audience"].as_str().expect("audience");
    let config = json!({
        "issuers": [{
            "issuer": issuer, "audiences": [audience], "algorithms": ALGS, "jwks": fx.jwks,
            "introspect": "opaque",
            "introspection": { "endpoint": "https://idp.example/introspect", "cluster": "idp",
                               "client_id": "bench", "client_secret_from_env": "PATH" },
            "revocation": { "inline": { "revoked_jti": (0..1000).map(|i| format!("jti-{i}")).collect::<Vec<_>>(),
                                        "not_before": { "someone-else": 1 } } },
        }],
        "servers": [{ "name": "bench", "resource": audience,
                      "credential": {"header": "x-api-key", "value": "bench-service-key-0001"}, "policy": fx.policy_4 }],
        "sessions": {"key": "YmVuY2gtb25seSBzZXNzaW9uIHNlYWxpbmcga2V5ISE="},
    });
    let config = Config::from_json(&serde_json::to_vec(&config).expect("json"), &ProcessEnv)
        .expect("bench identity configuration is valid");
    let auth = &config.authenticator;
    let mut host = BenchHost {
        now_ms,
        ..BenchHost::default()
    };
    let opaque = "2YotnFZFEjr1zCsicMWpAA-bench-opaque-token";
    assert!(
        auth.authenticate(opaque, &mut host).is_err(),
        "first use waits"
    );
    let answer = json!({"active": true, "iss": issuer, "aud": audience, "sub": "alice",
                        "client_id": "agent", "scope": "mcp:tools", "exp": fx.now + 3600,
                        "iat": fx.now, "groups": ["sales"]});
    let body = serde_json::to_vec(&answer).expect("answer");
    auth.on_introspection_response(1, Some(200), Some(&body), &mut host);
    assert!(auth.authenticate(opaque, &mut host).is_ok());
    h.bench("identity/introspection/cached", None, || {
        auth.authenticate(opaque, &mut host).is_ok()
    });
    let jwt = fx.token("ES256");
    assert!(auth.authenticate(jwt, &mut host).is_ok());
    h.bench("identity/jwt-cached+revocation-feed(1000)", None, || {
        auth.authenticate(jwt, &mut host).is_ok()
    });

    let key = p256::ecdsa::SigningKey::from_slice(&[0x44; 32]).expect("P-256 scalar");
    let point = key.verifying_key().to_encoded_point(false);
    let jwk = json!({"kty": "EC", "crv": "P-256",
                     "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
                     "y": URL_SAFE_NO_PAD.encode(point.y().expect("y"))});
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let ath = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(jwt.as_bytes()));
    let input = format!(
        "{}.{}",
        b64(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk})),
        b64(
            &json!({"htm": "POST", "htu": "https://mcp.example/mcp", "iat": fx.now,
                    "jti": "bench-proof", "ath": ath})
        )
    );
    let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    let presentation = mcp_guard::dpop::Presentation {
        dpop_scheme: true,
        proofs: vec![&proof],
        method: "POST",
        htu: "https://mcp.example/mcp".into(),
        now: fx.now,
        skew: 60,
    };
    let dpop = mcp_guard::dpop::DpopConfig::default();
    let jwt_sha256: [u8; 32] = sha2::Sha256::digest(jwt.as_bytes()).into();
    assert!(mcp_guard::dpop::verify_proof(&proof, &jwt_sha256, &presentation, &dpop).is_ok());
    h.bench("identity/dpop/proof-ES256", None, || {
        mcp_guard::dpop::verify_proof(&proof, &jwt_sha256, &presentation, &dpop).is_ok()
    });
}

fn main() {
    let fx = Fixtures::load();
    let mut h = Harness::from_env();
    bench_jwt(&mut h, &fx);
    bench_policy(&mut h, &fx);
    bench_parse(&mut h);
    bench_discovery(&mut h, &fx);
    bench_whole_request(&mut h, &fx);
    bench_seal(&mut h);
    bench_audit(&mut h);
    bench_identity(&mut h, &fx);
    if h.ran == 0 {
        eprintln!("no benchmark matches {:?}", h.filters);
    }
}

//! Plugin configuration: the JSON Envoy hands to `on_configure`.
//!
//! Everything derived from the configuration (key sets, compiled CEL programs, header names) is
//! built here once, so no request ever rebuilds it. Every error names the field it is about, as
//! a path such as `servers[0].policy.rules[2].allow`.
//!
//! The configuration as written is `RawConfig` and the types of its parts (serde derive, an
//! enum for every choice); its JSON Schema (`policies/config.schema.json`, [`schema`]) is
//! generated from the same types. [`Config::load`] reports every part's error.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use crate::env::{Environment, ProcessEnv};
use crate::error::typed;
pub use crate::error::ConfigError;
use crate::http::is_header_name;
pub(crate) use crate::http::is_header_value;

use crate::audit::ArgumentsMode;
use crate::discovery::KnownLists;
use crate::jwt::{Authenticator, Issuer};
use crate::pins::Pins;
use crate::policy::Policy;

/// The validated, compiled configuration.
#[derive(Debug)]
pub struct Config {
    pub authenticator: Authenticator,
    pub servers: Vec<Server>,
    /// Largest JSON-RPC body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// How long a request may wait for an issuer's keys (first fetch, unknown `kid`).
    pub key_wait_ms: u64,
    /// The keys that seal `Mcp-Session-Id` handles (`sessions`); `None` when the configuration
    /// says no server behind it keeps sessions (`sessions.stateless`).
    pub sessions: Option<crate::seal::Keys>,
    /// DPoP proof checking (RFC 9449) for DPoP-bound tokens.
    pub dpop: crate::dpop::DpopConfig,
    /// Where global limits are counted (Envoy's rate limit service API).
    pub rate_limit_service: Option<RateLimitService>,
    /// Whether the per-field audit columns (`wasm.mcp.decision`, `.sub`, …) are written beside
    /// the record (`audit_columns`, default true). Each is a hostcall per request: an access log
    /// that reads only `wasm.mcp.audit` (envoy/mcp-guard.yaml) does not need them.
    pub audit_columns: bool,
    /// What the configuration loads with but should not (a sealing key that is text): logged
    /// when it loads, printed by `mcp-guard check`.
    pub warnings: Vec<ConfigError>,
}

/// `rate_limit_service`: an `envoy.service.ratelimit.v3` service reached through an Envoy
/// cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    pub cluster: String,
    /// The `domain` of every request (default `mcp-guard`).
    pub domain: String,
    /// How long a message waits for the answer before the limit's failure mode applies.
    pub timeout_ms: u64,
}

/// Envoy's rate limit service API (`envoy.service.ratelimit.v3`), for limits of `scope: global`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRateLimitService {
    /// The Envoy cluster of the rate limit service (HTTP/2).
    cluster: String,
    /// The `domain` of every request (default `mcp-guard`).
    #[serde(default)]
    domain: Option<String>,
    /// How long a message waits for the answer before the limit's failure mode applies, 1 to
    /// 60000 (default 200).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl RateLimitService {
    fn from_config(value: Value) -> Result<RateLimitService, ConfigError> {
        let field = "rate_limit_service";
        let raw: RawRateLimitService = typed(value, field)?;
        if raw.cluster.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{field}.cluster"),
                "must name the Envoy cluster of the rate limit service",
            ));
        }
        let domain = raw.domain.unwrap_or_else(|| "mcp-guard".to_string());
        if domain.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.domain"),
                "must not be empty",
            ));
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(200);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(ConfigError::new(
                format!("{field}.timeout_ms"),
                "must be between 1 and 60000",
            ));
        }
        Ok(RateLimitService {
            cluster: raw.cluster,
            domain,
            timeout_ms,
        })
    }
}

/// One protected MCP server: the path it is served on and everything that applies to it.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    /// The MCP endpoint path, e.g. `/mcp`.
    pub path: String,
    /// The resource identifier clients derive from the URL they call (RFC 8707 / RFC 9728).
    pub resource: String,
    /// A token must name one of these in `aud` to be used here (default: `resource`), so that a
    /// token issued for one MCP server is not accepted by another behind the same filter.
    pub audiences: Vec<String>,
    /// Where the RFC 9728 metadata document for this server is served.
    pub metadata_path: String,
    /// The absolute URL of that document, as advertised in `WWW-Authenticate`.
    pub metadata_url: String,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub resource_name: Option<String>,
    /// Which route, host or cluster this server is (all given conditions must hold).
    pub matcher: Matcher,
    pub credential: Credential,
    /// Request headers removed before forwarding (lower-case): never the client's credentials
    /// upstream. Always includes [`ALWAYS_STRIPPED`], the credential's own header and the
    /// forwarded-claim headers.
    pub strip_headers: Vec<String>,
    /// Verified claims forwarded as request headers, e.g. `email` → `x-mcp-user`.
    pub forward_claims: Vec<(String, String)>,
    /// What to do when a response carries the service key: redact it, or block the response.
    pub block_key_leaks: bool,
    /// How much of tool arguments the audit records keep.
    pub audit_arguments: ArgumentsMode,
    pub policy: Policy,
    /// Approved tool (and prompt) definitions; mode `off` when the server has no `pins`.
    pub pins: Pins,
    /// Only DPoP-bound tokens are accepted (advertised as `dpop_bound_access_tokens_required`).
    pub require_dpop: bool,
    /// The list arrays this server last sent, compared rather than read again.
    pub lists_seen: KnownLists,
}

/// Conditions selecting a server beyond its path: Envoy route name, host, upstream cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    /// The Envoy route's name.
    #[serde(default)]
    pub route_name: Option<String>,
    /// The request's `:authority` as Envoy's virtual-host `domains` compare it: any case, port
    /// included (`name:*` for the name with any port). Envoy's wildcard domains are not taken.
    #[serde(default)]
    pub host: Option<String>,
    /// The upstream cluster Envoy routes to.
    #[serde(default)]
    pub cluster: Option<String>,
}

impl Matcher {
    pub fn matches(&self, route: Option<&str>, host: &str, cluster: Option<&str>) -> bool {
        self.route_name.as_deref().is_none_or(|r| Some(r) == route)
            && self.host.as_deref().is_none_or(|h| host_matches(h, host))
            && self.cluster.as_deref().is_none_or(|c| Some(c) == cluster)
    }

    pub fn is_empty(&self) -> bool {
        self == &Matcher::default()
    }

    /// Whether this match holds for every request `other` holds for: each field either
    /// unset here, or set to what `other` requires (a host `name:*` covers `name:<port>`).
    pub fn covers(&self, other: &Matcher) -> bool {
        let exact =
            |mine: &Option<String>, theirs: &Option<String>| mine.is_none() || (mine == theirs);
        let host = match (&self.host, &other.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => {
                mine.eq_ignore_ascii_case(theirs)
                    || (mine.ends_with(":*")
                        && !theirs.ends_with(":*")
                        && host_matches(mine, theirs))
            }
        };
        exact(&self.route_name, &other.route_name) && host && exact(&self.cluster, &other.cluster)
    }
}

/// Whether `:authority` is the configured host, as Envoy's virtual-host `domains` compare
/// them: case aside, literally, port included. `crm.internal` does not take
/// `crm.internal:9999`, which Envoy routes by another virtual host (unless its `domains` list
/// that form too): the filter would inject this server's key into another upstream's request.
/// `crm.internal:*` takes the name with any port, as that domain does in Envoy.
pub fn host_matches(configured: &str, authority: &str) -> bool {
    if let Some(name) = configured.strip_suffix(":*") {
        return authority.rsplit_once(':').is_some_and(|(host, port)| {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && name.eq_ignore_ascii_case(host)
        });
    }
    configured.eq_ignore_ascii_case(authority)
}

/// The service credential injected towards the upstream in place of the client's token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Lower-cased header name, e.g. `x-api-key` or `authorization`.
    pub header: String,
    /// The full header value, prefix included (e.g. `Bearer sk-…`).
    pub value: String,
    /// The byte strings that reveal the key in a response: the secret raw and base64-encoded.
    pub leak_patterns: crate::response::Patterns,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even in a debug dump.
        f.debug_struct("Credential")
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .finish()
    }
}

const DEFAULT_MAX_BODY: usize = 1024 * 1024;
const DEFAULT_CLOCK_SKEW: u64 = 60;
const DEFAULT_KEY_WAIT_MS: u64 = 3000;

/// The plugin configuration as written: the JSON Envoy hands to `on_configure`, and the
/// source of its JSON Schema ([`schema`]). Members that are parts with their own parser keep
/// their JSON here and are read into the type their schema names (`schemars(with)`), by
/// [`typed`], field by field, so that one wrong part does not hide the errors of the others.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "mcp-guard plugin configuration",
    description = "The configuration of the mcp-guard Envoy filter (the plugin configuration of its Wasm filter). See README.md, Configuration. The filter checks more than this schema can: CEL rules, URLs, header names, keys, and that the parts agree; it names the field of every error."
)]
struct RawConfig {
    /// How far `exp` and `nbf` may be off, in seconds, at most 600 (default 60).
    #[serde(default)]
    clock_skew_seconds: Option<u64>,
    /// Largest JSON-RPC request body, in bytes; 413 above (default 1048576).
    #[serde(default)]
    #[schemars(range(min = 1))]
    max_body_bytes: Option<usize>,
    /// How long a request may wait for an issuer's keys, revocation feed or introspection
    /// answer before a 503, in milliseconds (default 3000).
    #[serde(default)]
    key_wait_ms: Option<u64>,
    /// DPoP proofs (RFC 9449) for tokens bound by `cnf.jkt`.
    #[serde(default)]
    #[schemars(with = "Option<crate::dpop::RawDpop>")]
    dpop: Option<Value>,
    /// Where limits of `scope: global` are counted.
    #[serde(default)]
    #[schemars(with = "Option<RawRateLimitService>")]
    rate_limit_service: Option<Value>,
    /// Also write the per-field audit columns `wasm.mcp.<field>` (default true); false when no
    /// access log reads them.
    #[serde(default)]
    audit_columns: Option<bool>,
    /// The token issuers trusted (at least one).
    #[schemars(with = "Vec<crate::jwt::RawIssuer>", length(min = 1))]
    issuers: Vec<Value>,
    /// The MCP servers behind the filter (at least one).
    #[schemars(with = "Vec<RawServer>", length(min = 1))]
    servers: Vec<Value>,
    /// Required: the keys that seal each `Mcp-Session-Id` for its caller and server, or
    /// `{"stateless": true}` when no MCP server behind the filter keeps sessions.
    #[serde(default)]
    #[schemars(with = "Option<RawSessions>")]
    sessions: Option<Value>,
}

/// `sessions`: the sealing keys (32 bytes in base64, as `head -c32 /dev/urandom | base64`
/// prints them), given inline or by VM environment variable.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    /// The key, inline.
    #[serde(default)]
    key: Option<String>,
    /// The VM environment variable that holds the key.
    #[serde(default)]
    key_from_env: Option<String>,
    /// A second key that still opens handles, for rotation.
    #[serde(default)]
    previous_key: Option<String>,
    /// The VM environment variable that holds the previous key.
    #[serde(default)]
    previous_key_from_env: Option<String>,
    /// The cipher new handles are sealed with: `aes-256-gcm-siv` (the default; every version
    /// opens it) or `xchacha20-poly1305` (a third of the cost per new handle in Wasm; opened
    /// by this version and later only: set it once every replica runs one). Handles of either
    /// always open.
    #[serde(default)]
    #[schemars(regex(pattern = r"^(aes-256-gcm-siv|xchacha20-poly1305)$"))]
    cipher: Option<String>,
    /// No MCP server behind this filter keeps sessions: no key.
    #[serde(default)]
    stateless: bool,
}

/// What to write when the sealing key is missing (the error says it whole).
const SESSIONS_HOWTO: &str = "mcp-guard seals every Mcp-Session-Id for the caller it belongs to with this key, which every replica shares. Add \"sessions\": {\"key_from_env\": \"MCP_GUARD_SESSION_KEY\"} and set that VM environment variable to the output of `head -c32 /dev/urandom | base64` (or write that output inline as \"sessions\": {\"key\": \"...\"}); if no MCP server behind this filter keeps sessions, write \"sessions\": {\"stateless\": true} instead";

/// One protected MCP server.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// The server's name, in audit records and metrics.
    name: String,
    /// The MCP endpoint path (default `/mcp`).
    #[serde(default)]
    path: Option<String>,
    /// The resource identifier (RFC 8707): the absolute URL clients call.
    resource: String,
    /// A token's `aud` must name one of these to be used here (default: `resource`).
    #[serde(default)]
    audiences: Option<Vec<String>>,
    /// RFC 9728 metadata: the authorization servers clients get tokens from.
    #[serde(default)]
    authorization_servers: Vec<String>,
    /// RFC 9728 metadata: the scopes this server knows.
    #[serde(default)]
    scopes_supported: Vec<String>,
    /// RFC 9728 metadata: a name for people.
    #[serde(default)]
    resource_name: Option<String>,
    /// Which Envoy route, host or cluster this server is, beyond its path (all given must hold).
    #[serde(default, rename = "match")]
    #[schemars(with = "Option<Matcher>")]
    matcher: Option<Value>,
    /// The service credential injected towards the upstream.
    #[schemars(with = "RawCredential")]
    credential: Value,
    /// Client request headers removed before forwarding (default `cookie`,
    /// `proxy-authorization`, `x-api-key`, `forwarded`, `x-forwarded-host`, `x-real-ip`); the
    /// client's credentials, the forwarding headers Envoy does not rewrite, method and path
    /// overrides, the key header and the forwarded-claim headers are always removed.
    #[serde(default)]
    strip_headers: Option<Vec<String>>,
    /// Verified claims forwarded as request headers: claim name → header name.
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, String>>")]
    forward_claims: Option<Map<String, Value>>,
    /// What to do with a response that carries the service key (default `redact`).
    #[serde(default)]
    key_leak: Option<KeyLeak>,
    /// How much of tool arguments the audit records keep (default `none`).
    #[serde(default)]
    audit_arguments: Option<ArgumentsMode>,
    /// The policy: named CEL rules, and limits.
    #[schemars(schema_with = "policy_schema")]
    policy: Value,
    /// Approved tool (and prompt) definitions, as `mcp-guard pin` writes them.
    #[serde(default)]
    #[schemars(schema_with = "pins_schema")]
    pins: Option<Value>,
    /// Only DPoP-bound tokens are accepted.
    #[serde(default)]
    require_dpop: bool,
}

/// `servers[].key_leak`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum KeyLeak {
    /// The key is replaced by `[REDACTED]`.
    #[default]
    Redact,
    /// The response is refused.
    Block,
}

fn policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "$ref": "policy.schema.json" })
}

fn pins_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "$ref": "pins.schema.json" })
}

/// The JSON Schema of the plugin configuration, generated from the types that parse it
/// (`RawConfig` and its parts); checked in as `policies/config.schema.json` (a test fails
/// when it drifts). Policies and pins refer to their own schemas, next to it.
pub fn schema() -> Value {
    /// Doc comments are wrapped at 100 columns: descriptions are not.
    fn unwrap_descriptions(value: &mut Value) {
        match value {
            Value::Object(members) => {
                for (key, member) in members.iter_mut() {
                    match member {
                        Value::String(text) if key == "description" => {
                            *text = text.replace('\n', " ");
                        }
                        other => unwrap_descriptions(other),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
            _ => {}
        }
    }
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<RawConfig>().to_value();
    unwrap_descriptions(&mut schema);
    if let Value::Object(members) = &mut schema {
        members.insert("$id".into(), Value::String("config.schema.json".into()));
    }
    schema
}

/// Removed from every forwarded request unless the configuration lists its own set: besides
/// credentials, the forwarding headers Envoy does not rewrite (`Forwarded`, `X-Forwarded-Host`,
/// `X-Real-IP`), which a framework trusting its proxy takes for the client's address or the
/// host it was called by. Envoy is the edge in the shipped templates (`use_remote_address`),
/// so from a client they are forged; `X-Forwarded-For` and `X-Forwarded-Proto` are Envoy's.
pub const DEFAULT_STRIP_HEADERS: &[&str] = &[
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "forwarded",
    "x-forwarded-host",
    "x-real-ip",
];
/// What the filter removes from a server's requests, and hides from its rules: `list` (the
/// server's `strip_headers`, else [`DEFAULT_STRIP_HEADERS`]) and, whatever the list says, the
/// client's token and other credentials it may carry (cookies, proxy credentials), the
/// forwarding, method- and path-override headers, and `extra`: any client copy of the service
/// key header and of a header that carries forwarded claims.
pub fn stripped_headers<'a>(
    mut list: Vec<String>,
    extra: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    for must in ALWAYS_STRIPPED
        .iter()
        .chain(FORWARDING_HEADERS)
        .chain(METHOD_OVERRIDE_HEADERS)
        .chain(PATH_OVERRIDE_HEADERS)
        .copied()
        .chain(extra)
    {
        if !list.iter().any(|h| h == must) {
            list.push(must.to_string());
        }
    }
    list
}

/// Removed from every forwarded request, added to any `strip_headers` list: the forwarding
/// headers Envoy does not rewrite (see [`DEFAULT_STRIP_HEADERS`]). A list of one's own (to add a
/// header) must not let a forged client address or host through; a front proxy's values are
/// set again on the route (`request_headers_to_add`) where an upstream needs them.
pub const FORWARDING_HEADERS: &[&str] = &["forwarded", "x-forwarded-host", "x-real-ip"];
/// Removed from every forwarded request, added to any `strip_headers` list: what a client uses
/// to authenticate never reaches the upstream.
pub const ALWAYS_STRIPPED: &[&str] = &["authorization", "cookie", "proxy-authorization", "dpop"];
/// Removed from every forwarded request too: headers an upstream framework may take for the
/// HTTP method in place of the real one (Express `method-override`, Rack, Symfony, Laravel,
/// ASP.NET, OData, Google APIs; `x-original-method` / `x-forwarded-method` as nginx
/// `auth_request` and Traefik `ForwardAuth` set them). The filter decided on the real method, so
/// the upstream must see that one.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
];
/// Removed from every forwarded request too: headers an upstream framework or rewrite layer may
/// take for the request's path or its prefix in place of `:path` (IIS URL Rewrite and older
/// Symfony/Zend read `x-original-url` / `x-rewrite-url`; nginx `auth_request` and Traefik
/// `ForwardAuth` setups add `x-original-uri` / `x-forwarded-uri`; Spring and ASP.NET take
/// `x-forwarded-prefix` for the path base). The filter decided on the real path.
pub const PATH_OVERRIDE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-prefix",
];
/// The service credential: a header, and its value inline or from a VM environment variable.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    /// The header name, e.g. `x-api-key` or `authorization`.
    header: String,
    /// Written before the secret, e.g. `Bearer `.
    #[serde(default)]
    prefix: String,
    /// The secret, inline (at least 8 characters).
    #[serde(default)]
    value: Option<String>,
    /// The VM environment variable that holds the secret.
    #[serde(default)]
    value_from_env: Option<String>,
    /// Keys this one replaced, still redacted from answers and never sent: while a rotation's
    /// overlap lasts the upstream accepts the previous key, and a server (or a stream's
    /// replayed backlog) may still echo it.
    #[serde(default)]
    previous_values: Vec<String>,
    /// The same, each from a VM environment variable.
    #[serde(default)]
    previous_values_from_env: Vec<String>,
}

impl Config {
    /// Parses and compiles the plugin configuration. The error is the first one found; the
    /// others, if any, follow in its message (see [`Config::load`]).
    pub fn from_json(bytes: &[u8], env: &dyn Environment) -> Result<Config, ConfigError> {
        Config::load(bytes, env).map_err(|errors| {
            let mut errors = errors.into_iter();
            let mut first = errors
                .next()
                .unwrap_or_else(|| ConfigError::new("", "invalid configuration"));
            let rest: Vec<String> = errors.map(|e| e.to_string()).collect();
            if !rest.is_empty() {
                first.message = format!(
                    "{} (and {} more: {})",
                    first.message,
                    rest.len(),
                    rest.join("; ")
                );
            }
            first
        })
    }

    /// Parses and compiles the plugin configuration, reporting every error found: the first of
    /// each part (the top-level members, each issuer, each server, `rate_limit_service`,
    /// `sessions`, `dpop`), in that order. Only a configuration whose top level does not
    /// parse (not JSON, an unknown or mistyped member) stops at that one error.
    pub fn load(bytes: &[u8], env: &dyn Environment) -> Result<Config, Vec<ConfigError>> {
        let root: Value = serde_json::from_slice(bytes).map_err(|e| {
            vec![ConfigError::new(
                "",
                format!("configuration is not valid JSON: {e}"),
            )]
        })?;
        if !root.is_object() {
            return Err(vec![ConfigError::new(
                "",
                "configuration must be a JSON object",
            )]);
        }
        let raw: RawConfig = typed(root, "").map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let skew = raw.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW);
        if skew > 600 {
            errors.push(ConfigError::new(
                "clock_skew_seconds",
                "must be at most 600 seconds",
            ));
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
        if max_body_bytes == 0 {
            errors.push(ConfigError::new("max_body_bytes", "must be positive"));
        }

        if raw.issuers.is_empty() {
            errors.push(ConfigError::new(
                "issuers",
                "at least one issuer is required",
            ));
        }
        let mut issuers: Vec<Issuer> = Vec::with_capacity(raw.issuers.len());
        for (i, value) in raw.issuers.into_iter().enumerate() {
            let field = format!("issuers[{i}]");
            let issuer = Issuer::from_config(value, &field).and_then(|mut issuer| {
                issuer.resolve_secrets(env, &field)?;
                if issuer.introspection.is_some()
                    && issuers.iter().any(|o| o.introspection.is_some())
                {
                    return Err(ConfigError::new(
                        format!("{field}.introspect"),
                        "only one issuer may introspect: opaque tokens do not name their issuer",
                    ));
                }
                if issuers.iter().any(|o| o.issuer == issuer.issuer) {
                    return Err(ConfigError::new(
                        format!("{field}.issuer"),
                        format!("issuer {:?} is configured twice", issuer.issuer),
                    ));
                }
                Ok(issuer)
            });
            match issuer {
                Ok(issuer) => issuers.push(issuer),
                Err(e) => errors.push(e),
            }
        }

        if raw.servers.is_empty() {
            errors.push(ConfigError::new(
                "servers",
                "at least one server is required",
            ));
        }
        let mut servers: Vec<Server> = Vec::with_capacity(raw.servers.len());
        // Each loaded server's position in the configuration (errors name it).
        let mut positions: Vec<usize> = Vec::with_capacity(raw.servers.len());
        for (i, value) in raw.servers.into_iter().enumerate() {
            let field = format!("servers[{i}]");
            let server = Server::from_config(value, &field, env).and_then(|server| {
                if servers
                    .iter()
                    .any(|s| s.path == server.path && s.matcher == server.matcher)
                {
                    return Err(ConfigError::new(
                        format!("{field}.match"),
                        format!(
                            "another server has path {:?} and the same match: give each a distinct route_name, host or cluster",
                            server.path
                        ),
                    ));
                }
                // The first server whose match holds is chosen: one listed before on the same
                // path whose match holds wherever this one's does takes all its requests (its
                // policy decides them, its key goes to this server's upstream).
                if let Some(j) = servers
                    .iter()
                    .position(|s| s.path == server.path && s.matcher.covers(&server.matcher))
                {
                    let first = positions.get(j).copied().unwrap_or(j);
                    return Err(ConfigError::new(
                        format!("{field}.match"),
                        format!(
                            "servers[{first}] is listed before on path {:?} and its match holds for every request this one's does, so this server would never be chosen: list the more specific server first",
                            server.path
                        ),
                    ));
                }
                // Sealed handles, pins, declarations and limit counters are kept per server
                // name: two entries of one name would open each other's handles.
                if let Some(j) = servers.iter().position(|s| s.name == server.name) {
                    let first = positions.get(j).copied().unwrap_or(j);
                    return Err(ConfigError::new(
                        format!("{field}.name"),
                        format!(
                            "{:?} is already the name of servers[{first}]: give each server its own name (session and task handles, pins and limits are kept per name)",
                            server.name
                        ),
                    ));
                }
                Ok(server)
            });
            match server {
                Ok(server) => {
                    positions.push(i);
                    servers.push(server);
                }
                Err(e) => errors.push(e),
            }
        }
        let rate_limit_service = raw
            .rate_limit_service
            .map(RateLimitService::from_config)
            .transpose()
            .unwrap_or_else(|e| {
                errors.push(e);
                None
            });
        if rate_limit_service.is_none() {
            for (i, server) in positions.iter().zip(&servers) {
                if let Some(j) = server
                    .policy
                    .limits
                    .iter()
                    .position(|l| l.scope == crate::policy::Scope::Global)
                {
                    errors.push(ConfigError::new(
                        format!("servers[{i}].policy.limits[{j}].scope"),
                        "a global limit needs `rate_limit_service` (its cluster) in the configuration",
                    ));
                }
            }
        }
        let mut warnings = Vec::new();
        let sessions =
            sessions_from_config(raw.sessions, env, &mut warnings).map_err(|e| errors.push(e));
        let dpop =
            crate::dpop::DpopConfig::from_config(raw.dpop, "dpop").map_err(|e| errors.push(e));
        if let (Ok(d), None) = (&dpop, &rate_limit_service) {
            if d.fleet {
                errors.push(ConfigError::new(
                    "dpop.replay",
                    "`fleet` needs `rate_limit_service` (its cluster) in the configuration, \
                     where used proofs are spent; or write `local`",
                ));
            }
        }
        match (sessions, dpop) {
            (Ok(sessions), Ok(dpop)) if errors.is_empty() => Ok(Config {
                authenticator: Authenticator::new(issuers, skew),
                servers,
                max_body_bytes,
                key_wait_ms: raw.key_wait_ms.unwrap_or(DEFAULT_KEY_WAIT_MS),
                sessions,
                dpop,
                rate_limit_service,
                audit_columns: raw.audit_columns.unwrap_or(true),
                warnings,
            }),
            _ => Err(errors),
        }
    }

    /// The first server serving `path` whose match holds for this route, host and cluster.
    pub fn select_server(
        &self,
        path: &str,
        route: Option<&str>,
        host: &str,
        cluster: Option<&str>,
    ) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.path == path && s.matcher.matches(route, host, cluster))
    }

    /// The server whose RFC 9728 metadata document lives at `path`, if any. The root
    /// well-known URL names the resource at the origin (RFC 9728 §3.3): it answers for a
    /// server whose resource is the origin, else for the only server here (clients that fall
    /// back to the root), else for none. With several servers, answering with the first would
    /// send a client of another one to the first one's authorization servers and resource.
    pub fn server_for_metadata(
        &self,
        path: &str,
        route: Option<&str>,
        host: &str,
        cluster: Option<&str>,
    ) -> Option<&Server> {
        let mut here = self
            .servers
            .iter()
            .filter(|s| s.matcher.matches(route, host, cluster));
        if let Some(exact) = here.clone().find(|s| s.metadata_path == path) {
            return Some(exact);
        }
        if path != crate::url::WELL_KNOWN {
            return None;
        }
        match (here.next(), here.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

impl Server {
    fn from_config(
        value: Value,
        field: &str,
        env: &dyn Environment,
    ) -> Result<Server, ConfigError> {
        let raw: RawServer = typed(value, field)?;
        if raw.name.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        let path = raw.path.unwrap_or_else(|| "/mcp".to_string());
        if !path.starts_with('/') || path.contains('?') || path.contains('#') {
            return Err(ConfigError::new(
                format!("{field}.path"),
                "must be an absolute path without query or fragment, e.g. \"/mcp\"",
            ));
        }
        let (origin, resource_path) = crate::url::split_resource(&raw.resource)
            .map_err(|m| ConfigError::new(format!("{field}.resource"), m))?;
        let metadata_path = crate::url::metadata_path(resource_path);
        let metadata_url = format!("{origin}{metadata_path}");
        let credential =
            Credential::from_config(raw.credential, &format!("{field}.credential"), env)?;
        let matcher: Matcher = match raw.matcher {
            Some(m) => typed(m, &format!("{field}.match"))?,
            None => Matcher::default(),
        };
        // A wildcard would be compared literally and never match (or, if it were matched, the
        // first server listed would win where Envoy picks the most specific domain).
        if let Some(host) = &matcher.host {
            if host.is_empty() || host.strip_suffix(":*").unwrap_or(host).contains('*') {
                return Err(ConfigError::new(
                    format!("{field}.match.host"),
                    format!(
                        "{host:?} is not an exact host: write the host (and port) as clients send \
                         it, or `name:*` for any port; for Envoy's wildcard domains, match on \
                         route_name instead"
                    ),
                ));
            }
        }
        let mut forward_claims = Vec::new();
        for (claim, header) in raw.forward_claims.unwrap_or_default() {
            let at = format!("{field}.forward_claims.{claim}");
            let header = header
                .as_str()
                .map(str::to_ascii_lowercase)
                .filter(|h| is_header_name(h))
                .ok_or_else(|| ConfigError::new(&at, "must be a valid HTTP header name"))?;
            if header == "authorization" || header == credential.header || header.starts_with(':') {
                return Err(ConfigError::new(
                    at,
                    "must not be a credential or pseudo header",
                ));
            }
            forward_claims.push((claim, header));
        }
        let strip_headers: Vec<String> = match raw.strip_headers {
            Some(list) => list.iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => DEFAULT_STRIP_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        };
        if let Some(bad) = strip_headers.iter().position(|h| !is_header_name(h)) {
            return Err(ConfigError::new(
                format!("{field}.strip_headers[{bad}]"),
                "is not a valid HTTP header name",
            ));
        }
        let extra = std::iter::once(credential.header.as_str())
            .chain(forward_claims.iter().map(|(_, h)| h.as_str()));
        let strip_headers = stripped_headers(strip_headers, extra);
        let block_key_leaks = raw.key_leak.unwrap_or_default() == KeyLeak::Block;
        let audit_arguments = raw.audit_arguments.unwrap_or_default();
        let policy = Policy::from_config(raw.policy, &format!("{field}.policy"))?;
        let pins = match raw.pins {
            Some(p) => Pins::from_config(p, &format!("{field}.pins"))?,
            None => Pins::default(),
        };
        let audiences = match raw.audiences {
            None => vec![raw.resource.clone()],
            Some(list) => {
                crate::jwt::check_audiences(
                    &list,
                    &format!("{field}.audiences"),
                    ", or leave it out to use `resource`",
                )?;
                list
            }
        };
        Ok(Server {
            audiences,
            audit_arguments,
            matcher,
            strip_headers,
            forward_claims,
            block_key_leaks,
            name: raw.name,
            path,
            resource: raw.resource,
            metadata_path,
            metadata_url,
            authorization_servers: raw.authorization_servers,
            scopes_supported: raw.scopes_supported,
            resource_name: raw.resource_name,
            credential,
            policy,
            pins,
            require_dpop: raw.require_dpop,
            lists_seen: KnownLists::default(),
        })
    }
}

impl Credential {
    fn from_config(
        value: Value,
        field: &str,
        env: &dyn Environment,
    ) -> Result<Credential, ConfigError> {
        // serde quotes the offending value ("invalid type: string \"sk-…\""): for a credential
        // that may be the secret itself, and the error goes to Envoy's log. Never quote it.
        let raw: RawCredential = typed(value, field).map_err(|e| {
            if e.message.starts_with("invalid type") || e.message.starts_with("invalid value") {
                ConfigError::new(
                    e.field,
                    "has the wrong type: a credential is an object with string members header, prefix and value or value_from_env (the value given is not shown: it may be the secret)",
                )
            } else {
                e
            }
        })?;
        let header = raw.header.to_ascii_lowercase();
        if !is_header_name(&header) || header.starts_with(':') {
            return Err(ConfigError::new(
                format!("{field}.header"),
                format!("{:?} is not a valid HTTP header name", raw.header),
            ));
        }
        let secret = match (raw.value, raw.value_from_env) {
            (Some(v), None) => v,
            (None, Some(name)) => env.var(&name).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.value_from_env"),
                    format!("environment variable {name:?} is not set for this VM"),
                )
            })?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field,
                    "set exactly one of \"value\" and \"value_from_env\", not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    field,
                    "one of \"value\" or \"value_from_env\" is required",
                ))
            }
        };
        if secret.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.value"),
                "must not be empty",
            ));
        }
        if secret.starts_with([' ', '\t']) || secret.ends_with([' ', '\t']) {
            // The upstream's HTTP parser drops them, so it sees (and may echo) the key without
            // them, which the redaction would not recognise.
            return Err(ConfigError::new(
                format!("{field}.value"),
                "begins or ends with a space or tab: remove it (an HTTP header value cannot carry it)",
            ));
        }
        let value = format!("{}{}", raw.prefix, secret);
        if !is_header_value(&value) {
            return Err(ConfigError::new(
                format!("{field}.value"),
                "contains characters not allowed in an HTTP header value",
            ));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::new(
                format!("{field}.value"),
                "is shorter than 8 characters: too short to be a secret, or to be recognised in responses",
            ));
        }
        let mut previous = Vec::new();
        for (i, key) in raw.previous_values.into_iter().enumerate() {
            previous.push((format!("{field}.previous_values[{i}]"), key));
        }
        for (i, name) in raw.previous_values_from_env.into_iter().enumerate() {
            let at = format!("{field}.previous_values_from_env[{i}]");
            let key = env.var(&name).ok_or_else(|| {
                ConfigError::new(
                    at.clone(),
                    format!("environment variable {name:?} is not set for this VM"),
                )
            })?;
            previous.push((at, key));
        }
        let mut patterns = leak_pattern_list(&secret);
        for (at, key) in previous {
            // As for the key itself: a value read from a file often ends in a newline, which
            // the echoed key does not hold, so it would never be found.
            if !is_header_value(&key) || key.starts_with([' ', '\t']) || key.ends_with([' ', '\t'])
            {
                return Err(ConfigError::new(
                    at,
                    "contains characters not allowed in an HTTP header value, or begins or ends \
                     with a space (a trailing newline?)",
                ));
            }
            if key.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::new(
                    at,
                    "is shorter than 8 characters: too short to be recognised in responses",
                ));
            }
            patterns.extend(leak_pattern_list(&key));
        }
        Ok(Credential {
            header,
            leak_patterns: crate::response::Patterns::widened(patterns),
            value,
        })
    }
}

/// The `sessions` member: the sealing keys, or `None` for `stateless: true`.
fn sessions_from_config(
    value: Option<Value>,
    env: &dyn Environment,
    warnings: &mut Vec<ConfigError>,
) -> Result<Option<crate::seal::Keys>, ConfigError> {
    const FIELD: &str = "sessions";
    let Some(value) = value else {
        return Err(ConfigError::new(
            FIELD,
            format!("is required: {SESSIONS_HOWTO}"),
        ));
    };
    // As for credentials: serde would quote a misplaced value, which may be the key itself.
    let raw: RawSessions = typed(value, FIELD).map_err(|e| {
        if e.message.starts_with("invalid type") || e.message.starts_with("invalid value") {
            ConfigError::new(
                e.field,
                "has the wrong type: sessions is an object with string members key or key_from_env, previous_key or previous_key_from_env and cipher, or the boolean stateless (the value given is not shown: it may be the key)",
            )
        } else {
            e
        }
    })?;
    let current = secret_key(raw.key, raw.key_from_env, "key", env)?;
    let previous = secret_key(
        raw.previous_key,
        raw.previous_key_from_env,
        "previous_key",
        env,
    )?;
    for (name, key) in [("key", &current), ("previous_key", &previous)] {
        // 32 random bytes are all printable ASCII once in ~10^14 draws: a key that is text is
        // a passphrase (or the demo's published key), which can be guessed or is known.
        if key.is_some_and(|k| k.iter().all(|b| (0x20..0x7f).contains(b))) {
            warnings.push(ConfigError::new(
                format!("sessions.{name}"),
                "is text, not 32 random bytes (the value is not shown): whoever knows or guesses it can forge session, task and event handles for any caller. Use the output of `head -c32 /dev/urandom | base64` (the demo's key is published: never use it)",
            ));
        }
    }
    let cipher = match raw.cipher.as_deref() {
        None => crate::seal::Cipher::default(),
        // The value is not quoted back: it may be a key written in the wrong member.
        Some(name) => crate::seal::Cipher::named(name).ok_or_else(|| {
            ConfigError::new(
                "sessions.cipher",
                "must be \"aes-256-gcm-siv\" (the default) or \"xchacha20-poly1305\" (the value given is not shown: it may be a key)",
            )
        })?,
    };
    match (raw.stateless, current, previous) {
        (true, None, None) if raw.cipher.is_none() => Ok(None),
        (true, None, None) => Err(ConfigError::new(
            "sessions.stateless",
            "is true, so nothing is sealed: remove cipher, or stateless",
        )),
        (true, _, _) => Err(ConfigError::new(
            "sessions.stateless",
            "is true, so no key may be given: remove the keys, or stateless",
        )),
        (false, Some(current), previous) => Ok(Some(
            crate::seal::Keys::new(&current, previous.as_ref()).sealing_with(cipher),
        )),
        (false, None, _) => Err(ConfigError::new(
            "sessions.key",
            format!("is required (or key_from_env): {SESSIONS_HOWTO}"),
        )),
    }
}

/// One sealing key, given inline (`<name>`) or by environment variable (`<name>_from_env`):
/// 32 bytes in base64. Errors never show the value.
fn secret_key(
    inline: Option<String>,
    from_env: Option<String>,
    name: &str,
    env: &dyn Environment,
) -> Result<Option<[u8; crate::seal::KEY_BYTES]>, ConfigError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let (text, field) = match (inline, from_env) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("sessions.{name}"),
                format!("set exactly one of \"{name}\" and \"{name}_from_env\", not both"),
            ))
        }
        (Some(v), None) => (v, format!("sessions.{name}")),
        (None, Some(var)) => {
            let field = format!("sessions.{name}_from_env");
            let v = env.var(&var).ok_or_else(|| {
                ConfigError::new(
                    &field,
                    format!("environment variable {var:?} is not set for this VM"),
                )
            })?;
            (v, field)
        }
    };
    let text = text.trim();
    let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok());
    decoded
        .and_then(|bytes| <[u8; crate::seal::KEY_BYTES]>::try_from(bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            ConfigError::new(
                field,
                "must be 32 bytes in base64, e.g. the output of `head -c32 /dev/urandom | base64` (the value given is not shown)",
            )
        })
}

/// The secret as it could appear in a response: raw, and base64-encoded at every byte offset,
/// in both alphabets, with or without padding — as inside `Basic base64(user:secret)` — each
/// also as JSON encoders spell it ([`json_spellings`]).
///
/// The base64 of the secret preceded by 0, 1 or 2 other bytes (offset mod 3) has characters
/// that depend on those unknown neighbours: the first 0, 2 or 3, and the last one when the
/// encoded length is not a multiple of 3 bytes. What is left, the core, is the same wherever
/// the secret sits; the patterns are the three cores (standard and URL-safe alphabets, each
/// as JSON encoders may spell it). A match is redacted together with the neighbouring
/// characters that carry bits of the secret. Secrets are at least 8 bytes
/// ([`MIN_SECRET_BYTES`]), so every core is at least 10 characters (60 bits): ordinary text
/// does not match by chance.
#[cfg(test)]
fn leak_patterns(secret: &str) -> crate::response::Patterns {
    crate::response::Patterns::widened(leak_pattern_list(secret))
}

fn leak_pattern_list(secret: &str) -> Vec<crate::response::Pattern> {
    use crate::response::{Pattern, Widen};
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use base64::Engine as _;
    let mut out: Vec<Pattern> = Vec::new();
    let mut add = |text: String, widen: Widen| {
        let spellings = json_spellings(&text);
        // Percent-encoded (a URL, a form, a `Location`): a neighbouring base64 character may
        // be written as three, so the redaction around such a core reaches three times as far.
        let escaped = Widen {
            left: widen.left * 3,
            right: widen.right * 3,
        };
        let percent = percent_spellings(&text).into_iter().map(|b| (b, escaped));
        for (bytes, widen) in std::iter::once(text.into_bytes())
            .chain(spellings)
            .map(|b| (b, widen))
            .chain(percent)
        {
            if !out.iter().any(|p| p.bytes == bytes) {
                out.push(Pattern { bytes, widen });
            }
        }
    };
    add(secret.to_string(), Widen::default());
    for (offset, left) in [(0usize, 0usize), (1, 2), (2, 3)] {
        let mut input = vec![0u8; offset];
        input.extend_from_slice(secret.as_bytes());
        let encoded = STANDARD_NO_PAD.encode(&input);
        // Characters that depend on the bytes before the secret, and on the byte after it.
        let right = usize::from(input.len() % 3 != 0);
        let Some(core) = encoded.get(left..encoded.len().saturating_sub(right)) else {
            continue;
        };
        // Of those, one on each side still carries bits of the secret: redacted with it.
        let widen = Widen {
            left: left.min(1),
            right,
        };
        add(core.to_string(), widen);
        let url_safe: String = core
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        add(url_safe, widen);
    }
    out
}

/// How URL encoders write this text, where that differs from the text: every byte outside
/// RFC 3986's unreserved set as `%XX`, in upper- or lower-case hex, `/` escaped or kept (as in
/// a path). A key with `+`, `/` or `=` (base64-style keys) echoed in a URL, a query or a form
/// body is the key all the same to whoever decodes it.
fn percent_spellings(text: &str) -> Vec<Vec<u8>> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let mut out: Vec<Vec<u8>> = Vec::new();
    for keep_slash in [false, true] {
        for upper in [true, false] {
            let mut spelled = Vec::with_capacity(text.len() * 3);
            for &b in text.as_bytes() {
                if unreserved(b) || (keep_slash && b == b'/') {
                    spelled.push(b);
                } else if upper {
                    spelled.extend_from_slice(format!("%{b:02X}").as_bytes());
                } else {
                    spelled.extend_from_slice(format!("%{b:02x}").as_bytes());
                }
            }
            if spelled != text.as_bytes() && !out.contains(&spelled) {
                out.push(spelled);
            }
        }
    }
    out
}

/// How JSON encoders write this text inside a string, where that differs from the text: a
/// server echoing the key in JSON spells it one of these ways. `"` and `\` must be escaped;
/// beyond that encoders differ, each consistently, and JSON lets any character be written as
/// `\uXXXX` in either case:
/// - PHP and some Java encoders write `/` as `\/`; PHP (by default) and Python (`ensure_ascii`)
///   write every non-ASCII character as a lower-case `\u` escape (a UTF-16 surrogate pair
///   beyond U+FFFF);
/// - .NET's System.Text.Json (its default encoder) writes `"+&<>'`, `` ` `` and every non-ASCII
///   character as upper-case ones;
/// - Go's `encoding/json` writes `<>&` and U+2028/U+2029 as lower-case ones; Gson (by default)
///   also `=` and `'`;
/// - and, for encoders not listed, every character any of these escapes, in either case.
///
/// One spelling per family, so a key or a base64 core with such characters adds a few
/// patterns, others none. (Written here: the JSON crates each implement one encoder's choices,
/// not the set of them.)
fn json_spellings(text: &str) -> Vec<Vec<u8>> {
    /// One encoder family: the characters it writes as `\u` escapes (and every non-ASCII one
    /// when `non_ascii`), in upper or lower case, and whether it writes `/` as `\/`.
    struct Family {
        escaped: &'static str,
        non_ascii: bool,
        upper: bool,
        slash: bool,
    }
    const ANY: &str = "\"+&<>'`=/\u{2028}\u{2029}";
    let family = |escaped, non_ascii, upper, slash| Family {
        escaped,
        non_ascii,
        upper,
        slash,
    };
    let families = [
        // serde_json, JavaScript, Python without ensure_ascii: only what must be.
        family("", false, false, false),
        family("", false, false, true),
        // PHP's default.
        family("", true, false, true),
        // Python's default.
        family("", true, false, false),
        // .NET.
        family("\"+&<>'`", true, true, false),
        // Go.
        family("<>&\u{2028}\u{2029}", false, false, false),
        // Gson.
        family("<>&='\u{2028}\u{2029}", false, false, false),
        family(ANY, true, false, false),
        family(ANY, true, true, false),
    ];
    let mut out: Vec<Vec<u8>> = Vec::new();
    for f in families {
        let mut spelled = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            if f.escaped.contains(c) || (f.non_ascii && !c.is_ascii()) {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units).iter() {
                    spelled.push_str(&if f.upper {
                        format!("\\u{unit:04X}")
                    } else {
                        format!("\\u{unit:04x}")
                    });
                }
            } else {
                match c {
                    '"' => spelled.push_str("\\\""),
                    '\\' => spelled.push_str("\\\\"),
                    '/' if f.slash => spelled.push_str("\\/"),
                    c => spelled.push(c),
                }
            }
        }
        let spelled = spelled.into_bytes();
        if spelled != text.as_bytes() && !out.contains(&spelled) {
            out.push(spelled);
        }
    }
    out
}

/// The shortest service secret accepted: shorter ones are guessable, and their encodings too
/// short to be told from ordinary text in responses.
pub const MIN_SECRET_BYTES: usize = 8;

#[cfg(test)]
mod credential_tests {
    use super::*;
    use serde_json::json;

    struct NoEnv;
    impl Environment for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn a_misplaced_secret_is_never_quoted_in_the_error() {
        for (credential, secret) in [
            (
                json!("sk-live-abcdefgh12345678"),
                "sk-live-abcdefgh12345678",
            ),
            (
                json!({ "header": "x-api-key", "value": 98_765_432_109_876_u64 }),
                "98765432109876",
            ),
            (
                json!({ "header": "x-api-key", "value": ["sk-in-a-list-12345"] }),
                "sk-in-a-list-12345",
            ),
        ] {
            let e = Credential::from_config(credential, "servers[0].credential", &NoEnv)
                .expect_err("not a credential");
            assert!(e.field.starts_with("servers[0].credential"), "{e}");
            assert!(e.message.starts_with("has the wrong type"), "{e}");
            assert!(!e.to_string().contains(secret), "{e}");
        }
        // Errors that quote no value keep serde's own words.
        let e = Credential::from_config(json!({ "value": "sk-abcdefgh" }), "c", &NoEnv)
            .expect_err("no header");
        assert_eq!(e.field, "c.header");
    }
}

#[cfg(test)]
mod leak_pattern_tests {
    use super::*;
    use crate::response::{contains_any, redact};
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;

    /// The key base64-encoded after any prefix (every byte offset) and before any suffix, in
    /// both alphabets, padded or not: found, and once redacted no decoding reveals the key.
    #[test]
    fn the_key_is_found_base64_encoded_at_every_offset() {
        let engines = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD];
        for key in [
            "demo-service-key-0001",
            "sk-??>>~~12",
            "12345678",
            "\u{e9}t\u{e9}-key-\u{fffd}",
        ] {
            let patterns = leak_patterns(key);
            for prefix in [
                "",
                "a",
                "ab",
                "abc",
                "user:",
                "svc-account:",
                "\u{ff}\u{fe}",
            ] {
                for suffix in ["", "x", "xy", ":", "\n--"] {
                    let plain = format!("{prefix}{key}{suffix}");
                    for engine in engines {
                        let encoded = engine.encode(&plain);
                        let text = format!("{{\"auth\":\"Basic {encoded}\"}}");
                        assert!(
                            contains_any(text.as_bytes(), &patterns),
                            "{plain:?} {encoded}"
                        );
                        let mut out = text.clone().into_bytes();
                        assert_eq!(redact(&mut out, &patterns), 1, "{plain:?} {encoded}");
                        let out = String::from_utf8(out).unwrap();
                        assert!(
                            out.starts_with("{\"auth\":\"Basic ") && out.ends_with("\"}"),
                            "{out}"
                        );
                        assert!(out.contains("[REDACTED]"), "{out}");
                        // Left of the redaction: exactly the characters that depend on the
                        // prefix alone, so no bit of the key.
                        let p = prefix.len();
                        let left = out
                            .trim_start_matches("{\"auth\":\"Basic ")
                            .split("[REDACTED]")
                            .next()
                            .unwrap();
                        assert_eq!(left, &encoded[..p / 3 * 4 + p % 3], "{plain:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn cores_are_long_enough_not_to_match_ordinary_text() {
        // The shortest secret: every core at least 10 characters.
        let patterns = leak_patterns("abcdefgh");
        assert!(format!("{patterns:?}").starts_with("Patterns("));
        let text =
            b"The quick brown fox jumps over the lazy dog; base64 of nothing: AAAAAAAAAAAAAAAA";
        assert!(!contains_any(text, &patterns));
        for offset in 0..3 {
            let mut input = vec![0u8; offset];
            input.extend_from_slice(b"abcdefgh");
            let encoded = STANDARD_NO_PAD.encode(&input);
            let core_len = encoded.len() - [0, 2, 3][offset] - usize::from(input.len() % 3 != 0);
            assert!(core_len >= 10, "{offset}: {core_len}");
        }
    }

    #[test]
    fn the_key_as_json_encoders_escape_it_is_found_too() {
        // A key with characters encoders escape, raw and inside `Basic base64(user:key)`.
        let key = "k+&<>'`\"\\-0001";
        let patterns = leak_patterns(key);
        let basic = STANDARD.encode(format!("svc:{key}"));
        let mut spelled = Vec::new();
        for text in [key.to_string(), basic.clone()] {
            // serde_json and Python: only `"` and `\` escaped.
            spelled.push(serde_json::to_string(&text).unwrap());
            // .NET: `"+&<>'` and backquote as upper-case \u escapes.
            let mut dotnet = String::from("\"");
            for c in text.chars() {
                match c {
                    '"' | '+' | '&' | '<' | '>' | '\'' | '`' => {
                        dotnet.push_str(&format!("\\u{:04X}", c as u32))
                    }
                    '\\' => dotnet.push_str("\\\\"),
                    c => dotnet.push(c),
                }
            }
            spelled.push(dotnet + "\"");
            // Go: `<>&` as lower-case \u escapes.
            let mut go = serde_json::to_string(&text).unwrap();
            for (c, e) in [('<', "\\u003c"), ('>', "\\u003e"), ('&', "\\u0026")] {
                go = go.replace(c, e);
            }
            spelled.push(go);
        }
        assert!(basic.contains('+') || basic.contains('/'), "{basic}");
        for json in spelled {
            let mut out = format!("{{\"echo\":{json}}}").into_bytes();
            assert_eq!(redact(&mut out, &patterns), 1, "{json}");
        }
    }

    /// A key with characters a URL must escape (a base64-style key), echoed in a URL: in either
    /// hex case, `/` escaped or kept; and `Basic base64(user:key)` so echoed.
    #[test]
    fn the_key_percent_encoded_is_found_too() {
        let key = "sk+live/AbCdEf0123456789==";
        let patterns = leak_patterns(key);
        let basic = STANDARD.encode(format!("svc:{key}"));
        for echoed in [
            "https://crm.example/connect?key=sk%2Blive%2FAbCdEf0123456789%3D%3D".to_string(),
            "https://crm.example/connect?key=sk%2blive%2fAbCdEf0123456789%3d%3d".to_string(),
            "https://crm.example/sk%2Blive/AbCdEf0123456789%3D%3D/x".to_string(),
            format!(
                "https://crm.example/?auth={}",
                basic
                    .replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D")
            ),
        ] {
            let mut out = echoed.clone().into_bytes();
            assert_eq!(redact(&mut out, &patterns), 1, "{echoed}");
            let out = String::from_utf8_lossy(&out);
            assert!(!out.contains("AbCdEf0123456789"), "{out}");
        }
    }

    /// Encoders that escape more than they must: Gson (`=` and `'`), Python's and PHP's
    /// defaults (every non-ASCII character, lower case; a surrogate pair beyond U+FFFF),
    /// .NET's (upper case), and a `+` in lower case.
    #[test]
    fn the_key_as_other_json_encoders_escape_it_is_found_too() {
        for (key, echoed) in [
            (
                "c2VjcmV0LWtleS0xMjM0NTY3OA==",
                r"c2VjcmV0LWtleS0xMjM0NTY3OA\u003d\u003d",
            ),
            ("it's-a-key-0001", r"it\u0027s-a-key-0001"),
            ("\u{e9}t\u{e9}-key-0001", r"\u00e9t\u00e9-key-0001"),
            ("\u{e9}t\u{e9}-key-0001", r"\u00E9t\u00E9-key-0001"),
            ("\u{e9}t\u{e9}/key-0001", r"\u00e9t\u00e9\/key-0001"),
            ("key-\u{1f511}-0001", r"key-\ud83d\udd11-0001"),
            ("key-\u{1f511}-0001", r"key-\uD83D\uDD11-0001"),
            ("sk+live+0001", r"sk\u002blive\u002b0001"),
        ] {
            let patterns = leak_patterns(key);
            let text = format!("{{\"echo\":\"{echoed}\"}}");
            let decoded: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                decoded["echo"], key,
                "the test's spelling decodes to the key"
            );
            let mut out = text.into_bytes();
            assert_eq!(redact(&mut out, &patterns), 1, "{echoed}");
        }
        // A key of letters, digits and '-' adds no spelling (and no search) of its own.
        assert!(json_spellings("demo-service-key-0001").is_empty());
    }

    #[test]
    fn a_slash_escaped_by_a_json_encoder_is_found_too() {
        // A key whose encoding holds '/': PHP-style JSON writes it as "\/".
        let key = "\u{3ff}\u{3ff}\u{3ff}-key-0001";
        let encoded = STANDARD.encode(format!("u:{key}"));
        assert!(encoded.contains('/'), "{encoded}");
        let text = format!("{{\"a\":\"{}\"}}", encoded.replace('/', "\\/"));
        let patterns = leak_patterns(key);
        let mut out = text.into_bytes();
        assert_eq!(redact(&mut out, &patterns), 1);
    }
}

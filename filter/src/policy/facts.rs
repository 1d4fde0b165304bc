//! The CEL variables of one request, built once per request from [`Input`], borrowing its
//! strings rather than copying them. Only the variables some rule reads are built.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
    CelUInt,
};
use cel::common::value::Val;
use cel::objects::{Key, Map as ValueMap};
use cel::{Context, Env, Value as Cel};
use serde_json::{Map, Value};

use super::{Input, Item};

type Boxed<'a> = Box<dyn Val + 'a>;

/// Which of the top-level variables the rules read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Roots(u8);

impl Roots {
    pub(super) const JWT: Roots = Roots(1);
    pub(super) const MCP: Roots = Roots(2);
    pub(super) const REQUEST: Roots = Roots(4);
    pub(super) const SOURCE: Roots = Roots(8);
    pub(super) const CONNECTION: Roots = Roots(16);
    pub(super) const NOW: Roots = Roots(32);

    pub(super) fn of(name: &str) -> Option<Roots> {
        Some(match name {
            "jwt" => Roots::JWT,
            "mcp" => Roots::MCP,
            "request" => Roots::REQUEST,
            "source" => Roots::SOURCE,
            "connection" => Roots::CONNECTION,
            "now" => Roots::NOW,
            _ => return None,
        })
    }

    pub(super) fn add(&mut self, other: Roots) {
        self.0 |= other.0;
    }

    pub(super) fn has(self, other: Roots) -> bool {
        self.0 & other.0 != 0
    }
}

/// Which members of a map variable (`jwt`, `mcp`) the rules read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Fields {
    /// Only these (`jwt.groups`, `mcp.tool.name`…): the others are not built.
    Named(BTreeSet<String>),
    /// The variable itself is read (`jwt[k]`, `"x" in jwt`, `has(jwt.x)`, `size(mcp)`…).
    #[default]
    All,
}

impl Fields {
    /// Records a read of `path` (the variable's name first).
    pub(super) fn add(&mut self, path: &[&str]) {
        match (path.get(1), &mut *self) {
            (Some(field), Fields::Named(names)) => {
                names.insert((*field).to_string());
            }
            (Some(_), Fields::All) => {}
            (None, _) => *self = Fields::All,
        }
    }

    fn wants(&self, name: &str) -> bool {
        match self {
            Fields::Named(names) => names.contains(name),
            Fields::All => true,
        }
    }
}

/// What the rules of a policy read: the variables, and the members of `jwt` and `mcp`. Only
/// those are built for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reads {
    pub roots: Roots,
    pub jwt: Fields,
    pub mcp: Fields,
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            roots: Roots::default(),
            jwt: Fields::Named(BTreeSet::new()),
            mcp: Fields::Named(BTreeSet::new()),
        }
    }
}

impl Reads {
    /// Records a read of `path` (the variable's name first).
    pub(super) fn add(&mut self, path: &[&str]) {
        let Some(root) = path.first().and_then(|n| Roots::of(n)) else {
            return;
        };
        self.roots.add(root);
        match path.first() {
            Some(&"jwt") => self.jwt.add(path),
            Some(&"mcp") => self.mcp.add(path),
            _ => {}
        }
    }
}

/// Whether `mcp.tool.arguments` is present: for a message, always (empty when there are
/// none); for a listing, never, so that rules reading it fail and count as undecided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arguments {
    Present,
    Absent,
}

/// The context for one message (or, with [`Arguments::Absent`], for listings).
pub(super) fn context<'a>(
    env: &Arc<Env>,
    input: &Input<'a>,
    reads: &Reads,
    arguments: Arguments,
) -> Context<'a, 'a> {
    let roots = reads.roots;
    let mut ctx = Context::with_env(Arc::clone(env));
    if roots.has(Roots::JWT) {
        ctx.add_variable_as_val("jwt", jwt(input.claims, &reads.jwt));
    }
    if roots.has(Roots::MCP) {
        ctx.add_variable_as_val("mcp", mcp(input, arguments, &reads.mcp));
    }
    if roots.has(Roots::REQUEST) {
        ctx.add_variable_as_val("request", request(input));
    }
    if roots.has(Roots::SOURCE) {
        ctx.add_variable_as_val("source", object([("address", text(input.source_address))]));
    }
    if roots.has(Roots::CONNECTION) {
        ctx.add_variable_as_val(
            "connection",
            object([("mtls", Box::new(CelBool::from(input.mtls)) as Boxed)]),
        );
    }
    if roots.has(Roots::NOW) {
        let now = chrono::DateTime::from_timestamp(input.now, 0).unwrap_or_default();
        ctx.add_variable_as_val("now", Box::new(CelTimestamp::from(now.fixed_offset())));
    }
    ctx
}

/// Replaces `mcp` with a call of `item` without arguments, for a listing.
pub(super) fn set_listing_item<'a>(
    ctx: &mut Context<'a, 'a>,
    reads: &Reads,
    input: &Input<'a>,
    item: Item<'_>,
) {
    if !reads.roots.has(Roots::MCP) {
        return;
    }
    let mut call = input.clone();
    let (method, tool, prompt, uri) = match item {
        Item::Tool(name) => ("tools/call", name, "", ""),
        Item::Prompt(name) => ("prompts/get", "", name, ""),
        Item::Resource(uri) => ("resources/read", "", "", uri),
    };
    call.method = method;
    call.tool = None;
    call.prompt = None;
    call.resource_uri = None;
    // The item's strings live shorter than the context: copy them.
    let value = mcp_with(
        &call,
        Arguments::Absent,
        &reads.mcp,
        owned(tool.to_string()),
        owned(prompt.to_string()),
        owned(uri.to_string()),
    );
    ctx.add_variable_as_val("mcp", value);
}

fn text(s: &str) -> Boxed<'_> {
    Box::new(CelString::from(s))
}

fn owned<'a>(s: String) -> Boxed<'a> {
    Box::new(CelString::from(s))
}

fn object<'a, const N: usize>(entries: [(&'static str, Boxed<'a>); N]) -> Boxed<'a> {
    let map: HashMap<CelMapKey<'a>, Boxed<'a>> = entries
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), v))
        .collect();
    Box::new(CelMap::from(map))
}

/// `jwt`: every claim, and `scopes`.
fn jwt<'a>(claims: Option<&'a Map<String, Value>>, fields: &Fields) -> Boxed<'a> {
    let mut map: HashMap<CelMapKey<'a>, Boxed<'a>> = HashMap::new();
    if let Some(claims) = claims {
        match fields {
            Fields::All => {
                for (k, v) in claims {
                    map.insert(CelMapKey::from(k.as_str()), json(v));
                }
            }
            Fields::Named(names) => {
                for (k, v) in names.iter().filter_map(|n| claims.get_key_value(n)) {
                    map.insert(CelMapKey::from(k.as_str()), json(v));
                }
            }
        }
    }
    if fields.wants("scopes") {
        let scopes: Vec<Boxed<'a>> = scopes(claims).into_iter().map(text).collect();
        map.insert(CelMapKey::from("scopes"), Box::new(CelList::from(scopes)));
    }
    Box::new(CelMap::from(map))
}

fn kind(method: &str) -> &'static str {
    if method.is_empty() {
        "response"
    } else if method.starts_with("notifications/") {
        "notification"
    } else {
        "request"
    }
}

fn mcp<'a>(input: &Input<'a>, arguments: Arguments, fields: &Fields) -> Boxed<'a> {
    mcp_with(
        input,
        arguments,
        fields,
        text(input.tool_name()),
        text(input.prompt.unwrap_or("")),
        text(input.resource_uri.unwrap_or("")),
    )
}

fn mcp_with<'a>(
    input: &Input<'a>,
    arguments: Arguments,
    fields: &Fields,
    tool_name: Boxed<'a>,
    prompt: Boxed<'a>,
    uri: Boxed<'a>,
) -> Boxed<'a> {
    let mut map: HashMap<CelMapKey<'a>, Boxed<'a>> = HashMap::new();
    let mut put = |name: &'static str, value: &mut dyn FnMut() -> Boxed<'a>| {
        if fields.wants(name) {
            map.insert(CelMapKey::from(name), value());
        }
    };
    let session = input.session_id.unwrap_or("");
    put("method", &mut || text(input.method));
    put("methodName", &mut || text(input.method));
    put("kind", &mut || text(kind(input.method)));
    put("session_id", &mut || text(session));
    put("sessionId", &mut || text(session));
    put("prompt", &mut || {
        object([("name", prompt.clone_as_boxed())])
    });
    put("resource", &mut || {
        object([
            ("uri", uri.clone_as_boxed()),
            ("name", uri.clone_as_boxed()),
        ])
    });
    let version = input.protocol_version.unwrap_or("");
    put("protocol_version", &mut || text(version));
    put("protocolVersion", &mut || text(version));
    put("task", &mut || {
        object([("id", text(input.task_id.unwrap_or("")))])
    });
    put("subscription", &mut || subscription(input.subscription));
    put("input", &mut || {
        let responses = match input.input_responses {
            Some(r) => json_object(r),
            None => Box::new(CelMap::from(HashMap::new())),
        };
        object([
            ("responses", responses),
            ("retry", Box::new(CelBool::from(input.retry)) as Boxed),
        ])
    });
    if fields.wants("tool") {
        let mut tool: HashMap<CelMapKey<'a>, Boxed<'a>> = HashMap::new();
        tool.insert(CelMapKey::from("name"), tool_name);
        if arguments == Arguments::Present {
            let args = match input.tool {
                Some((_, Some(args))) => json_object(args),
                _ => Box::new(CelMap::from(HashMap::new())),
            };
            tool.insert(CelMapKey::from("arguments"), args);
        }
        map.insert(CelMapKey::from("tool"), Box::new(CelMap::from(tool)));
    }
    Box::new(CelMap::from(map))
}

/// `mcp.subscription`: the requested notification types, resource URIs and task ids of a
/// `subscriptions/listen` (empty lists for other messages).
fn subscription<'a>(filter: Option<&'a Map<String, Value>>) -> Boxed<'a> {
    let list = |items: Vec<&'a str>| -> Boxed<'a> {
        Box::new(CelList::from(
            items.into_iter().map(text).collect::<Vec<_>>(),
        ))
    };
    let (notifications, resources, tasks) = match filter {
        Some(f) => (
            crate::protocol::requested(f),
            crate::protocol::strings(f, "resourceSubscriptions"),
            crate::protocol::strings(f, "taskIds"),
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    object([
        ("notifications", list(notifications)),
        ("resources", list(resources)),
        ("tasks", list(tasks)),
    ])
}

/// Whether rules see the request header `name` (`request.headers`): not pseudo-headers, not
/// `authorization`, not what the filter removes or replaces before forwarding.
fn visible(r: &super::RequestFacts<'_>, name: &str) -> bool {
    !(name.starts_with(':')
        || name.eq_ignore_ascii_case("authorization")
        || r.removed.iter().any(|h| h.eq_ignore_ascii_case(name))
        || crate::http::always_removed(name))
}

/// A header rules see that the request carries more than once. Servers read a repeated header
/// in different ways (Starlette and Go's `Header.Get` the first value, others the last, Node
/// both joined), so no one value the rules could read is the one the server acts on.
pub(super) fn repeated_header<'a>(r: &super::RequestFacts<'a>) -> Option<&'a str> {
    let headers = r.headers;
    headers.iter().enumerate().find_map(|(i, (name, _))| {
        let again = headers
            .get(i + 1..)
            .unwrap_or_default()
            .iter()
            .any(|(other, _)| other.eq_ignore_ascii_case(name));
        (again && visible(r, name)).then_some(name.as_str())
    })
}

fn request<'a>(input: &Input<'a>) -> Boxed<'a> {
    let r = &input.request;
    let path = r.path.split_once('?').map_or(r.path, |(p, _)| p);
    let mut headers: HashMap<CelMapKey<'a>, Cow<'a, str>> = HashMap::new();
    for (name, value) in r.headers {
        if !visible(r, name) {
            continue;
        }
        let name: Cow<'a, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name.as_str())
        };
        let key = CelMapKey::String(CelString::from(name));
        // Repeated headers are joined as HTTP allows (`a, b`); a message whose rules read
        // `request` is refused before when one repeats ([`repeated_header`]).
        match headers.get_mut(&key) {
            Some(existing) => {
                let joined = format!("{existing}, {value}");
                *existing = Cow::Owned(joined);
            }
            None => {
                headers.insert(key, Cow::Borrowed(value.as_str()));
            }
        }
    }
    let headers: HashMap<CelMapKey<'a>, Boxed<'a>> = headers
        .into_iter()
        .map(|(k, v)| (k, Box::new(CelString::from(v)) as Boxed<'a>))
        .collect();
    object([
        ("path", text(path)),
        ("host", text(r.host)),
        ("method", text(r.method)),
        ("headers", Box::new(CelMap::from(headers))),
    ])
}

/// Scopes granted by a token's claims: `scope` (space-separated), else `scp` (a string or a
/// list of strings).
pub(super) fn scopes(claims: Option<&Map<String, Value>>) -> Vec<&str> {
    let Some(claims) = claims else {
        return Vec::new();
    };
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => s.split_whitespace().collect(),
        (_, Some(Value::String(s))) => s.split_whitespace().collect(),
        (_, Some(Value::Array(items))) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn json(value: &Value) -> Boxed<'_> {
    match value {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => text(s),
        Value::Array(items) => Box::new(CelList::from(items.iter().map(json).collect::<Vec<_>>())),
        Value::Object(obj) => json_object(obj),
    }
}

fn json_object(obj: &Map<String, Value>) -> Boxed<'_> {
    let map: HashMap<CelMapKey<'_>, Boxed<'_>> = obj
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.as_str()), json(v)))
        .collect();
    Box::new(CelMap::from(map))
}

/// Converts JSON into a CEL value: integers stay integers (`int`, or `uint` beyond i64).
pub fn json_to_cel(value: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Cel::from(s.as_str()),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(obj) => Cel::Map(ValueMap {
            map: Arc::new(
                obj.iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

//! Caller-bound task ids (the tasks utility of 2025-11-25 and the tasks extension of
//! 2026-07-28).
//!
//! The upstream sees every caller through one service key, so a task id it issues is a bearer
//! handle to any caller who learns it. The filter never lets an upstream task id out: every task
//! id an answer carries is sealed ([`crate::seal`], purpose `"task"`) for the caller and server
//! of the exchange, and every task id a request carries must be such a handle of this caller,
//! which is opened and forwarded as the upstream's id. A handle that does not open for the
//! caller (another caller's, another server's, tampered, or an upstream id sent raw) is refused
//! as the spec's "task not found", and nothing is forwarded. Nothing is stored: any replica
//! with the same sealing key opens the handle, and a restart loses nothing.
//!
//! Where task ids are (the spec's places, nowhere else: a tool's own output that happens to
//! have a `taskId` member is left alone):
//!
//! * requests: `params.taskId` of `tasks/get`, `tasks/update`, `tasks/cancel`, `tasks/result`;
//!   `params.notifications.taskIds[]` of `subscriptions/listen`; the
//!   `io.modelcontextprotocol/related-task` `_meta` (`taskId`) of any request or notification's
//!   params, and of a response's result.
//! * answers: a response's `result.taskId` (`CreateTaskResult` of 2026-07-28, `tasks/get`,
//!   2025-11-25's `tasks/cancel`), `result.task.taskId` (2025-11-25's `CreateTaskResult`), the
//!   params of `notifications/tasks` and `notifications/tasks/status` likewise, and the
//!   related-task `_meta` of the result or params, of a task's inlined `result`, and of each
//!   server request in its `inputRequests`.
//! * `tasks/list` (2025-11-25): the listing names upstream ids, and an upstream id alone does not
//!   say whose task it is (the upstream cannot tell the callers apart; the filter keeps no
//!   per-task state). No entry can be shown to be this caller's, so every entry is hidden.
//!
//! A 2026-07-28 multi round-trip `requestState` is bound the same way: the revision asks the
//! server to bind it to the authenticated principal, which behind one service key it cannot do.
//! An answer's `result.requestState` reaches the client as a handle for this caller, server and
//! request (method and tool, prompt or resource) followed by the server's state; a request's
//! `params.requestState` must be such a handle, and the server gets its own state back. Another
//! caller's, another request's, a tampered or a raw one is refused, nothing forwarded.
//!
//! Rewriting splices the changed strings into the message's bytes; everything else goes on
//! exactly as it came. A member that appears twice on the way to a task id is refused (the
//! filter and the reader could pick different ones).

use std::borrow::Cow;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::seal::{Binding, Keys};

/// The purpose sealed into task handles: a session handle never opens as a task.
pub const PURPOSE: &str = "task";
/// The `_meta` key that relates a message to a task.
pub const RELATED: &str = "io.modelcontextprotocol/related-task";
/// The JSON-RPC error of an unknown task (both revisions: invalid params).
pub const NOT_FOUND_CODE: i64 = -32602;
/// Its message, as in the specification's example.
pub const NOT_FOUND_MESSAGE: &str = "Failed to retrieve task: Task not found";
/// The audit reason of a refused task id (`task_not_found: <why>`).
pub const NOT_FOUND: &str = "task_not_found";

/// The purpose sealed into request-state handles.
pub const STATE_PURPOSE: &str = "request-state";
/// The audit reason of a refused `requestState` (`request_state_refused: <why>`).
pub const STATE_REFUSED: &str = "request_state_refused";
/// Between a request-state handle and the server's state (never in a handle's alphabet).
const STATE_SEPARATOR: char = '~';

/// The methods whose `params.taskId` names the task.
const TASK_METHODS: &[&str] = &["tasks/get", "tasks/update", "tasks/cancel", "tasks/result"];

/// Who the task ids of one exchange are bound to.
#[derive(Clone, Copy)]
pub struct Sealer<'a> {
    pub keys: &'a Keys,
    /// The caller (issuer, caller id) from [`crate::session::caller`]; `None` when the token
    /// names nobody to bind to: then no task id passes either way.
    pub caller: Option<crate::session::Caller<'a>>,
    /// The protected server's configured name.
    pub server: &'a str,
    /// The request of the exchange: a `requestState` is bound to it.
    pub exchange: Exchange<'a>,
}

/// What a `requestState` is bound to besides the caller and server: the request's method and
/// the tool, prompt or resource it names (a retry repeats both).
#[derive(Debug, Clone, Copy, Default)]
pub struct Exchange<'a> {
    pub method: &'a str,
    pub target: &'a str,
}

impl Sealer<'_> {
    fn binding(&self) -> Option<Binding<'_>> {
        Some(self.caller?.binding(PURPOSE, self.server))
    }

    /// The handle the client gets for an upstream task id.
    pub fn seal(&self, task_id: &str) -> Result<String, String> {
        let binding = self
            .binding()
            .ok_or("task_unbindable: the token names neither a subject nor a client")?;
        if task_id.is_empty() {
            return Err("task_id_unsealable: an empty task id".into());
        }
        self.keys
            .seal(&binding, task_id.as_bytes())
            .ok_or_else(|| "task_id_unsealable: a task id longer than a handle carries".into())
    }

    /// What a request-state handle seals: the digest of the exchange and the state.
    fn state_digest(&self, state: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [self.exchange.method, self.exchange.target] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hash.update(state.as_bytes());
        hash.finalize().into()
    }

    /// What the client gets for a server's `requestState`: a handle binding it to this caller,
    /// server and request, then the state itself (the client echoes the whole string).
    pub fn seal_state(&self, state: &str) -> Result<String, String> {
        let binding = self
            .caller
            .ok_or("request_state_unbindable: the token names neither a subject nor a client")?;
        let binding = binding.binding(STATE_PURPOSE, self.server);
        let handle = self
            .keys
            .seal(&binding, &self.state_digest(state))
            .ok_or("request_state_unsealable")?;
        let mut out = String::with_capacity(handle.len() + 1 + state.len());
        out.push_str(&handle);
        out.push(STATE_SEPARATOR);
        out.push_str(state);
        Ok(out)
    }

    /// The server's state behind a client's `requestState`, or the audit reason why it is not
    /// this caller's for this request.
    pub fn open_state(&self, sealed: &str) -> Result<String, String> {
        let refused = |why: &str| format!("{STATE_REFUSED}: {why}");
        let binding = self
            .caller
            .ok_or_else(|| refused("request_state_unbindable"))?
            .binding(STATE_PURPOSE, self.server);
        let (handle, state) = sealed
            .split_once(STATE_SEPARATOR)
            .ok_or_else(|| refused("not a request state this gateway issued"))?;
        let digest = self
            .keys
            .open(handle, &binding)
            .map_err(|e| refused(&e.reason("request_state")))?;
        if digest.as_slice() != self.state_digest(state).as_slice() {
            return Err(refused(
                "issued for another request, or its state was changed",
            ));
        }
        Ok(state.to_string())
    }

    /// The upstream task id behind a handle, or the audit reason why it is not this caller's.
    pub fn open(&self, handle: &str) -> Result<String, String> {
        let Some(binding) = self.binding() else {
            return Err(format!("{NOT_FOUND}: task_unbindable"));
        };
        let value = self
            .keys
            .open(handle, &binding)
            .map_err(|e| format!("{NOT_FOUND}: {}", e.reason("task")))?;
        String::from_utf8(value).map_err(|_| format!("{NOT_FOUND}: task_tampered"))
    }
}

/// A task id as the `Mcp-Name` header carries it: as is when it is visible ASCII, else in the
/// base64 sentinel form of 2026-07-28.
pub fn header_value(task_id: &str) -> String {
    use base64::Engine as _;
    if !task_id.is_empty() && task_id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return task_id.to_string();
    }
    format!(
        "=?base64?{}?=",
        base64::engine::general_purpose::STANDARD.encode(task_id)
    )
}

/// Whether the message could carry a task id at all (a cheap scan before any parse; member
/// names written with escapes are found by the parse, so any `\u` is parsed too).
pub fn may_carry(message: &[u8]) -> bool {
    // `taskId` as any decoder may read it: in any ASCII case, with a character that folds to
    // one of its letters (U+017F for s, the Kelvin sign for k, U+0131 for i), or escaped. The
    // searchers are built once: every request and answer is screened, and building one costs
    // about as much as a search of a 1 KiB message.
    // `requestState` as written (a request spelling it otherwise is refused by the strict
    // parse; an answer spelling it otherwise cannot be echoed back past the request's check).
    static NEEDLES: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 5]> =
        std::sync::LazyLock::new(|| {
            ["requestState", "\\u", "\u{17f}", "\u{212a}", "\u{131}"]
                .map(memchr::memmem::Finder::new)
        });
    let [state, escape, folds @ ..] = &*NEEDLES;
    escape.find(message).is_some()
        || state.find(message).is_some()
        || memchr::memchr2_iter(b'k', b'K', message).any(|at| {
            let around = at
                .checked_sub(3)
                .and_then(|start| message.get(start..at + 3));
            around.is_some_and(|word| word.eq_ignore_ascii_case(b"taskid"))
        })
        || folds.iter().any(|f| f.find(message).is_some())
}

/// A request whose task handles were opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The body to forward: every handle replaced by the upstream's id.
    pub body: Vec<u8>,
    /// The upstream id of `params.taskId` of a tasks method (what `Mcp-Name` mirrors).
    pub task_id: Option<String>,
}

/// Opens the task handles of a client's message (one JSON-RPC message the strict parser
/// accepted). `Ok(None)`: it carries no task id. `Err`: the audit reason of the first handle
/// that is not this caller's (the answer is "task not found").
pub fn open_request(body: &[u8], sealer: &Sealer) -> Result<Option<Opened>, String> {
    if !may_carry(body) {
        return Ok(None);
    }
    let text = std::str::from_utf8(body).map_err(|_| format!("{NOT_FOUND}: not UTF-8"))?;
    let spots = request_spots(text).map_err(|e| format!("{NOT_FOUND}: {e}"))?;
    if spots.is_empty() {
        return Ok(None);
    }
    let mut task_id = None;
    let mut edits = Vec::with_capacity(spots.len());
    for spot in spots {
        let (at, raw, named) = match spot {
            Spot::Id { at, raw, named } => (at, raw, named),
            Spot::State { at, raw } => {
                let sealed: String = serde_json::from_str(raw)
                    .map_err(|_| format!("{STATE_REFUSED}: not a string"))?;
                let state = sealer.open_state(&sealed)?;
                let encoded = serde_json::to_string(&state).map_err(|e| e.to_string())?;
                edits.push((at, raw.len(), encoded.into_bytes()));
                continue;
            }
            Spot::Listed { .. } => continue,
        };
        let handle: String = serde_json::from_str(raw)
            .map_err(|_| format!("{NOT_FOUND}: a task id that is not a string"))?;
        let id = sealer.open(&handle)?;
        let encoded = serde_json::to_string(&id).map_err(|e| e.to_string())?;
        if named {
            task_id = Some(id);
        }
        edits.push((at, raw.len(), encoded.into_bytes()));
    }
    Ok(Some(Opened {
        body: splice(body, edits),
        task_id,
    }))
}

/// Whether a message (or batch) carries any task id where a request may: batches (2025-03-26
/// only, which has no tasks) with task ids are refused rather than opened.
pub fn carries_task_ids(body: &[u8]) -> bool {
    if !may_carry(body) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return true;
    };
    match request_spots(text) {
        Ok(spots) => !spots.is_empty(),
        Err(_) => true,
    }
}

/// Seals the task ids of one answer message (a whole JSON body, or one event's data: a
/// JSON-RPC message or a batch of them) and hides `tasks/list` entries. `Ok(None)`: nothing to
/// change. `Ok(Some((bytes, hidden)))`: the message to send and how many listed tasks were
/// hidden. `Err`: the message cannot go on (an id that cannot be sealed, an ambiguous message).
pub fn seal_answer(message: &[u8], sealer: &Sealer) -> Result<Option<(Vec<u8>, usize)>, String> {
    rewrite_answer(message, Some(sealer))
}

/// Without a sealing key (`sessions.stateless`): task ids go as the server wrote them (each
/// request's task id reaches the server as sent), but a `tasks/list` answer still shows no
/// task — the server sees every caller through one key, so its listing holds every caller's.
pub fn hide_listed(message: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    rewrite_answer(message, None)
}

fn rewrite_answer(
    message: &[u8],
    sealer: Option<&Sealer>,
) -> Result<Option<(Vec<u8>, usize)>, String> {
    if !may_carry(message) {
        return Ok(None);
    }
    let Ok(text) = std::str::from_utf8(message) else {
        // Not JSON at all: no task id a client could read.
        return Ok(None);
    };
    let spots = match answer_spots(text) {
        Ok(spots) => spots,
        Err(Problem::NotJson) => return Ok(None),
        Err(Problem::Bad(why)) => return Err(format!("task_answer_unreadable: {why}")),
    };
    if spots.is_empty() {
        return Ok(None);
    }
    let mut hidden = 0;
    let mut edits = Vec::with_capacity(spots.len());
    for spot in spots {
        match spot {
            Spot::Id { at, raw, .. } => {
                let Some(sealer) = sealer else {
                    continue;
                };
                let id: String = serde_json::from_str(raw).map_err(|_| {
                    "task_answer_unreadable: a task id that is not a string".to_string()
                })?;
                let handle = sealer.seal(&id)?;
                edits.push((at, raw.len(), format!("\"{handle}\"").into_bytes()));
            }
            Spot::Listed { at, raw, count } => {
                hidden += count;
                edits.push((at, raw.len(), b"[]".to_vec()));
            }
            Spot::State { at, raw } => {
                let Some(sealer) = sealer else {
                    continue;
                };
                // Not a string: no client echoes it, a retry carrying it is refused.
                let Ok(state) = serde_json::from_str::<String>(raw) else {
                    continue;
                };
                let sealed = sealer.seal_state(&state)?;
                let encoded = serde_json::to_string(&sealed).map_err(|e| e.to_string())?;
                edits.push((at, raw.len(), encoded.into_bytes()));
            }
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    Ok(Some((splice(message, edits), hidden)))
}

// ---- locating task ids -----------------------------------------------------------------------

/// A place in the message: a task id string, or a `tasks/list` array to empty.
enum Spot<'a> {
    Id {
        at: usize,
        raw: &'a str,
        /// `params.taskId` of a tasks method.
        named: bool,
    },
    Listed {
        at: usize,
        raw: &'a str,
        count: usize,
    },
    /// A multi round-trip `requestState` (a request's params, a response's result).
    State { at: usize, raw: &'a str },
}

/// `<object>.requestState`.
fn state<'a>(
    base: &str,
    object: &[(String, &'a RawValue)],
    out: &mut Vec<Spot<'a>>,
) -> Result<(), String> {
    if let Some(raw) = member(object, "requestState")? {
        out.push(Spot::State {
            at: offset(base, raw),
            raw: raw.get(),
        });
    }
    Ok(())
}

enum Problem {
    NotJson,
    Bad(String),
}

impl From<String> for Problem {
    fn from(why: String) -> Problem {
        Problem::Bad(why)
    }
}

/// An object's members in order, names unescaped.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members of `raw` when it is an object (`None` otherwise). A name that appears twice is
/// an error: the filter and a reader could each pick another.
fn members(raw: &RawValue) -> Result<Option<Vec<(String, &RawValue)>>, String> {
    if !raw.get().starts_with('{') {
        return Ok(None);
    }
    let Members(members) =
        serde_json::from_str(raw.get()).map_err(|e| format!("unreadable object: {e}"))?;
    let mut names: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(format!(
            "member {:?} appears twice",
            twice.first().copied().unwrap_or_default()
        ));
    }
    Ok(Some(members))
}

/// The member `name` of an object. Another spelling of it that a case-insensitive decoder
/// reads as the same member (Go's `encoding/json` matches struct fields so: `TaskId`, `taſkId`,
/// `_Meta`; [`crate::mcp::fold_key`]) is an error: the reader would take a task id the filter
/// never saw.
fn member<'a>(
    members: &[(String, &'a RawValue)],
    name: &str,
) -> Result<Option<&'a RawValue>, String> {
    let folded = crate::mcp::fold_key(&Cow::Borrowed(name));
    let mut found = None;
    for (key, value) in members {
        if key == name {
            found = Some(*value);
        } else if crate::mcp::fold_key(&Cow::Borrowed(key.as_str())) == folded {
            return Err(format!("member {key:?} reads as {name:?} to some decoders"));
        }
    }
    Ok(found)
}

/// Where a raw value starts in `base`.
fn offset(base: &str, raw: &RawValue) -> usize {
    (raw.get().as_ptr() as usize).wrapping_sub(base.as_ptr() as usize)
}

fn id<'a>(base: &str, raw: &'a RawValue, named: bool) -> Spot<'a> {
    Spot::Id {
        at: offset(base, raw),
        raw: raw.get(),
        named,
    }
}

/// `<object>._meta["io.modelcontextprotocol/related-task"].taskId`.
fn related<'a>(
    base: &str,
    object: &[(String, &'a RawValue)],
    out: &mut Vec<Spot<'a>>,
) -> Result<(), String> {
    let Some(meta) = member(object, "_meta")? else {
        return Ok(());
    };
    let Some(meta) = members(meta)? else {
        return Ok(());
    };
    let Some(task) = member(&meta, RELATED)? else {
        return Ok(());
    };
    if let Some(task) = members(task)? {
        if let Some(raw) = member(&task, "taskId")? {
            out.push(id(base, raw, false));
        }
    }
    Ok(())
}

/// The notification a server acknowledges a `subscriptions/listen` with (SEP-2663): its
/// `params.notifications` repeats the request's filter, task ids included.
const SUBSCRIPTIONS_ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";

/// The task ids of a subscription filter, `params.notifications.taskIds`: opened on a
/// `subscriptions/listen` request, sealed again where the server acknowledges it.
fn subscribed_tasks<'a>(
    base: &str,
    params: &[(String, &'a RawValue)],
    out: &mut Vec<Spot<'a>>,
) -> Result<(), String> {
    let Some(filter) = member(params, "notifications")? else {
        return Ok(());
    };
    let Some(filter) = members(filter)? else {
        return Ok(());
    };
    let Some(ids) = member(&filter, "taskIds")? else {
        return Ok(());
    };
    if ids.get().starts_with('[') {
        let ids: Vec<&RawValue> =
            serde_json::from_str(ids.get()).map_err(|e| format!("unreadable taskIds: {e}"))?;
        out.extend(ids.into_iter().map(|raw| id(base, raw, false)));
    }
    Ok(())
}

/// The message(s) of a body: one object, or a batch's objects.
fn messages(text: &str) -> Result<Vec<&RawValue>, Problem> {
    let root: &RawValue = serde_json::from_str(text).map_err(|_| Problem::NotJson)?;
    if root.get().starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(root.get()).map_err(|_| Problem::NotJson)?;
        Ok(items)
    } else {
        Ok(vec![root])
    }
}

fn string_member(object: &[(String, &RawValue)], name: &str) -> Option<String> {
    let raw = member(object, name).ok().flatten()?;
    serde_json::from_str::<String>(raw.get()).ok()
}

fn request_spots(text: &str) -> Result<Vec<Spot<'_>>, String> {
    let mut out = Vec::new();
    let list = messages(text).map_err(|p| match p {
        Problem::NotJson => "not JSON".to_string(),
        Problem::Bad(why) => why,
    })?;
    for message in list {
        let Some(message) = members(message)? else {
            continue;
        };
        let method = string_member(&message, "method").unwrap_or_default();
        if let Some(params) = member(&message, "params")? {
            if let Some(params) = members(params)? {
                if TASK_METHODS.contains(&method.as_str()) {
                    if let Some(raw) = member(&params, "taskId")? {
                        out.push(id(text, raw, true));
                    }
                }
                if method == "subscriptions/listen" {
                    subscribed_tasks(text, &params, &mut out)?;
                }
                related(text, &params, &mut out)?;
                state(text, &params, &mut out)?;
            }
        }
        if let Some(result) = member(&message, "result")? {
            if let Some(result) = members(result)? {
                related(text, &result, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// The task ids of a task's state (a result, or the params of a task notification): its
/// `taskId`, the 2025-11-25 `task.taskId`, and the related-task `_meta` of it, of its inlined
/// `result` and of each request in its `inputRequests`.
fn task_state<'a>(
    base: &str,
    object: &[(String, &'a RawValue)],
    out: &mut Vec<Spot<'a>>,
) -> Result<(), String> {
    if let Some(raw) = member(object, "taskId")? {
        out.push(id(base, raw, false));
    }
    if let Some(task) = member(object, "task")? {
        if let Some(task) = members(task)? {
            if let Some(raw) = member(&task, "taskId")? {
                out.push(id(base, raw, false));
            }
        }
    }
    related(base, object, out)?;
    if let Some(inner) = member(object, "result")? {
        if let Some(inner) = members(inner)? {
            related(base, &inner, out)?;
        }
    }
    if let Some(requests) = member(object, "inputRequests")? {
        if let Some(requests) = members(requests)? {
            for (_, request) in requests {
                if let Some(request) = members(request)? {
                    if let Some(params) = member(&request, "params")? {
                        if let Some(params) = members(params)? {
                            related(base, &params, out)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn answer_spots(text: &str) -> Result<Vec<Spot<'_>>, Problem> {
    let mut out = Vec::new();
    for message in messages(text)? {
        let Some(message) = members(message)? else {
            continue;
        };
        if let Some(result) = member(&message, "result")? {
            if let Some(result) = members(result)? {
                task_state(text, &result, &mut out)?;
                state(text, &result, &mut out)?;
                if let Some(tasks) = member(&result, "tasks")? {
                    if tasks.get().starts_with('[') {
                        let items: Vec<&RawValue> = serde_json::from_str(tasks.get())
                            .map_err(|e| format!("unreadable tasks: {e}"))?;
                        if !items.is_empty() {
                            out.push(Spot::Listed {
                                at: offset(text, tasks),
                                raw: tasks.get(),
                                count: items.len(),
                            });
                        }
                    }
                }
            }
        }
        let method = string_member(&message, "method").unwrap_or_default();
        if let Some(params) = member(&message, "params")? {
            if let Some(params) = members(params)? {
                if method == "notifications/tasks" || method.starts_with("notifications/tasks/") {
                    task_state(text, &params, &mut out)?;
                } else {
                    if method == SUBSCRIPTIONS_ACKNOWLEDGED {
                        // It names back the tasks the listen request subscribed to, opened there.
                        subscribed_tasks(text, &params, &mut out)?;
                    }
                    related(text, &params, &mut out)?;
                }
            }
        }
    }
    Ok(out)
}

/// Replaces `(at, len)` ranges of `bytes` with new bytes. Ranges are disjoint (distinct JSON
/// values, or a listing that holds no other spot); they are applied in order of position.
fn splice(bytes: &[u8], mut edits: Vec<(usize, usize, Vec<u8>)>) -> Vec<u8> {
    edits.sort_by_key(|(at, _, _)| *at);
    let mut out = Vec::with_capacity(bytes.len() + edits.len() * 64);
    let mut from = 0;
    for (at, len, with) in edits {
        if at < from {
            continue; // inside a range already replaced (a hidden listing)
        }
        out.extend_from_slice(bytes.get(from..at).unwrap_or_default());
        out.extend_from_slice(&with);
        from = at + len;
    }
    out.extend_from_slice(bytes.get(from..).unwrap_or_default());
    out
}

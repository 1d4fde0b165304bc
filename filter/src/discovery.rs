//! Per-caller filtering of discovery results: `tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`.
//!
//! A caller should only see what it may use. [`filter_result`] takes one whole JSON-RPC
//! message from the server (a JSON body, or the data of one SSE event) and drops the list
//! entries the caller is not allowed.
//!
//! The message is read in one pass by a validating cursor ([`crate::scan`], the grammar
//! serde_json accepts) that locates the list and its entries without building anything, and
//! the hidden entries are cut out of the original bytes. Everything else stays byte-for-byte as the
//! server wrote it (member order, number formatting, whitespace). This is several times faster
//! than parsing into a `serde_json::Value` and serializing again, which would also reorder
//! every object's members (serde_json is built without `preserve_order`).
//!
//! Members the decision depends on (`id`, `result`, the list, each entry's name) must appear
//! once: a duplicate makes the message [`Filtered::Unparseable`] (an entry with a duplicate
//! name is hidden), so that no client can read a different list than the one filtered.
//!
//! A server answers a listing with the same array call after call: [`KnownLists`] keeps the
//! last array of each kind a server sent, with its entries, so that the same bytes are compared
//! rather than read again.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use serde_json::Value;

use crate::scan::Scan;

/// Which discovery list a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    /// `resources/templates/list`: entries are matched on their `uriTemplate`, as a resource
    /// URI (the policy's `resources/read` rules decide; a template no rule allows is hidden).
    Templates,
}

impl ListKind {
    /// Every list kind.
    pub const ALL: [ListKind; 4] = [
        ListKind::Tools,
        ListKind::Prompts,
        ListKind::Resources,
        ListKind::Templates,
    ];

    /// The list kind answered by a request `method`, if any.
    pub fn for_method(method: &str) -> Option<ListKind> {
        match method {
            "tools/list" => Some(ListKind::Tools),
            "prompts/list" => Some(ListKind::Prompts),
            "resources/list" => Some(ListKind::Resources),
            "resources/templates/list" => Some(ListKind::Templates),
            _ => None,
        }
    }

    /// The member of `result` holding the list.
    pub fn list_key(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::Templates => "resourceTemplates",
        }
    }

    /// The member of each entry that `allowed` is asked about.
    pub fn name_key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::Templates => "uriTemplate",
        }
    }
}

/// Whether a client could take a response `id` for the answer to a request with id `request`.
///
/// Clients do not compare ids exactly. The official Python SDK turns a string id that Python's
/// `int()` accepts back into an integer before matching (`"5"`, `"05"`, `" 5"`, `"+5"`,
/// `"5_0"` for 50, `"٥"` in any script's digits); the TypeScript SDK matches on
/// `Number(id)` (`"5"`, `"5.0"`, `"5e0"`, `"0x5"`, `""` for 0, and JSON `5.0`). So the ids are
/// equal as JSON, or both read as the same number under the most lenient of those rules; a
/// string holding non-ASCII digits (values this filter does not decode) may be any number.
/// Saying "same" too often is safe: that response is then filtered as the list.
pub fn same_id(request: &Value, response: &Value) -> bool {
    if request == response {
        return true;
    }
    let Some(wanted) = id_number(request) else {
        return false;
    };
    match id_number(response) {
        Some(got) => got == wanted,
        None => {
            matches!(response, Value::String(s) if s.chars().any(|c| !c.is_ascii() && c.is_numeric()))
        }
    }
}

/// Whether every client takes a response `id` for the answer to the request with id `request`
/// and for no other: equal as JSON, or read as the same number ([`id_number`]). Where
/// [`same_id`] errs towards "same" (a list is then filtered), this errs towards "another"
/// (the answer is then no answer to this request and does not pass): a string of non-ASCII
/// digits, which the Python SDK client reads as a number this filter does not decode, could
/// answer a request the client sent on another POST.
fn surely_same_id(request: &Value, response: &Value) -> bool {
    request == response
        || matches!((id_number(request), id_number(response)), (Some(a), Some(b)) if a == b)
}

/// An id read as a number, the way the most lenient client would: JSON numbers as they are;
/// strings trimmed of whitespace, `_` removed, then as a decimal (sign, fraction, exponent), a
/// `0x`/`0o`/`0b` integer, or 0 when nothing is left.
fn id_number(id: &Value) -> Option<f64> {
    let text = match id {
        Value::Number(n) => return n.as_f64().filter(|f| f.is_finite()),
        Value::String(s) => s,
        _ => return None,
    };
    let trimmed: String = text
        .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .chars()
        .filter(|&c| c != '_')
        .collect();
    if trimmed.is_empty() {
        return Some(0.0);
    }
    let lower = trimmed.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = lower.strip_prefix(prefix) {
            return u64::from_str_radix(digits, radix).ok().map(|n| n as f64);
        }
    }
    if !lower
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e'))
    {
        return None;
    }
    lower.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// The outcome of [`filter_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// A matching list response with nothing hidden: forward the original bytes.
    Unchanged,
    /// A matching list response with `hidden` entries removed: forward `body` instead.
    Rewritten { body: Vec<u8>, hidden: usize },
    /// Not the awaited list response (notification, server request, error, other id, no
    /// list): forward unchanged.
    NotAList,
    /// Not JSON, not UTF-8, or ambiguous (a duplicate `id`, `result` or list member): the
    /// caller should fail closed.
    Unparseable,
}

/// Filters the list in `message` if it is a response (a `result` member) whose `id` a client
/// could take for `expected_id` ([`same_id`]; any id when `None`) and whose result holds the `kind` list array. Entries are
/// kept when their name (`name`, or `uri` for resources) is a string that `allowed` accepts;
/// everything else in the message is kept as is. A JSON-RPC batch is filtered member by member.
pub fn filter_result(
    message: &[u8],
    kind: ListKind,
    expected_id: Option<&Value>,
    allowed: &mut dyn FnMut(&str) -> bool,
) -> Filtered {
    filter_entries(message, kind, expected_id, &mut |name, _| allowed(name))
}

/// [`filter_result`], with each entry's JSON text (as the server wrote it) handed to `allowed`
/// beside its name: what tool pinning digests.
pub fn filter_entries(
    message: &[u8],
    kind: ListKind,
    expected_id: Option<&Value>,
    allowed: &mut dyn FnMut(&str, &[u8]) -> bool,
) -> Filtered {
    // UTF-8 here, the JSON grammar as the cursor reads (the whole text: `at_end` below).
    if std::str::from_utf8(message).is_err() {
        return Filtered::Unparseable;
    }
    let mut top = Scan::new(message);
    let lists = if top.peek() == Some(b'[') {
        top.elements(|s| Some(s.message(kind, expected_id)))
    } else {
        Some(vec![top.message(kind, expected_id)])
    };
    // The cursor stops at the first byte that is not JSON, and JSON ends at the end.
    let Some(lists) = lists.filter(|_| top.at_end()) else {
        return Filtered::Unparseable;
    };

    // Each list to shorten: the span of its array and the spans of the entries to keep.
    let mut edits: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::new();
    let mut found = false;
    let mut hidden = 0;
    for list in lists {
        let (array, entries) = match list {
            Ok(Some(list)) => list,
            Ok(None) => continue,
            Err(Ambiguous) => return Filtered::Unparseable,
        };
        found = true;
        let total = entries.len();
        let kept: Vec<Range<usize>> = entries
            .iter()
            .map(|entry| (at(&array, &entry.span), &entry.name))
            .filter(|(entry, name)| {
                let text = message.get(entry.clone()).unwrap_or_default();
                name.as_deref().is_some_and(|n| allowed(n, text))
            })
            .map(|(entry, _)| entry)
            .collect();
        if kept.len() < total {
            hidden += total - kept.len();
            edits.push((array, kept));
        }
    }
    match (found, hidden) {
        (false, _) => Filtered::NotAList,
        (true, 0) => Filtered::Unchanged,
        (true, hidden) => splice(message, &edits).map_or(Filtered::Unparseable, |body| {
            Filtered::Rewritten { body, hidden }
        }),
    }
}

/// What the answer to a response must be, for [`check_answer`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    /// List requests this response answers: a response a client could take for one of them
    /// ([`same_id`]) must be an error or carry that list, an array; it is filtered.
    pub lists: Vec<(Value, ListKind)>,
    /// Ids of the other requests answered here (a batch's).
    pub others: Vec<Value>,
    /// Lists filtered in every response whatever its id (a GET stream's replays, a batch).
    pub any: Vec<ListKind>,
    /// Every message must be JSON-RPC, and every response must answer a request above.
    pub strict: bool,
    /// A JSON body answering a POST: server requests and notifications are no answer.
    pub responses_only: bool,
    /// The exchange is of a protocol after 2025-03-26, which has no batches: an answer that is
    /// one is unreadable. (The TypeScript SDK client still reads a JSON array answer, and a list
    /// inside one would escape what the filter does to its revision's lists, `cacheScope`.)
    pub no_batch: bool,
}

/// The outcome of [`check_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Forward the original bytes: no list in it.
    Pass,
    /// Forward the original bytes: it holds lists of `kinds`, nothing of them hidden.
    /// `cacheable`: a result has `resultType`, `cacheScope` or `ttlMs` (the 2026-07-28
    /// revision's caching members; names read as a client decodes them).
    Listed {
        kinds: Vec<ListKind>,
        cacheable: bool,
    },
    /// Forward `body` instead: `hidden` entries of its lists of `kinds` were removed.
    Rewritten {
        body: Vec<u8>,
        hidden: usize,
        kinds: Vec<ListKind>,
        cacheable: bool,
    },
    /// The message cannot be read as what was expected: fail closed. Says why.
    Unreadable(String),
}

/// Checks one message from the server (a JSON body, or one event's data; a JSON-RPC batch
/// member by member) against what the exchange's list requests expect, and filters every list
/// it must. Anything the filter cannot read positively is [`Checked::Unreadable`]: not JSON,
/// ambiguous members, a message both request and response, a result and an error together; and
/// when `strict`, anything that is not a JSON-RPC message, a response to no request of the
/// exchange, or a list request's result without its list array.
pub fn check_answer(
    message: &[u8],
    expect: &Expect,
    allowed: &mut dyn FnMut(&Listed) -> bool,
) -> Checked {
    match std::str::from_utf8(message) {
        Ok(text) => check_answer_text(text, expect, None, allowed),
        Err(_) => Checked::Unreadable("not JSON".to_string()),
    }
}

/// [`check_answer`] on text already known to be UTF-8 (an event's data): the cursor checks
/// the JSON grammar (the whole text: `at_end` below). List arrays in `known` are compared
/// rather than read again, and the arrays read are kept there.
pub fn check_answer_text(
    text: &str,
    expect: &Expect,
    known: Option<&KnownLists>,
    allowed: &mut dyn FnMut(&Listed) -> bool,
) -> Checked {
    let unreadable = |why: &str| Checked::Unreadable(why.to_string());
    let message = text.as_bytes();
    let mut kinds: Vec<ListKind> = expect.any.clone();
    for (_, kind) in &expect.lists {
        if !kinds.contains(kind) {
            kinds.push(*kind);
        }
    }
    let mut top = Scan::new(message);
    let batch = top.peek() == Some(b'[');
    if batch && expect.no_batch {
        return unreadable("a batch, after protocol 2025-03-26");
    }
    let infos = if batch {
        top.elements(|s| Some(s.info(&kinds, known)))
    } else {
        Some(vec![top.info(&kinds, known)])
    };
    // The cursor stops at the first byte that is not JSON, and JSON ends at the end; `info`
    // fails only where the JSON does.
    let Some(infos) = infos.filter(|_| top.at_end()).and_then(|infos| {
        infos
            .into_iter()
            .collect::<Result<Vec<Info>, Ambiguous>>()
            .ok()
    }) else {
        // The scan stops at a member it cannot read as one thing; say which failure it was.
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(message).is_ok();
        return unreadable(if json {
            "a member the filter reads appears twice or in another case"
        } else {
            "not JSON"
        });
    };
    if batch && infos.is_empty() && expect.strict {
        return unreadable("an empty batch");
    }
    let mut edits: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::new();
    let mut hidden = 0;
    let mut listed: Vec<ListKind> = Vec::new();
    let cacheable = infos.iter().any(|info| info.cacheable);
    for info in infos {
        if !info.object {
            if expect.strict {
                return unreadable("not a JSON-RPC message");
            }
            continue;
        }
        let responses = info.results + info.errors;
        if info.ids.len() > 1 || info.results > 1 || info.errors > 1 || info.methods > 1 {
            return unreadable("a member the filter reads appears twice");
        }
        if info.methods > 0 {
            if responses > 0 {
                return unreadable("both a request and a response");
            }
            if expect.responses_only {
                return unreadable("a request or notification where a response was due");
            }
            continue;
        }
        if responses == 0 {
            if expect.strict {
                return unreadable("not a JSON-RPC message");
            }
            continue;
        }
        if responses > 1 {
            return unreadable("both a result and an error");
        }
        let id = info
            .ids
            .first()
            .and_then(|span| message.get(span.clone()))
            .and_then(|raw| serde_json::from_slice::<Value>(raw).ok());
        let answered = id.as_ref().and_then(|id| {
            expect
                .lists
                .iter()
                .find(|(wanted, _)| same_id(wanted, id))
                .map(|(_, kind)| *kind)
        });
        let known = answered.is_some()
            || id
                .as_ref()
                .is_some_and(|id| expect.others.iter().any(|o| surely_same_id(o, id)));
        if info.errors > 0 {
            if !info.error_object {
                return unreadable("an error that is not an object");
            }
            if expect.strict && !known && id != Some(Value::Null) {
                return unreadable("a response to no request of this exchange");
            }
            continue;
        }
        if expect.strict && !known {
            return unreadable("a response to no request of this exchange");
        }
        for (i, kind) in kinds.iter().enumerate() {
            let found = info.lists.get(i).map(Vec::as_slice).unwrap_or_default();
            let list = match found {
                [] | [None] if answered != Some(*kind) => continue,
                [] | [None] => return unreadable("a list result without its list"),
                [Some(list)] => list,
                _ => return unreadable("a member the filter reads appears twice"),
            };
            let (array, entries) = list;
            if !listed.contains(kind) {
                listed.push(*kind);
            }
            let total = entries.len();
            let kept: Vec<Range<usize>> = entries
                .iter()
                .filter_map(|entry| {
                    let span = at(array, &entry.span);
                    let name = entry.name.as_deref()?;
                    let listed = Listed {
                        kind: *kind,
                        name,
                        text: message.get(span.clone()).unwrap_or_default(),
                        memo: &entry.memo,
                    };
                    allowed(&listed).then_some(span)
                })
                .collect();
            if kept.len() < total {
                hidden += total - kept.len();
                edits.push((array.clone(), kept));
            }
        }
    }
    if hidden == 0 {
        return if listed.is_empty() && !cacheable {
            Checked::Pass
        } else {
            Checked::Listed {
                kinds: listed,
                cacheable,
            }
        };
    }
    edits.sort_by_key(|(array, _)| array.start);
    match splice(message, &edits) {
        Some(body) => Checked::Rewritten {
            body,
            hidden,
            kinds: listed,
            cacheable,
        },
        None => unreadable("not JSON"),
    }
}

/// What one message holds, for [`check_answer`].
struct Info {
    /// The message is an object.
    object: bool,
    ids: Vec<Range<usize>>,
    results: usize,
    errors: usize,
    error_object: bool,
    methods: usize,
    /// The result has a caching member ([`Checked::Listed`]).
    cacheable: bool,
    /// For each kind asked for: the list members found in the result (`None`: not an array).
    lists: Vec<Vec<Option<List>>>,
}

/// The members of a result that make it cacheable (2026-07-28): such a list answer is marked
/// private to its caller ([`crate::protocol::private_cache`]).
const CACHING_MEMBERS: [&str; 3] = ["resultType", "cacheScope", "ttlMs"];

/// A member that must be unique appears twice, or the scanner failed.
struct Ambiguous;

/// A list entry: its span from the start of its array, and its name if it is an object with
/// one string name.
struct Entry {
    span: Range<usize>,
    name: Option<String>,
    /// [`Listed::memo`]: kept with the array in [`KnownLists`].
    memo: Cell<bool>,
}

impl Entry {
    fn new(span: Range<usize>, name: Option<String>) -> Entry {
        Entry {
            span,
            name,
            memo: Cell::new(false),
        }
    }
}

/// A listed entry, as the list filter asks about it ([`check_answer`]).
pub struct Listed<'a> {
    pub kind: ListKind,
    pub name: &'a str,
    /// The entry's JSON text, as the server wrote it.
    pub text: &'a [u8],
    /// Kept with these exact bytes: `false` when they are first read, and what the caller
    /// leaves here is handed back when a later message repeats the same list array
    /// ([`KnownLists`]). Only for a verdict that depends on the server's configuration and
    /// the entry alone, never on the caller: the pin check's.
    pub memo: &'a Cell<bool>,
}

/// A list: the span of its array and its entries.
type List = (Range<usize>, Rc<[Entry]>);

/// Where an entry is in the message.
fn at(array: &Range<usize>, entry: &Range<usize>) -> Range<usize> {
    array.start + entry.start..array.start + entry.end
}

/// The last list array of each kind one server sent, with what reading it found. A server
/// answers `tools/list` with the same array call after call (only the JSON-RPC `id` around it
/// changes), and reading it again, validating some 140 KB of JSON for 500 tools, was most of
/// what a listing cost. An array is taken from here only when the message holds exactly its
/// bytes, at the same nesting depth ([`Scan::skip_known`]): what reading it found cannot differ.
/// Each entry's visibility, its pin and everything outside the array are decided anew. Bounded:
/// one array per kind, up to [`KNOWN_LIST_MAX_BYTES`]. One per server and VM, as the pins'
/// matched definitions.
#[derive(Default)]
pub struct KnownLists(RefCell<Vec<KnownList>>);

/// Longer arrays are read every time.
pub const KNOWN_LIST_MAX_BYTES: usize = 1024 * 1024;

struct KnownList {
    kind: ListKind,
    depth: u32,
    escape: bool,
    text: Box<[u8]>,
    entries: Rc<[Entry]>,
}

impl fmt::Debug for KnownLists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = self.0.try_borrow().map_or(0, |k| k.len());
        write!(f, "KnownLists({kept} kept)")
    }
}

impl KnownLists {
    /// Reads the `kind` list array at the cursor, or moves past it if it is the one kept.
    fn read(&self, s: &mut Scan, kind: ListKind) -> Option<Rc<[Entry]>> {
        if let Ok(kept) = self.0.try_borrow() {
            let known = kept.iter().find(|k| k.kind == kind);
            if let Some(k) = known.filter(|k| s.skip_known(&k.text, k.depth, k.escape)) {
                return Some(Rc::clone(&k.entries));
            }
        }
        let (depth, start, before) = (s.depth(), s.pos(), s.unicode_escape);
        s.unicode_escape = false;
        let entries: Rc<[Entry]> = s.entries(kind.name_key())?.into();
        let escape = s.unicode_escape;
        s.unicode_escape |= before;
        let text = s.bytes().get(start..s.pos())?;
        if let Ok(mut kept) = self.0.try_borrow_mut() {
            kept.retain(|k| k.kind != kind);
            if text.len() <= KNOWN_LIST_MAX_BYTES {
                kept.push(KnownList {
                    kind,
                    depth,
                    escape,
                    text: text.into(),
                    entries: Rc::clone(&entries),
                });
            }
        }
        Some(entries)
    }
}

/// Copies `bytes`, replacing each array span with `[` kept entries joined by `,` `]`.
fn splice(bytes: &[u8], edits: &[(Range<usize>, Vec<Range<usize>>)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut cursor = 0;
    for (array, kept) in edits {
        out.extend_from_slice(bytes.get(cursor..array.start)?);
        out.push(b'[');
        for (i, entry) in kept.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(bytes.get(entry.clone())?);
        }
        out.push(b']');
        cursor = array.end;
    }
    out.extend_from_slice(bytes.get(cursor..)?);
    Some(out)
}

/// The members of a JSON-RPC message the readers look for.
const MESSAGE_MEMBERS: [&str; 4] = ["id", "result", "error", "method"];

/// The list readers, on the validating cursor ([`crate::scan`]).
impl Scan<'_> {
    /// Whether the member name at `span` is none of `keys` but a decoder matching names
    /// without regard to case takes it for one: Go's `encoding/json` (mcp-go's client, any Go
    /// client decoding into structs) folds them (Unicode simple folding) and lets the last one
    /// win, so `"Tools"` beside `"tools"`, `"Result"` beside `"result"`, `"Name"` beside
    /// `"name"` would be what it reads. Plain ASCII names are compared without a copy.
    #[inline]
    fn key_is_variant(&self, span: &Range<usize>, keys: &[&str]) -> bool {
        // Most members are no variant of any key, and their first letter says so: a variant
        // starts with the key's first letter in either case, or with an escape or a non-ASCII
        // character (U+017F, U+212A, U+0131 fold to ASCII letters).
        let first = self.bytes().get(span.start + 1).copied().unwrap_or(b'"');
        if first.is_ascii_alphabetic()
            && !keys.iter().any(|k| {
                k.as_bytes()
                    .first()
                    .is_some_and(|c| c.eq_ignore_ascii_case(&first))
            })
        {
            return false;
        }
        self.key_may_be_variant(span, keys)
    }

    /// [`Self::key_is_variant`] past its first-letter test.
    #[inline(never)]
    fn key_may_be_variant(&self, span: &Range<usize>, keys: &[&str]) -> bool {
        let Some(raw) = self.bytes().get(span.clone()) else {
            return false;
        };
        let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
        if !raw.contains(&b'\\') && inner.is_ascii() {
            return keys
                .iter()
                .any(|k| inner != k.as_bytes() && inner.eq_ignore_ascii_case(k.as_bytes()));
        }
        let Ok(name) = serde_json::from_slice::<String>(raw) else {
            return false;
        };
        let folded = crate::mcp::fold_key(&Cow::Borrowed(name.as_str()));
        keys.iter()
            .any(|k| name != *k && crate::mcp::fold_key(&Cow::Borrowed(*k)) == folded)
    }

    /// Reads one message: its list if it is the awaited list response.
    fn message(
        &mut self,
        kind: ListKind,
        expected_id: Option<&Value>,
    ) -> Result<Option<List>, Ambiguous> {
        if self.peek() != Some(b'{') {
            self.value().ok_or(Ambiguous)?;
            return Ok(None);
        }
        let mut ids = Vec::new();
        let mut results = Vec::new();
        self.object(|s, key| {
            if s.key_is(&key, "id") {
                ids.push(s.value()?);
            } else if s.key_is(&key, "result") {
                results.push(s.result(kind)?);
            } else if s.key_is_variant(&key, &MESSAGE_MEMBERS) {
                return None;
            } else {
                s.value()?;
            }
            Some(())
        })
        .ok_or(Ambiguous)?;
        if results.is_empty() {
            return Ok(None);
        }
        if results.len() > 1 || (expected_id.is_some() && ids.len() > 1) {
            return Err(Ambiguous);
        }
        if let Some(expected) = expected_id {
            let id = ids.first().and_then(|v| self.bytes().get(v.clone()));
            let id = id.and_then(|v| serde_json::from_slice::<Value>(v).ok());
            if !id.is_some_and(|id| same_id(expected, &id)) {
                return Ok(None);
            }
        }
        let mut lists = results.pop().unwrap_or_default();
        if lists.len() > 1 {
            return Err(Ambiguous);
        }
        Ok(lists.pop().flatten())
    }

    /// Reads one message's members (see [`Info`]).
    fn info(&mut self, kinds: &[ListKind], known: Option<&KnownLists>) -> Result<Info, Ambiguous> {
        let mut info = Info {
            object: self.peek() == Some(b'{'),
            ids: Vec::new(),
            results: 0,
            errors: 0,
            error_object: false,
            methods: 0,
            cacheable: false,
            lists: vec![Vec::new(); kinds.len()],
        };
        if !info.object {
            self.value().ok_or(Ambiguous)?;
            return Ok(info);
        }
        self.object(|s, key| {
            if s.key_is(&key, "id") {
                info.ids.push(s.value()?);
            } else if s.key_is(&key, "result") {
                info.results += 1;
                if s.peek()? != b'{' {
                    s.value()?;
                    return Some(());
                }
                s.object(|s, key| {
                    if CACHING_MEMBERS.iter().any(|m| s.key_is(&key, m)) {
                        info.cacheable = true;
                    } else if s.key_is_variant(&key, &CACHING_MEMBERS) {
                        // `CacheScope` beside the `cacheScope` the filter makes private: a
                        // client that matches names by case (Go's encoding/json) would read it.
                        return None;
                    }
                    let Some(i) = kinds.iter().position(|k| s.key_is(&key, k.list_key())) else {
                        if kinds
                            .iter()
                            .any(|k| s.key_is_variant(&key, &[k.list_key()]))
                        {
                            return None;
                        }
                        s.value()?;
                        return Some(());
                    };
                    let kind = kinds.get(i)?;
                    let list = if s.peek()? == b'[' {
                        let start = s.pos();
                        let entries = match known {
                            Some(known) => known.read(s, *kind)?,
                            None => s.entries(kind.name_key())?.into(),
                        };
                        Some((start..s.pos(), entries))
                    } else {
                        s.value()?;
                        None
                    };
                    info.lists.get_mut(i)?.push(list);
                    Some(())
                })?;
            } else if s.key_is(&key, "error") {
                info.errors += 1;
                info.error_object = s.peek()? == b'{';
                s.value()?;
            } else if s.key_is(&key, "method") {
                info.methods += 1;
                s.value()?;
            } else if s.key_is_variant(&key, &MESSAGE_MEMBERS) {
                return None;
            } else {
                s.value()?;
            }
            Some(())
        })
        .ok_or(Ambiguous)?;
        Ok(info)
    }

    /// Reads a `result` value: one item per list member, the list if it is an array.
    fn result(&mut self, kind: ListKind) -> Option<Vec<Option<List>>> {
        let mut lists = Vec::new();
        if self.peek()? != b'{' {
            self.value()?;
            return Some(lists);
        }
        self.object(|s, key| {
            if s.key_is_variant(&key, &[kind.list_key()]) {
                return None;
            } else if !s.key_is(&key, kind.list_key()) {
                s.value()?;
            } else if s.peek()? == b'[' {
                let start = s.pos();
                let entries = s.entries(kind.name_key())?.into();
                lists.push(Some((start..s.pos(), entries)));
            } else {
                s.value()?;
                lists.push(None);
            }
            Some(())
        })?;
        Some(lists)
    }

    /// Reads an array of list entries and the `name_key` string of each one (spans from the
    /// array's `[`).
    fn entries(&mut self, name_key: &str) -> Option<Vec<Entry>> {
        self.peek()?;
        let base = self.pos();
        self.elements(|s| {
            let start = s.pos().saturating_sub(base);
            if s.peek()? != b'{' {
                s.value()?;
                return Some(Entry::new(start..s.pos(), None));
            }
            let mut names = Vec::new();
            s.object(|s, key| {
                if s.key_is(&key, name_key) {
                    names.push(s.value()?);
                } else if s.key_is_variant(&key, &[name_key]) {
                    return None;
                } else {
                    s.value()?;
                }
                Some(())
            })?;
            // No name, several names or a name that is not a string: no entry.
            let name = match names.as_slice() {
                [name] => serde_json::from_slice::<String>(s.bytes().get(name.clone())?).ok(),
                _ => None,
            };
            Some(Entry::new(start..s.pos().saturating_sub(base), name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{Event, Rewrite, SseRewriter};
    use serde_json::json;

    fn filter(message: &Value, kind: ListKind, id: Option<Value>, allow: &[&str]) -> Filtered {
        let bytes = serde_json::to_vec(message).unwrap();
        filter_result(&bytes, kind, id.as_ref(), &mut |n| allow.contains(&n))
    }

    fn rewritten(f: Filtered) -> (Value, usize) {
        match f {
            Filtered::Rewritten { body, hidden } => {
                (serde_json::from_slice(&body).unwrap(), hidden)
            }
            other => panic!("expected Rewritten, got {other:?}"),
        }
    }

    fn tools(names: &[&str]) -> Vec<Value> {
        names
            .iter()
            .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
            .collect()
    }

    #[test]
    fn methods() {
        assert_eq!(ListKind::for_method("tools/list"), Some(ListKind::Tools));
        assert_eq!(
            ListKind::for_method("prompts/list"),
            Some(ListKind::Prompts)
        );
        assert_eq!(
            ListKind::for_method("resources/list"),
            Some(ListKind::Resources)
        );
        assert_eq!(
            ListKind::for_method("resources/templates/list"),
            Some(ListKind::Templates)
        );
        assert_eq!(ListKind::for_method("tools/call"), None);
    }

    #[test]
    fn tools_filtered_other_members_kept() {
        let msg = json!({
            "jsonrpc": "2.0", "id": 3,
            "result": {"tools": tools(&["a", "b", "c"]), "nextCursor": "page-2", "_meta": {"k": 1}},
        });
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, Some(json!(3)), &["a", "c"]));
        assert_eq!(hidden, 1);
        assert_eq!(
            out,
            json!({
                "jsonrpc": "2.0", "id": 3,
                "result": {"tools": tools(&["a", "c"]), "nextCursor": "page-2", "_meta": {"k": 1}},
            })
        );
    }

    #[test]
    fn prompts_and_resources() {
        let msg = json!({"jsonrpc": "2.0", "id": "p", "result": {"prompts": [{"name": "x"}, {"name": "y"}]}});
        let (out, hidden) = rewritten(filter(&msg, ListKind::Prompts, Some(json!("p")), &["y"]));
        assert_eq!(
            (out["result"]["prompts"].clone(), hidden),
            (json!([{"name": "y"}]), 1)
        );

        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"resources": [
            {"uri": "file:///a", "name": "y"}, {"uri": "file:///b", "name": "x"},
        ]}});
        // Resources are matched on `uri`, not `name`.
        let (out, _) = rewritten(filter(&msg, ListKind::Resources, None, &["file:///b", "y"]));
        assert_eq!(
            out["result"]["resources"],
            json!([{"uri": "file:///b", "name": "x"}])
        );
        // The wrong kind finds no list.
        assert_eq!(filter(&msg, ListKind::Tools, None, &[]), Filtered::NotAList);
    }

    #[test]
    fn malformed_entries_are_removed() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
            {"name": "ok"}, {"title": "no name"}, {"name": 5}, {"name": null}, "ok", null,
        ]}});
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, Some(json!(1)), &["ok"]));
        assert_eq!(hidden, 5);
        assert_eq!(out["result"]["tools"], json!([{"name": "ok"}]));
    }

    #[test]
    fn nothing_hidden_is_unchanged() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools(&["a", "b"])}});
        assert_eq!(
            filter(&msg, ListKind::Tools, Some(json!(1)), &["a", "b"]),
            Filtered::Unchanged
        );
        let empty = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}});
        assert_eq!(
            filter(&empty, ListKind::Tools, None, &[]),
            Filtered::Unchanged
        );
    }

    #[test]
    fn everything_hidden() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools(&["a", "b"])}});
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, None, &[]));
        assert_eq!((out["result"]["tools"].clone(), hidden), (json!([]), 2));
    }

    #[test]
    fn other_messages_are_not_lists() {
        let id = Some(json!(7));
        let cases = [
            // Error response.
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "no"}}),
            // Notification.
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
            // Server request.
            json!({"jsonrpc": "2.0", "id": 7, "method": "roots/list"}),
            // Another id, same or different type.
            json!({"jsonrpc": "2.0", "id": 8, "result": {"tools": tools(&["a"])}}),
            json!({"jsonrpc": "2.0", "id": "8", "result": {"tools": tools(&["a"])}}),
            json!({"jsonrpc": "2.0", "id": "seven", "result": {"tools": tools(&["a"])}}),
            // No id at all.
            json!({"jsonrpc": "2.0", "result": {"tools": tools(&["a"])}}),
            // A result without the list, or with a list that is not an array.
            json!({"jsonrpc": "2.0", "id": 7, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": {"name": "a"}}}),
            json!({"jsonrpc": "2.0", "id": 7, "result": [1]}),
            json!("just a string"),
            json!([]),
        ];
        for msg in cases {
            assert_eq!(
                filter(&msg, ListKind::Tools, id.clone(), &[]),
                Filtered::NotAList,
                "{msg}"
            );
        }
        // Without an expected id, any response id matches.
        let msg = json!({"jsonrpc": "2.0", "id": 8, "result": {"tools": tools(&["a"])}});
        assert!(matches!(
            filter(&msg, ListKind::Tools, None, &[]),
            Filtered::Rewritten { .. }
        ));
    }

    #[test]
    fn unparseable() {
        let mut deny = |_: &str| false;
        for bad in [
            &b""[..],
            b"{",
            b"not json",
            b"{\"id\":1,\"result\":{\"tools\":[]}} trailing",
            b"{\"id\":1,\"result\":{\"tools\":[{\"name\":\"\xff\"}]}}",
            // Duplicate members the decision depends on: a client might read the other one.
            b"{\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"}],\"tools\":[]}}",
            b"{\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"}],\"t\\u006fols\":[]}}",
            b"{\"id\":1,\"result\":{\"tools\":[]},\"result\":{\"tools\":[{\"name\":\"a\"}]}}",
        ] {
            assert_eq!(
                filter_result(bad, ListKind::Tools, None, &mut deny),
                Filtered::Unparseable,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let dup_id = br#"{"id":1,"id":2,"result":{"tools":[{"name":"a"}]}}"#;
        let one = json!(1);
        assert_eq!(
            filter_result(dup_id, ListKind::Tools, Some(&one), &mut deny),
            Filtered::Unparseable
        );
    }

    #[test]
    fn ambiguous_entry_names_are_hidden() {
        let msg = br#"{"id":1,"result":{"tools":[{"name":"a","name":"b"},{"name":"a"}]}}"#;
        let f = filter_result(msg, ListKind::Tools, None, &mut |_| true);
        let (out, hidden) = rewritten(f);
        assert_eq!(hidden, 1);
        assert_eq!(out["result"]["tools"], json!([{"name": "a"}]));
    }

    #[test]
    fn escapes_are_decoded_like_a_client_would() {
        // Keys and names written with escapes; strings full of JSON punctuation.
        let msg = br#"{"\u0069d":1,"r\u0065sult":{"t\u006fols":[
            {"description":"tricky \"}]{[, \\","n\u0061me":"\u0061"},
            {"name":"b\"]}","x":["]","}",{"\\":"\""}]},
            {"name":"c"}
        ]}}"#;
        let one = json!(1);
        let mut seen = Vec::new();
        let f = filter_result(msg, ListKind::Tools, Some(&one), &mut |n| {
            seen.push(n.to_owned());
            n != "b\"]}"
        });
        assert_eq!(seen, ["a", "b\"]}", "c"]);
        let (out, hidden) = rewritten(f);
        assert_eq!(hidden, 1);
        assert_eq!(
            out["result"]["tools"],
            json!([{"description": "tricky \"}]{[, \\", "name": "a"}, {"name": "c"}])
        );
    }

    #[test]
    fn other_bytes_are_preserved_exactly() {
        // Member order, whitespace and number formats survive; only the hidden entry goes.
        let msg = "{ \"result\" : {\"_meta\":{\"z\":1, \"a\":1.50e3},\n  \"tools\" : [ {\"name\":\"a\"} ,\n\
                   {\"name\":\"b\"}\t, {\"name\":\"c\",\"n\":12345678901234567890123} ] ,\
                   \"nextCursor\":\"x\" },\"jsonrpc\":\"2.0\",\"id\" : 9 }";
        let f = filter_result(msg.as_bytes(), ListKind::Tools, None, &mut |n| n != "b");
        let Filtered::Rewritten { body, hidden: 1 } = f else {
            panic!("{f:?}");
        };
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{ \"result\" : {\"_meta\":{\"z\":1, \"a\":1.50e3},\n  \"tools\" : [{\"name\":\"a\"},\
             {\"name\":\"c\",\"n\":12345678901234567890123}] ,\
             \"nextCursor\":\"x\" },\"jsonrpc\":\"2.0\",\"id\" : 9 }"
        );
    }

    /// The scanner against a straightforward `Value` implementation, on compact and pretty
    /// encodings of varied messages.
    #[test]
    fn agrees_with_value_reference() {
        fn reference(msg: &Value, allow: &dyn Fn(&str) -> bool) -> Value {
            let mut msg = msg.clone();
            if let Some(list) = msg["result"]["tools"].as_array_mut() {
                list.retain(|t| t["name"].as_str().is_some_and(allow));
            }
            msg
        }
        let allow = |n: &str| n.len() & 1 == 0;
        let messages = [
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
                {"name": "ab", "inputSchema": {"type": "object", "properties": {
                    "q": {"type": ["string", "null"], "default": null, "enum": [1, -2.5e-3, true, false]},
                }}},
                {"name": "abc", "annotations": {"title": "x\u{1F600}\n\t\"\\/"}},
                {"name": ""}, {"name": "abcd", "nested": [[[[{}]]], [], {}]},
                [], 1, "ab", null, {"name": ["ab"]},
            ], "nextCursor": null}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "ab"}]}}),
        ];
        for msg in &messages {
            for bytes in [
                serde_json::to_vec(msg).unwrap(),
                serde_json::to_vec_pretty(msg).unwrap(),
            ] {
                let expected = reference(msg, &allow);
                match filter_result(&bytes, ListKind::Tools, Some(&json!(1)), &mut |n| allow(n)) {
                    Filtered::Rewritten { body, hidden } => {
                        let got: Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(got, expected);
                        assert!(hidden > 0);
                    }
                    Filtered::Unchanged => assert_eq!(&expected, msg),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn batch_members_are_filtered() {
        let msg = json!([
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
            {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools(&["a", "b"])}},
        ]);
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, Some(json!(1)), &["b"]));
        assert_eq!(hidden, 1);
        assert_eq!(out[0], msg[0]);
        assert_eq!(out[1]["result"]["tools"], json!(tools(&["b"])));
    }

    #[test]
    fn ids_a_client_would_take_for_the_request_s() {
        let five = json!(5);
        for id in [
            json!(5),
            json!(5.0),
            json!("5"),
            json!("05"),
            json!(" 5 "),
            json!("+5"),
            json!("5.0"),
            json!("5e0"),
            json!("0x5"),
            json!("0_5"),
            json!("\u{0665}"), // ARABIC-INDIC DIGIT FIVE: Python's int() reads it
        ] {
            assert!(same_id(&five, &id), "{id}");
        }
        for id in [
            json!(6),
            json!("6"),
            json!("5a"),
            json!(5.5),
            json!(null),
            json!(true),
            json!([5]),
            json!("five"),
        ] {
            assert!(!same_id(&five, &id), "{id}");
        }
        // JavaScript's Number("") is 0, the TypeScript SDK's first request id.
        assert!(same_id(&json!(0), &json!("")));
        // A string request id: exact, or the same number.
        assert!(same_id(&json!("7"), &json!(7)));
        assert!(same_id(&json!("abc"), &json!("abc")));
        assert!(!same_id(&json!("abc"), &json!("ABC")));
    }

    #[test]
    fn a_coerced_id_is_filtered_as_the_request_s() {
        for id in [json!("5"), json!(5.0), json!("05")] {
            let msg = json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools(&["a", "b"])}});
            let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, Some(json!(5)), &["a"]));
            assert_eq!(
                (out["result"]["tools"].clone(), hidden),
                (json!(tools(&["a"])), 1)
            );
        }
    }

    fn check(message: &Value, expect: &Expect, allow: &[&str]) -> Checked {
        let bytes = serde_json::to_vec(message).unwrap();
        check_answer(&bytes, expect, &mut |l| allow.contains(&l.name))
    }

    fn list_request(id: Value, kind: ListKind) -> Expect {
        Expect {
            lists: vec![(id, kind)],
            strict: true,
            ..Expect::default()
        }
    }

    fn rewritten_checked(c: Checked) -> (Value, usize) {
        match c {
            Checked::Rewritten { body, hidden, .. } => {
                (serde_json::from_slice(&body).unwrap(), hidden)
            }
            other => panic!("expected Rewritten, got {other:?}"),
        }
    }

    #[test]
    fn a_list_request_s_answer_is_filtered_or_unreadable() {
        let expect = list_request(json!(5), ListKind::Tools);
        for id in [json!(5), json!("5"), json!(5.0), json!("5e0")] {
            let msg = json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools(&["a", "b"])}});
            let (out, hidden) = rewritten_checked(check(&msg, &expect, &["a"]));
            assert_eq!(
                (out["result"]["tools"].clone(), hidden),
                (json!(tools(&["a"])), 1)
            );
        }
        // Errors pass; nothing to filter.
        let error = json!({"jsonrpc": "2.0", "id": 5, "error": {"code": -1, "message": "no"}});
        assert_eq!(check(&error, &expect, &[]), Checked::Pass);
        let null_id = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -1, "message": "no"}});
        assert_eq!(check(&null_id, &expect, &[]), Checked::Pass);
        // Server requests and notifications pass on a stream, not as a JSON body.
        let note = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}});
        assert_eq!(check(&note, &expect, &[]), Checked::Pass);
        let body = Expect {
            responses_only: true,
            ..expect.clone()
        };
        assert!(matches!(check(&note, &body, &[]), Checked::Unreadable(_)));
        // A batch is read (and filtered) only where the protocol has batches.
        let batch = json!([{"jsonrpc": "2.0", "id": 5, "result": {"tools": tools(&["a", "b"])}}]);
        assert!(matches!(
            check(&batch, &expect, &["a"]),
            Checked::Rewritten { hidden: 1, .. }
        ));
        let modern = Expect {
            no_batch: true,
            ..expect.clone()
        };
        assert_eq!(
            check(&batch, &modern, &["a"]),
            Checked::Unreadable("a batch, after protocol 2025-03-26".into())
        );
        for bad in [
            json!({"jsonrpc": "2.0", "id": 6, "result": {"tools": tools(&["a"])}}),
            json!({"jsonrpc": "2.0", "result": {"tools": tools(&["a"])}}),
            json!({"jsonrpc": "2.0", "id": 5, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 5, "result": {"prompts": []}}),
            json!({"jsonrpc": "2.0", "id": 5, "result": {"tools": {"name": "a"}}}),
            json!({"jsonrpc": "2.0", "id": 5, "result": [1]}),
            json!({"jsonrpc": "2.0", "id": 5, "result": {"tools": []}, "error": {"code": 1}}),
            json!({"jsonrpc": "2.0", "id": 5, "method": "x", "result": {"tools": []}}),
            json!({"jsonrpc": "2.0", "id": 5, "error": "no"}),
            json!({"jsonrpc": "2.0", "id": 6, "error": {"code": 1, "message": "x"}}),
            json!({"jsonrpc": "2.0", "id": 5}),
            json!({"tools": tools(&["a"])}),
            json!("just a string"),
            json!([]),
        ] {
            assert!(
                matches!(check(&bad, &expect, &["a"]), Checked::Unreadable(_)),
                "{bad}"
            );
        }
        for bad in [
            &b""[..],
            b"not json",
            b"{\"id\":5,\"id\":5,\"result\":{\"tools\":[]}}",
        ] {
            assert!(matches!(
                check_answer(bad, &expect, &mut |_| true),
                Checked::Unreadable(_)
            ));
        }
    }

    #[test]
    fn a_get_stream_filters_every_list_by_shape() {
        let expect = Expect {
            any: ListKind::ALL.to_vec(),
            ..Expect::default()
        };
        // Any id; every kind in one result, each filtered.
        let msg = json!({"jsonrpc": "2.0", "id": "x", "result": {
            "tools": tools(&["a", "b"]),
            "prompts": [{"name": "a"}, {"name": "p"}],
            "resourceTemplates": [{"uriTemplate": "a", "name": "t"}, {"uriTemplate": "u", "name": "a"}],
        }});
        let (out, hidden) = rewritten_checked(check(&msg, &expect, &["a"]));
        assert_eq!(hidden, 3);
        assert_eq!(out["result"]["tools"], json!(tools(&["a"])));
        assert_eq!(out["result"]["prompts"], json!([{"name": "a"}]));
        assert_eq!(
            out["result"]["resourceTemplates"],
            json!([{"uriTemplate": "a", "name": "t"}])
        );
        // Other JSON-RPC messages pass; what is not JSON, or is both request and response, not.
        let other = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}});
        assert_eq!(check(&other, &expect, &[]), Checked::Pass);
        let both = json!({"jsonrpc": "2.0", "id": 1, "method": "m", "result": {"tools": []}});
        assert!(matches!(check(&both, &expect, &[]), Checked::Unreadable(_)));
        assert!(matches!(
            check_answer(b"data", &expect, &mut |_| true),
            Checked::Unreadable(_)
        ));
    }

    #[test]
    fn a_batch_s_list_answers_are_matched_by_id() {
        let expect = Expect {
            lists: vec![(json!(1), ListKind::Tools), (json!(3), ListKind::Prompts)],
            others: vec![json!(2)],
            any: ListKind::ALL.to_vec(),
            strict: true,
            responses_only: true,
            no_batch: false,
        };
        let msg = json!([
            {"jsonrpc": "2.0", "id": "3", "result": {"prompts": [{"name": "a"}, {"name": "p"}]}},
            {"jsonrpc": "2.0", "id": 2, "result": {"content": [], "tools": tools(&["b"])}},
            {"jsonrpc": "2.0", "id": 1.0, "result": {"tools": tools(&["a", "b"])}},
        ]);
        let (out, hidden) = rewritten_checked(check(&msg, &expect, &["a"]));
        assert_eq!(hidden, 3);
        assert_eq!(out[0]["result"]["prompts"], json!([{"name": "a"}]));
        assert_eq!(out[1]["result"]["tools"], json!([]));
        assert_eq!(out[2]["result"]["tools"], json!(tools(&["a"])));
        // A list request answered without its list, or a response to no request: unreadable.
        for bad in [
            json!([{"jsonrpc": "2.0", "id": 1, "result": {"prompts": []}}]),
            json!([{"jsonrpc": "2.0", "id": 9, "result": {}}]),
            json!([{"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}, 5]),
        ] {
            assert!(
                matches!(check(&bad, &expect, &["a"]), Checked::Unreadable(_)),
                "{bad}"
            );
        }
    }

    fn big_list() -> Vec<u8> {
        let tools: Vec<Value> = (0..500)
            .map(|i| {
                json!({
                    "name": format!("tool_{i}"),
                    "description": format!("Does thing number {i} with some reasonably long text."),
                    "inputSchema": {"type": "object", "properties": {
                        "path": {"type": "string", "description": "A path"},
                        "count": {"type": "integer", "minimum": 0},
                    }, "required": ["path"]},
                })
            })
            .collect();
        serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "id": 42, "result": {"tools": tools, "nextCursor": "c"},
        }))
        .unwrap()
    }

    fn even(name: &str) -> bool {
        name.strip_prefix("tool_")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n % 2 == 0)
    }

    /// Checks `message` with the lists `known` holds (and keeps its arrays there), and without.
    /// An entry is shown if its name has an odd length and its text has no `x` in it: the second
    /// test is an entry-only verdict, kept in the entry's memo when it passes (as pins do).
    fn check_both(message: &[u8], expect: &Expect, known: &KnownLists) -> (Checked, Checked) {
        check_counted(message, expect, known).0
    }

    /// [`check_both`], and how many entry texts the remembered read had to look at.
    fn check_counted(
        message: &[u8],
        expect: &Expect,
        known: &KnownLists,
    ) -> ((Checked, Checked), usize) {
        let looked = Cell::new(0);
        let mut allow = |l: &Listed| {
            if l.name.len() % 2 == 0 {
                return false;
            }
            if l.memo.get() {
                return true;
            }
            looked.set(looked.get() + 1);
            let ok = !l.text.contains(&b'x');
            l.memo.set(ok);
            ok
        };
        let fresh = check_answer(message, expect, &mut allow);
        looked.set(0);
        let remembered = match std::str::from_utf8(message) {
            Ok(text) => check_answer_text(text, expect, Some(known), &mut allow),
            Err(_) => Checked::Unreadable("not JSON".into()),
        };
        ((fresh, remembered), looked.get())
    }

    #[test]
    fn a_remembered_list_decides_exactly_as_reading_it_again() {
        // After a good list is kept, every one-byte change anywhere in the message (inside the
        // array, at its ends, around it) gets the verdict a fresh read gives, and the good
        // list still reads the same between the changes: neither the kept entries nor their
        // memos are taken for bytes that differ.
        let good = br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"a","d":{"x":[1,"\u0041"]}},{"name":"bb"},{"name":"ccc","name":"d"},7,{"name":"eeeee","k":"v"}],"nextCursor":"n"}}"#;
        let expect = list_request(json!(7), ListKind::Tools);
        let known = KnownLists::default();
        let ((fresh, first), looked) = check_counted(good, &expect, &known);
        assert!(
            matches!(fresh, Checked::Rewritten { hidden: 4, .. }),
            "{fresh:?}"
        );
        assert_eq!((first, looked), (fresh, 2));
        // Read again: the entry that passed is not looked at again (its memo is kept).
        let ((fresh, again), looked) = check_counted(good, &expect, &known);
        assert_eq!((again, looked), (fresh, 1));
        let replacements = b"\"\\{}[],:x 0\t";
        for at in 0..good.len() {
            for &b in replacements.iter().filter(|&&b| b != good[at]) {
                let mut bad = good.to_vec();
                bad[at] = b;
                let (fresh, remembered) = check_both(&bad, &expect, &known);
                assert_eq!(remembered, fresh, "byte {at} set to {:?}", b as char);
                let (fresh, again) = check_both(good, &expect, &known);
                assert_eq!(again, fresh, "the good list after byte {at}");
            }
        }
        // One byte more or less at the end of the array.
        let text = std::str::from_utf8(good).unwrap();
        for (from, to) in [("}],", "}] ,"), ("}],", "},{}],"), ("}],", "],")] {
            let bad = text.replacen(from, to, 1);
            let (fresh, remembered) = check_both(bad.as_bytes(), &expect, &known);
            assert_eq!(remembered, fresh, "{to}");
        }
    }

    #[test]
    fn a_remembered_list_is_not_taken_deeper_than_it_was_read() {
        // Valid at the depth of a single message, too deep inside a batch (one level more).
        let deep = format!("{}1{}", "[".repeat(123), "]".repeat(123));
        let one = format!(r#"{{"id":1,"result":{{"tools":[{{"name":"a","y":{deep}}}]}}}}"#);
        let expect = Expect {
            any: vec![ListKind::Tools],
            ..Expect::default()
        };
        let known = KnownLists::default();
        let (fresh, remembered) = check_both(one.as_bytes(), &expect, &known);
        assert!(matches!(fresh, Checked::Listed { .. }), "{fresh:?}");
        assert_eq!(remembered, fresh);
        let batch = format!("[{one}]");
        let (fresh, remembered) = check_both(batch.as_bytes(), &expect, &known);
        assert!(matches!(fresh, Checked::Unreadable(_)), "{fresh:?}");
        assert_eq!(remembered, fresh);
    }

    /// The reader validates as it goes: a list whose bytes are not JSON anywhere (deep inside an
    /// entry the caller would not see, or one it would) is refused whole, as serde_json would
    /// refuse it; nothing of it is forwarded as a filtered list.
    #[test]
    fn damage_anywhere_in_a_list_makes_it_unreadable() {
        let body = String::from_utf8(big_list()).unwrap();
        let expect = Expect {
            lists: vec![(json!(42), ListKind::Tools)],
            strict: true,
            ..Expect::default()
        };
        let damages = [
            ("\"minimum\":0", "\"minimum\":01"),
            ("\"minimum\":0", "\"minimum\":-"),
            ("\"minimum\":0", "\"minimum\":0."),
            ("\"type\":\"object\"", "\"type\":objec"),
            ("\"required\":[\"path\"]", "\"required\":[\"path\",]"),
            ("\"required\":[\"path\"]", "\"required\":[\"path\" \"x\"]"),
            ("\"A path\"", "\"A\tpath\""),
            ("\"A path\"", "\"A \\x path\""),
            ("\"A path\"", "\"A \\u12G4 path\""),
            ("\"nextCursor\":\"c\"", "\"nextCursor\":tru"),
            ("\"nextCursor\":\"c\"", "\"nextCursor\":\"c\",}"),
        ];
        for (from, to) in damages {
            for nth in [1, 2, 499, 500] {
                // The nth occurrence (an even tool is kept, an odd one hidden).
                let Some((at, _)) = body.match_indices(from).nth(nth - 1) else {
                    continue;
                };
                let bad = format!("{}{}{}", &body[..at], to, &body[at + from.len()..]);
                assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(&bad).is_err(),
                    "{to} at {nth} is still JSON"
                );
                assert!(
                    matches!(
                        check_answer(bad.as_bytes(), &expect, &mut |l| even(l.name)),
                        Checked::Unreadable(_)
                    ),
                    "{to} at {nth}"
                );
                assert_eq!(
                    filter_result(bad.as_bytes(), ListKind::Tools, Some(&json!(42)), &mut even),
                    Filtered::Unparseable,
                    "{to} at {nth}"
                );
            }
        }
        // Undamaged, the same list is read and filtered.
        assert!(matches!(
            check_answer(body.as_bytes(), &expect, &mut |l| even(l.name)),
            Checked::Rewritten { hidden: 250, .. }
        ));
    }

    #[test]
    fn five_hundred_tools() {
        let body = big_list();
        let (out, hidden) = rewritten(filter_result(
            &body,
            ListKind::Tools,
            Some(&json!(42)),
            &mut |n| even(n),
        ));
        assert_eq!(hidden, 250);
        let names: Vec<&str> = out["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..500).step_by(2).map(|i| format!("tool_{i}")).collect();
        assert_eq!(names, expected);
        assert_eq!(out["result"]["nextCursor"], "c");
        assert_eq!(
            out["result"]["tools"][1]["inputSchema"]["required"],
            json!(["path"])
        );
    }

    /// The two modules together, as the filter uses them on a `text/event-stream` response.
    #[test]
    fn sse_stream_with_requests_before_the_result() {
        let notification =
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
        let request =
            r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}"#;
        let result = json!({"jsonrpc": "2.0", "id": 5, "result": {
            "tools": tools(&["read", "delete"]), "nextCursor": "n",
        }});
        let stream = format!(
            ": ping\r\n\r\nid: e1\r\ndata: {notification}\r\n\r\n\
             event: message\ndata: {request}\n\n\
             id: e3\nevent: message\ndata: {result}\n\n"
        );
        let expected_id = json!(5);
        let mut f = |e: &Event| match filter_result(
            e.data.as_bytes(),
            ListKind::Tools,
            Some(&expected_id),
            &mut |n| n == "read",
        ) {
            Filtered::Rewritten { body, .. } => Rewrite::Replace(body),
            Filtered::Unchanged | Filtered::NotAList => Rewrite::Keep,
            Filtered::Unparseable if e.data.is_empty() => Rewrite::Keep,
            Filtered::Unparseable => panic!("unparseable {e:?}"),
        };
        let bytes = stream.as_bytes();
        for at in 0..=bytes.len() {
            let mut rw = SseRewriter::new(1 << 16);
            let (a, b) = bytes.split_at(at);
            let mut out = rw.push(a, false, &mut f).unwrap();
            out.extend(rw.push(b, true, &mut f).unwrap());
            let out = String::from_utf8(out).unwrap();
            // The notification and the server request pass byte-for-byte.
            let (head, last) = out.split_at(out.find("id: e3").unwrap());
            assert_eq!(
                head,
                format!(
                    ": ping\r\n\r\nid: e1\r\ndata: {notification}\r\n\r\n\
                     event: message\ndata: {request}\n\n"
                )
            );
            let data = last
                .strip_prefix("id: e3\nevent: message\ndata: ")
                .and_then(|s| s.strip_suffix("\n\n"))
                .unwrap();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["result"]["tools"], json!(tools(&["read"])));
            assert_eq!(data["result"]["nextCursor"], "n");
        }
    }
}

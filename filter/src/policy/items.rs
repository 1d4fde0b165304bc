//! Filtering a listing without running every rule for every item.
//!
//! A listing shows an item when some call to it could be allowed ([`super::Policy::visible`]):
//! each rule is evaluated as if the caller called that item. Within one listing, the facts
//! of those calls differ only in the item's name (`mcp.tool.name`, `mcp.prompt.name`,
//! `mcp.resource.uri`/`name`); everything else, from the token to `mcp.method`, is the same
//! for every item of a kind. So when an expression reads the item's name only through simple
//! tests against constants (`==`, `!=`, `in [...]`, `startsWith`, `endsWith`, `contains`),
//! two items that pass the same tests get the same result, and the rule runs once per
//! combination of test results instead of once per item: a few times per listing, not 500.
//! An expression that reads the name any other way ([`ItemUse::Opaque`]) runs for every item.

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr};

use super::analysis::string_literal;
use super::Item;

/// The most tests an expression may have for its results to be remembered (one bit each).
const MAX_TESTS: usize = 64;

/// Which name of the item a test reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `mcp.tool.name`.
    Tool,
    /// `mcp.prompt.name`.
    Prompt,
    /// `mcp.resource.uri` and `mcp.resource.name` (the same value).
    Resource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Equals(String),
    In(Vec<String>),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NameTest {
    field: Field,
    test: Test,
}

/// How an expression reads the item of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ItemUse {
    /// Only through these tests: the result for an item follows from which of them it passes.
    Tests(Vec<NameTest>),
    /// Some other way: evaluate for every item.
    Opaque,
}

impl ItemUse {
    /// Finds how the expression `root` reads the item.
    pub fn of(root: &IdedExpr) -> ItemUse {
        let mut tests = Vec::new();
        let mut scope = Vec::new();
        if walk(root, &mut scope, &mut tests) && tests.len() <= MAX_TESTS {
            ItemUse::Tests(tests)
        } else {
            ItemUse::Opaque
        }
    }

    /// Which tests `item` passes, one bit each; `None` for an opaque expression.
    pub fn key(&self, item: Item<'_>) -> Option<u64> {
        let names = match item {
            Item::Tool(name) => Names {
                tool: name,
                ..Names::default()
            },
            Item::Prompt(name) => Names {
                prompt: name,
                ..Names::default()
            },
            Item::Resource(uri) => Names {
                resource: uri,
                ..Names::default()
            },
        };
        self.key_of(names)
    }

    /// Which tests a message naming these tool, prompt and resource passes; `None` for an
    /// opaque expression.
    pub fn key_of(&self, names: Names<'_>) -> Option<u64> {
        let ItemUse::Tests(tests) = self else {
            return None;
        };
        let Names {
            tool,
            prompt,
            resource,
        } = names;
        let mut bits = 0u64;
        for (i, t) in tests.iter().enumerate() {
            let value = match t.field {
                Field::Tool => tool,
                Field::Prompt => prompt,
                Field::Resource => resource,
            };
            let passes = match &t.test {
                Test::Equals(s) => value == s,
                Test::In(list) => list.iter().any(|s| s == value),
                Test::StartsWith(s) => value.starts_with(s.as_str()),
                Test::EndsWith(s) => value.ends_with(s.as_str()),
                Test::Contains(s) => value.contains(s.as_str()),
            };
            if passes {
                bits |= 1 << i;
            }
        }
        Some(bits)
    }
}

/// The names a message's `mcp` carries: the tool's, the prompt's and the resource's URI ("" for
/// none).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Names<'a> {
    pub tool: &'a str,
    pub prompt: &'a str,
    pub resource: &'a str,
}

/// Whether `root` reads nothing of a message but its method (`mcp.method`, `mcp.methodName`,
/// `mcp.kind`) and its names through name tests: then its result for a call follows from the
/// method and which tests the names pass ([`ItemUse::key_of`]), whoever calls, whenever, with
/// whatever arguments. Every other variable (`jwt`, `request`, `source`, `connection`, `now`)
/// and every other part of `mcp` makes it depend on more; so does a presence test (`has()`).
/// The functions CEL rules can call are pure.
pub(super) fn reads_method_and_names_only(root: &IdedExpr) -> bool {
    every_node(root, &mut Vec::new(), &mut |e, scope| {
        if name_test(e, scope).is_some() {
            return Some(true);
        }
        match &e.expr {
            // A comprehension's variable; any other is a fact of the request.
            Expr::Ident(name) => Some(scope.contains(name)),
            Expr::Select(select) if select.test => Some(false),
            Expr::Select(_) => mcp_path(e, scope)
                .map(|path| matches!(path.as_slice(), ["method" | "methodName" | "kind"])),
            _ => None,
        }
    })
}

/// Collects the name tests of `e`; false when `e` reads the item some other way.
fn walk(e: &IdedExpr, scope: &mut Vec<String>, tests: &mut Vec<NameTest>) -> bool {
    every_node(e, scope, &mut |e, scope| {
        if let Some(test) = name_test(e, scope) {
            tests.push(test);
            return Some(true);
        }
        match &e.expr {
            Expr::Ident(name) => Some(name != "mcp" || scope.contains(name)),
            Expr::Select(select) if !select.test => {
                mcp_path(e, scope).map(|path| same_for_every_item(&path))
            }
            _ => None,
        }
    })
}

/// Whether `node` holds for `e` and every expression in it: `node(e, scope)` decides an
/// expression (`Some`) or leaves it to its parts (`None`); `scope` holds the comprehension
/// variables in force. A variable `node` leaves undecided holds.
fn every_node(
    e: &IdedExpr,
    scope: &mut Vec<String>,
    node: &mut dyn FnMut(&IdedExpr, &[String]) -> Option<bool>,
) -> bool {
    if let Some(verdict) = node(e, scope) {
        return verdict;
    }
    match &e.expr {
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => true,
        Expr::Select(select) => every_node(&select.operand, scope, node),
        Expr::Call(call) => {
            call.target
                .as_deref()
                .is_none_or(|t| every_node(t, scope, node))
                && call.args.iter().all(|a| every_node(a, scope, node))
        }
        Expr::Comprehension(c) => {
            if !every_node(&c.iter_range, scope, node) || !every_node(&c.accu_init, scope, node) {
                return false;
            }
            let depth = scope.len();
            scope.push(c.iter_var.clone());
            if let Some(second) = &c.iter_var2 {
                scope.push(second.clone());
            }
            scope.push(c.accu_var.clone());
            let inner = every_node(&c.loop_cond, scope, node)
                && every_node(&c.loop_step, scope, node)
                && every_node(&c.result, scope, node);
            scope.truncate(depth);
            inner
        }
        Expr::List(list) => list.elements.iter().all(|x| every_node(x, scope, node)),
        Expr::Map(cel::common::ast::MapExpr { entries })
        | Expr::Struct(cel::common::ast::StructExpr { entries, .. }) => {
            entries.iter().all(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => {
                    every_node(&m.key, scope, node) && every_node(&m.value, scope, node)
                }
                EntryExpr::StructField(f) => every_node(&f.value, scope, node),
            })
        }
    }
}

/// `mcp.a.b…` with `mcp` the variable (not a comprehension's): the fields after `mcp`.
pub(super) fn mcp_path<'e>(e: &'e IdedExpr, scope: &[String]) -> Option<Vec<&'e str>> {
    let mut fields = Vec::new();
    let mut node = e;
    loop {
        match &node.expr {
            Expr::Ident(name) if name == "mcp" && !scope.contains(name) => {
                fields.reverse();
                return Some(fields);
            }
            Expr::Select(select) if !select.test => {
                fields.push(select.field.as_str());
                node = &select.operand;
            }
            _ => return None,
        }
    }
}

/// Whether a part of `mcp` is the same for every item of one kind in a listing.
fn same_for_every_item(path: &[&str]) -> bool {
    match path {
        ["method" | "methodName" | "kind" | "session_id" | "sessionId", ..] => true,
        // The listing request's own facts, not the item's.
        ["protocol_version" | "protocolVersion" | "task" | "subscription" | "input", ..] => true,
        // Absent in a listing: reading it fails the same way for every item.
        ["tool", "arguments", ..] => true,
        _ => false,
    }
}

fn name_field(e: &IdedExpr, scope: &[String]) -> Option<Field> {
    match mcp_path(e, scope)?.as_slice() {
        ["tool", "name"] => Some(Field::Tool),
        ["prompt", "name"] => Some(Field::Prompt),
        ["resource", "uri" | "name"] => Some(Field::Resource),
        _ => None,
    }
}

/// `name == "x"`, `"x" == name`, `!=` likewise, `name in ["x", …]`, `name.startsWith("x")`,
/// `name.endsWith("x")`, `name.contains("x")`: for every string, true or false, never an error.
fn name_test(e: &IdedExpr, scope: &[String]) -> Option<NameTest> {
    let Expr::Call(call) = &e.expr else {
        return None;
    };
    let (field, test) = match (call.target.as_deref(), call.args.as_slice()) {
        (None, [a, b])
            if call.func_name == operators::EQUALS || call.func_name == operators::NOT_EQUALS =>
        {
            match (name_field(a, scope), string_literal(b)) {
                (Some(f), Some(s)) => (f, Test::Equals(s)),
                _ => (name_field(b, scope)?, Test::Equals(string_literal(a)?)),
            }
        }
        (None, [a, b]) if call.func_name == operators::IN => {
            let Expr::List(list) = &b.expr else {
                return None;
            };
            if !list.optional_indices.is_empty() {
                return None;
            }
            let values: Option<Vec<String>> = list.elements.iter().map(string_literal).collect();
            (name_field(a, scope)?, Test::In(values?))
        }
        (Some(target), [arg]) => {
            let field = name_field(target, scope)?;
            let s = string_literal(arg)?;
            let test = match call.func_name.as_str() {
                "startsWith" => Test::StartsWith(s),
                "endsWith" => Test::EndsWith(s),
                "contains" => Test::Contains(s),
                _ => return None,
            };
            (field, test)
        }
        _ => return None,
    };
    Some(NameTest { field, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn use_of(source: &str) -> ItemUse {
        match cel::Program::compile(source) {
            Ok(p) => ItemUse::of(p.expression()),
            Err(e) => panic!("{source}: {e:?}"),
        }
    }

    #[test]
    fn name_tests_against_constants_are_recognised() {
        for source in [
            r#"mcp.tool.name == "a""#,
            r#""a" != mcp.tool.name"#,
            r#"mcp.tool.name in ["a", "b"] && jwt.sub == "x""#,
            r#"mcp.method == "tools/call" && mcp.tool.name.startsWith("read_")"#,
            r#"mcp.prompt.name.endsWith("x") || mcp.resource.uri.contains("/public/")"#,
            r#"jwt.groups.exists(g, g == "admins")"#,
            r#"mcp.tool.arguments.x == 1"#,
            r#"has(mcp.tool.arguments.x)"#,
            r#"[1].all(mcp, mcp == 1)"#,
        ] {
            assert!(
                matches!(use_of(source), ItemUse::Tests(_)),
                "{source} should be recognised"
            );
        }
    }

    #[test]
    fn any_other_read_of_the_name_is_opaque() {
        for source in [
            r#"mcp.tool.name + "x" == "ax""#,
            r#"size(mcp.tool.name) > 3"#,
            r#"mcp.tool.name.matches("^a")"#,
            r#"mcp.tool.name in jwt.tools"#,
            r#"mcp.tool.name == jwt.sub"#,
            r#"has(mcp.tool.name)"#,
            r#"mcp.tool == {"name": "a"}"#,
            r#"size(mcp) > 0"#,
            r#"["a"].exists(t, t == mcp.prompt.name)"#,
        ] {
            assert_eq!(use_of(source), ItemUse::Opaque, "{source}");
        }
    }

    #[test]
    fn keys_record_which_tests_an_item_passes() {
        let u = use_of(
            r#"mcp.tool.name in ["a", "b"] || mcp.tool.name.startsWith("read_") || mcp.prompt.name == "a""#,
        );
        assert_eq!(u.key(Item::Tool("a")), Some(0b001));
        assert_eq!(u.key(Item::Tool("read_x")), Some(0b010));
        assert_eq!(u.key(Item::Tool("zzz")), Some(0));
        assert_eq!(u.key(Item::Prompt("a")), Some(0b100));
        assert_eq!(use_of("size(mcp) > 0").key(Item::Tool("a")), None);
    }
}

//! Comparisons a client can defeat by changing a value's JSON type.
//!
//! A rule sees the arguments as the client sent them; many servers convert them first (the
//! Python SDK validates with pydantic in lax mode: `"true"`, `"yes"` and `1` are `True` for a
//! `bool`, `"42"` and `42.0` are `42` for an `int`). CEL's `==` between values of different
//! types is `false`, not an error, so `mcp.tool.arguments.force == true` is false for
//! `"true"`: in a `deny` rule the call goes through, and the server force-pushes.
//!
//! This module finds, at load, an `==`, `!=` or `in` between a value the client chooses (the
//! tool's arguments, the answers of a retry) and a bool or number literal, placed so that a
//! `false` from `==`/`in` (a `true` from `!=`) lets a message through that the rule would
//! otherwise refuse. The same comparison on the refusing side (`allow: x == false`,
//! `deny: x != false`) is fine: a value of another type is then refused.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

/// What an expression being true does to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sense {
    /// True refuses it (a `deny`; the `when` of a `require` or of a limit).
    Refuses,
    /// True lets it through (an `allow`; the expression of a `require`).
    Permits,
}

impl Sense {
    fn flip(self) -> Sense {
        match self {
            Sense::Refuses => Sense::Permits,
            Sense::Permits => Sense::Refuses,
        }
    }
}

/// A comparison a client can turn by sending another JSON type: the node and why.
pub(super) struct Loose {
    pub id: u64,
    pub message: String,
}

/// The first such comparison in `root`, an expression whose truth does `sense`.
pub(super) fn find(root: &IdedExpr, sense: Sense) -> Option<Loose> {
    let mut walk = Walk {
        client_vars: Vec::new(),
        bound: Vec::new(),
    };
    walk.visit(root, Some(sense))
}

struct Walk {
    /// Comprehension variables ranging over client values.
    client_vars: Vec<String>,
    /// Every comprehension variable in scope (they may shadow `mcp`).
    bound: Vec<String>,
}

impl Walk {
    /// `sense`: what `e` being true does; `None` when it may do either (a condition of `?:`).
    fn visit(&mut self, e: &IdedExpr, sense: Option<Sense>) -> Option<Loose> {
        match &e.expr {
            Expr::Call(call) if call.target.is_none() => {
                match (call.func_name.as_str(), call.args.as_slice()) {
                    (operators::LOGICAL_NOT, [a]) => self.visit(a, sense.map(Sense::flip)),
                    (operators::LOGICAL_AND | operators::LOGICAL_OR, args) => {
                        args.iter().find_map(|a| self.visit(a, sense))
                    }
                    (operators::CONDITIONAL, [c, a, b]) => self
                        .visit(c, None)
                        .or_else(|| self.visit(a, sense))
                        .or_else(|| self.visit(b, sense)),
                    (operators::EQUALS, [a, b]) => {
                        self.compare(e, a, b, "==", sense, Sense::Refuses)
                    }
                    (operators::NOT_EQUALS, [a, b]) => {
                        self.compare(e, a, b, "!=", sense, Sense::Permits)
                    }
                    (operators::IN, [a, b]) => self.compare(e, a, b, "in", sense, Sense::Refuses),
                    _ => None,
                }
            }
            Expr::Comprehension(c) => {
                let depth = (self.client_vars.len(), self.bound.len());
                let over_client = self.client_value(&c.iter_range).is_some();
                let mut vars = vec![c.iter_var.clone()];
                vars.extend(c.iter_var2.clone());
                if over_client {
                    self.client_vars.extend(vars.iter().cloned());
                }
                self.bound.extend(vars);
                self.bound.push(c.accu_var.clone());
                let found = self
                    .visit(&c.loop_step, sense)
                    .or_else(|| self.visit(&c.result, sense));
                self.client_vars.truncate(depth.0);
                self.bound.truncate(depth.1);
                found
            }
            _ => None,
        }
    }

    /// `a op b` where `op` being true (or, for `in`, its element matching) does `loose_when`
    /// with a mismatch: flags it when that is the side that lets a message through.
    fn compare(
        &self,
        e: &IdedExpr,
        a: &IdedExpr,
        b: &IdedExpr,
        op: &str,
        sense: Option<Sense>,
        flagged_when: Sense,
    ) -> Option<Loose> {
        // `==` (and `in`) is false on a mismatch: harmful where true refuses. `!=` is true on
        // a mismatch: harmful where true permits. Either, where the sense is not known.
        if sense.is_some_and(|s| s != flagged_when) {
            return None;
        }
        let (path, kind) = match (self.client_value(a), typed_literal(b)) {
            (Some(path), Some(kind)) => (path, kind),
            _ if op != "in" => (self.client_value(b)?, typed_literal(a)?),
            _ => return None,
        };
        let advice = match kind {
            Kind::Bool => format!(
                "compare with the value that is safe, so that any other value or type is \
                 refused: `has({path}) && {path} != false` in a deny, `!has({path}) || {path} == \
                 false` in an allow"
            ),
            Kind::Number => format!(
                "convert it first, which fails closed on what cannot be converted: \
                 `int({path})` (or `double({path})`) {op} …"
            ),
        };
        Some(Loose {
            id: e.id,
            message: format!(
                "`{op}` between {path} and {}: a client can send {path} as another JSON type \
                 ({}), which makes this {} while a server that converts argument types (the \
                 Python SDK does) reads the same value, so the rule does not refuse such a \
                 message; {advice} (docs/policy.md, \"Arguments as the server reads them\")",
                kind.describe(),
                kind.examples(),
                if op == "!=" { "true" } else { "false" },
            ),
        })
    }

    /// The path of a value the client chooses: the tool's arguments, the answers of a retry
    /// (`mcp.tool.arguments…`, `mcp.input.responses…`, indexed or selected), or a comprehension
    /// variable over them.
    fn client_value(&self, e: &IdedExpr) -> Option<String> {
        let mut fields: Vec<String> = Vec::new();
        let mut node = e;
        loop {
            match &node.expr {
                Expr::Select(select) if !select.test => {
                    fields.push(select.field.clone());
                    node = &select.operand;
                }
                Expr::Call(call)
                    if call.target.is_none()
                        && call.func_name == operators::INDEX
                        && call.args.len() == 2 =>
                {
                    let key = match call.args.get(1).map(|k| &k.expr) {
                        Some(Expr::Literal(LiteralValue::String(s))) => {
                            format!("[{:?}]", s.inner())
                        }
                        _ => "[…]".to_string(),
                    };
                    fields.push(key);
                    node = call.args.first()?;
                }
                Expr::Ident(name) => {
                    fields.push(name.clone());
                    fields.reverse();
                    let client = if self.client_vars.contains(name) {
                        true
                    } else if name == "mcp" && !self.bound.contains(name) {
                        matches!(
                            fields.get(1..3),
                            Some([a, b]) if (a == "tool" && b == "arguments")
                                || (a == "input" && b == "responses")
                        ) && fields.len() > 3
                    } else {
                        false
                    };
                    return client.then(|| {
                        fields
                            .iter()
                            .enumerate()
                            .map(|(i, f)| {
                                if i == 0 || f.starts_with('[') {
                                    f.clone()
                                } else {
                                    format!(".{f}")
                                }
                            })
                            .collect()
                    });
                }
                _ => return None,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Number,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Bool => "a bool",
            Kind::Number => "a number",
        }
    }

    fn examples(self) -> &'static str {
        match self {
            Kind::Bool => "\"true\", 1, \"yes\"",
            Kind::Number => "\"42\" for 42",
        }
    }
}

/// A bool or number literal, or a list literal holding one.
fn typed_literal(e: &IdedExpr) -> Option<Kind> {
    match &e.expr {
        Expr::Literal(LiteralValue::Boolean(_)) => Some(Kind::Bool),
        Expr::Literal(LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_)) => {
            Some(Kind::Number)
        }
        Expr::List(list) => list.elements.iter().find_map(typed_literal),
        _ => None,
    }
}

//! What can be known about a rule before it runs: CEL syntax, unknown variables and fields,
//! unknown functions, the type errors visible without running it (`mcp.method > 3`,
//! `now + 1`, a rule that gives a string), constant sub-expressions that always fail
//! (`timestamp('yesterday')`, a bad regular expression), the tools and methods a rule is
//! limited to (for the index), and whether it reads the tool's arguments.
//!
//! cel-rust has no type checker, so this is a small one over the parsed AST: types are known
//! for literals, the fixed variables (`mcp.*`, `request.*`, `now`, …) and the results of
//! operators and standard functions; everything else (`jwt.*` claims, arguments, comprehension
//! variables) is `dyn` and not checked.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{operators, CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::CelString;
use cel::{Context, Env, Program, Value as Cel};

use super::facts::Reads;
use super::items::{self, mcp_path, ItemUse};
use super::loose;
use super::{Location, PolicyError, VARIABLES};

/// A compiled, checked expression.
pub(super) struct Compiled {
    pub program: Program,
    pub limits: Limits,
    pub uses_arguments: bool,
    /// How it reads the item of a listing.
    pub items: ItemUse,
    /// Whether its result for a call follows from the method and the names alone.
    pub method_and_names_only: bool,
}

/// The tools and methods an expression can be true for, from its top-level conjuncts;
/// `None`: not limited.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Limits {
    pub tools: Option<BTreeSet<String>>,
    pub methods: Option<BTreeSet<String>>,
}

/// The type an expression must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Bool,
    Str,
    Int,
}

/// Compiles and checks the expressions of one policy.
pub(super) struct Checker {
    env: Arc<Env>,
    ctx: Context<'static, 'static>,
    functions: HashMap<String, bool>,
    reads: Reads,
    /// What the policy loads with but should not be written so ([`loose`]).
    warnings: Vec<PolicyError>,
}

impl Checker {
    pub fn new(env: Arc<Env>) -> Self {
        Checker {
            ctx: Context::with_env(Arc::clone(&env)),
            env,
            functions: HashMap::new(),
            reads: Reads::default(),
            warnings: Vec::new(),
        }
    }

    /// The warnings of the expressions compiled so far.
    pub fn take_warnings(&mut self) -> Vec<PolicyError> {
        std::mem::take(&mut self.warnings)
    }

    /// What the expressions compiled so far read.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Whether the environment declares a function (or member function) of this name.
    fn has_function(&mut self, name: &str) -> bool {
        if let Some(known) = self.functions.get(name) {
            return *known;
        }
        // cel-rust has no public list of its functions, but refuses to add a context function
        // that shadows one the environment declares.
        let mut probe = Context::with_env(Arc::clone(&self.env));
        let known = probe.add_function(name, |a: i64| a).is_err();
        self.functions.insert(name.to_string(), known);
        known
    }

    pub fn compile(
        &mut self,
        source: &str,
        field: &str,
        rule: &str,
    ) -> Result<Compiled, PolicyError> {
        self.compile_as(source, field, rule, Want::Bool)
    }

    /// Compiles a rule's (or a `when`'s) expression, whose truth does `sense`. A comparison a
    /// client can turn by sending another JSON type (see [`loose`]) is a warning, not an error:
    /// policies that loaded before still load (an upgrade must not stop a fleet's filters), and
    /// Envoy's log and `mcp-guard check` say what to write instead.
    pub fn compile_rule(
        &mut self,
        source: &str,
        field: &str,
        rule: &str,
        sense: loose::Sense,
    ) -> Result<Compiled, PolicyError> {
        let compiled = self.compile_as(source, field, rule, Want::Bool)?;
        if let Some(found) = loose::find(compiled.program.expression(), sense) {
            self.warnings.push(PolicyError {
                field: field.to_string(),
                rule: Some(rule.to_string()),
                message: found.message,
                location: compiled
                    .program
                    .source_info()
                    .offset_for(found.id)
                    .map(|(start, _)| position(source, start as usize)),
            });
        }
        Ok(compiled)
    }

    /// Compiles an expression that must give a `want` (a limit's `key` a string, its `cost`
    /// an int).
    pub fn compile_as(
        &mut self,
        source: &str,
        field: &str,
        rule: &str,
        want: Want,
    ) -> Result<Compiled, PolicyError> {
        let error = |message: String, location: Option<Location>| PolicyError {
            field: field.to_string(),
            rule: Some(rule.to_string()),
            message,
            location,
        };
        if source.trim().is_empty() {
            return Err(error("the expression is empty".into(), None));
        }
        let program = self.env.compile(source).map_err(|errors| {
            let count = errors.errors.len();
            match errors.errors.first() {
                Some(first) => {
                    let line = usize::try_from(first.pos.0).unwrap_or(0).max(1);
                    let column = usize::try_from(first.pos.1).unwrap_or(0).max(1);
                    let more = if count > 1 {
                        format!(" (and {} more)", count - 1)
                    } else {
                        String::new()
                    };
                    error(
                        format!(
                            "CEL syntax error: {}{more}",
                            first
                                .msg
                                .strip_prefix("Syntax error: ")
                                .unwrap_or(&first.msg)
                        ),
                        Some(Location {
                            line,
                            column,
                            source_line: source.lines().nth(line - 1).unwrap_or("").to_string(),
                        }),
                    )
                }
                None => error("CEL syntax error".into(), None),
            }
        })?;

        let root = program.expression();
        let mut walk = Walk {
            checker: self,
            scope: Vec::new(),
            uses_arguments: false,
        };
        let checked = walk.ty(root).and_then(|ty| {
            let wanted = match want {
                Want::Bool => Ty::Bool,
                Want::Str => Ty::Str,
                Want::Int => Ty::Int,
            };
            if ty.category().is_some() && ty != wanted {
                Err(Problem {
                    id: root.id,
                    message: format!(
                        "the expression gives a {}, not a {}",
                        ty.describe(),
                        wanted.describe()
                    ),
                })
            } else {
                Ok(())
            }
        });
        let uses_arguments = walk.uses_arguments;
        if let Err(problem) = checked {
            let location = program
                .source_info()
                .offset_for(problem.id)
                .map(|(start, _)| position(source, start as usize));
            return Err(error(problem.message, location));
        }
        Ok(Compiled {
            limits: limits(root),
            items: ItemUse::of(root),
            method_and_names_only: items::reads_method_and_names_only(root),
            program,
            uses_arguments,
        })
    }
}

/// Line and column (1-based, in characters) of a byte offset.
fn position(source: &str, offset: usize) -> Location {
    let mut line = 1;
    let mut column = 1;
    let mut line_start = 0;
    for (at, c) in source.char_indices() {
        if at >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
            line_start = at + c.len_utf8();
        } else {
            column += 1;
        }
    }
    let rest = source.get(line_start..).unwrap_or("");
    Location {
        line,
        column,
        source_line: rest.lines().next().unwrap_or("").to_string(),
    }
}

/// What is wrong, and at which node.
struct Problem {
    id: u64,
    message: String,
}

fn problem<T>(id: u64, message: String) -> Result<T, Problem> {
    Err(Problem { id, message })
}

/// A statically known type; `Dyn` when unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Dyn,
    Bool,
    Int,
    UInt,
    Double,
    Str,
    Bytes,
    Null,
    List,
    /// A map whose values are not known.
    Map,
    /// A map of strings (`request.headers`).
    StrMap,
    /// `jwt`: claims, and `scopes`.
    Jwt,
    /// One of the fixed objects (`mcp`, `mcp.tool`, `request`, …).
    Obj(&'static Obj),
    Time,
    Dur,
    Type,
}

#[derive(Debug, PartialEq)]
struct Obj {
    name: &'static str,
    fields: &'static [(&'static str, Ty)],
}

static TOOL: Obj = Obj {
    name: "mcp.tool",
    fields: &[("name", Ty::Str), ("arguments", Ty::Map)],
};
static PROMPT: Obj = Obj {
    name: "mcp.prompt",
    fields: &[("name", Ty::Str)],
};
static RESOURCE: Obj = Obj {
    name: "mcp.resource",
    fields: &[("uri", Ty::Str), ("name", Ty::Str)],
};
static TASK: Obj = Obj {
    name: "mcp.task",
    fields: &[("id", Ty::Str)],
};
static SUBSCRIPTION: Obj = Obj {
    name: "mcp.subscription",
    fields: &[
        ("notifications", Ty::List),
        ("resources", Ty::List),
        ("tasks", Ty::List),
    ],
};
static INPUT: Obj = Obj {
    name: "mcp.input",
    fields: &[("responses", Ty::Map), ("retry", Ty::Bool)],
};
static MCP: Obj = Obj {
    name: "mcp",
    fields: &[
        ("method", Ty::Str),
        ("methodName", Ty::Str),
        ("kind", Ty::Str),
        ("tool", Ty::Obj(&TOOL)),
        ("prompt", Ty::Obj(&PROMPT)),
        ("resource", Ty::Obj(&RESOURCE)),
        ("session_id", Ty::Str),
        ("sessionId", Ty::Str),
        ("protocol_version", Ty::Str),
        ("protocolVersion", Ty::Str),
        ("task", Ty::Obj(&TASK)),
        ("subscription", Ty::Obj(&SUBSCRIPTION)),
        ("input", Ty::Obj(&INPUT)),
    ],
};
static REQUEST: Obj = Obj {
    name: "request",
    fields: &[
        ("path", Ty::Str),
        ("host", Ty::Str),
        ("method", Ty::Str),
        ("headers", Ty::StrMap),
    ],
};
static SOURCE: Obj = Obj {
    name: "source",
    fields: &[("address", Ty::Str)],
};
static CONNECTION: Obj = Obj {
    name: "connection",
    fields: &[("mtls", Ty::Bool)],
};

fn variable(name: &str) -> Option<Ty> {
    Some(match name {
        "jwt" => Ty::Jwt,
        "mcp" => Ty::Obj(&MCP),
        "request" => Ty::Obj(&REQUEST),
        "source" => Ty::Obj(&SOURCE),
        "connection" => Ty::Obj(&CONNECTION),
        "now" => Ty::Time,
        _ => return None,
    })
}

/// Type names an expression may use as values (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
];

/// What values of a type compare and combine with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Number,
    Str,
    Bool,
    Bytes,
    Null,
    List,
    Map,
    Time,
    Dur,
    Type,
}

impl Ty {
    fn category(self) -> Option<Category> {
        Some(match self {
            Ty::Dyn => return None,
            Ty::Bool => Category::Bool,
            Ty::Int | Ty::UInt | Ty::Double => Category::Number,
            Ty::Str => Category::Str,
            Ty::Bytes => Category::Bytes,
            Ty::Null => Category::Null,
            Ty::List => Category::List,
            Ty::Map | Ty::StrMap | Ty::Jwt | Ty::Obj(_) => Category::Map,
            Ty::Time => Category::Time,
            Ty::Dur => Category::Dur,
            Ty::Type => Category::Type,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Ty::Dyn => "dyn",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::UInt => "uint",
            Ty::Double => "double",
            Ty::Str => "string",
            Ty::Bytes => "bytes",
            Ty::Null => "null",
            Ty::List => "list",
            Ty::Map | Ty::StrMap | Ty::Jwt | Ty::Obj(_) => "map",
            Ty::Time => "timestamp",
            Ty::Dur => "duration",
            Ty::Type => "type",
        }
    }

    /// Whether this is unknown or one of `categories`.
    fn is(self, categories: &[Category]) -> bool {
        self.category().is_none_or(|c| categories.contains(&c))
    }
}

/// Walks one expression, tracking the comprehension variables in scope.
struct Walk<'c> {
    checker: &'c mut Checker,
    scope: Vec<String>,
    uses_arguments: bool,
}

impl Walk<'_> {
    fn bound(&self, name: &str) -> bool {
        self.scope.iter().any(|v| v == name)
    }

    /// `a.b.c` rooted at a variable that is not a comprehension variable: its segments, with
    /// the id of each node (the identifier first).
    fn free_path<'e>(&self, e: &'e IdedExpr) -> Option<Vec<(&'e str, u64)>> {
        let mut segments = Vec::new();
        let mut node = e;
        loop {
            match &node.expr {
                Expr::Ident(name) => {
                    if self.bound(name) {
                        return None;
                    }
                    segments.push((name.as_str(), node.id));
                    segments.reverse();
                    return Some(segments);
                }
                Expr::Select(select) if !select.test => {
                    segments.push((select.field.as_str(), node.id));
                    node = &select.operand;
                }
                _ => return None,
            }
        }
    }

    /// Records that a path of a variable is read: which variable, and whether it may be the
    /// tool's arguments (`mcp`, `mcp.tool`, `mcp.tool.arguments…`).
    fn record(&mut self, path: &[(&str, u64)]) {
        let names: Vec<&str> = path.iter().map(|(n, _)| *n).collect();
        self.checker.reads.add(&names);
        let arguments = ["mcp", "tool", "arguments"];
        let shared = names
            .iter()
            .zip(arguments.iter())
            .take_while(|(a, b)| a == b)
            .count();
        if shared == names.len().min(arguments.len()) && names.first() == Some(&"mcp") {
            self.uses_arguments = true;
        }
    }

    /// The type of a variable path, checking each field.
    fn path(&mut self, path: &[(&str, u64)]) -> Result<Ty, Problem> {
        self.record(path);
        let Some(((root, root_id), fields)) = path.split_first() else {
            return Ok(Ty::Dyn);
        };
        let Some(mut ty) = variable(root) else {
            let full: Vec<&str> = path.iter().map(|(n, _)| *n).collect();
            // A qualified type name (`google.protobuf.Timestamp`) is a value too.
            for n in (1..=full.len()).rev() {
                if let Some(prefix) = full.get(..n) {
                    if TYPE_NAMES.contains(&prefix.join(".").as_str()) {
                        return Ok(if n == full.len() { Ty::Type } else { Ty::Dyn });
                    }
                }
            }
            return problem(
                *root_id,
                format!(
                    "unknown variable {root:?} (the variables are {})",
                    VARIABLES.join(", ")
                ),
            );
        };
        for (name, id) in fields {
            ty = field(*id, ty, name)?;
        }
        Ok(ty)
    }

    fn ty(&mut self, e: &IdedExpr) -> Result<Ty, Problem> {
        match &e.expr {
            Expr::Unspecified => Ok(Ty::Dyn),
            Expr::Literal(literal) => Ok(match literal {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::Str,
                LiteralValue::UInt(_) => Ty::UInt,
            }),
            Expr::Ident(name) => {
                if self.bound(name) {
                    Ok(Ty::Dyn)
                } else {
                    self.path(&[(name.as_str(), e.id)])
                }
            }
            Expr::Select(select) => {
                if !select.test {
                    if let Some(path) = self.free_path(e) {
                        return self.path(&path);
                    }
                }
                let operand = self.ty(&select.operand)?;
                let ty = field(e.id, operand, &select.field)?;
                Ok(if select.test { Ty::Bool } else { ty })
            }
            Expr::Call(call) => self.call(e, call),
            Expr::Comprehension(c) => {
                let range = self.ty(&c.iter_range)?;
                if !range.is(&[Category::List, Category::Map]) {
                    return problem(
                        c.iter_range.id,
                        format!("cannot iterate over a {}", range.describe()),
                    );
                }
                self.ty(&c.accu_init)?;
                let depth = self.scope.len();
                self.scope.push(c.iter_var.clone());
                if let Some(second) = &c.iter_var2 {
                    self.scope.push(second.clone());
                }
                self.scope.push(c.accu_var.clone());
                let inner = self
                    .ty(&c.loop_cond)
                    .and_then(|_| self.ty(&c.loop_step))
                    .and_then(|_| self.ty(&c.result));
                self.scope.truncate(depth);
                inner?;
                Ok(Ty::Dyn)
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.ty(element)?;
                }
                Ok(Ty::List)
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(e) => {
                            self.ty(&e.key)?;
                            self.ty(&e.value)?;
                        }
                        EntryExpr::StructField(f) => {
                            self.ty(&f.value)?;
                        }
                    }
                }
                Ok(Ty::Map)
            }
            Expr::Struct(s) => problem(
                e.id,
                format!(
                    "message construction ({}{{…}}) is not supported: rules work on maps and lists",
                    s.type_name
                ),
            ),
        }
    }

    fn expect(&mut self, e: &IdedExpr, categories: &[Category], what: &str) -> Result<Ty, Problem> {
        let ty = self.ty(e)?;
        if ty.is(categories) {
            Ok(ty)
        } else {
            problem(e.id, format!("{what}, not a {}", ty.describe()))
        }
    }

    fn call(&mut self, e: &IdedExpr, call: &CallExpr) -> Result<Ty, Problem> {
        let name = call.func_name.as_str();
        let arg = |i: usize| call.args.get(i);
        // A call on a qualified name that names a function is that function: `optional.of(x)`.
        if let Some(target) = &call.target {
            if let Some(path) = self.free_path(target) {
                let qualified: Vec<&str> = path.iter().map(|(n, _)| *n).collect();
                let qualified = format!("{}.{name}", qualified.join("."));
                if variable(path.first().map_or("", |(n, _)| *n)).is_none()
                    && self.checker.has_function(&qualified)
                {
                    for a in &call.args {
                        self.ty(a)?;
                    }
                    return Ok(Ty::Dyn);
                }
            }
        }
        let ty = match name {
            operators::LOGICAL_AND | operators::LOGICAL_OR | operators::LOGICAL_NOT => {
                let op = match name {
                    operators::LOGICAL_AND => "&&",
                    operators::LOGICAL_OR => "||",
                    _ => "!",
                };
                for a in &call.args {
                    self.expect(
                        a,
                        &[Category::Bool],
                        &format!("the operands of {op} must be bools"),
                    )?;
                }
                Ty::Bool
            }
            operators::NOT_STRICTLY_FALSE => {
                for a in &call.args {
                    self.ty(a)?;
                }
                Ty::Bool
            }
            operators::CONDITIONAL => {
                let mut types = Vec::new();
                for (i, a) in call.args.iter().enumerate() {
                    if i == 0 {
                        self.expect(a, &[Category::Bool], "the condition of ?: must be a bool")?;
                    } else {
                        types.push(self.ty(a)?);
                    }
                }
                match types.as_slice() {
                    [a, b] if a == b => *a,
                    _ => Ty::Dyn,
                }
            }
            operators::EQUALS | operators::NOT_EQUALS => {
                let (a, b) = self.pair(call)?;
                if let (Some(x), Some(y)) = (a.category(), b.category()) {
                    if x != y {
                        return problem(
                            e.id,
                            format!(
                                "comparing a {} with a {} is always {}",
                                a.describe(),
                                b.describe(),
                                if name == operators::EQUALS {
                                    "false"
                                } else {
                                    "true"
                                }
                            ),
                        );
                    }
                }
                Ty::Bool
            }
            operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS => {
                let (a, b) = self.pair(call)?;
                let ordered = [
                    Category::Number,
                    Category::Str,
                    Category::Bool,
                    Category::Bytes,
                    Category::Time,
                    Category::Dur,
                ];
                let fine = a.is(&ordered)
                    && b.is(&ordered)
                    && match (a.category(), b.category()) {
                        (Some(x), Some(y)) => x == y,
                        _ => true,
                    };
                if !fine {
                    return problem(
                        e.id,
                        format!("cannot order a {} and a {}", a.describe(), b.describe()),
                    );
                }
                Ty::Bool
            }
            operators::IN => {
                let (_, container) = self.pair(call)?;
                if !container.is(&[Category::List, Category::Map]) {
                    return problem(
                        e.id,
                        format!(
                            "`in` needs a list or a map on its right, not a {}",
                            container.describe()
                        ),
                    );
                }
                Ty::Bool
            }
            operators::ADD
            | operators::SUBSTRACT
            | operators::MULTIPLY
            | operators::DIVIDE
            | operators::MODULO => {
                let (a, b) = self.pair(call)?;
                arithmetic(e.id, name, a, b)?
            }
            operators::NEGATE => {
                let mut ty = Ty::Dyn;
                for a in &call.args {
                    ty = self.expect(
                        a,
                        &[Category::Number, Category::Dur],
                        "only numbers and durations can be negated",
                    )?;
                }
                ty
            }
            operators::INDEX | operators::OPT_INDEX => {
                let (container, _) = self.pair(call)?;
                let key = arg(1).and_then(string_literal);
                match (container, key) {
                    (Ty::Obj(_) | Ty::Jwt, Some(key)) if name == operators::INDEX => {
                        field(e.id, container, &key)?
                    }
                    (Ty::StrMap, _) => Ty::Str,
                    (Ty::Dyn | Ty::Map | Ty::Jwt | Ty::Obj(_) | Ty::List, _) => Ty::Dyn,
                    _ => return problem(e.id, format!("cannot index a {}", container.describe())),
                }
            }
            operators::OPT_SELECT => {
                for a in &call.args {
                    self.ty(a)?;
                }
                Ty::Dyn
            }
            _ => self.function(e, call)?,
        };
        // A call on constants can be run now: if it fails, it always will.
        if constant(e) {
            if let Err(err) = Cel::resolve(e, &self.checker.ctx) {
                return problem(e.id, format!("this always fails: {err}"));
            }
        }
        Ok(ty)
    }

    fn pair(&mut self, call: &CallExpr) -> Result<(Ty, Ty), Problem> {
        let mut types = [Ty::Dyn, Ty::Dyn];
        for (slot, a) in types.iter_mut().zip(call.args.iter()) {
            *slot = self.ty(a)?;
        }
        let [a, b] = types;
        Ok((a, b))
    }

    /// A named function (global or member).
    fn function(&mut self, e: &IdedExpr, call: &CallExpr) -> Result<Ty, Problem> {
        let name = call.func_name.as_str();
        if !is_identifier(name) {
            for a in call.target.iter().map(|t| &**t).chain(call.args.iter()) {
                self.ty(a)?;
            }
            return Ok(Ty::Dyn);
        }
        if !self.checker.has_function(name) {
            let hint = match name {
                "has" => " (has() takes a field selection: has(jwt.groups))".to_string(),
                "all" | "exists" | "exists_one" | "map" | "filter" => {
                    format!(" ({name} takes a variable and an expression: list.{name}(x, x > 0))")
                }
                _ => String::new(),
            };
            return problem(e.id, format!("unknown function {name:?}{hint}"));
        }
        let target = match &call.target {
            Some(t) => Some(self.ty(t)?),
            None => None,
        };
        let mut args = Vec::with_capacity(call.args.len());
        for a in &call.args {
            args.push(self.ty(a)?);
        }
        // The value a function works on: the receiver, or the first argument.
        let (subject, rest) = match target {
            Some(t) => (Some(t), args.as_slice()),
            None => match args.split_first() {
                Some((first, rest)) => (Some(*first), rest),
                None => (None, &[][..]),
            },
        };
        let subject = subject.unwrap_or(Ty::Dyn);
        let need = |ok: bool, what: String| if ok { Ok(()) } else { problem(e.id, what) };
        Ok(match name {
            "size" => {
                need(
                    subject.is(&[
                        Category::Str,
                        Category::Bytes,
                        Category::List,
                        Category::Map,
                    ]),
                    format!(
                        "size() needs a string, bytes, list or map, not a {}",
                        subject.describe()
                    ),
                )?;
                Ty::Int
            }
            "startsWith" | "endsWith" | "contains" | "matches" => {
                need(
                    subject.is(&[Category::Str]),
                    format!("{name}() works on strings, not on a {}", subject.describe()),
                )?;
                for a in rest {
                    need(
                        a.is(&[Category::Str]),
                        format!("{name}() takes a string, not a {}", a.describe()),
                    )?;
                }
                if name == "matches" {
                    if let Some(pattern) = call.args.last().filter(|p| string_literal(p).is_some())
                    {
                        self.check_pattern(pattern)?;
                    }
                }
                Ty::Bool
            }
            "timestamp" => {
                need(
                    subject.is(&[Category::Str, Category::Number, Category::Time]),
                    format!(
                        "timestamp() takes an RFC 3339 string, not a {}",
                        subject.describe()
                    ),
                )?;
                Ty::Time
            }
            "duration" => {
                need(
                    subject.is(&[Category::Str, Category::Dur]),
                    format!(
                        "duration() takes a string such as \"90m\", not a {}",
                        subject.describe()
                    ),
                )?;
                Ty::Dur
            }
            "getFullYear" | "getMonth" | "getDate" | "getDayOfMonth" | "getDayOfWeek"
            | "getDayOfYear" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds" => {
                let on = if matches!(
                    name,
                    "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds"
                ) {
                    &[Category::Time, Category::Dur][..]
                } else {
                    &[Category::Time][..]
                };
                need(
                    subject.is(on),
                    format!(
                        "{name}() works on a timestamp, not on a {}",
                        subject.describe()
                    ),
                )?;
                if let Some(zone) = call.args.first().filter(|z| string_literal(z).is_some()) {
                    if call.target.is_some() {
                        self.check_zone(name, zone)?;
                    }
                }
                Ty::Int
            }
            "int" => Ty::Int,
            "uint" => Ty::UInt,
            "double" => Ty::Double,
            "string" => Ty::Str,
            "bool" => Ty::Bool,
            "bytes" => Ty::Bytes,
            "type" => Ty::Type,
            _ => Ty::Dyn,
        })
    }

    /// `x.matches('…')` with a literal pattern: the pattern must compile.
    fn check_pattern(&mut self, pattern: &IdedExpr) -> Result<(), Problem> {
        let probe = call_expr("matches", Some(string_expr("")), vec![pattern.clone()]);
        match Cel::resolve(&probe, &self.checker.ctx) {
            Ok(_) => Ok(()),
            Err(err) => problem(pattern.id, format!("invalid regular expression: {err}")),
        }
    }

    /// `now.getHours('Europe/Paris')`: the time zone must exist.
    fn check_zone(&mut self, name: &str, zone: &IdedExpr) -> Result<(), Problem> {
        let epoch = call_expr("timestamp", None, vec![string_expr("1970-01-01T00:00:00Z")]);
        let probe = call_expr(name, Some(epoch), vec![zone.clone()]);
        match Cel::resolve(&probe, &self.checker.ctx) {
            Ok(_) => Ok(()),
            Err(err) if err.to_string().contains("unknown time zone") => problem(
                zone.id,
                format!(
                    "{err}: not a zone this filter carries (docs/policy.md, \"Time zones\": \
                     use an offset such as \"+05:30\", or add the zone and rebuild)"
                ),
            ),
            Err(err) => problem(zone.id, format!("invalid time zone: {err}")),
        }
    }
}

fn call_expr(name: &str, target: Option<IdedExpr>, args: Vec<IdedExpr>) -> IdedExpr {
    IdedExpr {
        id: 0,
        expr: Expr::Call(CallExpr {
            func_name: name.to_string(),
            target: target.map(Box::new),
            args,
        }),
    }
}

fn string_expr(s: &str) -> IdedExpr {
    IdedExpr {
        id: 0,
        expr: Expr::Literal(LiteralValue::String(CelString::from(s.to_string()))),
    }
}

/// The type of `field` on a value of type `ty`.
fn field(id: u64, ty: Ty, name: &str) -> Result<Ty, Problem> {
    match ty {
        Ty::Obj(obj) => match obj.fields.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => Ok(*t),
            None => {
                let known: Vec<&str> = obj.fields.iter().map(|(n, _)| *n).collect();
                problem(
                    id,
                    format!(
                        "{} has no field {name:?} (its fields are {})",
                        obj.name,
                        known.join(", ")
                    ),
                )
            }
        },
        Ty::Jwt if name == "scopes" => Ok(Ty::List),
        Ty::Jwt | Ty::Map | Ty::Dyn => Ok(Ty::Dyn),
        Ty::StrMap => Ok(Ty::Str),
        other => problem(
            id,
            format!("a {} has no fields (.{name})", other.describe()),
        ),
    }
}

fn arithmetic(id: u64, op: &str, a: Ty, b: Ty) -> Result<Ty, Problem> {
    use Category as C;
    let symbol = match op {
        operators::ADD => "+",
        operators::SUBSTRACT => "-",
        operators::MULTIPLY => "*",
        operators::DIVIDE => "/",
        _ => "%",
    };
    let (Some(x), Some(y)) = (a.category(), b.category()) else {
        // One side unknown: the other must still be something the operator takes.
        let known = if a.category().is_some() { a } else { b };
        let takes: &[C] = match op {
            operators::ADD => &[C::Number, C::Str, C::Bytes, C::List, C::Time, C::Dur],
            operators::SUBSTRACT => &[C::Number, C::Time, C::Dur],
            _ => &[C::Number],
        };
        if !known.is(takes) {
            return problem(
                id,
                format!("{symbol} does not apply to a {}", known.describe()),
            );
        }
        return Ok(match (op, known) {
            (operators::ADD, Ty::Str | Ty::Bytes | Ty::List) => known,
            _ => Ty::Dyn,
        });
    };
    let result = match (op, x, y) {
        (_, C::Number, C::Number) if a == b => Some(a),
        (operators::ADD, C::Str, C::Str) => Some(Ty::Str),
        (operators::ADD, C::Bytes, C::Bytes) => Some(Ty::Bytes),
        (operators::ADD, C::List, C::List) => Some(Ty::List),
        (operators::ADD, C::Time, C::Dur) | (operators::ADD, C::Dur, C::Time) => Some(Ty::Time),
        (operators::ADD | operators::SUBSTRACT, C::Dur, C::Dur) => Some(Ty::Dur),
        (operators::SUBSTRACT, C::Time, C::Time) => Some(Ty::Dur),
        (operators::SUBSTRACT, C::Time, C::Dur) => Some(Ty::Time),
        _ => None,
    };
    match result {
        Some(t) => Ok(t),
        None => problem(
            id,
            format!(
                "{symbol} does not apply to a {} and a {}",
                a.describe(),
                b.describe()
            ),
        ),
    }
}

/// `foo`, `foo.bar`: a name a function can have (operators have others, e.g. `_+_`).
fn is_identifier(name: &str) -> bool {
    name.split('.').all(|part| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

pub(super) fn string_literal(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
        _ => None,
    }
}

/// Whether an expression only combines literals (so it can be evaluated once, now).
fn constant(e: &IdedExpr) -> bool {
    match &e.expr {
        Expr::Literal(_) => true,
        Expr::List(list) => list.elements.iter().all(constant),
        Expr::Map(map) => map.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => constant(&m.key) && constant(&m.value),
            EntryExpr::StructField(_) => false,
        }),
        Expr::Select(select) => constant(&select.operand),
        Expr::Call(call) => {
            call.target.as_deref().is_none_or(constant) && call.args.iter().all(constant)
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Comprehension(_) | Expr::Struct(_) => false,
    }
}

/// The tools and methods the top-level conjuncts allow.
fn limits(root: &IdedExpr) -> Limits {
    let mut conjuncts = Vec::new();
    flatten_and(root, &mut conjuncts);
    let mut limits = Limits::default();
    for conjunct in conjuncts {
        let Some((subject, values)) = constraint(conjunct) else {
            continue;
        };
        let slot = match subject {
            Subject::Tool => &mut limits.tools,
            Subject::Method => &mut limits.methods,
        };
        *slot = Some(match slot.take() {
            None => values,
            Some(before) => before.intersection(&values).cloned().collect(),
        });
    }
    limits
}

fn flatten_and<'e>(e: &'e IdedExpr, out: &mut Vec<&'e IdedExpr>) {
    match &e.expr {
        Expr::Call(call) if call.func_name == operators::LOGICAL_AND && call.target.is_none() => {
            for a in &call.args {
                flatten_and(a, out);
            }
        }
        _ => out.push(e),
    }
}

enum Subject {
    Tool,
    Method,
}

/// `mcp.tool.name == "x"`, `"x" == mcp.tool.name`, `mcp.tool.name in ["x", "y"]`, and the
/// same for `mcp.method`.
fn constraint(e: &IdedExpr) -> Option<(Subject, BTreeSet<String>)> {
    let Expr::Call(call) = &e.expr else {
        return None;
    };
    if call.target.is_some() {
        return None;
    }
    match (call.func_name.as_str(), call.args.as_slice()) {
        (operators::EQUALS, [a, b]) => {
            let (subject, value) = match (subject(a), string_literal(b)) {
                (Some(s), Some(v)) => (s, v),
                _ => (subject(b)?, string_literal(a)?),
            };
            Some((subject, BTreeSet::from([value])))
        }
        (operators::IN, [a, b]) => {
            let subject = subject(a)?;
            let Expr::List(list) = &b.expr else {
                return None;
            };
            let values: Option<BTreeSet<String>> =
                list.elements.iter().map(string_literal).collect();
            Some((subject, values?))
        }
        _ => None,
    }
}

fn subject(e: &IdedExpr) -> Option<Subject> {
    // A top-level conjunct is outside any comprehension: no variable shadows `mcp`.
    match mcp_path(e, &[])?.as_slice() {
        ["tool", "name"] => Some(Subject::Tool),
        ["method"] | ["methodName"] => Some(Subject::Method),
        _ => None,
    }
}

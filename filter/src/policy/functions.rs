//! The CEL functions mcp-guard adds to the standard environment.
//!
//! `matches` is CEL's own, implemented here on `regex-lite` rather than by cel-rust on `regex`:
//! the same RE2-style syntax without the Unicode tables (`\w`, `\d`, `\s`, `\b` and `(?i)` are ASCII;
//! `\p{…}` classes are not supported), which keeps the filter small. Patterns are compiled once
//! per worker and kept (up to [`MAX_PATTERNS`]), not compiled on every evaluation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use cel::common::types::{CelBool, CelString};
use cel::{Env, ExecutionError};
use regex_lite::Regex;

/// Compiled patterns kept per thread (each Envoy worker has its own).
const MAX_PATTERNS: usize = 256;
/// Patterns longer than this are refused (a regex-lite program grows with its pattern).
const MAX_PATTERN_BYTES: usize = 4096;

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Rc<Regex>>> = RefCell::new(HashMap::new());
}

/// CEL's standard environment with mcp-guard's functions.
pub fn environment() -> Env {
    let mut env = Env::stdlib();
    // Both registrations are new names in an environment without cel-rust's `regex` feature;
    // an error here would mean a cel-rust that already has them, and the policy still works.
    let _ = cel::add_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>,
        id = "matches");
    let _ = cel::add_member_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>);
    env
}

fn matches(text: &CelString<'_>, pattern: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let re = compiled(pattern.inner()).map_err(|message| ExecutionError::FunctionError {
        function: "matches".to_string(),
        message,
    })?;
    Ok(CelBool::from(re.is_match(text.inner())))
}

fn compiled(pattern: &str) -> Result<Rc<Regex>, String> {
    if let Some(re) = PATTERNS.with(|p| p.borrow().get(pattern).cloned()) {
        return Ok(re);
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "pattern of {} bytes; at most {MAX_PATTERN_BYTES}",
            pattern.len()
        ));
    }
    let re = Regex::new(pattern)
        .map(Rc::new)
        .map_err(|e| format!("'{pattern}' not a valid regex:\n{e}"))?;
    PATTERNS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= MAX_PATTERNS {
            p.clear();
        }
        p.insert(pattern.to_string(), Rc::clone(&re));
    });
    Ok(re)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cel::{Context, Value};

    use super::*;

    fn eval(source: &str) -> Result<Value, ExecutionError> {
        let env = Arc::new(environment());
        let program = match env.compile(source) {
            Ok(p) => p,
            Err(e) => panic!("{source}: {e:?}"),
        };
        program.execute(&Context::with_env(env))
    }

    #[test]
    fn matches_is_re2_style_as_a_function_and_a_method() {
        assert_eq!(
            eval(r#""read_customer".matches("^read_")"#),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval(r#"matches("delete", "^read_")"#),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            eval(r#""ab12".matches("^[a-z]+\\d{2}$")"#),
            Ok(Value::Bool(true))
        );
        assert_eq!(eval(r#""A".matches("(?i)^a$")"#), Ok(Value::Bool(true)));
        // Unanchored, as in CEL: a match anywhere counts.
        assert_eq!(
            eval(r#""x/public/y".matches("/public/")"#),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn a_bad_pattern_is_an_error_naming_it() {
        let err = format!("{:?}", eval(r#""a".matches("(a")"#));
        assert!(
            err.contains("not a valid regex") && err.contains("(a"),
            "{err}"
        );
        let long = format!(r#""a".matches("{}")"#, "a".repeat(MAX_PATTERN_BYTES + 1));
        assert!(format!("{:?}", eval(&long)).contains("at most"));
    }
}

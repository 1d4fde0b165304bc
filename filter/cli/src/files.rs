//! Reading policies, test files and `JSON_OR_@file` arguments.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Reads a YAML or JSON document (JSON by the `.json` extension, YAML otherwise; YAML is a
/// superset of JSON anyway) into a JSON value: the form the filter's configuration takes.
pub fn read_document(path: &Path) -> Result<Value, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_document(
        &text,
        path.extension().and_then(|e| e.to_str()) == Some("json"),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse_document(text: &str, json: bool) -> Result<Value, String> {
    if json {
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
    } else {
        serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}"))
    }
}

/// A `JSON_OR_@file` argument: inline JSON (or YAML), or `@path` to read it from a file.
pub fn inline_or_file(argument: &str) -> Result<Value, String> {
    match argument.strip_prefix('@') {
        Some(path) => read_document(Path::new(path)),
        None => parse_document(argument, false).map_err(|e| format!("{argument:?}: {e}")),
    }
}

/// The raw bytes of a message argument: inline text, or `@path`.
pub fn inline_or_file_bytes(argument: &str) -> Result<Vec<u8>, String> {
    match argument.strip_prefix('@') {
        Some(path) => fs::read(path).map_err(|e| format!("{path}: {e}")),
        None => Ok(argument.as_bytes().to_vec()),
    }
}

const TEST_SUFFIXES: &[&str] = &[".tests.yaml", ".tests.yml", ".tests.json"];
const POLICY_EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// Whether a file is a test file (`NAME.tests.yaml`) rather than a policy.
pub fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    TEST_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Whether a file is a JSON Schema (kept beside the policies, not a policy).
pub fn is_schema_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".schema.json")
}

/// `NAME.tests.yaml` → the policy `NAME.yaml` (or `.yml`, `.json`) beside it.
pub fn policy_for_tests(tests: &Path) -> Option<PathBuf> {
    let name = tests.file_name()?.to_str()?;
    let stem = TEST_SUFFIXES.iter().find_map(|s| name.strip_suffix(s))?;
    POLICY_EXTENSIONS
        .iter()
        .map(|ext| tests.with_file_name(format!("{stem}.{ext}")))
        .find(|p| p.exists())
}

/// The test file kept beside a policy: `NAME.tests.yaml` (or `.yml`, `.json`).
pub fn tests_for_policy(policy: &Path) -> Option<PathBuf> {
    let stem = policy.file_stem()?.to_str()?;
    TEST_SUFFIXES
        .iter()
        .map(|s| policy.with_file_name(format!("{stem}{s}")))
        .find(|p| p.exists())
}

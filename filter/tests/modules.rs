//! The crate's modules import one another without cycles: shared primitives (configuration
//! errors, the environment, URL splitting, header values, client methods, strict JSON in `mcp`)
//! sit in leaf modules, and `config`, which builds everything, is imported by no part it builds.
//! The graph is read from the sources: every `crate::name` outside comments and test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a name")
            .trim_end_matches(".rs")
            .to_string();
        let name = relative.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // The adapters and the command line sit on top of everything; tests are not the graph.
        if ["lib", "wasm", "bin", "cli"].contains(&top.as_str())
            || name == "tests.rs"
            || name.ends_with("_tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let code = text.split("#[cfg(test)]\nmod ").next().unwrap_or("");
        let uses = graph.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or(""))
                        .collect(),
                    None => vec![rest
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("")],
                };
                for n in names {
                    if !n.is_empty() && n != top && n != "self" {
                        uses.insert(n.to_string());
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let Some(here) = path.last().cloned() else {
            return false;
        };
        for next in graph.get(&here).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_module_graph_has_no_cycles() {
    let graph = graph();
    assert!(graph.len() > 20, "{graph:?}");
    for module in graph.keys() {
        if let Some(path) = cycle(&graph, module) {
            panic!("modules import in a circle: {}", path.join(" → "));
        }
    }
}

#[test]
fn shared_primitives_are_leaves_and_nothing_imports_config_it_builds() {
    let graph = graph();
    for leaf in ["error", "env", "url", "http", "methods"] {
        assert_eq!(graph.get(leaf), Some(&BTreeSet::new()), "{leaf}");
    }
    // The message parse reads with the JSON cursor (its quick path) and nothing else.
    assert_eq!(
        graph.get("mcp"),
        Some(&BTreeSet::from(["scan".to_string()])),
        "mcp"
    );
    for part in [
        "jwt",
        "introspection",
        "dpop",
        "pins",
        "policy",
        "revocation",
        "jwks",
    ] {
        assert!(
            !graph.get(part).is_some_and(|uses| uses.contains("config")),
            "{part} imports config"
        );
    }
}

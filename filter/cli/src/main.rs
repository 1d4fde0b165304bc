//! `mcp-guard`: check, test, explain and deploy mcp-guard policies, with the filter's own
//! policy code (native build; the filter itself is the Wasm build of the same library).

mod files;
mod pin;
mod render;
mod scenario;
mod testing;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mcp_guard::policy::{Effect, Policy, PolicyError};
use serde_json::Value;

const USAGE: &str = "\
mcp-guard: check, test, explain and render mcp-guard policies; pin tool definitions

usage:
  mcp-guard check FILE...
      Validate and compile policies (YAML or JSON; a plugin configuration's
      servers[*].policy and servers[*].pins too) and pins files. Prints every
      error with its field, rule, line and column; exits 1 if any.
  mcp-guard test [-v] FILE...
      Run the test cases kept beside each policy (NAME.tests.yaml beside
      NAME.yaml; a test file may be named instead). Prints failures (every case
      with -v) and `N passed, M failed`; exits 1 on any failure.
  mcp-guard explain FILE --claims JSON|@FILE --message JSON|@FILE
                    [--now RFC3339] [--header NAME=VALUE]...
      Evaluate one message: each rule's result or error, and the decision.
  mcp-guard render envoy|istio FILE [--pins PINS [--pin-mode MODE]]
      Print the Envoy HTTP filter (envoy) or an Istio EnvoyFilter (istio) that
      runs mcp-guard with the policy (and the tool pins of a pins file, mode
      enforce unless observe or off is given), placeholders marked REPLACE_ME.
  mcp-guard pin --url URL [--token T] [--header 'Name: value']... [--prompts]
                [--out PINS] [--timeout SECONDS]
      Connect to an MCP server (directly, or through Envoy with a token), list
      its tools (and prompts) and write the pins file for what it lists now
      (to PINS, YAML or .json; stdout without --out).
  mcp-guard pin --diff --url URL [--token T] [--header ...] [--out NEW] PINS
      Show the tools added, removed and changed since PINS was written, with
      a line diff of descriptions and schemas; exits 1 if anything changed.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, rest)) => match command.as_str() {
            "check" => check(rest),
            "test" => test(rest),
            "explain" => explain(rest),
            "render" => render(rest),
            "pin" => pin::run(rest),
            "help" | "-h" | "--help" => {
                print!("{USAGE}");
                Ok(true)
            }
            other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        },
        None => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("mcp-guard: {}", message.trim_end());
            ExitCode::from(2)
        }
    }
}

/// Prints a policy error with the expression line and a caret under the column.
fn print_error(file: &Path, e: &PolicyError) {
    print_finding(file, "", e);
}

/// Prints a policy error, or a warning (`kind` "warning: "), with its expression line.
fn print_finding(file: &Path, kind: &str, e: &PolicyError) {
    let field = if e.field.is_empty() {
        String::new()
    } else {
        format!("{}: ", e.field)
    };
    println!("{}: {kind}{field}{}", file.display(), e.detail());
    if let Some(at) = &e.location {
        if !at.source_line.is_empty() {
            println!("    | {}", at.source_line);
            let pad: String = at
                .source_line
                .chars()
                .take(at.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            println!("    | {pad}^");
        }
    }
}

/// Loads a policy file: the policy, and its JSON form.
fn load_policy(path: &Path) -> Result<(Value, Policy), Vec<PolicyError>> {
    let value = files::read_document(path).map_err(|e| {
        vec![PolicyError {
            field: String::new(),
            rule: None,
            message: e,
            location: None,
        }]
    })?;
    if value.get("servers").is_some() && value.get("rules").is_none() {
        return Err(vec![PolicyError {
            field: String::new(),
            rule: None,
            message: "this is a plugin configuration; give the policy file (only `check` reads configurations)".into(),
            location: None,
        }]);
    }
    let policy = Policy::compile(value.clone(), "")?;
    Ok((value, policy))
}

fn check(args: &[String]) -> Result<bool, String> {
    if args.is_empty() {
        return Err("check needs at least one FILE".into());
    }
    let mut ok = true;
    for arg in args {
        let path = Path::new(arg);
        if files::is_test_file(path) || files::is_schema_file(path) {
            continue;
        }
        let value = match files::read_document(path) {
            Ok(v) => v,
            Err(e) => {
                println!("{e}");
                ok = false;
                continue;
            }
        };
        // A pins file (`mcp-guard pin`), or the pins of each server of a configuration.
        let pins: Vec<(String, Value)> = match value.get("servers").and_then(Value::as_array) {
            _ if value.get("tools").is_some() && value.get("rules").is_none() => {
                vec![(String::new(), value.clone())]
            }
            Some(servers) if value.get("rules").is_none() => servers
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((format!("servers[{i}].pins"), s.get("pins")?.clone())))
                .collect(),
            _ => Vec::new(),
        };
        for (field, doc) in &pins {
            let count = doc["tools"].as_object().map_or(0, |t| t.len());
            match mcp_guard::pins::Pins::from_config(doc.clone(), field) {
                Ok(_) => println!("{}: ok: pins of {count} tool(s)", path.display()),
                Err(e) => {
                    println!("{}: {e}", path.display());
                    ok = false;
                }
            }
        }
        if value.get("tools").is_some() && value.get("rules").is_none() {
            continue;
        }
        // A plugin configuration: all of it as the filter loads it (an update the filter
        // refuses leaves the previous configuration serving), then each server's policy.
        if value.get("servers").is_some() && value.get("rules").is_none() {
            let env = mcp_guard::config::ProcessEnv;
            match mcp_guard::config::Config::load(value.to_string().as_bytes(), &env) {
                Ok(config) => {
                    println!("{}: ok: configuration loads", path.display());
                    for w in &config.warnings {
                        println!("{}: warning: {w}", path.display());
                    }
                }
                Err(errors) => {
                    for e in &errors {
                        // Secrets from the VM's environment are Envoy's to give: where this
                        // machine lacks one, its value is not checked here.
                        if e.message.contains("is not set for this VM") {
                            println!("{}: note: {e} (its value not checked here)", path.display());
                        } else {
                            println!("{}: {e}", path.display());
                            ok = false;
                        }
                    }
                }
            }
        }
        // Each server's policy, with its warnings.
        let policies: Vec<(String, Value)> = match value.get("servers").and_then(Value::as_array) {
            Some(servers) if value.get("rules").is_none() => servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        format!("servers[{i}].policy"),
                        s.get("policy").cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
            _ => vec![(String::new(), value)],
        };
        for (field, policy) in policies {
            match Policy::compile(policy, &field) {
                Ok(p) => {
                    let version = if p.version.is_empty() {
                        String::new()
                    } else {
                        format!(" version {}", p.version)
                    };
                    println!(
                        "{}: ok: policy {:?}{version}, {} rule(s)",
                        path.display(),
                        p.name,
                        p.rules.len()
                    );
                    for w in &p.warnings {
                        print_finding(path, "warning: ", w);
                    }
                }
                Err(errors) => {
                    ok = false;
                    for e in &errors {
                        print_error(path, e);
                    }
                }
            }
        }
    }
    Ok(ok)
}

fn test(args: &[String]) -> Result<bool, String> {
    let verbose = args.iter().any(|a| a == "-v" || a == "--verbose");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if paths.is_empty() {
        return Err("test needs at least one FILE".into());
    }
    // Each policy once, whether named itself or through its test file.
    let mut policies: Vec<PathBuf> = Vec::new();
    let mut seen = BTreeSet::new();
    for arg in paths {
        let path = PathBuf::from(arg);
        if files::is_schema_file(&path) {
            continue;
        }
        let policy = if files::is_test_file(&path) {
            files::policy_for_tests(&path)
                .ok_or_else(|| format!("{}: no policy beside this test file", path.display()))?
        } else {
            path
        };
        if seen.insert(policy.clone()) {
            policies.push(policy);
        }
    }
    let mut total = testing::Summary::default();
    for path in &policies {
        let (_, policy) = match load_policy(path) {
            Ok(p) => p,
            Err(errors) => {
                for e in &errors {
                    print_error(path, e);
                }
                total.failed += 1;
                continue;
            }
        };
        let Some(tests) = files::tests_for_policy(path) else {
            println!(
                "{}: no test file (NAME.tests.yaml beside it)",
                path.display()
            );
            continue;
        };
        let mut out = String::new();
        let summary = testing::run(&policy, &tests, verbose, &mut out);
        println!(
            "{}: {} passed, {} failed",
            tests.display(),
            summary.passed,
            summary.failed
        );
        print!("{out}");
        total.add(summary);
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(total.failed == 0)
}

fn explain(args: &[String]) -> Result<bool, String> {
    let mut file = None;
    let mut claims = None;
    let mut message = None;
    let mut now = None;
    let mut headers = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--claims" => claims = Some(value("--claims")?),
            "--message" => message = Some(value("--message")?),
            "--now" => now = Some(value("--now")?),
            "--header" => headers.push(value("--header")?),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            path if file.is_none() => file = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    let file = file.ok_or("explain needs a policy FILE")?;
    let message = message.ok_or("explain needs --message JSON|@FILE")?;
    let (_, policy) = match load_policy(&file) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                print_error(&file, e);
            }
            return Ok(false);
        }
    };
    let claims = match claims {
        None => serde_json::Map::new(),
        Some(arg) => match files::inline_or_file(&arg)? {
            Value::Object(m) => m,
            _ => return Err("--claims must be a JSON object".into()),
        },
    };
    let mut scene = scenario::Scenario::new(claims);
    if let Some(now) = now {
        scene.now = scenario::parse_time(&Value::from(now))?;
    }
    for header in headers {
        let (name, value) = header
            .split_once('=')
            .or_else(|| header.split_once(':'))
            .ok_or_else(|| format!("--header {header:?}: use NAME=VALUE"))?;
        scene.set_header(name.trim(), value.trim());
    }
    let raw = files::inline_or_file_bytes(&message)?;
    // Inline YAML/JSON mappings get the same conveniences as in test files.
    let bytes = match files::parse_document(&String::from_utf8_lossy(&raw), false) {
        Ok(value @ Value::Object(_)) => scenario::message_bytes(&value)?,
        _ => raw,
    };
    let message = scenario::parse_message(&bytes)?;
    let input = scene.input(&message);
    let explanation = policy.explain(&input);

    let mut out = String::new();
    let version = if policy.version.is_empty() {
        String::new()
    } else {
        format!(" version {}", policy.version)
    };
    let _ = writeln!(
        out,
        "policy {:?}{version}: default {}, on_deny {}, unknown_methods {}",
        policy.name,
        if policy.default_allow {
            "allow"
        } else {
            "deny"
        },
        if policy.hide_denied {
            "hide"
        } else {
            "explain"
        },
        if policy.allow_unknown_methods {
            "allow"
        } else {
            "deny"
        },
    );
    let scopes = input.scopes();
    let _ = writeln!(
        out,
        "message: {} ({} scope{})",
        scenario::describe(&message),
        if scopes.is_empty() {
            "no".to_string()
        } else {
            scopes.join(" ")
        },
        if scopes.len() == 1 { "" } else { "s" },
    );
    if !explanation.method_known {
        let _ = writeln!(
            out,
            "  built-in rule {:?}: {:?} is not a method MCP clients send{}",
            mcp_guard::policy::UNKNOWN_METHOD_RULE,
            message.method,
            if policy.allow_unknown_methods {
                " (allowed by unknown_methods: allow)"
            } else {
                ""
            },
        );
    }
    let width = explanation
        .rules
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4);
    for (rule, trace) in policy.rules.iter().zip(&explanation.rules) {
        let show = |r: &Result<bool, String>| match r {
            Ok(b) => b.to_string(),
            Err(e) => format!("error: {e}"),
        };
        let mut result = match (&trace.when, &trace.result) {
            (Some(when @ (Ok(false) | Err(_))), _) => {
                format!("not applicable (when: {})", show(when))
            }
            (_, Some(r)) => show(r),
            (_, None) => "-".to_string(),
        };
        if !trace.missing_scopes.is_empty() && trace.result == Some(Ok(true)) {
            result.push_str(&format!(
                " (token lacks scope {})",
                trace.missing_scopes.join(" ")
            ));
        }
        if !trace.indexed {
            result.push_str("  [not run: limited to other tools or methods]");
        }
        let marker = if explanation.decision.rule.as_deref() == Some(trace.name.as_str()) {
            "→"
        } else {
            " "
        };
        let effect = match trace.effect {
            Effect::Allow => "allow  ",
            Effect::Deny => "deny   ",
            Effect::Require => "require",
        };
        let _ = writeln!(out, "{marker} {effect} {:width$}  {result}", trace.name);
        if let Some(when) = &rule.when_expression {
            let _ = writeln!(out, "          {:width$}  when: {}", "", one_line(when));
        }
        let _ = writeln!(
            out,
            "          {:width$}  {}",
            "",
            one_line(&rule.expression)
        );
    }
    let d = &explanation.decision;
    let outcome = match &d.outcome {
        mcp_guard::policy::Outcome::Allow => "allow".to_string(),
        mcp_guard::policy::Outcome::Deny => "deny".to_string(),
        mcp_guard::policy::Outcome::InsufficientScope(s) => {
            format!("insufficient_scope (needs {})", s.join(" "))
        }
    };
    let by = match &d.rule {
        Some(rule) => format!("by rule {rule:?}"),
        None => "by the policy default".to_string(),
    };
    let _ = writeln!(out, "decision: {outcome} {by}: {}", d.reason);
    print!("{out}");
    Ok(true)
}

fn one_line(expression: &str) -> String {
    expression.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn render(args: &[String]) -> Result<bool, String> {
    let (target, file, rest) = match args {
        [target, file, rest @ ..] => (target.as_str(), Path::new(file), rest),
        _ => return Err("render needs envoy|istio and a policy FILE".into()),
    };
    let pins = match rest {
        [] => None,
        [flag, pins] if flag == "--pins" => Some((pins, "enforce")),
        [flag, pins, m, mode] | [m, mode, flag, pins] if flag == "--pins" && m == "--pin-mode" => {
            if !["enforce", "observe", "off"].contains(&mode.as_str()) {
                return Err(format!(
                    "--pin-mode is enforce, observe or off, not {mode:?}"
                ));
            }
            Some((pins, mode.as_str()))
        }
        _ => return Err("render takes envoy|istio FILE [--pins PINS [--pin-mode MODE]]".into()),
    };
    let pins = match pins {
        Some((path, mode)) => Some(pin::for_config(&pin::read_pins(Path::new(path))?, mode)),
        None => None,
    };
    let (value, policy) = match load_policy(file) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                print_error(file, e);
            }
            return Ok(false);
        }
    };
    let text = match target {
        "envoy" => render::envoy(&value, &policy, pins.as_ref())?,
        "istio" => render::istio(&value, &policy, pins.as_ref())?,
        other => return Err(format!("render targets are envoy and istio, not {other:?}")),
    };
    print!("{text}");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policies() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("policies/ exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .filter(|p| !files::is_test_file(p))
            .collect();
        found.sort();
        found
    }

    /// `check` of a plugin configuration loads it as the filter does: what the filter would
    /// refuse (an update in place would then leave the previous configuration serving) fails.
    #[test]
    fn check_refuses_a_configuration_the_filter_refuses() {
        let dir = std::env::temp_dir().join(format!("mcp-guard-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = |extra: Value| {
            let mut c = json!({
                "issuers": [{"issuer": "https://idp.example", "audiences": ["https://mcp.example/mcp"],
                             "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "1",
                                 "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
                                 "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}}],
                "servers": [{"name": "crm", "resource": "https://mcp.example/mcp",
                             "credential": {"header": "x-api-key", "value": "sk-service-key-0123456789"},
                             "policy": {"name": "p", "rules": [{"name": "all", "allow": "true"}]}}],
                "sessions": {"stateless": true},
            });
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            c
        };
        let run = |name: &str, c: Value| {
            let path = dir.join(name);
            std::fs::write(&path, c.to_string()).unwrap();
            check(&[path.display().to_string()]).unwrap()
        };
        assert!(run("good.json", config(json!({}))));
        assert!(!run(
            "typo.json",
            config(json!({"session": {"stateless": true}}))
        ));
        let mut short = config(json!({}));
        short["servers"][0]["credential"]["value"] = json!("short");
        assert!(!run("short-key.json", short));
        // A secret from the VM's environment, missing here: noted, not failed.
        let mut from_env = config(json!({}));
        from_env["servers"][0]["credential"] =
            json!({"header": "x-api-key", "value_from_env": "MCP_GUARD_CHECK_UNSET_VAR"});
        assert!(run("env.json", from_env));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A test case decides as the filter would: the headers the filter removes before
    /// forwarding (a client's `x-api-key`, `cookie`, forwarding headers) are not what rules
    /// see, in a test case as in Envoy.
    #[test]
    fn a_test_case_hides_the_headers_the_filter_removes() {
        let policy = Policy::from_config(
            json!({"name": "p", "rules": [
                {"name": "by-key", "allow": "'x-api-key' in request.headers"},
                {"name": "by-team", "allow": "'x-team' in request.headers"},
            ]}),
            "policy",
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("mcp-guard-hidden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tests = dir.join("p.tests.yaml");
        std::fs::write(
            &tests,
            "cases:\n\
             - name: a forged service key decides nothing\n  claims: {sub: a}\n  \
               headers: {x-api-key: sk-forged, forwarded: for=1.2.3.4}\n  \
               message: {method: tools/call, params: {name: t}}\n  expect: deny\n\
             - name: a header the server receives does\n  claims: {sub: a}\n  \
               headers: {x-team: red}\n  \
               message: {method: tools/call, params: {name: t}}\n  expect: allow\n  \
               rule: by-team\n",
        )
        .unwrap();
        let mut out = String::new();
        let summary = testing::run(&policy, &tests, false, &mut out);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((summary.passed, summary.failed), (2, 0), "{out}");
    }

    #[test]
    fn every_example_policy_compiles_and_passes_its_tests() {
        let all = policies();
        assert!(all.len() >= 5, "{all:?}");
        for path in all {
            let (_, policy) =
                load_policy(&path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            assert!(
                policy.warnings.is_empty(),
                "{}: {:?}",
                path.display(),
                policy.warnings
            );
            let tests = files::tests_for_policy(&path)
                .unwrap_or_else(|| panic!("{}: no tests", path.display()));
            let mut out = String::new();
            let summary = testing::run(&policy, &tests, false, &mut out);
            assert_eq!(summary.failed, 0, "{}:\n{out}", tests.display());
            assert!(summary.passed > 0, "{}", tests.display());
        }
    }

    #[test]
    fn renders_parse_and_embed_the_policy() {
        for path in policies() {
            let (value, policy) = load_policy(&path).expect("compiles");
            let envoy: Value =
                serde_norway::from_str(&render::envoy(&value, &policy, None).expect("renders"))
                    .expect("YAML");
            let config = envoy
                .pointer("/0/typed_config/config")
                .expect("the filter's config");
            assert_eq!(
                config.get("allow_on_headers_stop_iteration"),
                Some(&Value::Bool(true))
            );
            assert_eq!(
                config.get("failure_policy"),
                Some(&Value::from("FAIL_CLOSED"))
            );
            let plugin: Value = serde_json::from_str(
                config
                    .pointer("/configuration/value")
                    .and_then(Value::as_str)
                    .expect("a StringValue"),
            )
            .expect("JSON");
            assert_eq!(plugin.pointer("/servers/0/policy"), Some(&value));

            let istio: Value =
                serde_norway::from_str(&render::istio(&value, &policy, None).expect("renders"))
                    .expect("YAML");
            assert_eq!(istio.get("kind"), Some(&Value::from("EnvoyFilter")));
            let filter = istio
                .pointer("/spec/configPatches/0/patch/value")
                .expect("a patch");
            assert_eq!(filter.get("name"), Some(&Value::from("mcp-guard")));
            assert_eq!(
                filter.pointer("/typed_config/config/allow_on_headers_stop_iteration"),
                Some(&Value::Bool(true))
            );
        }
    }

    #[test]
    fn render_puts_the_digests_of_a_pins_file_into_the_configuration() {
        let dir =
            std::env::temp_dir().join(format!("mcp-guard-render-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let listing = pin::Listing {
            tools: [(
                "search".to_string(),
                serde_json::json!({"name": "search", "description": "d"}),
            )]
            .into_iter()
            .collect(),
            prompts: None,
        };
        let doc = pin::pins_document(&listing);
        let file = dir.join("pins.yaml");
        std::fs::write(&file, pin::render_document(&doc, false, "u").expect("yaml"))
            .expect("write");
        let (value, policy) = load_policy(&policies()[0]).expect("compiles");
        let pins = pin::for_config(&pin::read_pins(&file).expect("valid"), "observe");
        let envoy: Value =
            serde_norway::from_str(&render::envoy(&value, &policy, Some(&pins)).expect("renders"))
                .expect("YAML");
        let plugin: Value = serde_json::from_str(
            envoy
                .pointer("/0/typed_config/config/configuration/value")
                .and_then(Value::as_str)
                .expect("a StringValue"),
        )
        .expect("JSON");
        assert_eq!(
            plugin.pointer("/servers/0/pins"),
            Some(
                &serde_json::json!({"mode": "observe", "tools": {"search": doc["tools"]["search"]["digest"]}})
            )
        );
        // What render wrote is a configuration the filter accepts.
        let p = mcp_guard::pins::Pins::from_config(plugin["servers"][0]["pins"].clone(), "pins")
            .expect("valid pins");
        assert_eq!(p.mode, mcp_guard::pins::Mode::Observe);
        // `check` reads pins files, and a hand-edited definition fails it.
        let path = file.display().to_string();
        assert_eq!(check(std::slice::from_ref(&path)), Ok(true));
        let edited = std::fs::read_to_string(&file)
            .expect("read")
            .replace("description: d", "description: changed by hand");
        std::fs::write(&file, edited).expect("write");
        assert_eq!(check(&[path]), Ok(false));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn test_files_and_policies_find_each_other() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let policy = dir.join("sales.yaml");
        let tests = dir.join("sales.tests.yaml");
        assert!(files::is_test_file(&tests) && !files::is_test_file(&policy));
        assert_eq!(files::tests_for_policy(&policy), Some(tests.clone()));
        assert_eq!(files::policy_for_tests(&tests), Some(policy));
        assert!(files::is_schema_file(&dir.join("policy.schema.json")));
    }

    #[test]
    fn message_mappings_get_jsonrpc_and_an_id() {
        let request =
            scenario::message_bytes(&serde_json::json!({ "method": "tools/list" })).expect("bytes");
        let m = scenario::parse_message(&request).expect("parses");
        assert_eq!(m.id, Some(Value::from(1)));
        let note =
            scenario::message_bytes(&serde_json::json!({ "method": "notifications/initialized" }))
                .expect("bytes");
        assert_eq!(scenario::parse_message(&note).expect("parses").id, None);
        let response =
            scenario::message_bytes(&serde_json::json!({ "id": 4, "result": {} })).expect("bytes");
        assert_eq!(
            scenario::parse_message(&response).expect("parses").method,
            ""
        );
        // A string is used as is: the filter's refusals show.
        let e = scenario::parse_message(br#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#)
            .expect_err("duplicate");
        assert!(e.contains("refuses"), "{e}");
    }
}

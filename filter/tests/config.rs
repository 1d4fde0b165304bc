//! Configuration errors name the field they are about, so an operator can fix them from the
//! Envoy log line alone.

mod common;

use common::*;
use mcp_guard::config::{Config, ConfigError};
use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "issuers": [{ "issuer": ISSUER, "audiences": [RESOURCE], "jwks": { "keys": [p256_public_jwk()] } }],
        "servers": [{
            "name": "crm",
            "resource": RESOURCE,
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": {
                "name": "crm",
                "rules": [
                    { "name": "a", "allow": "mcp.method == \"ping\"" },
                    { "name": "b", "allow": "mcp.tool.name == \"search\"" },
                ],
            },
        }],
        "sessions": { "key": SESSION_KEY },
    })
}

/// 32 bytes in base64 (as `head -c32 /dev/urandom | base64` prints them).
const SESSION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn load(config: &Value, env: &MapEnv) -> Result<Config, ConfigError> {
    Config::from_json(config.to_string().as_bytes(), env)
}

/// Applies `change` to a valid configuration and returns the error's field.
fn error_of(change: impl FnOnce(&mut Value)) -> ConfigError {
    let mut config = valid();
    change(&mut config);
    match load(&config, &MapEnv::default()) {
        Ok(_) => panic!("accepted: {config}"),
        Err(e) => e,
    }
}

/// A change to a valid configuration, and the field its error must name.
type Case = (fn(&mut Value), &'static str);

/// Each change to a valid configuration is refused with an error naming that field.
fn assert_fields(cases: &[Case]) {
    for (change, field) in cases {
        assert_eq!(field_of(change), *field);
    }
}

fn field_of(change: impl FnOnce(&mut Value)) -> String {
    error_of(change).field
}

#[test]
fn valid_configuration_loads() {
    let config = load(&valid(), &MapEnv::default()).expect("valid");
    assert_eq!(config.servers.len(), 1);
    let server = &config.servers[0];
    assert_eq!(server.path, "/mcp");
    assert_eq!(
        server.metadata_path,
        "/.well-known/oauth-protected-resource/mcp"
    );
    assert_eq!(server.metadata_url, METADATA_URL);
    assert_eq!(server.credential.header, "x-api-key");
    assert_eq!(server.credential.value, SERVICE_KEY);
    for must in [
        "authorization",
        "x-api-key",
        "cookie",
        "proxy-authorization",
        "forwarded",
        "x-forwarded-host",
        "x-real-ip",
    ] {
        assert!(server.strip_headers.iter().any(|h| h == must), "{must}");
    }
    assert_eq!(config.max_body_bytes, 1024 * 1024);
    // The secret never shows in a debug dump.
    assert!(!format!("{:?}", server.credential).contains(SERVICE_KEY));
    assert!(!format!("{config:?}").contains(SERVICE_KEY));
}

#[test]
fn a_strip_list_of_ones_own_still_removes_the_forwarding_headers_and_keys_are_trimmed() {
    // A list written to add one header must not let a forged client address or host through.
    let mut c = valid();
    c["servers"][0]["strip_headers"] = json!(["x-crm-session"]);
    let config = load(&c, &MapEnv::default()).expect("valid");
    for must in [
        "x-crm-session",
        "forwarded",
        "x-forwarded-host",
        "x-real-ip",
        "cookie",
    ] {
        assert!(
            config.servers[0].strip_headers.iter().any(|h| h == must),
            "{must}"
        );
    }
    // A key the upstream's parser would trim: its echo would not be recognised.
    for key in [" sk-service-key-0123", "sk-service-key-0123\t"] {
        let mut c = valid();
        c["servers"][0]["credential"]["value"] = json!(key);
        let e = load(&c, &MapEnv::default()).expect_err("refused");
        assert_eq!(e.field, "servers[0].credential.value", "{e}");
        assert!(!e.to_string().contains("sk-service"), "not shown: {e}");
    }
}

#[test]
fn a_server_an_earlier_one_on_its_path_shadows_is_refused() {
    // The first server whose match holds is chosen: a catch-all (or a wider host) listed first
    // would take the other's requests, its key sent to the other's upstream.
    let two = |first: Value, second: Value| {
        let mut c = valid();
        let mut other = c["servers"][0].clone();
        other["name"] = json!("git");
        other["match"] = second;
        c["servers"][0]["match"] = first;
        c["servers"].as_array_mut().expect("array").push(other);
        load(&c, &MapEnv::default())
    };
    for (first, second) in [
        (json!({}), json!({"route_name": "git"})),
        (
            json!({"host": "crm.internal:*"}),
            json!({"host": "CRM.internal:8443"}),
        ),
        (
            json!({"host": "h"}),
            json!({"host": "h", "route_name": "git"}),
        ),
    ] {
        let e = two(first.clone(), second.clone()).expect_err("shadowed");
        assert_eq!(e.field, "servers[1].match", "{first} {second}: {e}");
        assert!(e.to_string().contains("servers[0]"), "{e}");
    }
    // The specific one first: both can be chosen.
    two(json!({"route_name": "git"}), json!({})).expect("valid");
    two(
        json!({"host": "crm.internal:8443"}),
        json!({"host": "crm.internal:*"}),
    )
    .expect("valid");
    two(json!({"route_name": "a"}), json!({"route_name": "b"})).expect("valid");
}

#[test]
fn errors_display_field_and_message() {
    let e = error_of(|c| c["issuers"][0]["audiences"] = json!([]));
    assert_eq!(e.field, "issuers[0].audiences");
    assert!(e.to_string().starts_with("issuers[0].audiences: "), "{e}");
}

#[test]
fn issuer_fields_are_named() {
    assert_fields(&[
        (
            |c| c["issuers"][0]["audiences"] = json!([]),
            "issuers[0].audiences",
        ),
        (
            |c| c["issuers"][0]["audiences"] = json!([""]),
            "issuers[0].audiences",
        ),
        (
            |c| {
                c["issuers"][0]
                    .as_object_mut()
                    .expect("object")
                    .remove("audiences");
            },
            "issuers[0].audiences",
        ),
        (
            |c| c["issuers"][0]["issuer"] = json!(""),
            "issuers[0].issuer",
        ),
        (
            |c| c["issuers"][0]["algorithms"] = json!(["ES256", "HS256"]),
            "issuers[0].algorithms[1]",
        ),
        (
            |c| c["issuers"][0]["algorithms"] = json!([]),
            "issuers[0].algorithms",
        ),
        (
            |c| c["issuers"][0]["jwks"] = json!({ "keys": [] }),
            "issuers[0].jwks",
        ),
    ]);
    assert_eq!(
        field_of(
            |c| c["issuers"][0]["jwks"] = json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] })
        ),
        "issuers[0].jwks"
    );
    assert_fields(&[
        (
            |c| {
                c["issuers"][0]
                    .as_object_mut()
                    .expect("object")
                    .remove("jwks");
                c["issuers"][0]["jwks_uri"] = json!("https://idp.example.com/jwks");
            },
            "issuers[0].cluster",
        ),
        (
            |c| {
                c["issuers"][0]
                    .as_object_mut()
                    .expect("object")
                    .remove("jwks");
                c["issuers"][0]["jwks_uri"] = json!("ftp://idp.example.com/jwks");
                c["issuers"][0]["cluster"] = json!("idp");
            },
            "issuers[0].jwks_uri",
        ),
        (
            |c| {
                c["issuers"][0]["jwks_uri"] = json!("https://idp.example.com/jwks");
                c["issuers"][0]["cluster"] = json!("idp");
            },
            "issuers[0].jwks",
        ),
        (
            |c| {
                c["issuers"][0]
                    .as_object_mut()
                    .expect("object")
                    .remove("jwks");
                c["issuers"][0]["discovery"] = json!(true);
                c["issuers"][0]["cluster"] = json!("idp");
                c["issuers"][0]["refresh_seconds"] = json!(0);
            },
            "issuers[0].refresh_seconds",
        ),
        (
            |c| {
                c["issuers"][0]
                    .as_object_mut()
                    .expect("object")
                    .remove("jwks");
            },
            "issuers[0]",
        ),
        (
            |c| {
                let second = c["issuers"][0].clone();
                c["issuers"].as_array_mut().expect("array").push(second);
            },
            "issuers[1].issuer",
        ),
        (|c| c["issuers"] = json!([]), "issuers"),
    ]);
}

#[test]
fn wrongly_typed_member_names_the_member() {
    // An operator writing a single audience as a string must be told which field is wrong.
    assert_fields(&[
        (
            |c| c["issuers"][0]["audiences"] = json!(RESOURCE),
            "issuers[0].audiences",
        ),
        (
            |c| c["servers"][0]["credential"]["header"] = json!(42),
            "servers[0].credential.header",
        ),
    ]);
}

#[test]
fn credential_fields_are_named() {
    assert_fields(&[
        (
            |c| c["servers"][0]["credential"]["header"] = json!("x api key"),
            "servers[0].credential.header",
        ),
        (
            |c| c["servers"][0]["credential"]["header"] = json!(":path"),
            "servers[0].credential.header",
        ),
        (
            |c| {
                c["servers"][0]["credential"]
                    .as_object_mut()
                    .expect("object")
                    .remove("header");
            },
            "servers[0].credential.header",
        ),
        (
            |c| c["servers"][0]["credential"]["value"] = json!("short"),
            "servers[0].credential.value",
        ),
        (
            |c| c["servers"][0]["credential"]["value"] = json!(""),
            "servers[0].credential.value",
        ),
    ]);
    assert_eq!(
        field_of(
            |c| c["servers"][0]["credential"]["value"] = json!("sk-0123456789\r\nx-injected: 1")
        ),
        "servers[0].credential.value"
    );
    assert_fields(&[
        (
            |c| c["servers"][0]["credential"]["value_from_env"] = json!("KEY"),
            "servers[0].credential",
        ),
        (
            |c| {
                c["servers"][0]["credential"]
                    .as_object_mut()
                    .expect("object")
                    .remove("value");
            },
            "servers[0].credential",
        ),
    ]);
}

#[test]
fn value_from_env_missing_names_the_field_and_present_is_used() {
    let mut config = valid();
    config["servers"][0]["credential"] =
        json!({ "header": "x-api-key", "value_from_env": "CRM_KEY" });
    let e = load(&config, &MapEnv::default()).expect_err("unset variable");
    assert_eq!(e.field, "servers[0].credential.value_from_env");
    assert!(e.message.contains("CRM_KEY"), "{e}");
    let loaded = load(
        &config,
        &MapEnv::with(&[("CRM_KEY", "sk-from-the-environment")]),
    )
    .expect("variable set");
    assert_eq!(
        loaded.servers[0].credential.value,
        "sk-from-the-environment"
    );
}

#[test]
fn policy_rule_fields_are_named() {
    assert_eq!(
        field_of(|c| c["servers"][0]["policy"]["rules"][1]["allow"] = json!("mcp.tool.name ==")),
        "servers[0].policy.rules[1].allow"
    );
    assert_eq!(
        field_of(
            |c| c["servers"][0]["policy"]["rules"][1]["allow"] = json!("no_such_variable == 1")
        ),
        "servers[0].policy.rules[1].allow"
    );
    let e =
        error_of(|c| c["servers"][0]["policy"]["rules"][1]["allow"] = json!("mcp.tool.name == "));
    assert!(e.message.contains("\"b\""), "names the rule: {e}");
    assert_fields(&[
        (
            |c| c["servers"][0]["policy"]["rules"][0]["deny"] = json!("true"),
            "servers[0].policy.rules[0]",
        ),
        (
            |c| c["servers"][0]["policy"]["rules"][1]["name"] = json!("a"),
            "servers[0].policy.rules[1].name",
        ),
        (
            |c| c["servers"][0]["policy"]["on_deny"] = json!("silent"),
            "servers[0].policy.on_deny",
        ),
        (
            |c| c["servers"][0]["policy"]["default"] = json!("permit"),
            "servers[0].policy.default",
        ),
        (
            |c| {
                c["servers"][0]["policy"]
                    .as_object_mut()
                    .expect("object")
                    .remove("name");
            },
            "servers[0].policy.name",
        ),
    ]);
}

#[test]
fn unknown_fields_are_named() {
    assert_fields(&[
        (|c| c["issuer"] = json!("typo"), "issuer"),
        (
            |c| c["issuers"][0]["jwks_url"] = json!("https://x"),
            "issuers[0].jwks_url",
        ),
        (
            |c| c["servers"][0]["credentials"] = json!({}),
            "servers[0].credentials",
        ),
        (
            |c| c["servers"][0]["credential"]["prefx"] = json!("Bearer "),
            "servers[0].credential.prefx",
        ),
        (
            |c| c["servers"][0]["policy"]["on_denied"] = json!("hide"),
            "servers[0].policy.on_denied",
        ),
        (
            |c| c["servers"][0]["policy"]["rules"][1]["allows"] = json!("true"),
            "servers[0].policy.rules[1].allows",
        ),
        (
            |c| c["servers"][0]["match"] = json!({ "route": "x" }),
            "servers[0].match.route",
        ),
    ]);
    let e = error_of(|c| c["issuers"][0]["jwks_url"] = json!("https://x"));
    assert!(e.message.contains("not a known field"), "{e}");
}

#[test]
fn server_fields_are_named() {
    assert_fields(&[
        (|c| c["servers"][0]["name"] = json!(" "), "servers[0].name"),
        (
            |c| c["servers"][0]["path"] = json!("mcp"),
            "servers[0].path",
        ),
        (
            |c| c["servers"][0]["path"] = json!("/mcp?x=1"),
            "servers[0].path",
        ),
        (
            |c| c["servers"][0]["resource"] = json!("mcp.example.com"),
            "servers[0].resource",
        ),
        (
            |c| c["servers"][0]["resource"] = json!("https://mcp.example.com/mcp#x"),
            "servers[0].resource",
        ),
        (
            |c| c["servers"][0]["key_leak"] = json!("ignore"),
            "servers[0].key_leak",
        ),
        (
            |c| c["servers"][0]["audit_arguments"] = json!("all"),
            "servers[0].audit_arguments",
        ),
        (
            |c| c["servers"][0]["strip_headers"] = json!(["cookie", "bad header"]),
            "servers[0].strip_headers[1]",
        ),
        (
            |c| c["servers"][0]["forward_claims"] = json!({ "email": "authorization" }),
            "servers[0].forward_claims.email",
        ),
        (
            |c| c["servers"][0]["forward_claims"] = json!({ "email": "x-api-key" }),
            "servers[0].forward_claims.email",
        ),
        (
            |c| c["servers"][0]["forward_claims"] = json!({ "sub": "x user" }),
            "servers[0].forward_claims.sub",
        ),
        (
            |c| {
                let second = c["servers"][0].clone();
                c["servers"].as_array_mut().expect("array").push(second);
            },
            "servers[1].match",
        ),
        (
            // Another path, the same name: handles sealed for one would open on the other.
            |c| {
                let mut second = c["servers"][0].clone();
                second["path"] = json!("/mcp-other");
                c["servers"].as_array_mut().expect("array").push(second);
            },
            "servers[1].name",
        ),
        (
            // Envoy's wildcard domains: compared literally, they would never match.
            |c| c["servers"][0]["match"] = json!({ "host": "*.internal" }),
            "servers[0].match.host",
        ),
        (
            |c| c["servers"][0]["match"] = json!({ "host": "crm-*" }),
            "servers[0].match.host",
        ),
        (
            |c| c["servers"][0]["match"] = json!({ "host": "" }),
            "servers[0].match.host",
        ),
        (|c| c["servers"] = json!([]), "servers"),
    ]);
}

#[test]
fn top_level_fields_are_named() {
    assert_fields(&[
        (
            |c| c["clock_skew_seconds"] = json!(601),
            "clock_skew_seconds",
        ),
        (|c| c["max_body_bytes"] = json!(0), "max_body_bytes"),
        (
            |c| {
                c.as_object_mut().expect("object").remove("servers");
            },
            "servers",
        ),
    ]);
    let e = Config::from_json(b"not json", &MapEnv::default()).expect_err("not JSON");
    assert!(e.message.contains("not valid JSON"), "{e}");
    let e = Config::from_json(b"[]", &MapEnv::default()).expect_err("not an object");
    assert_eq!(e.field, "");
}

#[test]
fn custom_strip_headers_still_strip_credentials() {
    let mut config = valid();
    config["servers"][0]["strip_headers"] = json!(["X-Debug"]);
    config["servers"][0]["forward_claims"] = json!({ "email": "X-MCP-User" });
    let loaded = load(&config, &MapEnv::default()).expect("valid");
    let strip = &loaded.servers[0].strip_headers;
    for must in [
        "x-debug",
        "authorization",
        "x-api-key",
        "x-mcp-user",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
        "x-forwarded-method",
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
        "x-forwarded-uri",
        "x-forwarded-prefix",
    ] {
        assert!(strip.iter().any(|h| h == must), "{must} in {strip:?}");
    }
}

#[test]
fn weak_rsa_keys_are_refused() {
    // A 1024-bit modulus: truncate the test key's modulus (the key need not be valid).
    let mut jwk = rsa_public_jwk();
    let n = rsa_modulus_bytes();
    jwk["n"] = json!(b64(&n[..128]));
    let e = error_of(|c| c["issuers"][0]["jwks"] = json!({ "keys": [jwk] }));
    assert_eq!(e.field, "issuers[0].jwks");
    assert!(
        e.message.contains("too short") || e.message.contains("RSA"),
        "{e}"
    );
}

#[test]
fn a_configuration_without_a_sealing_key_says_what_to_write() {
    let e = error_of(|c| {
        c.as_object_mut().expect("object").remove("sessions");
    });
    assert_eq!(e.field, "sessions");
    for words in [
        "\"sessions\": {\"key_from_env\": \"MCP_GUARD_SESSION_KEY\"}",
        "head -c32 /dev/urandom | base64",
        "\"sessions\": {\"stateless\": true}",
    ] {
        assert!(e.message.contains(words), "{e}");
    }
    let e = error_of(|c| c["sessions"] = json!({ "previous_key": SESSION_KEY }));
    assert_eq!(e.field, "sessions.key");
}

#[test]
fn sealing_keys_are_checked_and_never_quoted() {
    let short = "c2hvcnQta2V5LW5vdC0zMi1ieXRlcw==";
    let not_b64 = "this is not base64 but a secret!!";
    for (sessions, field, secret) in [
        (json!({ "key": short }), "sessions.key", short),
        (json!({ "key": not_b64 }), "sessions.key", not_b64),
        (
            json!({ "key": SESSION_KEY, "previous_key": short }),
            "sessions.previous_key",
            short,
        ),
        (
            json!({ "key": 12_345_678_901_234_u64 }),
            "sessions.key",
            "12345678901234",
        ),
        (
            json!({ "key": SESSION_KEY, "key_from_env": "K" }),
            "sessions.key",
            SESSION_KEY,
        ),
        (
            json!({ "key": SESSION_KEY, "stateless": true }),
            "sessions.stateless",
            SESSION_KEY,
        ),
        (
            json!({ "key": SESSION_KEY, "other": 1 }),
            "sessions.other",
            SESSION_KEY,
        ),
        // A key written in the wrong member is not quoted back either.
        (
            json!({ "key": SESSION_KEY, "cipher": SESSION_KEY }),
            "sessions.cipher",
            SESSION_KEY,
        ),
        (
            json!({ "stateless": true, "cipher": "xchacha20-poly1305" }),
            "sessions.stateless",
            SESSION_KEY,
        ),
    ] {
        let e = error_of(|c| c["sessions"] = sessions.clone());
        assert_eq!(e.field, field, "{sessions}: {e}");
        assert!(!e.to_string().contains(secret), "{e}");
    }
    // URL-safe and unpadded spellings of the same 32 bytes are accepted.
    for key in [
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
    ] {
        let mut config = valid();
        config["sessions"] = json!({ "key": key, "previous_key": SESSION_KEY });
        let loaded = load(&config, &MapEnv::default()).expect("valid key");
        assert!(loaded.sessions.is_some());
    }
    let mut config = valid();
    config["sessions"] = json!({ "stateless": true });
    assert!(load(&config, &MapEnv::default())
        .expect("stateless")
        .sessions
        .is_none());
    let e = error_of(|c| c["sessions"] = json!({ "key": SESSION_KEY, "cipher": "chacha20" }));
    assert!(
        e.message.contains("\"aes-256-gcm-siv\"") && e.message.contains("\"xchacha20-poly1305\""),
        "{e}"
    );
    for cipher in ["aes-256-gcm-siv", "xchacha20-poly1305"] {
        let mut config = valid();
        config["sessions"] = json!({ "key": SESSION_KEY, "cipher": cipher });
        assert!(load(&config, &MapEnv::default()).is_ok(), "{cipher}");
    }
}

#[test]
fn sealing_keys_come_from_the_environment() {
    let mut config = valid();
    config["sessions"] = json!({
        "key_from_env": "MCP_GUARD_SESSION_KEY",
        "previous_key_from_env": "MCP_GUARD_PREVIOUS_SESSION_KEY",
    });
    let e = load(&config, &MapEnv::default()).expect_err("unset variable");
    assert_eq!(e.field, "sessions.key_from_env");
    assert!(e.message.contains("MCP_GUARD_SESSION_KEY"), "{e}");
    let env = MapEnv::with(&[
        ("MCP_GUARD_SESSION_KEY", SESSION_KEY),
        ("MCP_GUARD_PREVIOUS_SESSION_KEY", "short"),
    ]);
    let e = load(&config, &env).expect_err("bad previous key");
    assert_eq!(e.field, "sessions.previous_key_from_env");
    assert!(!e.message.contains("short"), "{e}");
    let env = MapEnv::with(&[
        ("MCP_GUARD_SESSION_KEY", SESSION_KEY),
        (
            "MCP_GUARD_PREVIOUS_SESSION_KEY",
            &format!("{SESSION_KEY}\n"),
        ),
    ]);
    assert!(load(&config, &env).expect("both set").sessions.is_some());
}

#[test]
fn a_sealing_key_that_is_text_loads_with_a_warning() {
    // Random bytes: no warning.
    assert!(load(&valid(), &MapEnv::default())
        .unwrap()
        .warnings
        .is_empty());
    // The demo's published key ("mcp-guard demo session key (test"), as a previous key too.
    let demo = "bWNwLWd1YXJkIGRlbW8gc2Vzc2lvbiBrZXkgKHRlc3Q=";
    let mut config = valid();
    config["sessions"] = json!({ "key": demo, "previous_key": demo });
    let loaded = load(&config, &MapEnv::default()).expect("it still loads");
    let fields: Vec<&str> = loaded.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["sessions.key", "sessions.previous_key"]);
    let said = loaded.warnings[0].to_string();
    assert!(said.contains("head -c32 /dev/urandom | base64"), "{said}");
    assert!(!said.contains(demo), "the key is not shown: {said}");
}

#[test]
fn every_part_s_error_is_reported_in_order() {
    let mut config = valid();
    config["clock_skew_seconds"] = json!(601);
    config["issuers"][0]["audiences"] = json!([]);
    let second = config["servers"][0].clone();
    config["servers"]
        .as_array_mut()
        .expect("array")
        .push(second);
    config["servers"][0]["credential"]["header"] = json!("x api key");
    config["servers"][1]["path"] = json!("/other");
    config["servers"][1]["policy"]["limits"] =
        json!([{ "name": "g", "key": "jwt.sub", "rate": "10/minute", "scope": "global" }]);
    config.as_object_mut().expect("object").remove("sessions");
    let errors = match Config::load(config.to_string().as_bytes(), &MapEnv::default()) {
        Ok(_) => panic!("accepted: {config}"),
        Err(errors) => errors,
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "clock_skew_seconds",
            "issuers[0].audiences",
            "servers[0].credential.header",
            "servers[1].policy.limits[0].scope",
            "sessions",
        ]
    );
    // The one error Envoy logs names the first and carries the others.
    let e = load(&config, &MapEnv::default()).expect_err("invalid");
    assert_eq!(e.field, "clock_skew_seconds");
    assert!(
        e.message.contains("(and 4 more: issuers[0].audiences: "),
        "{e}"
    );
    assert!(
        e.message.contains("servers[1].policy.limits[0].scope: "),
        "{e}"
    );
}

/// `match.host` is compared as Envoy's virtual-host domains are: literally, port included; a
/// host the filter took while Envoy routed it by another virtual host would get this server's
/// key injected into another upstream's request.
#[test]
fn a_host_is_compared_as_envoy_compares_domains() {
    use mcp_guard::config::host_matches;
    assert!(host_matches("crm.internal", "crm.internal"));
    assert!(host_matches("crm.internal", "CRM.Internal"));
    assert!(!host_matches("crm.internal", "crm.internal:9999"));
    assert!(!host_matches("crm.internal", "crm.internal."));
    assert!(host_matches("crm.internal:*", "crm.internal:9999"));
    assert!(!host_matches("crm.internal:*", "crm.internal"));
    assert!(!host_matches("crm.internal:*", "crm.internal:"));
    assert!(!host_matches("crm.internal:*", "crm.internal:x"));
    assert!(host_matches("[::1]:*", "[::1]:8080"));
    assert!(host_matches("crm.internal:8443", "crm.internal:8443"));
}

//! The JSON Schema of the plugin configuration is generated from the types that parse it
//! (`mcp_guard::config::schema`) and checked in as `policies/config.schema.json`, next to the
//! policy and pins schemas it refers to. When the types change, so must the file:
//! `make schema` writes it.

use std::path::Path;

#[test]
fn the_checked_in_configuration_schema_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/config.schema.json");
    let generated = match serde_json::to_string_pretty(&mcp_guard::config::schema()) {
        Ok(text) => text + "\n",
        Err(e) => panic!("the schema does not serialize: {e}"),
    };
    if std::env::var_os("MCP_GUARD_WRITE_SCHEMA").is_some() {
        if let Err(e) = std::fs::write(&path, &generated) {
            panic!("cannot write {}: {e}", path.display());
        }
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "policies/config.schema.json is not the schema the configuration types give; \
         run `make schema` and commit the file"
    );
}

#[test]
fn the_schema_names_every_member_and_refers_to_the_policy_and_pins_schemas() {
    let schema = mcp_guard::config::schema();
    assert_eq!(schema["$id"], "config.schema.json");
    assert_eq!(schema["additionalProperties"], false);
    for member in [
        "issuers",
        "servers",
        "sessions",
        "dpop",
        "rate_limit_service",
        "clock_skew_seconds",
        "max_body_bytes",
        "key_wait_ms",
    ] {
        assert!(
            schema["properties"].get(member).is_some(),
            "{member} missing"
        );
    }
    let text = schema.to_string();
    for reference in [
        "\"policy.schema.json\"",
        "\"pins.schema.json\"",
        "\"../docs/revocation-feed.schema.json\"",
    ] {
        assert!(text.contains(reference), "{reference} missing");
    }
    // Choices are enums: a typo is caught by an editor, not only by the filter.
    for choice in [
        "\"redact\"",
        "\"block\"",
        "\"redacted\"",
        "\"client_secret_post\"",
        "\"EdDSA\"",
    ] {
        assert!(text.contains(choice), "{choice} missing");
    }
}

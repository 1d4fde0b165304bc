//! `mcp-guard render envoy|istio`: the Envoy HTTP filter (or the Istio EnvoyFilter) that runs
//! mcp-guard with a policy.

use mcp_guard::policy::Policy;
use serde_json::{json, Value};

/// Marks every value to fill in; `grep -n REPLACE_ME` lists them.
const MARK: &str = "REPLACE_ME";

fn placeholder(what: &str) -> Value {
    Value::from(format!("{MARK}: {what}"))
}

/// The plugin configuration (the filter's JSON) with the policy under `servers[0].policy`
/// (and tool pins under `servers[0].pins`, when given).
pub fn plugin_config(policy_value: &Value, policy: &Policy, pins: Option<&Value>) -> Value {
    let mut config = json!({
        "issuers": [{
            "issuer": placeholder("the token issuer, exactly as in the `iss` claim, e.g. https://idp.example.com"),
            "audiences": [placeholder("this MCP server's resource URL, e.g. https://mcp.example.com/mcp")],
            "discovery": true,
            "cluster": placeholder("the Envoy cluster that reaches the issuer (for its keys)"),
        }],
        "servers": [{
            "name": policy.name,
            "path": "/mcp",
            "resource": placeholder("this MCP server's resource URL, e.g. https://mcp.example.com/mcp"),
            "authorization_servers": [placeholder("the authorization server clients get tokens from")],
            "credential": {
                "header": "authorization",
                "prefix": "Bearer ",
                "value_from_env": "MCP_GUARD_SERVICE_KEY",
            },
            "policy": policy_value,
        }],
        "sessions": { "key_from_env": "MCP_GUARD_SESSION_KEY" },
    });
    if let (Some(pins), Some(server)) = (pins, config.pointer_mut("/servers/0")) {
        server["pins"] = pins.clone();
    }
    config
}

/// `text` as the lines of a YAML literal block indented by `indent` spaces.
fn block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    text.lines().map(|line| format!("{pad}{line}\n")).collect()
}

/// The `envoy.filters.http.wasm` filter, indented by `indent` spaces, as a list item.
fn http_filter(
    policy_value: &Value,
    policy: &Policy,
    pins: Option<&Value>,
    indent: usize,
) -> Result<String, String> {
    let config = serde_json::to_string_pretty(&plugin_config(policy_value, policy, pins))
        .map_err(|e| e.to_string())?;
    let filter = format!(
        r#"- name: mcp-guard
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: mcp-guard
      root_id: mcp-guard
      # Hold the request headers while the body is read and decided on: without it Envoy
      # forwards the headers before the policy has seen the message.
      allow_on_headers_stop_iteration: true
      # A VM that fails answers 503; it never lets traffic through unchecked.
      failure_policy: FAIL_CLOSED
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        # The filter's configuration (JSON); the policy is servers[0].policy.
        value: |
{config}      vm_config:
        vm_id: mcp-guard
        runtime: envoy.wasm.runtime.v8
        code:
          local:
            filename: "{MARK}: path to mcp_guard.wasm"
        environment_variables:
          # The service credential the filter sends upstream instead of the client's token
          # (credential.value_from_env): set MCP_GUARD_SERVICE_KEY in Envoy's environment.
          # The key that seals session handles (sessions.key_from_env), the same on every
          # replica: MCP_GUARD_SESSION_KEY=$(head -c32 /dev/urandom | base64).
          host_env_keys: [MCP_GUARD_SERVICE_KEY, MCP_GUARD_SESSION_KEY]
"#,
        config = block(&config, 10),
    );
    Ok(block(&filter, indent))
}

fn header(policy: &Policy, what: &str) -> String {
    let version = if policy.version.is_empty() {
        String::new()
    } else {
        format!(" (version {})", policy.version)
    };
    format!(
        "# {what} for mcp-guard with policy {:?}{version}, rendered by `mcp-guard render`.\n\
         # Fill in every {MARK} before use (`grep -n {MARK}` lists them).\n",
        policy.name
    )
}

pub fn envoy(
    policy_value: &Value,
    policy: &Policy,
    pins: Option<&Value>,
) -> Result<String, String> {
    Ok(format!(
        "{}# Add it to the http_filters of the HTTP connection manager in front of the MCP server,\n\
         # before envoy.filters.http.router. The issuer's cluster must exist in `clusters`.\n{}",
        header(policy, "The Envoy HTTP filter"),
        http_filter(policy_value, policy, pins, 0)?
    ))
}

pub fn istio(
    policy_value: &Value,
    policy: &Policy,
    pins: Option<&Value>,
) -> Result<String, String> {
    let name: String = policy
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    Ok(format!(
        r#"{header}# An EnvoyFilter, not a WasmPlugin: Istio's WasmPlugin CRD cannot set
# allow_on_headers_stop_iteration, and without it Envoy forwards the request headers to the MCP
# server before mcp-guard has read and decided on the message.
#
# The Wasm module must be on the sidecar's filesystem (e.g. mounted with the
# sidecar.istio.io/userVolume and sidecar.istio.io/userVolumeMount annotations). The issuer's
# cluster is an Istio cluster name, e.g. "outbound|443||idp.example.com".
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: mcp-guard-{name}
  namespace: "{MARK}: the MCP server's namespace"
spec:
  workloadSelector:
    labels:
      app: "{MARK}: the MCP server's app label"
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      # Inbound, on the MCP server's sidecar. For an ingress gateway use GATEWAY.
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter:
              name: envoy.filters.http.router
    patch:
      operation: INSERT_BEFORE
      value:
{filter}"#,
        header = header(policy, "An Istio EnvoyFilter"),
        filter = strip_item(&http_filter(policy_value, policy, pins, 8)?),
    ))
}

/// The filter without its leading `- `: a patch `value` is a mapping, not a list.
fn strip_item(filter: &str) -> String {
    let mut lines = filter.lines();
    let mut out = String::new();
    if let Some(first) = lines.next() {
        out.push_str(&first.replacen("- ", "  ", 1));
        out.push('\n');
    }
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

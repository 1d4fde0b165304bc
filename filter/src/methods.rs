//! The methods an MCP client sends to a server, which the policy's built-in rule and the
//! protocol revisions both judge by. A leaf module.

/// Requests an MCP client sends to a server (up to protocol version 2025-11-25, and those of
/// 2026-07-28 and its tasks extension: `server/discover`, `subscriptions/listen`,
/// `tasks/update`). A request declaring 2026-07-28 may only use that revision's
/// ([`crate::protocol::MODERN_REQUESTS`]).
pub const CLIENT_REQUESTS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "server/discover",
    "subscriptions/listen",
    "tasks/update",
];

/// Notifications an MCP client sends to a server.
pub const CLIENT_NOTIFICATIONS: &[&str] = &[
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/tasks/status",
];

/// Whether `method` is one an MCP client sends to a server: a request or notification of
/// [`CLIENT_REQUESTS`] or [`CLIENT_NOTIFICATIONS`], or the empty method of a response (the
/// client answering a server's request). Methods only servers send (`sampling/createMessage`,
/// `elicitation/create`, `roots/list`, `notifications/tools/list_changed`, …) are not.
pub fn is_client_method(method: &str) -> bool {
    method.is_empty() || CLIENT_REQUESTS.contains(&method) || CLIENT_NOTIFICATIONS.contains(&method)
}

//! Setup (w) of `make bench`: an HTTP filter loaded exactly as mcp-guard is (same Envoy
//! template, same SDK, same toolchain) that does nothing: no hostcall, every callback lets the
//! request and the answer continue. What Envoy spends on it is what any Wasm filter pays before
//! doing any work: a context per request, each callback a call into V8. The bench reports mcp-guard
//! against it, so the filter's own cost is told apart from the price of being a Wasm filter.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Nothing))
    }
}

/// Every callback the SDK dispatches keeps its default: continue.
struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}

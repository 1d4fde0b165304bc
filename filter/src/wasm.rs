//! The proxy-wasm adapter: turns Envoy callbacks into [`crate::flow`] calls and implements
//! [`Host`] with hostcalls. No decisions are made here.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as WasmAction, BufferType, ContextType, LogLevel, MapType};

use crate::config::{Config, Environment};
use crate::flow::{Action, Stream};
use crate::host::{Header, Host};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

/// `vm_config.environment_variables`, which Envoy exposes to the VM as its WASI environment.
struct VmEnv;

impl Environment for VmEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            _ => {
                log::error!("mcp-guard: rejected configuration: no plugin configuration given");
                return false;
            }
        };
        match Config::from_json(&bytes, &VmEnv) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log::error!("mcp-guard: rejected configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Http {
            stream: Stream::new(config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    stream: Stream,
}

impl Context for Http {}

fn action(a: Action) -> WasmAction {
    match a {
        Action::Continue => WasmAction::Continue,
        Action::Pause => WasmAction::Pause,
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> WasmAction {
        action(self.stream.on_request_headers(&mut Envoy, end_of_stream))
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> WasmAction {
        if !end_of_stream {
            return WasmAction::Pause;
        }
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
            Ok(b) => b.unwrap_or_default(),
            Err(_) => {
                // Fail closed: without the body there is no decision.
                let _ = hostcalls::send_http_response(503, vec![], Some(b"body unavailable"));
                return WasmAction::Pause;
            }
        };
        action(self.stream.on_request_body(&mut Envoy, &body))
    }

    fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> WasmAction {
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok());
        self.stream.on_response_headers(&mut Envoy, status);
        WasmAction::Continue
    }
}

/// [`Host`] over proxy-wasm hostcalls. Host errors are treated as absent values; the flow
/// fails closed on anything it needs and does not get.
struct Envoy;

impl Host for Envoy {
    fn request_headers(&self) -> Vec<Header> {
        hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name).ok().flatten()
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
    fn remove_request_header(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(status, headers.to_vec(), Some(body));
    }
    fn write_audit(&mut self, record: &[u8]) {
        if let Err(e) = hostcalls::set_property(vec!["mcp.audit"], Some(record)) {
            log::warn!("mcp-guard: could not write the audit record: {e:?}");
        }
    }
    fn now_millis(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

//! Where secrets named by environment variable come from. A leaf module.

/// Where the filter reads values it is told to take from the environment
/// (`vm_config.environment_variables` in Envoy; the process environment natively).
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

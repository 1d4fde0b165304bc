//! The results of rules whose result for a call follows from the call's method and names alone
//! ([`super::items::reads_method_and_names_only`]), remembered per VM so that a policy of
//! such rules ("these tools for everyone", "these methods for everyone") decides a repeated
//! call without building its CEL context or running a rule.
//!
//! A result is a pure function of (rule, part, method, the name tests passed): remembering it
//! changes no decision, on any replica, after any restart. The store is bounded: when it is
//! full it is emptied and fills again with what is called.

use std::cell::RefCell;

use super::{FastMap, Part, Tri};

/// Results kept at most (one per rule part, method and combination of name tests).
const MAX_RESULTS: usize = 4096;

/// Methods kept per rule part and combination of name tests (a rule limited to a few methods
/// by the index is asked about those only).
const MAX_METHODS: usize = 8;

/// Results for longer methods are not kept: MCP's are a few dozen bytes, and with
/// `unknown_methods: allow` a caller chooses the method, up to the body's size (a review
/// found megabyte methods kept, eight per rule). So the store holds at most
/// `MAX_RESULTS * MAX_METHOD_BYTES` of method text.
const MAX_METHOD_BYTES: usize = 64;

#[derive(Default)]
pub(super) struct Remembered {
    results: RefCell<Store>,
}

/// A rule's position and part, and the name tests passed.
type Key = (usize, Part, u64);

#[derive(Default)]
struct Store {
    /// By key, the results for each method asked about.
    by_key: FastMap<Key, Vec<(Box<str>, Tri)>>,
    len: usize,
}

impl Remembered {
    /// The result of part `part` of rule `rule` for a call of `method` whose names pass the
    /// tests `bits`, if known.
    pub fn get(&self, rule: usize, part: Part, bits: u64, method: &str) -> Option<Tri> {
        let store = self.results.borrow();
        let methods = store.by_key.get(&(rule, part, bits))?;
        methods
            .iter()
            .find(|(m, _)| &**m == method)
            .map(|(_, tri)| tri.clone())
    }

    /// Keeps a result.
    pub fn put(&self, rule: usize, part: Part, bits: u64, method: &str, tri: Tri) {
        if method.len() > MAX_METHOD_BYTES {
            return;
        }
        let mut store = self.results.borrow_mut();
        if store.len >= MAX_RESULTS {
            store.by_key.clear();
            store.len = 0;
        }
        let methods = store.by_key.entry((rule, part, bits)).or_default();
        if methods.len() >= MAX_METHODS || methods.iter().any(|(m, _)| &**m == method) {
            return;
        }
        methods.push((method.into(), tri));
        store.len += 1;
    }

    /// How many results are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.results.borrow().len
    }

    /// The bytes of method text kept.
    #[cfg(test)]
    pub fn method_bytes(&self) -> usize {
        let store = self.results.borrow();
        store.by_key.values().flatten().map(|(m, _)| m.len()).sum()
    }
}

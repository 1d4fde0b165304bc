//! Remote keys: one fetch serves every worker VM, keys are refreshed, an unknown `kid` causes
//! at most one re-fetch per interval, and a failed fetch never loses the last good keys.

mod common;

use common::*;
use mcp_guard::jwks::{FetchOutcome, KeyManager, MAX_DOCUMENT_BYTES};
use mcp_guard::jwt::{AuthError, Authenticator, Issuer};
use serde_json::{json, Value};

const T0: u64 = NOW as u64 * 1000;
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

fn remote_issuer(extra: Value) -> Issuer {
    let mut config = json!({
        "issuer": ISSUER,
        "audiences": [RESOURCE],
        "algorithms": ["ES256", "EdDSA"],
        "discovery": true,
        "cluster": "idp",
        "refresh_seconds": 60,
        "min_refetch_seconds": 30,
        "fetch_timeout_ms": 2000,
    });
    for (k, v) in extra.as_object().expect("object").clone() {
        config[k] = v;
    }
    Issuer::from_config(config, "issuers[0]").expect("valid issuer")
}

/// One worker VM: its own configuration and key manager.
struct Vm {
    auth: Authenticator,
    keys: KeyManager,
    host: MockKeyHost,
}

impl Vm {
    fn new(host: MockKeyHost) -> Vm {
        Vm::with(host, json!({}))
    }

    fn with(host: MockKeyHost, extra: Value) -> Vm {
        let auth = Authenticator::new(vec![remote_issuer(extra)], 60);
        let keys = KeyManager::new(&auth);
        Vm { auth, keys, host }
    }

    fn at(&mut self, now_ms: u64) -> &mut Self {
        self.host.now_ms = now_ms;
        self
    }

    fn tick(&mut self) -> mcp_guard::jwks::Report {
        self.keys.tick(&self.auth, &mut self.host)
    }

    fn respond(&mut self, status: Option<u32>, body: &[u8]) -> mcp_guard::jwks::Report {
        let call = self.host.calls.last().expect("a call in flight").clone();
        self.keys
            .on_response(&self.auth, &mut self.host, call.token, status, Some(body))
    }

    fn issuer(&self) -> &Issuer {
        &self.auth.issuers()[0]
    }

    /// Whether an ES256 token of the test key verifies now.
    fn accepts(&self, signer: Signer) -> Result<(), AuthError> {
        let now = (self.host.now_ms / 1000) as i64;
        let mut claims = claims_for("alice", &[], "");
        claims["exp"] = json!(now + 3600);
        self.auth.verify(&sign(signer, &claims), now).map(|_| ())
    }
}

fn discovery_doc() -> Vec<u8> {
    json!({ "issuer": ISSUER, "jwks_uri": "https://keys.example.com/jwks" })
        .to_string()
        .into_bytes()
}

fn jwks(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

/// Runs the first discovery + JWKS fetch on `vm` at `T0`.
fn bootstrap(vm: &mut Vm) {
    vm.at(T0).tick();
    assert_eq!(vm.host.calls.len(), 1);
    vm.respond(Some(200), &discovery_doc());
    assert_eq!(vm.host.calls.len(), 2);
    let report = vm.respond(Some(200), &jwks(&[p256_public_jwk()]));
    assert_eq!(report.changed, vec![0]);
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Ok)]);
}

#[test]
fn first_tick_fetches_discovery_then_the_jwks() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    assert!(KeyManager::has_remote(&vm.auth));
    assert!(vm.issuer().keys().is_none());
    assert_eq!(
        vm.accepts(Signer::Es256),
        Err(AuthError::NoKeys { issuer: 0 })
    );

    let report = vm.at(T0).tick();
    assert!(report.changed.is_empty());
    assert_eq!(vm.host.calls.len(), 1, "exactly one fetch");
    let call = vm.host.calls[0].clone();
    assert_eq!(call.cluster, "idp");
    assert_eq!(call.authority, "idp.example.com");
    assert_eq!(call.path, DISCOVERY_PATH);
    assert_eq!(call.timeout_ms, 2000);

    // Ticking again while the fetch is in flight starts nothing.
    vm.at(T0 + 100).tick();
    vm.at(T0 + 1500).tick();
    assert_eq!(vm.host.calls.len(), 1);

    // The discovery document names the JWKS URL; it is fetched at once, same cluster.
    let report = vm.respond(Some(200), &discovery_doc());
    assert!(
        report.settled.is_empty(),
        "not settled before the keys arrive"
    );
    assert_eq!(vm.host.calls.len(), 2);
    assert_eq!(vm.host.calls[1].authority, "keys.example.com");
    assert_eq!(vm.host.calls[1].path, "/jwks");
    assert_eq!(vm.host.calls[1].cluster, "idp");

    let report = vm.respond(Some(200), &jwks(&[p256_public_jwk()]));
    assert_eq!(report.changed, vec![0]);
    assert_eq!(report.settled, vec![0]);
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Ok)]);
    assert_eq!(vm.issuer().keys().map(|k| k.len()), Some(1));
    assert_eq!(vm.accepts(Signer::Es256), Ok(()));

    // Nothing more until the refresh is due.
    vm.at(T0 + 10_000).tick();
    assert_eq!(vm.host.calls.len(), 2);
}

#[test]
fn configured_jwks_uri_is_fetched_directly() {
    let extra = json!({ "discovery": false, "jwks_uri": "https://idp.example.com/oauth/keys?v=1" });
    let mut vm = Vm::with(MockKeyHost::new(T0), extra);
    vm.at(T0).tick();
    assert_eq!(vm.host.calls.len(), 1);
    assert_eq!(vm.host.calls[0].path, "/oauth/keys?v=1");
    let report = vm.respond(Some(200), &jwks(&[p256_public_jwk()]));
    assert_eq!(report.changed, vec![0]);
}

#[test]
fn second_vm_waits_for_the_lease_and_adopts_the_published_keys() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    let mut vm2 = Vm::new(vm1.host.sibling());

    vm1.at(T0).tick();
    assert_eq!(vm1.host.calls.len(), 1);
    // VM 2 sees the lease: no second fetch.
    let report = vm2.at(T0 + 10).tick();
    assert!(vm2.host.calls.is_empty(), "{:?}", vm2.host.calls);
    assert!(report.changed.is_empty());
    assert!(vm2.issuer().keys().is_none());

    vm1.respond(Some(200), &discovery_doc());
    vm2.at(T0 + 20).tick();
    assert!(vm2.host.calls.is_empty());
    vm1.respond(Some(200), &jwks(&[p256_public_jwk()]));

    // Next tick: VM 2 adopts VM 1's keys, without fetching.
    let report = vm2.at(T0 + 120).tick();
    assert_eq!(report.changed, vec![0]);
    assert!(vm2.host.calls.is_empty());
    assert_eq!(vm2.accepts(Signer::Es256), Ok(()));
    // And adopts them only once.
    assert!(vm2.at(T0 + 220).tick().changed.is_empty());
}

#[test]
fn two_vms_starting_together_fetch_once_even_when_both_find_no_lease() {
    // VM 2 reads the lease, finds none, and before it creates one VM 1 creates and takes it:
    // VM 2's creation must not undo VM 1's take (an unconditional write did: two fetches).
    let vm1 = std::rc::Rc::new(std::cell::RefCell::new(Vm::new(MockKeyHost::new(T0))));
    let mut vm2 = Vm::new(vm1.borrow().host.sibling());
    let first = std::rc::Rc::clone(&vm1);
    let step = move || {
        first.borrow_mut().at(T0).tick();
    };
    vm2.host.store.borrow_mut().on_missing = Some(("mcp-guard:lease:", Box::new(step)));
    vm2.at(T0).tick();
    assert_eq!(vm1.borrow().host.calls.len(), 1, "VM 1 fetches");
    assert!(vm2.host.calls.is_empty(), "{:?}", vm2.host.calls);
    assert!(
        vm2.host.store.borrow().on_missing.is_none(),
        "the interleaving ran"
    );
}

#[test]
fn a_late_answer_leaves_alone_the_lease_another_vm_took_meanwhile() {
    // VM 1's fetch outlives its lease. As VM 1 reads the lease to end its fetch, VM 2 takes
    // the expired lease for its own; VM 1's write then fails, and it must not end VM 2's
    // fetch (an unconditional retry did: a third VM fetched while VM 2's was in flight).
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    vm1.at(T0).tick();
    assert_eq!(vm1.host.calls.len(), 1);
    let vm2 = std::rc::Rc::new(std::cell::RefCell::new(Vm::new(vm1.host.sibling())));
    let second = std::rc::Rc::clone(&vm2);
    let step = move || {
        second.borrow_mut().at(T0 + 3_500).tick();
    };
    vm1.host.store.borrow_mut().on_present = Some(("mcp-guard:lease:", Box::new(step)));
    vm1.at(T0 + 3_500).respond(Some(500), b"");
    assert!(
        vm1.host.store.borrow().on_present.is_none(),
        "the interleaving ran"
    );
    assert_eq!(
        vm2.borrow().host.calls.len(),
        1,
        "VM 2 took the expired lease"
    );
    let mut vm3 = Vm::new(vm1.host.sibling());
    vm3.at(T0 + 3_600).tick();
    assert!(vm3.host.calls.is_empty(), "{:?}", vm3.host.calls);
}

#[test]
fn a_third_vm_started_later_adopts_without_fetching() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    bootstrap(&mut vm1);
    let mut vm3 = Vm::new(vm1.host.sibling());
    let report = vm3.at(T0 + 5_000).tick();
    assert_eq!(report.changed, vec![0]);
    assert!(vm3.host.calls.is_empty());
    assert_eq!(vm3.accepts(Signer::Es256), Ok(()));
}

#[test]
fn an_abandoned_lease_expires_and_another_vm_fetches() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    let mut vm2 = Vm::new(vm1.host.sibling());
    vm1.at(T0).tick();
    // VM 1 never gets an answer. The lease lasts the timeout plus a second.
    vm2.at(T0 + 2_999).tick();
    assert!(vm2.host.calls.is_empty());
    vm2.at(T0 + 3_000).tick();
    assert_eq!(vm2.host.calls.len(), 1);
}

#[test]
fn keys_are_refreshed_after_refresh_seconds_by_one_vm() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    bootstrap(&mut vm1);
    let mut vm2 = Vm::new(vm1.host.sibling());
    vm2.at(T0 + 1_000).tick();

    vm1.at(T0 + 59_000).tick();
    vm2.at(T0 + 59_000).tick();
    assert_eq!(vm1.host.calls.len(), 2);
    assert!(vm2.host.calls.is_empty());

    vm1.at(T0 + 60_000).tick();
    vm2.at(T0 + 60_000).tick();
    assert_eq!(vm1.host.calls.len(), 3, "refresh is due");
    assert!(vm2.host.calls.is_empty(), "one VM refreshes for all");
    // The JWKS URL found by discovery is reused: no second discovery.
    assert_eq!(vm1.host.calls[2].path, "/jwks");
    assert_eq!(vm1.host.calls[2].authority, "keys.example.com");

    // Rotated keys reach both VMs.
    let report = vm1.respond(Some(200), &jwks(&[ed25519_public_jwk()]));
    assert_eq!(report.changed, vec![0]);
    assert_eq!(vm1.accepts(Signer::EdDsa), Ok(()));
    assert_eq!(
        vm1.accepts(Signer::Es256),
        Err(AuthError::UnknownKey { issuer: 0 })
    );
    assert_eq!(vm2.at(T0 + 60_100).tick().changed, vec![0]);
    assert_eq!(vm2.accepts(Signer::EdDsa), Ok(()));

    // Adopted keys carry their fetch time: VM 2 does not refresh early either.
    vm2.at(T0 + 100_000).tick();
    assert!(vm2.host.calls.is_empty());
}

#[test]
fn unknown_kid_refetch_is_honoured_at_most_once_per_interval() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    bootstrap(&mut vm);
    let calls = vm.host.calls.len();

    // Right after a fetch: refused, and nothing is fetched.
    assert!(!vm.issuer().request_refetch(T0 + 1_000));
    vm.at(T0 + 1_000).tick();
    assert_eq!(vm.host.calls.len(), calls);

    // Once the interval passed: honoured, one fetch.
    assert!(vm.issuer().request_refetch(T0 + 30_000));
    vm.at(T0 + 30_000).tick();
    assert_eq!(vm.host.calls.len(), calls + 1);
    assert_eq!(vm.host.calls[calls].path, "/jwks");
    // Further unknown kids within the interval are not.
    assert!(!vm.issuer().request_refetch(T0 + 30_500));
    vm.respond(Some(200), &jwks(&[p256_public_jwk()]));
    assert!(!vm.issuer().request_refetch(T0 + 45_000));
    vm.at(T0 + 45_000).tick();
    assert_eq!(vm.host.calls.len(), calls + 1);
    assert!(vm.issuer().request_refetch(T0 + 60_000));
}

#[test]
fn unknown_kid_refetch_interval_is_shared_across_vms() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    bootstrap(&mut vm1);
    let mut vm2 = Vm::new(vm1.host.sibling());
    vm2.at(T0 + 100).tick();

    assert!(vm1.issuer().request_refetch(T0 + 40_000));
    vm1.at(T0 + 40_000).tick();
    assert_eq!(vm1.host.calls.len(), 3);
    // VM 2 learns of the attempt on its next tick and refuses its own re-fetch.
    vm2.at(T0 + 40_100).tick();
    assert!(!vm2.issuer().request_refetch(T0 + 40_200));
    vm2.at(T0 + 40_200).tick();
    assert!(vm2.host.calls.is_empty());
}

#[test]
fn failed_fetches_keep_the_last_good_keys_and_back_off() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    bootstrap(&mut vm);

    // Refresh fails with HTTP 500.
    vm.at(T0 + 60_000).tick();
    assert_eq!(vm.host.calls.len(), 3);
    let report = vm.respond(Some(500), b"oops");
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::HttpError)]);
    assert_eq!(report.settled, vec![0]);
    assert!(report.changed.is_empty());
    assert_eq!(vm.accepts(Signer::Es256), Ok(()), "last good keys stay");

    // Back-off: not again at once.
    vm.at(T0 + 60_500).tick();
    assert_eq!(vm.host.calls.len(), 3);
    vm.at(T0 + 61_000).tick();
    assert_eq!(vm.host.calls.len(), 4);

    // Garbage: still the last good keys, longer back-off.
    let report = vm.respond(Some(200), b"<html>not json</html>");
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Invalid)]);
    assert_eq!(vm.accepts(Signer::Es256), Ok(()));
    vm.at(T0 + 62_500).tick();
    assert_eq!(vm.host.calls.len(), 4);
    vm.at(T0 + 63_000).tick();
    assert_eq!(vm.host.calls.len(), 5);

    // A JWKS with no usable key (symmetric only) is garbage too.
    let report = vm.respond(
        Some(200),
        &jwks(&[json!({ "kty": "oct", "k": "c2VjcmV0" })]),
    );
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Invalid)]);
    assert_eq!(vm.accepts(Signer::Es256), Ok(()));

    // No answer at all.
    vm.at(T0 + 70_000).tick();
    assert_eq!(vm.host.calls.len(), 6);
    let call = vm.host.calls[5].clone();
    let report = vm
        .keys
        .on_response(&vm.auth, &mut vm.host, call.token, None, None);
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Unreachable)]);
    assert_eq!(vm.accepts(Signer::Es256), Ok(()));

    // The back-off is capped, and a good answer resets it.
    vm.at(T0 + 200_000).tick();
    assert_eq!(vm.host.calls.len(), 7);
    let report = vm.respond(Some(200), &jwks(&[p256_public_jwk(), ed25519_public_jwk()]));
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Ok)]);
    vm.at(T0 + 200_100).tick();
    assert_eq!(vm.host.calls.len(), 7);
    vm.at(T0 + 260_000).tick();
    assert_eq!(
        vm.host.calls.len(),
        8,
        "back on the normal refresh schedule"
    );
}

#[test]
fn keys_no_fetch_could_renew_for_max_stale_seconds_are_no_longer_used() {
    // A replica that cannot reach its IdP must not go on trusting a key the IdP withdrew (a
    // compromised one) while every replica that can fetch refuses it.
    let mut vm = Vm::with(MockKeyHost::new(T0), json!({ "max_stale_seconds": 300 }));
    bootstrap(&mut vm);
    let mut t = T0;
    while t < T0 + 300_000 {
        t += 60_000;
        vm.at(t).tick();
        if let Some(call) = vm.host.calls.last().cloned() {
            vm.keys
                .on_response(&vm.auth, &mut vm.host, call.token, Some(503), Some(b""));
        }
        assert_eq!(vm.accepts(Signer::Es256), Ok(()), "kept within the bound");
    }
    let report = vm.at(T0 + 300_001).tick();
    assert!(report.changed.contains(&0));
    assert!(vm.issuer().keys().is_none());
    assert_eq!(
        vm.accepts(Signer::Es256),
        Err(AuthError::NoKeys { issuer: 0 }),
        "refused (503), as before the first fetch"
    );
    // Another VM of this Envoy does not adopt the stale copy either.
    let mut sibling = Vm::with(vm.host.sibling(), json!({ "max_stale_seconds": 300 }));
    sibling.at(T0 + 300_002).tick();
    assert!(sibling.issuer().keys().is_none());
    // A fetch that succeeds brings them back.
    let calls = vm.host.calls.len();
    vm.at(T0 + 400_000).tick();
    assert_eq!(
        vm.host.calls.len(),
        calls + 1,
        "retried without waiting a refresh"
    );
    let report = vm.respond(Some(200), &jwks(&[p256_public_jwk()]));
    assert_eq!(report.changed, vec![0]);
    assert_eq!(vm.accepts(Signer::Es256), Ok(()));
}

#[test]
fn max_stale_seconds_defaults_to_a_day_and_must_outlast_two_refreshes() {
    let issuer = remote_issuer(json!({}));
    assert_eq!(issuer.remote().unwrap().max_stale_ms, 86_400_000);
    let error = Issuer::from_config(
        json!({
            "issuer": ISSUER, "audiences": [RESOURCE], "discovery": true, "cluster": "idp",
            "refresh_seconds": 60, "max_stale_seconds": 100,
        }),
        "issuers[0]",
    )
    .unwrap_err();
    assert_eq!(error.field, "issuers[0].max_stale_seconds");
    assert!(error.message.contains("twice refresh_seconds"), "{error}");
    let error = Issuer::from_config(
        json!({
            "issuer": ISSUER, "audiences": [RESOURCE], "jwks": { "keys": [p256_public_jwk()] },
            "max_stale_seconds": 3600,
        }),
        "issuers[0]",
    )
    .unwrap_err();
    assert_eq!(error.field, "issuers[0].max_stale_seconds");
}

#[test]
fn the_back_off_is_shared_with_other_vms() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    bootstrap(&mut vm1);
    let mut vm2 = Vm::new(vm1.host.sibling());
    vm2.at(T0 + 100).tick();
    vm1.at(T0 + 60_000).tick();
    vm1.respond(Some(503), b"");
    // VM 2 must not hammer the IdP right after VM 1's failure.
    vm2.at(T0 + 60_100).tick();
    assert!(vm2.host.calls.is_empty());
}

#[test]
fn first_fetch_failure_retries_with_back_off() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    vm.at(T0).tick();
    let report = vm.respond(Some(404), b"");
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::HttpError)]);
    assert_eq!(report.settled, vec![0]);
    assert!(vm.issuer().keys().is_none());
    vm.at(T0 + 400).tick();
    assert_eq!(vm.host.calls.len(), 1);
    vm.at(T0 + 1_000).tick();
    assert_eq!(vm.host.calls.len(), 2, "retried after the back-off");
    assert_eq!(vm.host.calls[1].path, DISCOVERY_PATH);
}

#[test]
fn discovery_naming_another_issuer_is_refused() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    vm.at(T0).tick();
    let doc = json!({ "issuer": "https://evil.example.com", "jwks_uri": "https://evil.example.com/jwks" });
    let report = vm.respond(Some(200), doc.to_string().as_bytes());
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Invalid)]);
    assert_eq!(
        vm.host.calls.len(),
        1,
        "the other issuer's keys are never fetched"
    );
    let doc = json!({ "issuer": ISSUER });
    vm.at(T0 + 5_000).tick();
    let report = vm.respond(Some(200), doc.to_string().as_bytes());
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Invalid)]);
}

#[test]
fn oversized_document_is_refused() {
    let mut vm = Vm::with(
        MockKeyHost::new(T0),
        json!({ "discovery": false, "jwks_uri": "https://idp.example.com/jwks" }),
    );
    vm.at(T0).tick();
    let mut keys = vec![p256_public_jwk()];
    let pad = json!({ "kty": "EC", "crv": "P-999", "x": "a".repeat(MAX_DOCUMENT_BYTES) });
    keys.push(pad);
    let report = vm.respond(Some(200), &jwks(&keys));
    assert_ne!(report.outcomes, vec![(0, FetchOutcome::Ok)]);
    assert!(vm.issuer().keys().is_none());
}

#[test]
fn dispatch_failure_is_reported_unreachable() {
    let mut host = MockKeyHost::new(T0);
    host.dispatch_ok = false;
    let mut vm = Vm::new(host);
    let report = vm.at(T0).tick();
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Unreachable)]);
    assert_eq!(report.settled, vec![0]);
    // It is retried later, with back-off, once the cluster exists.
    vm.host.dispatch_ok = true;
    vm.at(T0 + 100).tick();
    assert!(vm.host.calls.is_empty());
    vm.at(T0 + 1_000).tick();
    assert_eq!(vm.host.calls.len(), 1);
}

#[test]
fn response_to_an_unknown_call_is_ignored() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    let report = vm.keys.on_response(
        &vm.auth,
        &mut vm.host,
        424242,
        Some(200),
        Some(&jwks(&[p256_public_jwk()])),
    );
    assert_eq!(report, Default::default());
    assert!(vm.issuer().keys().is_none());
}

#[test]
fn inline_issuers_need_no_key_manager() {
    let inline = Issuer::from_config(
        json!({ "issuer": ISSUER, "audiences": [RESOURCE], "jwks": jwks_all() }),
        "issuers[0]",
    )
    .expect("valid");
    assert!(!inline.request_refetch(T0));
    let auth = Authenticator::new(vec![inline], 60);
    assert!(!KeyManager::has_remote(&auth));
}

#[test]
fn the_lease_covers_the_jwks_fetch_that_follows_discovery() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    let mut vm2 = Vm::new(vm1.host.sibling());
    vm1.at(T0).tick();
    // Discovery answers slowly (within its 2 s timeout); the JWKS fetch starts right away and
    // has its own 2 s.
    vm1.at(T0 + 1_900).respond(Some(200), &discovery_doc());
    assert_eq!(vm1.host.calls.len(), 2);
    // While VM 1's JWKS fetch may still be in flight, no other VM starts a second one.
    vm2.at(T0 + 3_500).tick();
    assert!(vm2.host.calls.is_empty(), "{:?}", vm2.host.calls);
}

/// A configuration that names the same issuer but takes its keys from elsewhere (another
/// configuration in the same VM, or this one after an update) does not adopt the keys the
/// first one published: shared documents are kept by issuer and source.
#[test]
fn keys_from_another_source_are_not_adopted() {
    let mut vm1 = Vm::new(MockKeyHost::new(T0));
    bootstrap(&mut vm1);
    let mut other = Vm::with(
        vm1.host.sibling(),
        json!({ "discovery": false, "jwks_uri": "https://keys.elsewhere.example/jwks" }),
    );
    let report = other.at(T0 + 5_000).tick();
    assert!(report.changed.is_empty(), "adopted another source's keys");
    assert_eq!(
        other.accepts(Signer::Es256),
        Err(AuthError::NoKeys { issuer: 0 })
    );
    let asked: Vec<&str> = other
        .host
        .calls
        .iter()
        .map(|c| c.authority.as_str())
        .collect();
    assert_eq!(asked, vec!["keys.elsewhere.example"], "it fetches its own");
    // The same source is adopted as before.
    let mut same = Vm::new(vm1.host.sibling());
    assert_eq!(same.at(T0 + 5_000).tick().changed, vec![0]);
    assert!(same.host.calls.is_empty());
}

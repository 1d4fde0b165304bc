//! Revocation feeds: inline or fetched once for every worker VM, refreshed, the last good copy
//! kept while the source fails, and a listed token refused on its next use (cached or not).

mod common;

use common::*;
use mcp_guard::feeds::FeedManager;
use mcp_guard::jwks::FetchOutcome;
use mcp_guard::jwt::{AuthError, Authenticator, Issuer};
use mcp_guard::revocation::Revoked;
use serde_json::{json, Value};

const T0: u64 = NOW as u64 * 1000;

fn issuer(revocation: Value) -> Issuer {
    Issuer::from_config(
        json!({
            "issuer": ISSUER,
            "audiences": [RESOURCE],
            "algorithms": ["ES256"],
            "jwks": { "keys": [p256_public_jwk()] },
            "revocation": revocation,
        }),
        "issuers[0]",
    )
    .expect("valid issuer")
}

struct Vm {
    auth: Authenticator,
    feeds: FeedManager,
    host: MockKeyHost,
}

impl Vm {
    fn new(host: MockKeyHost) -> Vm {
        let auth = Authenticator::new(
            vec![issuer(json!({
                "uri": "https://feeds.example.com/revoked.json",
                "cluster": "feeds",
                "refresh_seconds": 5,
                "fetch_timeout_ms": 1000,
                "max_bytes": 200,
            }))],
            60,
        );
        let feeds = FeedManager::new(&auth);
        Vm { auth, feeds, host }
    }

    fn tick_at(&mut self, now_ms: u64) -> mcp_guard::jwks::Report {
        self.host.now_ms = now_ms;
        self.feeds.tick(&self.auth, &mut self.host)
    }

    fn respond(&mut self, status: Option<u32>, body: &[u8]) -> mcp_guard::jwks::Report {
        let call = self.host.calls.last().expect("a call in flight").clone();
        assert!(self.feeds.owns(call.token));
        self.feeds
            .on_response(&self.auth, &mut self.host, call.token, status, Some(body))
    }

    fn verify(&self, token: &str) -> Result<(), AuthError> {
        self.auth.verify(token, NOW).map(|_| ())
    }
}

fn feed(doc: Value) -> Vec<u8> {
    doc.to_string().into_bytes()
}

fn alice_with(jti: &str, iat: i64) -> String {
    let mut claims = claims_for("alice", &[], "");
    claims["jti"] = json!(jti);
    claims["iat"] = json!(iat);
    sign(Signer::Es256, &claims)
}

#[test]
fn inline_feed_refuses_listed_ids_and_subjects() {
    let auth = Authenticator::new(
        vec![issuer(json!({"inline": {
            "revoked_jti": ["stolen"],
            "not_before": { "alice": NOW - 5 },
        }}))],
        60,
    );
    let verify = |t: &str| auth.verify(t, NOW).map(|_| ());
    assert_eq!(
        verify(&alice_with("stolen", NOW)),
        Err(AuthError::Revoked(Revoked::Jti))
    );
    let older = alice_with("j1", NOW - 6);
    assert_eq!(verify(&older), Err(AuthError::Revoked(Revoked::NotBefore)));
    assert_eq!(
        AuthError::Revoked(Revoked::NotBefore).reason(),
        "token_revoked"
    );
    assert_eq!(verify(&alice_with("j2", NOW - 5)), Ok(()));
    assert_eq!(verify(&token_for("bob", &[], "")), Ok(()));
}

#[test]
fn one_fetch_serves_every_vm_and_a_refresh_revokes_a_cached_token() {
    let mut a = Vm::new(MockKeyHost::new(T0));
    let mut b = Vm::new(a.host.sibling());
    let token = alice_with("j1", NOW - 10);
    assert_eq!(
        a.verify(&token),
        Err(AuthError::NoRevocations { issuer: 0 })
    );

    a.tick_at(T0);
    b.tick_at(T0);
    assert_eq!(a.host.calls.len() + b.host.calls.len(), 1, "one fetch");
    let call = a.host.calls[0].clone();
    assert_eq!(call.cluster, "feeds");
    assert_eq!(call.authority, "feeds.example.com");
    assert_eq!(call.path, "/revoked.json");
    let report = a.respond(Some(200), &feed(json!({"revoked_jti": []})));
    assert_eq!(report.changed, vec![0]);
    assert_eq!(report.outcomes, vec![(0, FetchOutcome::Ok)]);
    assert_eq!(a.verify(&token), Ok(()));
    // The other VM adopts the published copy on its next tick, without fetching.
    assert_eq!(b.tick_at(T0 + 100).changed, vec![0]);
    assert!(b.host.calls.is_empty());
    assert_eq!(b.verify(&token), Ok(()));
    assert_eq!(b.verify(&token), Ok(()), "now cached");

    // Not due before refresh_seconds.
    a.tick_at(T0 + 4_000);
    b.tick_at(T0 + 4_000);
    assert_eq!(a.host.calls.len() + b.host.calls.len(), 1);
    // Due: one VM fetches the new feed marking alice; both refuse her cached token.
    a.tick_at(T0 + 5_100);
    b.tick_at(T0 + 5_100);
    assert_eq!(a.host.calls.len() + b.host.calls.len(), 2);
    let fetcher = if a.host.calls.len() == 2 {
        &mut a
    } else {
        &mut b
    };
    fetcher.respond(
        Some(200),
        &feed(json!({"issuer": ISSUER, "not_before": {"alice": NOW}})),
    );
    a.tick_at(T0 + 5_200);
    b.tick_at(T0 + 5_200);
    for vm in [&a, &b] {
        assert_eq!(
            vm.verify(&token),
            Err(AuthError::Revoked(Revoked::NotBefore))
        );
        assert_eq!(vm.verify(&token_for("bob", &[], "")), Ok(()));
    }
}

#[test]
fn failures_keep_the_last_good_copy() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    vm.tick_at(T0);
    vm.respond(Some(200), &feed(json!({"revoked_jti": ["gone"]})));
    let gone = alice_with("gone", NOW);
    assert_eq!(vm.verify(&gone), Err(AuthError::Revoked(Revoked::Jti)));

    let mut at = T0;
    for (status, body, outcome) in [
        (Some(503), feed(json!({})), FetchOutcome::HttpError),
        (None, Vec::new(), FetchOutcome::Unreachable),
        (Some(200), b"{not json".to_vec(), FetchOutcome::Invalid),
        (
            Some(200),
            feed(json!({"revoked": []})),
            FetchOutcome::Invalid,
        ),
        (
            Some(200),
            feed(json!({"issuer": "https://other.example.com"})),
            FetchOutcome::Invalid,
        ),
        // Larger than max_bytes (200).
        (
            Some(200),
            feed(json!({"revoked_jti": vec!["x".repeat(30); 10]})),
            FetchOutcome::Invalid,
        ),
    ] {
        at += 40_000; // past refresh and any back-off (30 s), within max_stale_seconds (300)
        vm.tick_at(at);
        let report = vm.respond(status, &body);
        assert_eq!(report.outcomes, vec![(0, outcome)]);
        assert!(report.changed.is_empty());
        assert_eq!(vm.verify(&gone), Err(AuthError::Revoked(Revoked::Jti)));
        assert_eq!(vm.verify(&alice_with("fine", NOW)), Ok(()));
    }
}

/// A replica whose fetches keep failing does not go on checking tokens against an old copy
/// forever: another replica that can fetch already refuses what the source lists now, and a
/// client retrying until it reaches this one would get through. Past `max_stale_seconds` (default
/// ten refresh intervals, at least 300 s) the copy is dropped and requests are refused (503) as
/// before the first copy, until a fetch succeeds again.
#[test]
fn a_copy_older_than_max_stale_seconds_is_not_used() {
    let mut vm = Vm::new(MockKeyHost::new(T0));
    vm.tick_at(T0);
    vm.respond(Some(200), &feed(json!({"revoked_jti": ["gone"]})));
    assert_eq!(vm.verify(&alice_with("fine", NOW)), Ok(()));

    // Every fetch fails from now on; within 300 s the last good copy is used.
    let mut at = T0;
    while at + 40_000 <= T0 + 300_000 {
        at += 40_000;
        vm.tick_at(at);
        vm.respond(Some(503), b"down");
        assert_eq!(vm.verify(&alice_with("fine", NOW)), Ok(()));
        assert_eq!(
            vm.verify(&alice_with("gone", NOW)),
            Err(AuthError::Revoked(Revoked::Jti))
        );
    }
    // Past it: no copy, so no token is taken as unrevoked.
    vm.tick_at(T0 + 300_001);
    assert!(matches!(
        vm.verify(&alice_with("fine", NOW)),
        Err(AuthError::NoRevocations { .. })
    ));
    // A fetch that succeeds brings the feed back.
    vm.tick_at(T0 + 340_000);
    let report = vm.respond(Some(200), &feed(json!({"revoked_jti": ["gone"]})));
    assert_eq!(report.changed, vec![0]);
    assert_eq!(vm.verify(&alice_with("fine", NOW)), Ok(()));
    assert_eq!(
        vm.verify(&alice_with("gone", NOW)),
        Err(AuthError::Revoked(Revoked::Jti))
    );
}

/// Another VM of the Envoy (or this one after a configuration update) adopting the shared copy
/// goes by when it was fetched, not when it was adopted.
#[test]
fn an_adopted_copy_is_as_old_as_its_fetch() {
    let mut first = Vm::new(MockKeyHost::new(T0));
    first.tick_at(T0);
    first.respond(Some(200), &feed(json!({"revoked_jti": ["gone"]})));
    let mut second = Vm::new(first.host.sibling());
    second.tick_at(T0 + 1_000);
    assert_eq!(second.verify(&alice_with("fine", NOW)), Ok(()));
    second.tick_at(T0 + 300_001);
    assert!(matches!(
        second.verify(&alice_with("fine", NOW)),
        Err(AuthError::NoRevocations { .. })
    ));
}

#[test]
fn config_errors_name_the_field() {
    let err = Issuer::from_config(
        json!({
            "issuer": ISSUER, "audiences": [RESOURCE],
            "jwks": { "keys": [p256_public_jwk()] },
            "revocation": { "uri": "https://feeds.example.com/r" },
        }),
        "issuers[0]",
    )
    .unwrap_err();
    assert_eq!(err.field, "issuers[0].revocation.cluster");
    let err = Issuer::from_config(
        json!({
            "issuer": ISSUER, "audiences": [RESOURCE],
            "jwks": { "keys": [p256_public_jwk()] },
            "revocation": { "inline": { "not_before": { "alice": "yesterday" } } },
        }),
        "issuers[0]",
    )
    .unwrap_err();
    assert_eq!(err.field, "issuers[0].revocation.inline");
    let err = Issuer::from_config(
        json!({
            "issuer": ISSUER, "audiences": [RESOURCE],
            "jwks": { "keys": [p256_public_jwk()] },
            "revocation": { "uri": "https://feeds.example.com/r", "cluster": "feeds",
                            "refresh_seconds": 30, "max_stale_seconds": 59 },
        }),
        "issuers[0]",
    )
    .unwrap_err();
    assert_eq!(err.field, "issuers[0].revocation.max_stale_seconds");
}

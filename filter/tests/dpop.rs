//! Sender-constrained tokens through the request path: DPoP (RFC 9449) proofs checked against
//! `cnf.jkt` (method, URL, age, token hash, replay across VMs), mTLS-bound tokens against the
//! client certificate Envoy saw (RFC 8705), and the challenge a refused caller gets.

mod common;

use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use mcp_guard::config::Config;
use mcp_guard::dpop::thumbprint;
use mcp_guard::flow::{Action, Stream};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const URL: &str = "https://mcp.example.com/mcp";

fn config(require_dpop: bool) -> Rc<Config> {
    let value = json!({
        "issuers": [{
            "issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["ES256"],
            "jwks": { "keys": [p256_public_jwk()] },
        }],
        "dpop": { "algorithms": ["ES256"], "max_age_seconds": 60 },
        "servers": [{
            "name": "crm", "resource": RESOURCE, "require_dpop": require_dpop,
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": { "name": "p", "default": "allow" },
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    Rc::new(Config::from_json(value.to_string().as_bytes(), &MapEnv::default()).unwrap())
}

/// The client's DPoP key (the "other" P-256 key) and its thumbprint.
fn client_jwk() -> Value {
    let mut jwk = p256_jwk_of(&p256_other_key(), "client");
    let obj = jwk.as_object_mut().unwrap();
    obj.remove("kid");
    obj.remove("use");
    jwk
}

fn jkt() -> String {
    thumbprint(client_jwk().as_object().unwrap()).unwrap()
}

fn bound_token(cnf: Value) -> String {
    let mut claims = claims_for("alice", &[], "");
    claims["cnf"] = cnf;
    sign(Signer::Es256, &claims)
}

fn proof(token: &str, htm: &str, htu: &str, iat: i64, jti: &str) -> String {
    let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": client_jwk() });
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
    let claims = json!({ "htm": htm, "htu": htu, "iat": iat, "jti": jti, "ath": ath });
    sign_with_header(Signer::Es256Other, &header, &claims)
}

fn request(scheme: &str, token: &str, proof: Option<&str>, shared: &Shared) -> MockHost {
    let auth = format!("{scheme} {token}");
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/mcp?x=1"),
        (":authority", "internal.example:8080"),
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    if let Some(p) = proof {
        headers.push(("dpop", p));
    }
    MockHost::request(&headers).with_shared(shared)
}

/// Runs the request headers: `Ok(())` when accepted (waiting for the body), else the reply.
fn run(config: &Rc<Config>, host: &mut MockHost) -> Result<(), (u32, Value, Vec<String>)> {
    let mut stream = Stream::new(Rc::clone(config));
    assert_eq!(stream.on_request_headers(host, false), Action::Pause);
    if stream.awaiting_body() {
        return Ok(());
    }
    let reply = host.reply().clone();
    let challenges = reply
        .headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .collect();
    Err((reply.status, reply.json(), challenges))
}

#[test]
fn a_fresh_proof_is_accepted_once() {
    let config = config(false);
    let shared = Shared::default();
    let token = bound_token(json!({ "jkt": jkt() }));
    let p = proof(&token, "POST", URL, NOW, "proof-1");
    assert_eq!(
        run(&config, &mut request("DPoP", &token, Some(&p), &shared)),
        Ok(())
    );

    // The same proof again (another worker VM shares the data): a replay.
    let (status, body, challenges) =
        run(&config, &mut request("DPoP", &token, Some(&p), &shared)).unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_dpop_proof");
    assert_eq!(body["error_description"], "the proof was used before (jti)");
    assert_eq!(
        challenges[0],
        "DPoP error=\"invalid_dpop_proof\", algs=\"ES256\""
    );
    assert!(challenges[1].starts_with("Bearer error=\"invalid_token\""));
}

#[test]
fn one_proof_sent_to_two_workers_at_once_is_accepted_by_one() {
    // The second worker reads the proof's slot and finds it empty; before it writes, the first
    // worker records the same proof there. The second's write must fail and its retry see the
    // proof (an unconditional write of a slot found empty let both requests through).
    let config = config(false);
    let shared = Shared::default();
    // A slot key drawn long ago: no slot of a version before it is read, only the proof's own.
    seed_drawn(&shared, 3600);
    let token = bound_token(json!({ "jkt": jkt() }));
    let p = proof(&token, "POST", URL, NOW, "proof-raced");
    let first = Rc::new(std::cell::RefCell::new(None));
    let (cfg, tok, pr, sh, out) = (
        Rc::clone(&config),
        token.clone(),
        p.clone(),
        Rc::clone(&shared),
        Rc::clone(&first),
    );
    let step = move || {
        *out.borrow_mut() = Some(run(&cfg, &mut request("DPoP", &tok, Some(&pr), &sh)));
    };
    shared.borrow_mut().on_missing = Some(("mcp-guard:dpop-jti:", Box::new(step)));
    let second = run(&config, &mut request("DPoP", &token, Some(&p), &shared));
    assert_eq!(
        first.borrow().clone(),
        Some(Ok(())),
        "the interleaved worker ran first"
    );
    let (status, body, _) = second.unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(body["error_description"], "the proof was used before (jti)");
}

#[test]
fn wrong_proofs_are_refused() {
    let config = config(false);
    let token = bound_token(json!({ "jkt": jkt() }));
    let other = bound_token(json!({ "jkt": jkt(), "jti": "other" }));
    for (p, why) in [
        (proof(&token, "GET", URL, NOW, "a"), "another HTTP method"),
        (
            proof(&token, "POST", "https://mcp.example.com/other", NOW, "b"),
            "another URL",
        ),
        (
            proof(&token, "POST", URL, NOW - 200, "c"),
            "outside the accepted window",
        ),
        (
            proof(&token, "POST", URL, NOW + 100, "d"),
            "outside the accepted window",
        ),
        (proof(&other, "POST", URL, NOW, "e"), "ath"),
        ("not.a.proof".to_string(), "not base64url"),
    ] {
        let shared = Shared::default();
        let (status, body, _) =
            run(&config, &mut request("DPoP", &token, Some(&p), &shared)).unwrap_err();
        assert_eq!(status, 401, "{why}");
        assert_eq!(body["error"], "invalid_dpop_proof");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(why), "{description} / {why}");
    }
    // Signed by another key than the one the token is bound to.
    let shared = Shared::default();
    let stranger = bound_token(json!({ "jkt": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs" }));
    let p = proof(&stranger, "POST", URL, NOW, "f");
    let (_, body, _) =
        run(&config, &mut request("DPoP", &stranger, Some(&p), &shared)).unwrap_err();
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("not the one the token is bound to"));
}

#[test]
fn a_bound_token_without_its_proof_is_refused() {
    let config = config(false);
    let shared = Shared::default();
    let token = bound_token(json!({ "jkt": jkt() }));
    let (status, body, _) = run(&config, &mut request("DPoP", &token, None, &shared)).unwrap_err();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_dpop_proof"))
    );
    // Presented as a plain bearer token (stolen and replayed without the key).
    let p = proof(&token, "POST", URL, NOW, "g");
    let (status, body, _) =
        run(&config, &mut request("Bearer", &token, Some(&p), &shared)).unwrap_err();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
    let mut host = request("Bearer", &token, None, &shared);
    run(&config, &mut host).unwrap_err();
    assert_eq!(host.record()["reason"], "dpop_required");
    // An unknown confirmation method.
    let odd = bound_token(json!({ "x5t": "abc" }));
    assert!(run(&config, &mut request("Bearer", &odd, None, &shared)).is_err());
    // An unbound token under the DPoP scheme.
    let plain = token_for("alice", &[], "");
    let p = proof(&plain, "POST", URL, NOW, "h");
    assert!(run(&config, &mut request("DPoP", &plain, Some(&p), &shared)).is_err());
    assert_eq!(
        run(&config, &mut request("Bearer", &plain, None, &shared)),
        Ok(())
    );
}

#[test]
fn require_dpop_refuses_bearer_tokens_and_is_advertised() {
    let config = config(true);
    let shared = Shared::default();
    let plain = token_for("alice", &[], "");
    let (status, _, challenges) =
        run(&config, &mut request("Bearer", &plain, None, &shared)).unwrap_err();
    assert_eq!(status, 401);
    assert!(challenges[0].starts_with("DPoP "));
    let mut host = MockHost::request(&[
        (":method", "GET"),
        (":path", "/.well-known/oauth-protected-resource/mcp"),
        (":authority", "mcp.example.com"),
    ]);
    Stream::new(Rc::clone(&config)).on_request_headers(&mut host, true);
    assert_eq!(
        host.reply().json()["dpop_bound_access_tokens_required"],
        true
    );
}

#[test]
fn an_mtls_bound_token_needs_its_certificate() {
    let config = config(false);
    let shared = Shared::default();
    let digest = [0x5a_u8; 32];
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let token = bound_token(json!({ "x5t#S256": URL_SAFE_NO_PAD.encode(digest) }));

    let mut host = request("Bearer", &token, None, &shared);
    host.set_property(&["connection", "sha256_peer_certificate_digest"], &hex);
    assert_eq!(run(&config, &mut host), Ok(()));

    let mut host = request("Bearer", &token, None, &shared);
    host.set_property(
        &["connection", "sha256_peer_certificate_digest"],
        &"00".repeat(32),
    );
    let (status, body, _) = run(&config, &mut host).unwrap_err();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
    assert_eq!(host.record()["reason"], "certificate_mismatch");

    let (status, _, _) = run(&config, &mut request("Bearer", &token, None, &shared)).unwrap_err();
    assert_eq!(status, 401);
}

#[test]
fn a_remembered_proof_header_does_not_vouch_for_the_next_signature() {
    // A client's proofs repeat one header (typ, alg, jwk), read once per VM: every proof's
    // signature is still checked against that header's key.
    let config = config(false);
    let shared = Shared::default();
    let token = bound_token(json!({ "jkt": jkt() }));
    let good = proof(&token, "POST", URL, NOW, "g-1");
    assert_eq!(
        run(&config, &mut request("DPoP", &token, Some(&good), &shared)),
        Ok(())
    );
    let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": client_jwk() });
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
    let claims = json!({ "htm": "POST", "htu": URL, "iat": NOW, "jti": "g-2", "ath": ath });
    // The same header, signed by a key that is not the header's.
    let forged = sign_with_header(Signer::Es256, &header, &claims);
    assert_eq!(
        good.split('.').next(),
        forged.split('.').next(),
        "one header text"
    );
    let (status, body, _) = run(
        &config,
        &mut request("DPoP", &token, Some(&forged), &shared),
    )
    .unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        "the proof's signature does not verify"
    );
    // The good key's next proof still passes.
    let next = proof(&token, "POST", URL, NOW, "g-3");
    assert_eq!(
        run(&config, &mut request("DPoP", &token, Some(&next), &shared)),
        Ok(())
    );
}

const SEED_KEY: &str = "mcp-guard:dpop-seed";

/// The shared-data slot a proof id is remembered in, as the filter names it: chosen by
/// SHA-256(this Envoy's slot key ‖ `jti`), the key drawn by the Envoy's first proof.
fn slot_of(jti: &str, shared: &Shared) -> (String, [u8; 32]) {
    let store = shared.borrow();
    let seed = &store.bytes(SEED_KEY).expect("the slot key was drawn")[..32];
    let keyed: [u8; 32] = Sha256::new()
        .chain_update(seed)
        .chain_update(jti.as_bytes())
        .finalize()
        .into();
    (slot_name(&keyed), Sha256::digest(jti.as_bytes()).into())
}

/// The slot versions without a slot key chose: by SHA-256(`jti`) alone.
fn unkeyed_slot_of(jti: &str) -> (String, [u8; 32]) {
    let hash: [u8; 32] = Sha256::digest(jti.as_bytes()).into();
    (slot_name(&hash), hash)
}

fn slot_name(hash: &[u8; 32]) -> String {
    let n = u16::from_be_bytes([hash[0], hash[1]]) % 1024;
    format!("mcp-guard:dpop-jti:{n}")
}

/// A first proof on the Envoy of `shared`: its slot key is drawn.
fn first_proof(config: &Rc<Config>, shared: &Shared, token: &str) {
    let p = proof(token, "POST", URL, NOW, "first");
    assert_eq!(
        run(config, &mut request("DPoP", token, Some(&p), shared)),
        Ok(())
    );
    assert!(shared.borrow().bytes(SEED_KEY).is_some());
}

/// The Envoy of `shared` drew its slot key `ago` seconds ago.
fn seed_drawn(shared: &Shared, ago: i64) {
    let mut seed = vec![7u8; 32];
    seed.extend_from_slice(&(NOW - ago).to_le_bytes());
    shared.borrow_mut().insert(SEED_KEY.into(), seed);
}

/// A record of the replay store: the id's 16 bytes and until when it is kept.
fn record(hash: &[u8; 32], until: i64) -> Vec<u8> {
    [&hash[..16], &until.to_le_bytes()].concat()
}

#[test]
fn a_proofs_slot_depends_on_a_random_key_of_this_envoy() {
    // A client that could tell which slot a `jti` falls into could fill one slot with its own
    // proofs and so refuse everyone else's proofs that fall there.
    let token = bound_token(json!({ "jkt": jkt() }));
    let envoys: Vec<Shared> = (0..2).map(|_| Shared::default()).collect();
    for (source, shared) in [1u8, 101].into_iter().zip(&envoys) {
        let vm = config(false);
        let p = proof(&token, "POST", URL, NOW, "first");
        let mut host = request("DPoP", &token, Some(&p), shared);
        host.random_source = Some(source);
        assert_eq!(run(&vm, &mut host), Ok(()));
        // Another worker VM (its own configuration, another draw) keeps the Envoy's key.
        let other_vm = config(false);
        let p = proof(&token, "POST", URL, NOW, "second");
        let mut host = request("DPoP", &token, Some(&p), shared);
        host.random_source = Some(source.wrapping_add(50));
        assert_eq!(run(&other_vm, &mut host), Ok(()));
        let seed = shared.borrow().bytes(SEED_KEY).unwrap().to_vec();
        assert_eq!(seed.len(), 40);
        assert_eq!(seed[0], source, "the first draw is kept");
        assert_eq!(&seed[32..], &NOW.to_le_bytes(), "with when it was drawn");
        for jti in ["first", "second"] {
            let (slot, hash) = slot_of(jti, shared);
            let stored = shared.borrow().bytes(&slot).unwrap().to_vec();
            assert!(stored.chunks(24).any(|r| r[..16] == hash[..16]), "{jti}");
        }
    }
    let jtis: Vec<String> = (0..8).map(|i| format!("proof-{i}")).collect();
    let slots =
        |shared: &Shared| -> Vec<String> { jtis.iter().map(|j| slot_of(j, shared).0).collect() };
    assert_ne!(slots(&envoys[0]), slots(&envoys[1]), "each Envoy its own");
    let unkeyed: Vec<String> = jtis.iter().map(|j| unkeyed_slot_of(j).0).collect();
    assert_ne!(slots(&envoys[0]), unkeyed, "not the `jti`'s hash alone");

    // No random source: no slot key, no proof recorded (fail closed).
    let mut host = request(
        "DPoP",
        &token,
        Some(&proof(&token, "POST", URL, NOW, "x")),
        &Shared::default(),
    );
    host.random_source = None;
    let (status, body, _) = run(&config(false), &mut host).unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        "the proof could not be recorded; retry with a fresh proof"
    );
}

#[test]
fn a_proof_recorded_in_its_unkeyed_slot_stays_refused_while_it_can_be_live() {
    // Shared data outlives a module swap: proofs the version before recorded in the slot
    // their hash alone chose are still read, for as long as one of them can be live.
    let token = bound_token(json!({ "jkt": jkt() }));
    for (drawn_ago, refused) in [(0, true), (1800, true), (1801, false)] {
        let config = config(false);
        let shared = Shared::default();
        seed_drawn(&shared, drawn_ago);
        let (unkeyed, hash) = unkeyed_slot_of("old-proof");
        assert_ne!(slot_of("old-proof", &shared).0, unkeyed);
        shared
            .borrow_mut()
            .insert(unkeyed, record(&hash, NOW + 60 * 60));
        let p = proof(&token, "POST", URL, NOW, "old-proof");
        let outcome = run(&config, &mut request("DPoP", &token, Some(&p), &shared));
        match outcome {
            Err((401, body, _)) if refused => {
                assert_eq!(body["error_description"], "the proof was used before (jti)")
            }
            Ok(()) if !refused => {}
            other => panic!("drawn {drawn_ago} s ago: {other:?}"),
        }
    }
}

#[test]
fn a_proof_remembered_by_the_previous_version_stays_refused() {
    // Shared data outlives a module swap: a slot the JSON-writing version left is still read.
    let config = config(false);
    let shared = Shared::default();
    let token = bound_token(json!({ "jkt": jkt() }));
    first_proof(&config, &shared, &token);
    let (key, hash) = unkeyed_slot_of("old-proof");
    let id = URL_SAFE_NO_PAD.encode(&hash[..16]);
    let legacy = json!([["AAAAAAAAAAAAAAAAAAAAAA", NOW + 60], [id, NOW + 60]]);
    shared
        .borrow_mut()
        .insert(key.clone(), legacy.to_string().into_bytes());
    let p = proof(&token, "POST", URL, NOW, "old-proof");
    let (status, body, _) =
        run(&config, &mut request("DPoP", &token, Some(&p), &shared)).unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(body["error_description"], "the proof was used before (jti)");

    // A new proof whose slot is a legacy one is accepted; the slot now holds records, old
    // ones kept.
    let (key, _) = slot_of("new-proof", &shared);
    shared
        .borrow_mut()
        .insert(key.clone(), legacy.to_string().into_bytes());
    let p = proof(&token, "POST", URL, NOW, "new-proof");
    assert_eq!(
        run(&config, &mut request("DPoP", &token, Some(&p), &shared)),
        Ok(())
    );
    assert_eq!(shared.borrow().bytes(&key).unwrap().len(), 3 * 24);
    let (status, _, _) = run(&config, &mut request("DPoP", &token, Some(&p), &shared)).unwrap_err();
    assert_eq!(status, 401);
}

#[test]
fn a_slot_forgets_expired_proofs_and_refuses_when_full_of_live_ones() {
    let config = config(false);
    let shared = Shared::default();
    let token = bound_token(json!({ "jkt": jkt() }));
    first_proof(&config, &shared, &token);
    let (key, _) = slot_of("p-1", &shared);
    let records = |expiry: i64| -> Vec<u8> {
        (0u16..512)
            .flat_map(|i| {
                let mut id = [0u8; 16];
                id[..2].copy_from_slice(&i.to_be_bytes());
                [id.as_slice(), &expiry.to_le_bytes()].concat()
            })
            .collect()
    };

    // 512 ids whose time is over: dropped, the new one kept alone.
    shared.borrow_mut().insert(key.clone(), records(NOW - 1));
    let p = proof(&token, "POST", URL, NOW, "p-1");
    assert_eq!(
        run(&config, &mut request("DPoP", &token, Some(&p), &shared)),
        Ok(())
    );
    assert_eq!(shared.borrow().bytes(&key).unwrap().len(), 24);

    // 511 live ids: room for one more (a busy process fills its fullest slot well before the
    // average; see dpop::PER_SLOT).
    let mut almost = records(NOW + 30);
    almost.truncate(511 * 24);
    shared.borrow_mut().insert(key.clone(), almost);
    let p2 = proof(&token, "POST", URL, NOW, "p-1");
    assert_eq!(
        run(&config, &mut request("DPoP", &token, Some(&p2), &shared)),
        Ok(())
    );
    assert_eq!(shared.borrow().bytes(&key).unwrap().len(), 512 * 24);

    // 512 live ids: full, the proof refused (fail closed) and nothing written.
    shared.borrow_mut().insert(key.clone(), records(NOW + 30));
    let (status, body, _) =
        run(&config, &mut request("DPoP", &token, Some(&p), &shared)).unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        "too many recent proofs; retry with a fresh proof"
    );
    assert_eq!(shared.borrow().bytes(&key).unwrap(), records(NOW + 30));
}

// ---- replay: fleet (the rate limit service every replica shares) -----------------------------

fn fleet_config() -> Rc<Config> {
    let value = json!({
        "issuers": [{
            "issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["ES256"],
            "jwks": { "keys": [p256_public_jwk()] },
        }],
        "dpop": { "algorithms": ["ES256"], "replay": "fleet" },
        "rate_limit_service": { "cluster": "rls", "domain": "mcp", "timeout_ms": 100 },
        "servers": [{
            "name": "crm", "resource": RESOURCE,
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": { "name": "p", "default": "allow" },
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    Rc::new(Config::from_json(value.to_string().as_bytes(), &MapEnv::default()).unwrap())
}

/// A DPoP request under `replay: fleet`, up to the rate limit service's call.
fn fleet_request(shared: &Shared, jti: &str) -> (Stream, CallHost) {
    let token = bound_token(json!({ "jkt": jkt() }));
    let p = proof(&token, "POST", URL, NOW, jti);
    let mut host = CallHost::new(request("DPoP", &token, Some(&p), shared), Some(7));
    let mut stream = Stream::new(fleet_config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(!stream.awaiting_body(), "the request waits for the service");
    assert!(host.inner.replies.is_empty());
    (stream, host)
}

#[test]
fn a_fleet_proof_is_spent_at_the_rate_limit_service_before_the_request_goes_on() {
    use prost::Message as _;
    let shared = Shared::default();
    let (mut stream, mut host) = fleet_request(&shared, "fleet-1");
    let [(cluster, _, method, message, _)] = host.calls.as_slice() else {
        panic!("one call: {:?}", host.calls.len());
    };
    assert_eq!(
        (cluster.as_str(), method.as_str()),
        ("rls", "ShouldRateLimit")
    );
    let sent = mcp_guard::rls::RateLimitRequest::decode(message.as_slice()).unwrap();
    assert_eq!(sent.domain, "mcp");
    let entries: Vec<(&str, &str)> = sent.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let id: String = Sha256::digest(b"fleet-1")[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        entries,
        [("mcp_limit", "dpop_proof"), ("mcp_key", id.as_str())]
    );
    // New to the fleet: the request goes on to its body, the service key set.
    let action = stream.on_grpc_answer(&mut host, 7, 0, Some(&rls_answer_per_unit(1, 0, 1)));
    assert_eq!(action, Action::Pause);
    assert!(stream.awaiting_body());
    assert_eq!(host.inner.req_header("x-api-key"), Some(SERVICE_KEY));
    assert_eq!(
        stream.on_request_body(
            &mut host,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}"#
        ),
        Action::Continue
    );
}

#[test]
fn a_proof_another_replica_saw_is_a_replay_and_no_answer_is_503() {
    // Over the limit: another replica spent it first.
    let shared = Shared::default();
    let (mut stream, mut host) = fleet_request(&shared, "fleet-2");
    assert_eq!(
        stream.on_grpc_answer(&mut host, 7, 0, Some(&rls_answer_per_unit(2, 0, 1))),
        Action::Pause
    );
    let reply = host.inner.reply();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "invalid_dpop_proof");
    assert_eq!(
        reply.json()["error_description"],
        "the proof was used before (jti), through another replica"
    );
    assert_eq!(host.inner.record()["reason"], "invalid_dpop_proof");
    assert_eq!(
        host.inner.req_header("x-api-key"),
        None,
        "no service key set"
    );
    // A service with no limit for the descriptor answers OK without one: it counted nothing
    // (every replica would pass the same proof), so the proof is not taken as new.
    let unmatched = {
        use prost::Message as _;
        mcp_guard::rls::RateLimitResponse {
            overall_code: 1,
            statuses: vec![mcp_guard::rls::DescriptorStatus {
                code: 1,
                ..Default::default()
            }],
        }
        .encode_to_vec()
    };
    // The service failed: not checked, not passed.
    for (status, body) in [
        (14, None),
        (0, Some(b"\xff".to_vec())),
        (0, Some(unmatched)),
    ] {
        let (mut stream, mut host) = fleet_request(&Shared::default(), "fleet-3");
        stream.on_grpc_answer(&mut host, 7, status, body.as_deref());
        let reply = host.inner.reply();
        assert_eq!(reply.status, 503);
        assert_eq!(host.inner.record()["reason"], "dpop_replay_unchecked");
    }
    // Not callable at all: 503 at once.
    let token = bound_token(json!({ "jkt": jkt() }));
    let p = proof(&token, "POST", URL, NOW, "fleet-4");
    let mut host = CallHost::new(request("DPoP", &token, Some(&p), &Shared::default()), None);
    let mut stream = Stream::new(fleet_config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert_eq!(host.inner.reply().status, 503);
}

/// The service counts the proof under a limit of more than one use per key (a `dpop_proof`
/// limit configured like a policy's, or a policy's global limit named `dpop_proof` sharing its
/// counters): it would say "new" to the same proof that many times, through any replicas. Not a
/// replay check: 503, nothing forwarded, saying what to configure.
#[test]
fn a_service_letting_a_proof_through_more_than_once_is_not_a_replay_check() {
    let (mut stream, mut host) = fleet_request(&Shared::default(), "fleet-5");
    stream.on_grpc_answer(&mut host, 7, 0, Some(&rls_answer_per_unit(1, 9, 10)));
    let reply = host.inner.reply();
    assert_eq!(reply.status, 503);
    assert!(
        reply.json()["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("allows 10 uses of a proof")),
        "{:?}",
        reply.json()
    );
    assert_eq!(host.inner.record()["reason"], "dpop_replay_unchecked");
    assert_eq!(
        host.inner.req_header("x-api-key"),
        None,
        "nothing forwarded"
    );
}

/// A limit of one use per SECOND or MINUTE forgets the proof within the time it stays fresh
/// (60 s plus twice the 60 s skew here): another replica would take it again later. Not a
/// replay check: 503, saying what to configure. An HOUR, or a window the service names no
/// unit for (limitador's 180 s), is taken.
#[test]
fn a_service_forgetting_a_proof_before_it_goes_stale_is_not_a_replay_check() {
    for unit in [1, 2] {
        let (mut stream, mut host) = fleet_request(&Shared::default(), "fleet-6");
        stream.on_grpc_answer(&mut host, 7, 0, Some(&rls_answer_per(1, 0, 1, unit)));
        let reply = host.inner.reply();
        assert_eq!(reply.status, 503, "unit {unit}");
        let said = reply.json()["error_description"].to_string();
        assert!(
            said.contains("shorter than a proof stays fresh (180 s"),
            "{said}"
        );
        assert_eq!(
            host.inner.req_header("x-api-key"),
            None,
            "nothing forwarded"
        );
    }
    for unit in [0, 3] {
        let (mut stream, mut host) = fleet_request(&Shared::default(), "fleet-7");
        stream.on_grpc_answer(&mut host, 7, 0, Some(&rls_answer_per(1, 0, 1, unit)));
        assert!(stream.awaiting_body(), "unit {unit}: admitted");
        assert_eq!(host.inner.req_header("x-api-key"), Some(SERVICE_KEY));
    }
}

#[test]
fn replay_fleet_needs_a_rate_limit_service() {
    let value = json!({
        "issuers": [{ "issuer": ISSUER, "audiences": [RESOURCE], "jwks": { "keys": [p256_public_jwk()] } }],
        "dpop": { "replay": "fleet" },
        "servers": [{
            "name": "crm", "resource": RESOURCE,
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": { "name": "p", "default": "allow" },
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    let err = Config::from_json(value.to_string().as_bytes(), &MapEnv::default()).unwrap_err();
    assert!(err.to_string().contains("dpop.replay"), "{err}");
}

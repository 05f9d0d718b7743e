//! Fuzz target `http_surface`: what a client controls in one HTTP request, through the plain
//! functions the handlers call, with no sockets: the query string of every endpoint (live
//! traces, live metrics, the `token` parameter), the `Authorization` header, a live token, the
//! webhook `X-Signature`, the first bytes of a plain connection through the request-head
//! sniffer that picks live streams (`http::direct::judge`), and the body through the
//! NDJSON and webhook parsers. Nothing may panic; the sniffer takes only complete HTTP/1.1
//! `GET`s of the live paths; forged tokens and signatures must never verify; a real token and signature must.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use livetap::auth::principal::parse_authorization;
use livetap::auth::{sign, verify_signature, AuthError, Grant, LiveTokens};
use livetap::event::{Catalogue, EventBuilder, KeyRegistry};
use livetap::ingest::{parse_ndjson, parse_webhook, MAX_REPORTED_ERRORS};
use livetap::query::{parse_pairs, Limits};
use std::sync::OnceLock;

struct Setup {
    catalogue: Catalogue,
    keys: KeyRegistry,
    tokens: LiveTokens,
}

/// The catalogue and the token key are built once per process, not once per input.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (catalogue, keys) = Catalogue::with_keys(1024);
        let tokens = LiveTokens::new(Some("fuzzing-token-key-0123456789abcdef"), None, 60, 120).unwrap();
        Setup { catalogue, keys, tokens }
    })
}

#[derive(Arbitrary, Debug)]
struct Request<'a> {
    query: &'a str,
    authorization: &'a [u8],
    token: &'a str,
    reconnect: bool,
    now: u32,
    signature: &'a [u8],
    head: &'a [u8],
    body: Vec<u8>,
    webhook: bool,
}

fuzz_target!(|r: Request<'_>| {
    let s = setup();
    let limits = Limits::default();

    // Query strings of the live endpoints and the token parameter.
    let _ = parse_pairs(r.query, &s.keys, &limits);
    let _ = livetap::metrics::query::parse_live(r.query, 3600, 64, 8192);
    let _ = livetap::http::query_token(r.query);

    // The first bytes of a plain connection.
    if let livetap::http::direct::Verdict::Live(req) = livetap::http::direct::judge(r.head, 16 << 10) {
        assert_eq!(req.method(), "GET");
        assert_eq!(req.version(), http::Version::HTTP_11);
        let path = req.uri().path();
        assert!(path.ends_with("/live"), "{path}");
        assert!(r.head.ends_with(b"\n"), "only a complete head is taken");
    }

    // Credentials.
    let _ = parse_authorization(r.authorization);
    let now = u64::from(r.now);
    let issued = s.tokens.issue("fuzz", Grant::Tracing, now).unwrap();
    for grant in [Grant::Tracing, Grant::Metrics] {
        let v = s.tokens.verify(r.token, grant, now, r.reconnect);
        assert!(v.is_err() || r.token == issued, "a forged token verified: {:?}", r.token);
    }
    assert_eq!(s.tokens.verify(&issued, Grant::Tracing, now, false).unwrap(), "fuzz");
    assert_eq!(s.tokens.verify(&issued, Grant::Metrics, now, false), Err(AuthError::WrongGrant));

    // The webhook signature over the body.
    let key = "fuzz-webhook-key";
    let real = sign(key, &r.body);
    if r.signature != real.as_bytes() && r.signature.trim_ascii() != real.as_bytes() {
        assert!(verify_signature(Some(r.signature), key, &r.body).is_err(), "a forged signature verified");
    }
    assert!(verify_signature(Some(real.as_bytes()), key, &r.body).is_ok());

    // The body through the parser of its endpoint, twice: as configured, and with a tiny
    // max-event-bytes, which sends every document over 512 bytes through the splitter
    // (`ingest::split`) instead of the tape.
    let mut small_body = r.body.clone();
    let mut small = EventBuilder::new(&s.catalogue, &s.keys).with_max_bytes(64);
    let split = if r.webhook {
        parse_webhook(&mut small_body, &mut small, 1_795_091_696).ok()
    } else {
        Some(parse_ndjson(&mut small_body, &mut small, 1_795_091_696))
    };
    if let Some(p) = split {
        assert!(p.errors.len() <= MAX_REPORTED_ERRORS && p.errors.len() <= p.rejected);
        assert!(p.events.iter().all(|e| e.json.len() <= 64), "an event over max-event-bytes was built");
    }
    let mut body = r.body;
    let mut b = EventBuilder::new(&s.catalogue, &s.keys);
    let parsed = if r.webhook {
        match parse_webhook(&mut body, &mut b, 1_795_091_696) {
            Ok(p) => p,
            Err(_) => return,
        }
    } else {
        parse_ndjson(&mut body, &mut b, 1_795_091_696)
    };
    assert!(parsed.errors.len() <= MAX_REPORTED_ERRORS);
    assert!(parsed.errors.len() <= parsed.rejected);
});

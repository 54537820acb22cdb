//! Randomised robustness tests of the HTTP body parsers: arbitrary and mutated bodies on the
//! state, bulk, transaction, query and publish endpoints must get an answer (a 4xx/5xx error
//! is fine), never a panic or a hang. Deterministic: a fixed-seed generator, so a failure
//! reproduces; the seed and the body are printed with it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use tandem_components::memory::InMemoryStateStore;
use tandem_runtime::Runtime;
use tandem_runtime::components::{Components, KeyPrefix};
use tandem_runtime::metadata::MetadataSnapshot;
use tower::ServiceExt;

use super::{HttpOptions, router};

/// xorshift64*: small, fast, reproducible.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Pieces that steer random bodies into the JSON parsers' interesting corners.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "18446744073709551616",
    "\"key\"",
    "\"value\"",
    "\"etag\"",
    "\"options\"",
    "\"concurrency\"",
    "\"first-write\"",
    "\"consistency\"",
    "\"metadata\"",
    "\"ttlInSeconds\"",
    "\"operation\"",
    "\"upsert\"",
    "\"delete\"",
    "\"request\"",
    "\"operations\"",
    "\"keys\"",
    "\"parallelism\"",
    "\"filter\"",
    "\"sort\"",
    "\"page\"",
    "\"EQ\"",
    "\"AND\"",
    "\"OR\"",
    "\"IN\"",
    "\"entryId\"",
    "\"event\"",
    "\"contentType\"",
    "\"data_base64\"",
    "\"datacontenttype\"",
    "\"specversion\"",
    "\"\u{1F600}\"",
    "\u{FEFF}",
    " ",
    "\n",
];

const SEEDS: &[&str] = &[
    r#"[{"key":"k","value":{"a":1},"etag":"1","options":{"concurrency":"first-write","consistency":"strong"},"metadata":{"ttlInSeconds":"5"}}]"#,
    r#"{"keys":["a","b"],"parallelism":2,"metadata":{"x":"y"}}"#,
    r#"{"operations":[{"operation":"upsert","request":{"key":"k","value":"v"}},{"operation":"delete","request":{"key":"k","etag":"2"}}],"metadata":{}}"#,
    r#"{"filter":{"AND":[{"EQ":{"a":1}},{"IN":{"b":[1,2]}}]},"sort":[{"key":"a","order":"DESC"}],"page":{"limit":2,"token":"1"}}"#,
    r#"[{"entryId":"1","event":{"a":1},"contentType":"application/json","metadata":{}},{"entryId":"2","event":"x","contentType":"text/plain"}]"#,
    r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"aGk=","datacontenttype":"text/plain"}"#,
];

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/v1.0/state/statestore"),
    ("POST", "/v1.0/state/statestore/bulk"),
    ("POST", "/v1.0/state/statestore/transaction"),
    ("POST", "/v1.0-alpha1/state/statestore/query"),
    ("POST", "/v1.0/publish/pubsub/orders"),
    ("POST", "/v1.0/publish/bulk/pubsub/orders"),
    ("POST", "/v1.0/bindings/b"),
];

/// One random body: raw bytes, a token soup, a mutated seed, or deep nesting.
pub(crate) fn body(rng: &mut Rng, seeds: &[&str], tokens: &[&str]) -> Vec<u8> {
    match rng.below(5) {
        0 => (0..rng.below(300))
            .map(|_| (rng.next() & 0xff) as u8)
            .collect(),
        1 => {
            let mut s = String::new();
            for _ in 0..rng.below(60) {
                s.push_str(tokens[rng.below(tokens.len())]);
            }
            s.into_bytes()
        }
        2 => {
            let depth = 1 + rng.below(5000);
            let open = if rng.below(2) == 0 { "[" } else { "{\"a\":" };
            open.repeat(depth).into_bytes()
        }
        _ => {
            let mut b = seeds[rng.below(seeds.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(6) {
                if b.is_empty() {
                    break;
                }
                let at = rng.below(b.len());
                match rng.below(4) {
                    0 => b[at] = (rng.next() & 0xff) as u8,
                    1 => {
                        b.truncate(at);
                    }
                    2 => {
                        let t = tokens[rng.below(tokens.len())].as_bytes();
                        b.splice(at..at, t.iter().copied());
                    }
                    _ => {
                        let end = (at + 1 + rng.below(20)).min(b.len());
                        b.drain(at..end);
                    }
                }
            }
            b
        }
    }
}

fn runtime() -> Arc<Runtime> {
    let mut components = Components::default();
    components.insert_state(
        "statestore",
        "state.in-memory",
        Arc::new(InMemoryStateStore::default()),
        KeyPrefix::Prefix("app".into()),
    );
    Arc::new(Runtime::from_parts(
        "app".into(),
        Arc::new(components),
        Default::default(),
        MetadataSnapshot::default(),
    ))
}

#[tokio::test]
async fn arbitrary_bodies_get_an_answer_never_a_panic() {
    let app = router(runtime(), &HttpOptions::default());
    let mut rng = Rng::new(0x7a6e_6465_6d21);
    for i in 0..4000 {
        let (method, path) = ENDPOINTS[i % ENDPOINTS.len()];
        let body = body(&mut rng, SEEDS, TOKENS);
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(300)
            .collect::<String>();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("#{i} {path}: no answer within 10 s for {shown:?}"))
            .unwrap();
        assert!(
            resp.status().as_u16() >= 200,
            "#{i} {path}: {} for {shown:?}",
            resp.status()
        );
    }
}

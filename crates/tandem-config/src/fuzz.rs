//! Randomised robustness tests of YAML loading: arbitrary bytes, YAML token soups and
//! mutations of valid resources must give a value or an error, never a panic or a hang.
//! Deterministic (fixed seed); a failure prints the input.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::{LoadContext, parse_configuration, parse_resources};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "\n",
    "  ",
    "- ",
    ": ",
    "---\n",
    "...\n",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "!!map ",
    "? ",
    "|\n",
    ">-\n",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "%YAML 1.2\n",
    "<<: *a\n",
    "apiVersion: dapr.io/v1alpha1\n",
    "kind: Component\n",
    "kind: Configuration\n",
    "kind: Subscription\n",
    "kind: Resiliency\n",
    "kind: HTTPEndpoint\n",
    "metadata:\n",
    "  name: x\n",
    "spec:\n",
    "  type: state.redis\n",
    "  version: v1\n",
    "  metadata:\n",
    "  - name: a\n",
    "    value: 1\n",
    "    secretKeyRef:\n",
    "scopes: [a]\n",
    "{uuid}",
    "$HOME",
    "${X}",
    "1e999",
    "-0x10",
    "~",
    "null",
    "true",
    "15m",
    "-1s",
    "1h2m",
    "\u{0}",
    "\t",
    "\u{FEFF}",
    "é",
];

const SEEDS: &[&str] = &[
    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: s\nspec:\n  type: state.redis\n  version: v1\n  initTimeout: 5s\n  metadata:\n  - name: redisHost\n    value: localhost:6379\n  - name: p\n    secretKeyRef:\n      name: k\n      key: v\nauth:\n  secretStore: env\nscopes: [a, b]\n",
    "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n  pubsubname: p\n  topic: t\n  routes:\n    rules:\n    - match: event.type == \"x\"\n      path: /x\n    default: /d\n  deadLetterTopic: dl\n  bulkSubscribe:\n    enabled: true\n    maxMessagesCount: 10\n",
    "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      t: 5s\n    retries:\n      r:\n        policy: exponential\n        maxRetries: 3\n        matching:\n          httpStatusCodes: 500-599\n    circuitBreakers:\n      c:\n        trip: consecutiveFailures > 3\n  targets:\n    apps:\n      a:\n        timeout: t\n        retry: r\n        circuitBreaker: c\n",
    "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  tracing:\n    samplingRate: \"1\"\n  mtls:\n    enabled: true\n    workloadCertTTL: 24h\n  accessControl:\n    defaultAction: deny\n    policies:\n    - appId: a\n      operations:\n      - name: /x/*\n        httpVerb: [\"*\"]\n        action: allow\n  api:\n    allowed:\n    - name: state\n      version: v1\n      protocol: http\n",
    "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: h\nspec:\n  baseUrl: http://x\n  headers:\n  - name: a\n    value: b\n",
];

fn input(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => (0..rng.below(400))
            .map(|_| (rng.next() & 0xff) as u8)
            .collect(),
        1 => {
            let mut s = String::new();
            for _ in 0..rng.below(80) {
                s.push_str(TOKENS[rng.below(TOKENS.len())]);
            }
            s.into_bytes()
        }
        _ => {
            let mut b = SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(8) {
                if b.is_empty() {
                    break;
                }
                let at = rng.below(b.len());
                match rng.below(4) {
                    0 => b[at] = (rng.next() & 0xff) as u8,
                    1 => b.truncate(at),
                    2 => {
                        let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                        b.splice(at..at, t.iter().copied());
                    }
                    _ => {
                        let end = (at + 1 + rng.below(30)).min(b.len());
                        b.drain(at..end);
                    }
                }
            }
            b
        }
    }
}

/// Parses `text` every way the loader does.
fn parse_all(text: &str) {
    let file = Path::new("fuzz.yaml");
    let _ = parse_resources(text, file, &LoadContext::new("a"));
    let _ = parse_configuration(text, file);
}

/// Runs `f` on another thread and fails if it does not finish in time.
fn within(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (done, wait) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match wait.recv_timeout(limit) {
        Ok(()) => worker.join().unwrap(),
        // A panic drops the sender: report it as the panic it is.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(worker.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("YAML loading did not finish in {limit:?}"),
    }
}

#[test]
fn arbitrary_yaml_gives_an_error_never_a_panic() {
    within(Duration::from_secs(120), || {
        let mut rng = Rng(0x7961_6d6c_2166);
        for i in 0..3000 {
            let bytes = input(&mut rng);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let shown = text.clone();
            if std::panic::catch_unwind(|| parse_all(&text)).is_err() {
                panic!("#{i}: YAML loading panicked on {shown:?}");
            }
        }
    });
}

#[test]
fn alias_bombs_and_deep_nesting_are_refused_in_time() {
    // "Billion laughs": nine levels of ten aliases each.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let (prev, next) = (w[0], w[1]);
        bomb.push_str(&format!("{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let component = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: x\nspec:\n  type: state.redis\n  version: v1\n  {}",
        bomb.replace('\n', "\n  ")
    );
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_map = "a:\n".to_owned()
        + &(1..2000)
            .map(|n| format!("{}b:\n", " ".repeat(n)))
            .collect::<String>();
    for text in [bomb, component, deep, deep_map] {
        within(Duration::from_secs(30), move || parse_all(&text));
    }
}

//! The reply parser on scripted bytes, and the read connection against the Redis at 127.0.0.1:6379
//! (skipped when it is unreachable, unless `TANDEM_REQUIRE_SERVICES=1`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use tandem_components::Metadata;
use tandem_components::state::{ETag, StateItem, TTL_EXPIRE_TIME_KEY};
use tandem_testkit::services;

use super::*;

const ADDR: &str = "127.0.0.1:6379";

#[test]
fn elements_parse_only_once_complete() {
    let cases: &[(&[u8], Element)] = &[
        (b"+OK\r\n", Element::Simple(1..3)),
        (b"-WRONGTYPE no\r\n", Element::Error(1..13)),
        (b":-1234\r\n", Element::Int(-1234)),
        (b"$-1\r\n", Element::Nil),
        (b"$0\r\n\r\n", Element::Bulk(4..4)),
        (b"$5\r\nab\r\nc\r\n", Element::Bulk(4..9)),
        (b"*2\r\n", Element::Array(2)),
    ];
    for (bytes, want) in cases {
        for cut in 0..bytes.len() {
            assert!(
                element(&bytes[..cut], 0).unwrap().is_none(),
                "{bytes:?} cut at {cut}"
            );
        }
        let (got, next) = element(bytes, 0).unwrap().expect("complete");
        assert_eq!(&got, want);
        assert_eq!(next, bytes.len());
    }
}

#[test]
fn malformed_replies_are_errors() {
    for bad in [
        &b"?x\r\n"[..],
        b":12a\r\n",
        b":\r\n",
        b"$-2\r\n",
        b"$3\r\nabcd\r\n",
        b"+OK\n",
        b":99999999999999999999\r\n",
    ] {
        let err = element(bad, 0).expect_err(&format!("{bad:?}"));
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
    let long = vec![b'+'; MAX_LINE + 2];
    assert!(element(&long, 0).is_err());
}

#[test]
fn one_keys_replies() {
    let found = b"*2\r\n$3\r\n{x}\r\n$1\r\n7\r\n:1500\r\n";
    for cut in 0..found.len() {
        assert!(key_replies(&found[..cut], 0).unwrap().is_none());
    }
    let (r, next) = key_replies(found, 0).unwrap().unwrap();
    assert_eq!(next, found.len());
    assert_eq!(r.fields, Fields::Pair(Some(8..11), Some(17..18)));
    assert_eq!(r.pttl, Some(1500));

    let missing = b"*2\r\n$-1\r\n$-1\r\n:-2\r\n";
    let (r, _) = key_replies(missing, 0).unwrap().unwrap();
    assert_eq!(r.fields, Fields::Pair(None, None));
    assert_eq!(r.pttl, Some(-2));

    let wrong = b"-WRONGTYPE Operation\r\n-ERR nope\r\n";
    let (r, _) = key_replies(wrong, 0).unwrap().unwrap();
    assert_eq!(r.fields, Fields::Error(1..20));
    assert_eq!(r.pttl, None);

    for odd in [
        &b"*3\r\n"[..],
        b"*2\r\n:1\r\n",
        b"+OK\r\n",
        b"*2\r\n$-1\r\n$-1\r\n+OK\r\n",
    ] {
        assert!(key_replies(odd, 0).is_err(), "{odd:?}");
    }
}

#[test]
fn commands_are_resp_arrays() {
    let mut out = Vec::new();
    command(&mut out, &[b"HMGET", b"a||k", b"data", b"version"]);
    assert_eq!(
        out,
        b"*4\r\n$5\r\nHMGET\r\n$4\r\na||k\r\n$4\r\ndata\r\n$7\r\nversion\r\n"
    );
}

#[test]
fn only_plain_single_nodes_get_a_read_connection() {
    let md = |extra: &[(&str, &str)]| {
        let mut m = Metadata::new("s", "a").with("redisHost", ADDR);
        for (k, v) in extra {
            m.insert(*k, *v);
        }
        RedisMetadata::from_metadata(&m).unwrap()
    };
    assert!(Reads::new(&md(&[])).is_some());
    assert!(Reads::new(&md(&[("enableTLS", "true")])).is_none());
    assert!(Reads::new(&md(&[("redisType", "cluster")])).is_none());
    assert!(Reads::new(&md(&[("failover", "true"), ("sentinelMasterName", "m")])).is_none());
    assert!(Reads::new(&md(&[("redisUsername", "u")])).is_none());
    let reads = Reads::new(&md(&[
        ("redisUsername", "u"),
        ("redisPassword", "p"),
        ("redisDB", "4"),
    ]))
    .unwrap();
    assert_eq!(
        reads.dialer.login,
        b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$1\r\np\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n4\r\n"
    );
    assert_eq!(reads.dialer.logins, 2);
}

fn reads(extra: &[(&str, &str)]) -> Option<Reads> {
    if !services::require("Redis", ADDR) {
        return None;
    }
    let mut m = Metadata::new("s", "a").with("redisHost", ADDR);
    for (k, v) in extra {
        m.insert(*k, *v);
    }
    Reads::new(&RedisMetadata::from_metadata(&m).unwrap())
}

async fn direct(db: i64) -> MultiplexedConnection {
    redis::Client::open(format!("redis://{ADDR}/{db}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A key unique to this run.
fn key(case: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("reads-{case}-{}-{nanos}", std::process::id())
}

async fn state_hash(conn: &mut MultiplexedConnection, key: &str, data: &[u8], version: &str) {
    redis::cmd("HSET")
        .arg(key)
        .arg("data")
        .arg(data)
        .arg("version")
        .arg(version)
        .exec_async(conn)
        .await
        .unwrap();
}

async fn delete(conn: &mut MultiplexedConnection, keys: &[&str]) {
    redis::cmd("DEL").arg(keys).exec_async(conn).await.unwrap();
}

/// Waits until the connection is open (a read without one asks for it); fails the test after
/// five seconds.
async fn warm(reads: &Reads) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reads.is_open() {
        assert!(Instant::now() < deadline, "no connection was opened");
        reads.dial();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The open connection's address as `CLIENT LIST` shows it (`addr=`).
async fn client_addr(reads: &Reads, conn: &mut MultiplexedConnection) -> String {
    let addr = reads.local().expect("an open connection").to_string();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    assert!(
        list.contains(&format!("addr={addr} ")),
        "{addr} not in {list}"
    );
    addr
}

fn item(read: &KeyRead) -> &StateItem {
    match read {
        Ok(Some(item)) => item,
        Ok(None) => panic!("no item"),
        Err(_) => panic!("an error"),
    }
}

#[tokio::test]
async fn reads_answer_like_the_shared_connection() {
    let Some(reads) = reads(&[]) else { return };
    let mut conn = direct(0).await;
    let (found, expiring, plain, missing, half) = (
        key("found"),
        key("expiring"),
        key("plain"),
        key("missing"),
        key("half"),
    );
    state_hash(&mut conn, &found, b"{\"a\":1}", "3").await;
    state_hash(&mut conn, &expiring, b"x", "12").await;
    redis::cmd("PEXPIRE")
        .arg(&expiring)
        .arg(60_000)
        .exec_async(&mut conn)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(&plain)
        .arg("v")
        .exec_async(&mut conn)
        .await
        .unwrap();
    redis::cmd("HSET")
        .arg(&half)
        .arg("data")
        .arg("d")
        .exec_async(&mut conn)
        .await
        .unwrap();

    // No connection yet: the read goes the shared way, and one is opened meanwhile.
    assert!(!reads.is_open());
    assert!(reads.read("get", &[&found]).await.is_none());
    warm(&reads).await;

    let keys = [&*found, &expiring, &plain, &missing, &half];
    let got = reads
        .read("bulk get", &keys)
        .await
        .expect("on the read connection")
        .expect("read");
    assert_eq!(got.len(), 5);
    let a = item(&got[0]);
    assert_eq!(a.value.as_ref(), b"{\"a\":1}");
    assert_eq!(a.etag, Some(ETag::from("3")));
    assert!(a.metadata.is_empty());
    let b = item(&got[1]);
    assert_eq!(b.etag, Some(ETag::from("12")));
    assert!(b.metadata.contains_key(TTL_EXPIRE_TIME_KEY), "{b:?}");
    assert!(matches!(got[2], Err(ReadError::NotAHash)));
    assert!(matches!(got[3], Ok(None)));
    assert!(matches!(&got[4], Err(ReadError::Other(t)) if t.contains("'data' or 'version'")));
    delete(&mut conn, &keys).await;
}

/// Many calls in flight share the connection; each gets its own replies, large or small.
#[tokio::test]
async fn calls_in_flight_get_their_own_replies() {
    let Some(reads) = reads(&[]) else { return };
    let mut conn = direct(0).await;
    let keys: Vec<String> = (0..40).map(|i| key(&format!("many-{i}"))).collect();
    let value = |i: usize| -> Vec<u8> {
        // Every fifth value is large enough to arrive over several reads.
        let len = if i.is_multiple_of(5) {
            200_000 + i
        } else {
            10 + i
        };
        (0..len).map(|j| ((i * 7 + j) % 251) as u8).collect()
    };
    for (i, k) in keys.iter().enumerate() {
        state_hash(&mut conn, k, &value(i), &i.to_string()).await;
    }
    warm(&reads).await;
    for _ in 0..3 {
        let calls = keys.iter().enumerate().map(|(i, k)| {
            let reads = &reads;
            async move {
                let got = reads.read("get", &[k]).await.expect("lean").expect("read");
                let item = item(&got[0]);
                assert_eq!(item.value.as_ref(), &value(i)[..], "key {i}");
                assert_eq!(item.etag, Some(ETag::from(i.to_string())));
            }
        });
        futures_util::future::join_all(calls).await;
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    delete(&mut conn, &refs).await;
}

#[tokio::test]
async fn the_connection_selects_the_database_and_logs_in() {
    let Some(_) = reads(&[]) else { return };
    let user = key("acl");
    let password = "reads-test-only";
    let mut admin = direct(0).await;
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all")
        .exec_async(&mut admin)
        .await
        .unwrap();
    let mut db5 = direct(5).await;
    let k = key("db5");
    state_hash(&mut db5, &k, b"five", "1").await;

    let logged_in = reads(&[
        ("redisDB", "5"),
        ("redisUsername", &user),
        ("redisPassword", password),
    ])
    .unwrap();
    warm(&logged_in).await;
    let got = logged_in.read("get", &[&k]).await.unwrap().unwrap();
    assert_eq!(item(&got[0]).value.as_ref(), b"five");

    // A wrong password: no connection is opened, reads go the shared way.
    let refused = reads(&[("redisUsername", &user), ("redisPassword", "wrong")]).unwrap();
    assert!(refused.read("get", &[&k]).await.is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!refused.is_open());
    assert!(refused.read("get", &[&k]).await.is_none());

    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .exec_async(&mut admin)
        .await
        .unwrap();
    delete(&mut db5, &[&k]).await;
}

#[tokio::test]
async fn a_killed_connection_falls_back_and_is_replaced() {
    let Some(reads) = reads(&[]) else { return };
    let mut conn = direct(0).await;
    let k = key("killed");
    state_hash(&mut conn, &k, b"v", "1").await;
    warm(&reads).await;
    assert!(reads.read("get", &[&k]).await.is_some());
    let addr = client_addr(&reads, &mut conn).await;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ADDR")
        .arg(&addr)
        .exec_async(&mut conn)
        .await
        .unwrap();
    // The read finds the connection dead (now or on its next read) and goes the shared way.
    let deadline = Instant::now() + Duration::from_secs(5);
    while reads.is_open() {
        assert!(
            Instant::now() < deadline,
            "the killed connection was not noticed"
        );
        let _ = reads.read("get", &[&k]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(reads.read("get", &[&k]).await.is_none());
    warm(&reads).await;
    let got = reads.read("get", &[&k]).await.unwrap().unwrap();
    assert_eq!(item(&got[0]).value.as_ref(), b"v");
    assert_ne!(client_addr(&reads, &mut conn).await, addr);
    delete(&mut conn, &[&k]).await;
}

/// Two state hashes, `<case>-a` = `a` and `<case>-b` = `b`, the first read once on the read
/// connection; also the address of that connection.
async fn two_hashes_read(
    reads: &Reads,
    conn: &mut MultiplexedConnection,
    case: &str,
) -> (String, String, String) {
    let (a, b) = (key(&format!("{case}-a")), key(&format!("{case}-b")));
    state_hash(conn, &a, b"a", "1").await;
    state_hash(conn, &b, b"b", "2").await;
    warm(reads).await;
    assert!(reads.read("get", &[&a]).await.is_some());
    let addr = client_addr(reads, conn).await;
    (a, b, addr)
}

/// `CLIENT PAUSE` holds every reply back: a call dropped mid-way leaves the connection in
/// step.
#[tokio::test]
async fn a_dropped_call_leaves_the_connection_in_step() {
    let Some(reads) = reads(&[]) else { return };
    let _alone = PAUSING.lock().await;
    let mut conn = direct(0).await;
    let (a, b, addr) = two_hashes_read(&reads, &mut conn, "dropped").await;

    pause(&mut conn, 200).await;
    let keys = [a.as_str()];
    let cut = tokio::time::timeout(Duration::from_millis(30), reads.read("get", &keys)).await;
    assert!(cut.is_err(), "answered during the pause");
    // The dropped call's replies are read and dropped: the next calls get their own, on the
    // same connection.
    for _ in 0..3 {
        let got = reads.read("get", &[&b, &a]).await.unwrap().unwrap();
        assert_eq!(item(&got[0]).value.as_ref(), b"b");
        assert_eq!(item(&got[1]).value.as_ref(), b"a");
    }
    assert_eq!(client_addr(&reads, &mut conn).await, addr);
    delete(&mut conn, &[&a, &b]).await;
}

/// Calls that outlive `readTimeout` fail with a time-out, and the connection they waited on
/// is closed (calls still waiting on it go the shared way); reads work again on a new one.
#[tokio::test]
async fn timed_out_calls_close_the_connection() {
    let Some(reads) = reads(&[("readTimeout", "150ms")]) else {
        return;
    };
    let _alone = PAUSING.lock().await;
    let mut conn = direct(0).await;
    let (a, b, addr) = two_hashes_read(&reads, &mut conn, "late").await;

    // Reads that come back in time, for longer than `readTimeout` in all: the connection's
    // one timer fires for calls already answered, and is set again for the next.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_millis(400) {
        let got = reads.read("get", &[&a]).await.unwrap().unwrap();
        assert_eq!(item(&got[0]).value.as_ref(), b"a");
    }
    assert_eq!(client_addr(&reads, &mut conn).await, addr);

    pause(&mut conn, 400).await;
    let started = Instant::now();
    let (one, other, both) = ([b.as_str()], [a.as_str()], [b.as_str(), a.as_str()]);
    let (x, y, z) = tokio::join!(
        reads.read("get", &one),
        reads.read("get", &other),
        reads.read("get", &both),
    );
    // The first call to time out closes the connection; a call whose own deadline had not
    // yet come when that happened is handed back to go the shared way instead.
    let mut timed_out = 0;
    for outcome in [x, y, z].into_iter().flatten() {
        let err = outcome.expect_err("timed out");
        assert!(err.to_string().contains("timed out"), "{err}");
        timed_out += 1;
    }
    assert!(timed_out >= 1, "no call timed out");
    assert!(started.elapsed() >= Duration::from_millis(140));
    assert!(started.elapsed() < Duration::from_millis(400));
    assert!(!reads.is_open());
    // Meanwhile reads go the shared way.
    assert!(reads.read("get", &[&a]).await.is_none());

    tokio::time::sleep(Duration::from_millis(400)).await;
    warm(&reads).await;
    let got = reads.read("get", &[&b, &a]).await.unwrap().unwrap();
    assert_eq!(item(&got[0]).value.as_ref(), b"b");
    assert_eq!(item(&got[1]).value.as_ref(), b"a");
    assert_ne!(client_addr(&reads, &mut conn).await, addr);
    delete(&mut conn, &[&a, &b]).await;
}

/// Taken by the tests that pause Redis, so that one's pause does not upset the other's
/// timing.
static PAUSING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds back every client's replies for `ms` milliseconds.
async fn pause(conn: &mut MultiplexedConnection, ms: u64) {
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .exec_async(conn)
        .await
        .unwrap();
}

/// Dropping the store closes its read connection.
#[tokio::test]
async fn dropping_the_store_closes_the_connection() {
    let Some(reads) = reads(&[]) else { return };
    let mut conn = direct(0).await;
    warm(&reads).await;
    assert!(reads.read("get", &["absent"]).await.is_some());
    let addr = client_addr(&reads, &mut conn).await;
    drop(reads);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !list.contains(&format!("addr={addr} ")) {
            break;
        }
        assert!(Instant::now() < deadline, "the connection stayed open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

//! `nameresolution.sqlite` against real database files shared by several resolvers (as several
//! sidecars on one machine share one file).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_components::Metadata;
use tandem_components::nameresolution::{Instance, NameResolver, ResolveRequest};
use tandem_sqlite::SqliteNameResolver;

fn meta(path: &Path, extra: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::new("nameresolution", "test")
        .with("connectionString", path.display().to_string());
    for (k, v) in extra {
        m.insert(*k, *v);
    }
    m
}

fn instance(app_id: &str, address: &str) -> Instance {
    Instance {
        app_id: app_id.into(),
        namespace: "default".into(),
        address: address.into(),
    }
}

fn req(app_id: &str) -> ResolveRequest<'_> {
    ResolveRequest {
        app_id,
        namespace: "default",
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rows(path: &Path) -> Vec<(String, String, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT app_id, address, last_update FROM hosts ORDER BY address")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn sidecars_sharing_a_file_find_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nr.db");
    let a = SqliteNameResolver::build(&meta(&path, &[])).await.unwrap();
    let b1 = SqliteNameResolver::build(&meta(&path, &[])).await.unwrap();
    let b2 = SqliteNameResolver::build(&meta(&path, &[])).await.unwrap();
    a.register(&instance("a", "127.0.0.1:4001")).await.unwrap();
    b2.register(&instance("b", "127.0.0.1:4003")).await.unwrap();
    b1.register(&instance("b", "127.0.0.1:4002")).await.unwrap();

    // Sorted, so successive answers keep a stable order for round-robin.
    assert_eq!(
        a.resolve(req("b")).await.unwrap(),
        ["127.0.0.1:4002", "127.0.0.1:4003"]
    );
    assert_eq!(b1.resolve(req("a")).await.unwrap(), ["127.0.0.1:4001"]);
    assert!(a.resolve(req("nope")).await.unwrap().is_empty());
    let other_ns = ResolveRequest {
        app_id: "b",
        namespace: "prod",
    };
    assert!(a.resolve(other_ns).await.unwrap().is_empty());

    // Graceful shutdown removes the row at once; a second unregister is a no-op.
    b2.unregister().await.unwrap();
    b2.unregister().await.unwrap();
    assert_eq!(a.resolve(req("b")).await.unwrap(), ["127.0.0.1:4002"]);
    assert_eq!(rows(&path).len(), 2);
}

#[tokio::test]
async fn stale_rows_are_ignored_and_old_ones_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nr.db");
    let r = SqliteNameResolver::build(&meta(&path, &[])).await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        // Missed three heartbeats (15 s with the default 5 s interval): dead.
        conn.execute(
            "INSERT INTO hosts VALUES ('dead', '10.0.0.1:1', 'b', 'default', ?1)",
            [now() - 16],
        )
        .unwrap();
        // Missed two: still alive.
        conn.execute(
            "INSERT INTO hosts VALUES ('slow', '10.0.0.2:1', 'b', 'default', ?1)",
            [now() - 9],
        )
        .unwrap();
        // Older than the cleanup interval (1 h): deleted when someone registers.
        conn.execute(
            "INSERT INTO hosts VALUES ('ancient', '10.0.0.3:1', 'b', 'default', ?1)",
            [now() - 7200],
        )
        .unwrap();
    }
    assert_eq!(r.resolve(req("b")).await.unwrap(), ["10.0.0.2:1"]);
    r.register(&instance("c", "127.0.0.1:5000")).await.unwrap();
    let left: Vec<String> = rows(&path).into_iter().map(|(_, a, _)| a).collect();
    assert_eq!(left, ["10.0.0.1:1", "10.0.0.2:1", "127.0.0.1:5000"]);
}

#[tokio::test]
async fn heartbeats_keep_the_row_fresh_and_restore_a_lost_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nr.db");
    let settings = [("updateInterval", "1s"), ("timeout", "500ms")];
    let r = SqliteNameResolver::build(&meta(&path, &settings))
        .await
        .unwrap();
    r.register(&instance("a", "127.0.0.1:6000")).await.unwrap();
    let first = rows(&path)[0].2;
    // Someone else's cleanup deleted the row: the next heartbeat writes it again.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM hosts", [])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = rows(&path);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].2 > first, "heartbeat moved last_update: {after:?}");
    assert_eq!(r.resolve(req("a")).await.unwrap(), ["127.0.0.1:6000"]);

    // A dropped resolver stops its heartbeat (the row then expires by itself).
    drop(r);
    let frozen = rows(&path)[0].2;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rows(&path)[0].2, frozen);
}

#[tokio::test]
async fn a_restarted_sidecar_takes_over_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nr.db");
    let before = SqliteNameResolver::build(&meta(&path, &[])).await.unwrap();
    before
        .register(&instance("a", "127.0.0.1:7000"))
        .await
        .unwrap();
    // The old process died without unregistering; the new one binds the same port.
    drop(before);
    let after = SqliteNameResolver::build(&meta(&path, &[])).await.unwrap();
    after
        .register(&instance("a2", "127.0.0.1:7000"))
        .await
        .unwrap();
    let all = rows(&path);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, "a2");
    assert!(after.resolve(req("a")).await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_settings_and_unopenable_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteNameResolver::build(&meta(&dir.path().join("nr.db"), &[("tableName", "x;y")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tableName"), "{err}");
    let missing = dir.path().join("no/such/folder/nr.db");
    assert!(
        SqliteNameResolver::build(&meta(&missing, &[]))
            .await
            .is_err()
    );
}

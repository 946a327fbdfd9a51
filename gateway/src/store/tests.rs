//! What only SQLite has: the file (its mode, a file that is not a database), and data dirs
//! written by earlier versions upgrading in place. The behaviour both databases share is tested
//! on both in `tests/tests/store.rs`, against a real PostgreSQL.

use std::net::SocketAddr;

use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

pub(crate) async fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("tether.db")).await.unwrap();
    (dir, store)
}

async fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(&Location::Sqlite(path.to_path_buf()), Migrate::Yes, PoolOptions::default()).await
}

#[tokio::test]
async fn reopening_keeps_data_the_file_is_private_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.db");
    let uuid = Uuid::new_v4();
    {
        let store = open(&path).await.unwrap();
        store.add_device(uuid, None).await.unwrap();
        store.close().await;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let store = open(&path).await.unwrap();
    assert!(store.device(uuid).await.unwrap().unwrap().registered);
    let (found, known) = store.schema_version().await.unwrap();
    assert_eq!(found, known);
    store.execute(Stmt::new("PRAGMA user_version = 99")).await.unwrap();
    store.close().await;
    let err = open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("tether.db"), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    let err = open(&path).await.unwrap_err().to_string();
    assert!(err.contains("tether.db") && err.contains("cannot open"), "{err}");
    let err = open(&dir.path().join("missing-dir/tether.db")).await.unwrap_err().to_string();
    assert!(err.contains("missing-dir"), "{err}");
}

/// A data dir from the first release (schema 1: one MPS account in `settings`, tokens without
/// scopes) and a connected device from before fleets.
#[tokio::test]
async fn a_version_1_store_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.db");
    let uuid = Uuid::new_v4();
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
        sqlx::raw_sql(migrations::SQLITE[0]).execute(&pool).await.unwrap();
        let legacy = format!(
            "INSERT INTO settings VALUES ('mps_username', 'tether'), ('mps_password_hash', 'h');
             INSERT INTO tokens (name, hash, created_at) VALUES ('alice', 'th', 0);
             INSERT INTO devices (uuid, connected_since, remote_addr) VALUES ('{uuid}', 1, '198.18.0.1:1');
             PRAGMA user_version = 1;"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(legacy)).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let err = Store::open(&Location::Sqlite(path.clone()), Migrate::No, PoolOptions::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Outdated { found: 1, .. }) && err.to_string().contains("db migrate"), "{err}");
    let store = open(&path).await.unwrap();
    assert_eq!(store.mps_accounts().await.unwrap(), ["tether"]);
    assert_eq!(store.mps_account_hash("tether").await.unwrap().as_deref(), Some("h"));
    let token = store.token_by_hash("th").await.unwrap().unwrap();
    assert_eq!((token.scope, token.expires_at), (TokenScope::Attach, None));
    // A record connected before fleets names no instance; the first start after the upgrade
    // marks it disconnected.
    let now = OffsetDateTime::now_utc();
    assert_eq!(store.mark_instance_disconnected("gw-a", now, "gateway restarted", true).await.unwrap(), 1);
    assert!(store.device(uuid).await.unwrap().unwrap().connected_since.is_none());
}

#[tokio::test]
async fn a_backup_copy_is_a_consistent_database_while_writers_go_on() {
    let (dir, store) = sqlite().await;
    let remote: SocketAddr = "198.18.0.1:1".parse().unwrap();
    let uuids: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    let stmts: Vec<Stmt> = uuids.iter().map(|u| devices::hello(*u, OffsetDateTime::now_utc(), remote)).collect();
    store.record(&stmts).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                let stmt = devices::hello(Uuid::new_v4(), OffsetDateTime::now_utc(), remote);
                store.record(&[stmt]).await.unwrap();
            }
        })
    };
    let copy = dir.path().join("copy.db");
    store.copy_sqlite_to(&copy).await.unwrap();
    writer.await.unwrap();
    let copied = open(&copy).await.unwrap();
    let listed = copied.list_devices(DevicePage::default()).await.unwrap();
    assert!(listed.len() >= 200, "{} devices in the copy", listed.len());
    assert_eq!(copied.check().await.unwrap().integrity, "ok");
}

/// A data dir from before the redirection tap (schema 3) gains its table, and the remote fix's
/// (schema 5), in place.
#[tokio::test]
async fn a_version_3_store_gains_the_redirection_and_remote_fix_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.db");
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
        for migration in &migrations::SQLITE[..3] {
            sqlx::raw_sql(*migration).execute(&pool).await.unwrap();
        }
        sqlx::raw_sql("PRAGMA user_version = 3").execute(&pool).await.unwrap();
        pool.close().await;
    }
    let store = open(&path).await.unwrap();
    let latest = migrations::SQLITE.len() as i64;
    assert_eq!(store.schema_version().await.unwrap(), (latest, latest));
    let uuid = Uuid::new_v4();
    assert!(store.redirections_for(uuid, false, 10).await.unwrap().is_empty());
    assert!(store.actions_for(uuid, 10).await.unwrap().is_empty());
    assert_eq!(store.closed_session(uuid).await.unwrap(), None);
}

#[tokio::test]
async fn redirection_sessions_start_end_once_and_list_newest_first() {
    let (_dir, store) = sqlite().await;
    let uuid = Uuid::new_v4();
    let t0 = OffsetDateTime::now_utc() - time::Duration::seconds(60);
    let new = |technician: &str, at: OffsetDateTime| NewRedirection {
        uuid,
        kind: "sol",
        technician: technician.to_string(),
        device_user: None,
        port: 16994,
        instance: "gw-a".to_string(),
        started_at: at,
        outcome: RedirOutcome::Active,
    };
    let first = store.start_redirection(&new("alice", t0)).await.unwrap();
    let second = store.start_redirection(&new("bob", t0 + time::Duration::seconds(10))).await.unwrap();
    assert!(second > first);
    store.set_redirection_user(first, "admin").await.unwrap();
    let end =
        |at, outcome, to, from| RedirectionEnd { ended_at: at, outcome, bytes_to_device: to, bytes_from_device: from };
    store
        .end_redirection(second, &end(t0 + time::Duration::seconds(11), RedirOutcome::RefusedInUse, 8, 13))
        .await
        .unwrap();
    // A later end keeps the first end's time and outcome, and takes the new byte counts.
    store.end_redirection(second, &end(t0 + time::Duration::seconds(20), RedirOutcome::Closed, 9, 14)).await.unwrap();
    let rows = store.redirections_for(uuid, false, 10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [second, first]);
    assert_eq!((rows[0].outcome.as_str(), rows[0].duration_ms), ("refused_in_use", 1000));
    assert_eq!((rows[0].bytes_to_device, rows[0].bytes_from_device), (9, 14));
    let active = store.redirections_for(uuid, true, 10).await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!((active[0].technician.as_str(), active[0].device_user.as_deref()), ("alice", Some("admin")));
    assert!(active[0].ended_at.is_none() && active[0].duration_ms >= 60_000, "{:?}", active[0]);
    assert_eq!(store.redirections_for(uuid, false, 1).await.unwrap().len(), 1);
    // The gateway's next start ends what it left open, and only its own.
    let mut other = new("carol", t0);
    other.instance = "gw-b".to_string();
    store.start_redirection(&other).await.unwrap();
    assert_eq!(store.end_instance_redirections("gw-a", OffsetDateTime::now_utc()).await.unwrap(), 1);
    let active = store.redirections_for(uuid, true, 10).await.unwrap();
    assert_eq!(active.iter().map(|r| r.technician.as_str()).collect::<Vec<_>>(), ["carol"]);
    let alice = store.redirections_for(uuid, false, 10).await.unwrap().into_iter().find(|r| r.id == first).unwrap();
    assert_eq!(alice.outcome, "interrupted");
}

#[tokio::test]
async fn the_open_sessions_of_a_gateway_that_stopped_or_died_are_ended_by_another() {
    let (_dir, store) = sqlite().await;
    let stale = std::time::Duration::from_secs(10);
    for id in ["gw-a", "gw-b", "gw-c"] {
        let me = InstanceRegistration {
            id: id.to_string(),
            api_addr: None,
            internal_addr: None,
            version: "test".to_string(),
            run_id: format!("run-{id}"),
        };
        store.register_instance(&me, stale).await.unwrap();
    }
    let uuid = Uuid::new_v4();
    let open_on = |instance: &str| NewRedirection {
        uuid,
        kind: "ider",
        technician: "alice".to_string(),
        device_user: None,
        port: 16994,
        instance: instance.to_string(),
        started_at: OffsetDateTime::now_utc(),
        outcome: RedirOutcome::Active,
    };
    for instance in ["gw-a", "gw-b", "gw-c"] {
        store.start_redirection(&open_on(instance)).await.unwrap();
    }
    // gw-b stopped; gw-c is alive; gw-a (this one) is never judged by itself.
    store.instance_stopped("gw-b", "run-gw-b").await.unwrap();
    assert_eq!(store.end_stale_instance_redirections("gw-a", stale).await.unwrap(), 1);
    let open: Vec<String> =
        store.redirections_for(uuid, true, 10).await.unwrap().into_iter().map(|r| r.instance).collect();
    assert_eq!(open, ["gw-c", "gw-a"]);
    // gw-c's heartbeat goes stale.
    store
        .execute(Stmt::new("UPDATE instances SET heartbeat_at = heartbeat_at - 60000 WHERE id = 'gw-c'"))
        .await
        .unwrap();
    assert_eq!(store.end_stale_instance_redirections("gw-a", stale).await.unwrap(), 1);
    let rows = store.redirections_for(uuid, false, 10).await.unwrap();
    assert_eq!(rows.iter().filter(|r| r.ended_at.is_none()).count(), 1);
    assert!(rows.iter().filter(|r| r.instance != "gw-a").all(|r| r.outcome == "interrupted"));
}

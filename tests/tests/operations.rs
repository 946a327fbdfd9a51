//! An operator's day with the store: backing a running gateway up and restoring it on a new
//! machine, checking and migrating the database, and running the operator commands against a
//! PostgreSQL store named on the command line or in the environment.

use std::process::Command;
use std::time::Duration;

use e2e::postgres::Postgres;
use e2e::process::run;
use e2e::{bin, operator_in, Gateway, Sim};
use uuid::Uuid;

fn tether(args: &[&str]) -> Command {
    let mut command = Command::new(bin("tether"));
    command.args(args);
    command
}

/// Runs `tether ARGS` expecting it to fail; returns stderr.
fn fails(args: &[&str]) -> String {
    let output = tether(args).output().expect("running tether");
    assert!(!output.status.success(), "tether {args:?} succeeded:\n{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_operator_backs_up_a_running_gateway_and_restores_it_into_a_new_data_dir() {
    let mut gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    gateway.operator(&["device", "add", &uuid.to_string(), "--password", "Dev1ce-Passw0rd"]);
    gateway.create_token("alice", &["--scope", "read"]);
    let mut sim = Sim::start(&gateway, &[]);
    e2e::wait_for("a device connected", Duration::from_secs(30), || {
        gateway.devices_json().as_array().is_some_and(|d| d.iter().any(|d| d["connected"] == true))
    });

    // While the gateway runs and writes device records.
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("tether-backup.tar.gz");
    let out = gateway.operator(&["backup", file.to_str().unwrap()]);
    assert!(out.contains("tether.db") && out.contains("tls"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    sim.process().terminate(Duration::from_secs(5));
    gateway.stop();

    let new_dir = tempfile::tempdir().unwrap();
    let new = new_dir.path().to_str().unwrap();
    let out = run(&mut tether(&["--data-dir", new, "restore", file.to_str().unwrap()]));
    assert!(out.contains("restored"), "{out}");
    assert_eq!(
        std::fs::read(gateway.data_dir().join("tls/ca-key.pem")).unwrap(),
        std::fs::read(new_dir.path().join("tls/ca-key.pem")).unwrap(),
        "the CA key devices trust"
    );
    let check: serde_json::Value =
        serde_json::from_str(&run(&mut tether(&["--data-dir", new, "db", "check", "--json"])))
            .expect("db check --json prints JSON");
    assert_eq!(check["integrity"], "ok", "{check}");
    assert!(check["devices"].as_u64().unwrap() >= 2, "{check}");
    let tokens = run(&mut tether(&["--data-dir", new, "token", "list", "--json"]));
    assert!(tokens.contains("\"alice\""), "{tokens}");
    let devices = operator_in(new_dir.path(), &["mps-credentials", "list"]);
    assert!(devices.contains(e2e::process::MPS_USER), "{devices}");

    // Not over a data dir that holds a gateway, unless forced.
    let err = fails(&["--data-dir", new, "restore", file.to_str().unwrap()]);
    assert!(err.contains("--force"), "{err}");
    run(&mut tether(&["--data-dir", new, "restore", "--force", file.to_str().unwrap()]));
    // Something that is not a backup.
    std::fs::write(backups.path().join("junk.tar.gz"), b"not a backup").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let err = fails(&[
        "--data-dir",
        empty.path().to_str().unwrap(),
        "restore",
        backups.path().join("junk.tar.gz").to_str().unwrap(),
    ]);
    assert!(err.to_lowercase().contains("backup"), "{err}");
}

#[test]
fn operator_commands_work_against_postgres_from_the_flag_the_environment_or_the_config() {
    let postgres = Postgres::start().expect("PostgreSQL (run scripts/install-test-deps.sh)");
    let url = postgres.create_database("operations").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();

    let out = run(&mut tether(&["--data-dir", data, "--database", &url, "db", "migrate"]));
    assert!(out.contains("migrated to schema version"), "{out}");
    let out = run(&mut tether(&["--data-dir", data, "--database", &url, "db", "migrate"]));
    assert!(out.contains("up to date"), "{out}");

    run(&mut tether(&[
        "--data-dir",
        data,
        "--database",
        &url,
        "mps-credentials",
        "set",
        "fleetuser",
        "Secr3t-Passw0rd",
    ]));
    let listed = run(tether(&["--data-dir", data, "mps-credentials", "list"]).env("TETHER_DATABASE_URL", &url));
    assert!(listed.contains("fleetuser"), "{listed}");
    std::fs::write(dir.path().join("tether.toml"), format!("database_url = \"{url}\"\n")).unwrap();
    let uuid = Uuid::new_v4();
    run(&mut tether(&["--data-dir", data, "device", "add", &uuid.to_string()]));
    let check = run(&mut tether(&["--data-dir", data, "db", "check"]));
    assert!(check.contains("postgres") && check.contains("1 devices"), "{check}");
    // The SQLite file of the data dir was never created: everything went to PostgreSQL.
    assert!(!dir.path().join("tether.db").exists());
    assert_eq!(postgres.psql("operations", "SELECT COUNT(*) FROM devices").unwrap().trim(), "1");

    // A wrong URL says what to check, without the password.
    let err = fails(&["--data-dir", data, "--database", "postgres://tether:hunter2@127.0.0.1:1/none", "db", "check"]);
    assert!(err.contains("127.0.0.1:1") && !err.contains("hunter2"), "{err}");
}

#[test]
fn tokens_belong_to_the_operator_unless_another_user_is_named() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let out = run(&mut tether(&["--data-dir", dir, "token", "create", "ops"]));
    assert!(out.contains("for user operator"), "{out}");
    run(&mut tether(&["--data-dir", dir, "token", "create", "reader", "--user", "operator", "--scope", "read"]));
    let err = fails(&["--data-dir", dir, "token", "create", "theirs", "--user", "nobody"]);
    assert!(err.contains("no user \"nobody\""), "{err}");
    let listed = run(&mut tether(&["--data-dir", dir, "token", "list", "--json"]));
    let tokens: serde_json::Value = serde_json::from_str(&listed).expect("token list --json prints JSON");
    let tokens = tokens.as_array().expect("an array");
    let names: Vec<&str> = tokens.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["ops", "reader"], "{listed}");
    assert!(tokens.iter().all(|t| t["user_id"].is_i64() && t["user_id"] == tokens[0]["user_id"]), "{listed}");
}

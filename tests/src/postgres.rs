//! A throwaway PostgreSQL cluster owned by the test run: `initdb` into a temp dir, `pg_ctl start`
//! on a free loopback port, one database per test ([`Postgres::create_database`]), stopped
//! (`pg_ctl -m immediate stop`) and deleted on drop. No system service and no Rust client: the
//! server binaries of the installed PostgreSQL (`/usr/lib/postgresql/<newest>/bin` on Debian) and
//! its `psql`/`createdb` do everything.
//!
//! `initdb` refuses to run as root: as root, the cluster's directory belongs to the `postgres`
//! user and the server commands run as it (`runuser -u postgres --`); as anyone else they run as
//! the current user. Clients connect over TCP as the superuser `tether`, trusted without a
//! password (`initdb -A trust`), which only loopback can reach (`listen_addresses=127.0.0.1`).
//!
//! Missing PostgreSQL is an error that says to run `scripts/install-test-deps.sh`: tests that
//! need it fail, they are never skipped.

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Overrides where the server binaries (`initdb`, `pg_ctl`, `postgres`) are looked for.
pub const BIN_DIR_ENV: &str = "TETHER_POSTGRES_BIN_DIR";

/// The superuser `initdb` creates; clients log in as it without a password.
pub const SUPERUSER: &str = "tether";

/// How long `initdb`, `pg_ctl start` and a client command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final `pg_ctl stop` may take before the postmaster is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running PostgreSQL cluster in a temp dir; stopped and deleted when dropped.
#[derive(Debug)]
pub struct Postgres {
    bin_dir: PathBuf,
    /// Holds `data/` (the cluster), `sock/` (its Unix socket) and `postgres.log`.
    dir: tempfile::TempDir,
    port: u16,
    /// The server commands run as the `postgres` user (we are root).
    as_postgres: bool,
    stopped: bool,
}

impl Postgres {
    /// Creates and starts a cluster on a free loopback port (up to three ports are tried, in case
    /// another process takes the free one first). Fails when PostgreSQL is not installed, saying
    /// how to install it.
    pub fn start() -> Result<Postgres> {
        let bin_dir = find_bin_dir()?;
        let as_postgres = running_as_root();
        if as_postgres && !user_exists("postgres") {
            bail!(
                "running as root, but there is no `postgres` user to run initdb as (initdb refuses root); \
                 run scripts/install-test-deps.sh as root (it installs the postgresql package, which creates it)"
            );
        }
        let dir = tempfile::Builder::new().prefix("tether-pg-").tempdir().context("creating a temp dir")?;
        std::fs::create_dir(dir.path().join("sock")).context("creating the socket dir")?;
        if as_postgres {
            let status =
                Command::new("chown").args(["-R", "postgres:"]).arg(dir.path()).status().context("running chown")?;
            if !status.success() {
                bail!("chown -R postgres: {} failed ({status})", dir.path().display());
            }
        }
        let mut postgres = Postgres { bin_dir, dir, port: 0, as_postgres, stopped: true };
        postgres.initdb()?;
        let mut last_error = None;
        for _ in 0..3 {
            postgres.port = free_port()?;
            let logged = postgres.log().len();
            match postgres.pg_ctl_start() {
                Ok(()) => {
                    postgres.stopped = false;
                    return Ok(postgres);
                }
                Err(err) if postgres.log().get(logged..).is_some_and(|new| new.contains("Address already in use")) => {
                    last_error = Some(err)
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free port")))
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `postgres` database, as the superuser: `postgres://tether@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` (which need not exist).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` (letters, digits and `_`, starting with a letter or `_`; at most
    /// 63 bytes) and returns its URL. Give each test its own.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            bail!("{name:?} is not a plain database name (letters, digits and _, not starting with a digit)");
        }
        let mut command = Command::new(self.bin_dir.join("createdb"));
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", SUPERUSER, "-w", name]);
        run(&mut command, &format!("createdb {name}"), COMMAND_TIMEOUT)?;
        Ok(self.database_url(name))
    }

    /// Runs `sql` with `psql` on database `database` (stops at the first error) and returns what
    /// it printed: rows unaligned, fields separated by `|`, no headers.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut command = Command::new(self.bin_dir.join("psql"));
        command.arg(format!("{}?connect_timeout=10", self.database_url(database))).args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        run(&mut command, &format!("psql -c {sql:?}"), COMMAND_TIMEOUT)
    }

    /// The directory of the server and client binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server now (`pg_ctl -m immediate stop`; the postmaster is killed if that
    /// fails). Dropping does the same and also deletes the directory.
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let data = self.data_dir();
        let mut command = self.server_command("pg_ctl");
        command.arg("-D").arg(&data).args(["-m", "immediate", "-w", "-t", "10", "stop"]);
        let result = run(&mut command, "pg_ctl stop", STOP_TIMEOUT + Duration::from_secs(5));
        if result.is_err() {
            // The postmaster's pid is the first line of postmaster.pid.
            if let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
                .ok()
                .and_then(|pid| pid.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            {
                let _ = Command::new("sh").args(["-c", &format!("kill -KILL {pid}")]).status();
            }
        }
        result.map(drop)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn initdb(&self) -> Result<()> {
        let mut command = self.server_command("initdb");
        command.arg("-D").arg(self.data_dir()).args([
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run(&mut command, "initdb", COMMAND_TIMEOUT).map(drop)
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().join("sock").display()
        );
        let mut command = self.server_command("pg_ctl");
        command.arg("-D").arg(self.data_dir()).arg("-l").arg(self.log_path()).args(["-o", &options]);
        command.args(["-w", "-t", "30", "start"]);
        run(&mut command, "pg_ctl start", COMMAND_TIMEOUT)
            .map(drop)
            .with_context(|| format!("the server's log ({}):\n{}", self.log_path().display(), tail(&self.log(), 20)))
    }

    /// A server binary, run as `postgres` when we are root, from the temp dir (so that the
    /// `postgres` user can read its working directory).
    fn server_command(&self, name: &str) -> Command {
        let program = self.bin_dir.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir(self.dir.path());
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("stopping the test PostgreSQL cluster: {err:#}");
        }
        if std::thread::panicking() {
            eprintln!("--- PostgreSQL log (last lines):\n{}\n--- end of PostgreSQL log", tail(&self.log(), 30));
        }
    }
}

/// The directory with `initdb` and `pg_ctl`: `$TETHER_POSTGRES_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian, Ubuntu), else the `PATH`.
fn find_bin_dir() -> Result<PathBuf> {
    find_bin_dir_in(std::env::var_os(BIN_DIR_ENV), Path::new("/usr/lib/postgresql"), std::env::var_os("PATH"))
}

fn find_bin_dir_in(
    env: Option<std::ffi::OsString>,
    versions_root: &Path,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = env {
        let dir = PathBuf::from(dir);
        if !has_server(&dir) {
            bail!("${BIN_DIR_ENV} is {}, which holds no initdb and pg_ctl", dir.display());
        }
        return Ok(dir);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(versions_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|part| part.parse().ok()).collect();
            let bin = entry.path().join("bin");
            Some((version?, bin)).filter(|(_, bin)| has_server(bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(dir) = path.and_then(|path| std::env::split_paths(&path).find(|d| has_server(d))) {
        return Ok(dir);
    }
    bail!(
        "PostgreSQL is not installed (no initdb and pg_ctl in /usr/lib/postgresql/*/bin or on the PATH); \
         run scripts/install-test-deps.sh as root, or set {BIN_DIR_ENV} to the directory of the server binaries"
    )
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .is_ok_and(|passwd| passwd.lines().any(|line| line.split(':').next() == Some(name)))
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `command` to completion within `timeout` (killed after it) with stdin from /dev/null;
/// returns its stdout, or an error naming `what` with its output.
fn run(command: &mut Command, what: &str, timeout: Duration) -> Result<String> {
    let mut stdout = tempfile::tempfile().context("a temp file for stdout")?;
    let mut stderr = tempfile::tempfile().context("a temp file for stderr")?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {what} ({})", command.get_program().to_string_lossy()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |file: &mut File| {
        let mut text = String::new();
        let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
        text
    };
    let (out, err) = (read(&mut stdout), read(&mut stderr));
    match status {
        Some(status) if status.success() => Ok(out),
        Some(status) => bail!("{what} failed ({status}):\n{}{}", out, err.trim_end()),
        None => bail!("{what} did not finish within {timeout:?}:\n{}{}", out, err.trim_end()),
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_installed_version_is_taken_and_none_is_an_error_saying_what_to_run() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "13", "15", "notaversion"] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for name in ["initdb", "pg_ctl"] {
                std::fs::write(bin.join(name), "").unwrap();
            }
        }
        // 16 has no server binaries (a client-only install).
        std::fs::create_dir_all(root.path().join("16/bin")).unwrap();
        assert_eq!(find_bin_dir_in(None, root.path(), None).unwrap(), root.path().join("15/bin"));
        let env = Some(root.path().join("13/bin").into_os_string());
        assert_eq!(find_bin_dir_in(env, root.path(), None).unwrap(), root.path().join("13/bin"));
        let path = Some(root.path().join("9.6/bin").into_os_string());
        assert_eq!(find_bin_dir_in(None, Path::new("/nonexistent"), path).unwrap(), root.path().join("9.6/bin"));

        let err = find_bin_dir_in(None, Path::new("/nonexistent"), None).unwrap_err().to_string();
        assert!(err.contains("scripts/install-test-deps.sh"), "{err}");
        let err = find_bin_dir_in(Some("/nonexistent".into()), root.path(), None).unwrap_err().to_string();
        assert!(err.contains(BIN_DIR_ENV), "{err}");
    }

    #[test]
    fn a_cluster_starts_gives_each_test_a_database_and_goes_away() {
        let started = Instant::now();
        let mut postgres = Postgres::start().expect("a PostgreSQL cluster");
        eprintln!("PostgreSQL up in {:.2}s at {}", started.elapsed().as_secs_f64(), postgres.url());
        assert!(postgres.url().starts_with("postgres://tether@127.0.0.1:"), "{}", postgres.url());
        assert_eq!(postgres.psql("postgres", "select 1").unwrap().trim(), "1");

        let url = postgres.create_database("harness_selftest").unwrap();
        assert_eq!(url, format!("postgres://tether@127.0.0.1:{}/harness_selftest", postgres.port()));
        let sql = "create table t (n int); insert into t values (41), (1); select sum(n) from t";
        assert_eq!(postgres.psql("harness_selftest", sql).unwrap().trim(), "42");
        // A second database is separate.
        postgres.create_database("another_one").unwrap();
        let err = postgres.psql("another_one", "select * from t").unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
        assert!(postgres.create_database("harness_selftest").is_err(), "created twice");
        assert!(postgres.create_database("no; drop").is_err());
        // max_connections is high enough for a fleet of gateways' pools.
        assert_eq!(postgres.psql("postgres", "show max_connections").unwrap().trim(), "300");

        let data = postgres.data_dir();
        let port = postgres.port();
        postgres.stop().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "still listening after stop");
        drop(postgres);
        assert!(!data.exists(), "{} left behind", data.display());
    }
}

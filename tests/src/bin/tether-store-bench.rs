//! The store's write throughput, in device events per second, as the gateway writes them: through
//! the journal (batched transactions), on SQLite (a file in a temp dir) and on PostgreSQL (a
//! throwaway cluster it starts, or `--postgres URL`).
//!
//! ```text
//! tether-store-bench [--devices N] [--rounds R] [--postgres URL] [--only sqlite|postgres]
//! ```
//!
//! Each round writes, for every device, a connect, its ports, a keepalive stamp and a disconnect
//! (4 events, as a device that connects and drops causes); the figure is events written per
//! second of wall time, until the journal has committed the last one. Prints one line per
//! database.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use e2e::postgres::Postgres;
use tether_gateway::journal::{DeviceEvent, Journal, LiveState, LiveView};
use tether_gateway::store::{Location, Migrate, PoolOptions, Store};
use time::OffsetDateTime;
use uuid::Uuid;

const EVENTS_PER_DEVICE: usize = 4;

struct NoneLive;

impl LiveView for NoneLive {
    fn live_state(&self, _: Uuid) -> Option<LiveState> {
        None
    }
}

fn main() -> Result<()> {
    let mut devices = 2000usize;
    let mut rounds = 5usize;
    let mut postgres_url = None;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--devices" => devices = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--postgres" => postgres_url = Some(value()?),
            "--only" => only = Some(value()?),
            other => bail!("unknown argument {other}; see the file's doc"),
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let mut cluster = None;
    if only.as_deref() != Some("postgres") {
        let location = Location::Sqlite(dir.path().join("tether.db"));
        report("sqlite", runtime.block_on(bench(&location, devices, rounds))?, devices, rounds);
    }
    if only.as_deref() != Some("sqlite") {
        let url = match postgres_url {
            Some(url) => url,
            None => cluster.insert(Postgres::start()?).create_database("bench")?,
        };
        let location = Location::resolve(Some(&url), dir.path())?;
        report("postgres", runtime.block_on(bench(&location, devices, rounds))?, devices, rounds);
    }
    drop(cluster);
    Ok(())
}

fn report(kind: &str, seconds: f64, devices: usize, rounds: usize) {
    let events = devices * rounds * EVENTS_PER_DEVICE;
    println!("{kind:9} {events} device events in {seconds:.2} s: {:.0} events/s", events as f64 / seconds);
}

async fn bench(location: &Location, devices: usize, rounds: usize) -> Result<f64> {
    let store = Store::open(location, Migrate::Yes, PoolOptions::default()).await?;
    let uuids: Vec<Uuid> = (0..devices).map(|_| Uuid::new_v4()).collect();
    let remote = "198.18.0.1:40000".parse()?;
    let started = Instant::now();
    for round in 0..rounds {
        let errors =
            tether_gateway::metrics::Metrics::new().store_errors_of(tether_gateway::metrics::StoreTask::Journal);
        let (journal, writer) = Journal::start(store.clone(), Arc::new(NoneLive), devices, "bench".into(), errors);
        let now = OffsetDateTime::now_utc();
        for &uuid in &uuids {
            // The queue holds 16k events: wait for room rather than drop (the gateway drops and
            // resyncs instead; a benchmark must write every event).
            let mut event = DeviceEvent::Connected { uuid, at: now, remote };
            while !journal.record(event.clone()) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                event = DeviceEvent::Connected { uuid, at: now, remote };
            }
            let ports = DeviceEvent::Ports { uuid, ports: vec![16992, 16993, 16994, 16995, 623, 664, 5900] };
            while !journal.record(ports.clone()) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        for &uuid in &uuids {
            journal.stamp(uuid, now);
        }
        for &uuid in &uuids {
            let event = DeviceEvent::Disconnected { uuid, at: now, reason: format!("round {round}") };
            while !journal.record(event.clone()) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        drop(journal);
        writer.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    store.close().await;
    Ok(seconds)
}

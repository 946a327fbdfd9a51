//! The load tools keep working: `tether-loadtest` measures a relay through Tether end to end
//! (`tether forward` → gateway → `amt-sim --expose` → a TCP echo). Seconds long; the full
//! side-by-side bench is `loadtest/bench.sh` (docs/benchmarks.md).

use std::process::Command;
use std::time::Duration;

use e2e::process::{bin, free_local_port, run};
use e2e::remote::pc;
use e2e::{Gateway, Process};

#[test]
fn technician_measures_round_trips_and_throughput_through_an_exposed_device_port() {
    let echo_port = free_local_port();
    let echo_addr = format!("127.0.0.1:{echo_port}");
    let mut echo = Process::spawn(
        "tether-loadtest echo",
        Command::new(bin("tether-loadtest")).args(["echo", "--listen", &echo_addr]),
    );
    echo.wait_for_log("echo listening on", Duration::from_secs(10));
    let gateway = Gateway::start(&[]);
    let expose = format!("7={echo_addr}");
    let (uuid, _sim) = pc(&gateway, &["--expose", &expose, "--window", "262144", "--adjust-step", "65536"]);
    let forward = gateway.forward(uuid, 7);
    let target = forward.addr().to_string();

    let out = run(Command::new(bin("tether-loadtest")).args(["rtt", "--connect", &target, "--count", "300", "--json"]));
    let rtt: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rtt["count"], 300, "{rtt}");
    let (p50, p99) = (rtt["p50_us"].as_f64().unwrap(), rtt["p99_us"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{rtt}");
    eprintln!("FIGURE 64-byte round trip through Tether: p50 {p50} µs, p99 {p99} µs");

    let out = run(Command::new(bin("tether-loadtest")).args(["push", "--connect", &target, "--mib", "16", "--json"]));
    let push: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(push["bytes"], 16 * 1024 * 1024, "{push}");
    eprintln!("FIGURE 16 MiB each way at once through Tether: {} bit/s", push["bits_per_second"]);
}

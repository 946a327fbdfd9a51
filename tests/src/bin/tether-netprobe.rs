//! A tiny TCP probe for the namespace tests, so that they need no nc/socat/python inside the
//! namespaces (it is built with the test crate: `target/<profile>/tether-netprobe`).
//!
//! ```text
//! tether-netprobe listen ADDR            prints `listening ADDR`, then `accepted PEER` per
//!                                        connection, and echoes what each peer sends; runs
//!                                        until killed
//! tether-netprobe connect ADDR [MS]      connects (timeout MS, default 3000), sends a line, reads
//!                                        the echo; prints `connected LOCAL -> PEER` and exits 0,
//!                                        or prints the error and exits 1
//! tether-netprobe http-get ADDR PATH     sends `GET PATH HTTP/1.0` and copies the whole response
//!                                        to stdout (10 s timeouts); exits 1 on a network error
//! tether-netprobe capture IF SECONDS     prints `capturing IF`, then for each Wake-on-LAN magic
//!                                        packet seen on IF (raw frames, pnet) `magic ethertype-0842
//!                                        MAC` or `magic udp-PORT MAC`; exits after SECONDS
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok());
    match (args.first().map(String::as_str), addr) {
        (Some("listen"), Some(addr)) => listen(addr),
        (Some("connect"), Some(addr)) => {
            let ms = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(3000);
            connect(addr, Duration::from_millis(ms))
        }
        (Some("http-get"), Some(addr)) => http_get(addr, args.get(2).map(String::as_str).unwrap_or("/")),
        (Some("capture"), _) => match (args.get(1), args.get(2).and_then(|s| s.parse().ok())) {
            (Some(interface), Some(seconds)) => capture(interface, Duration::from_secs(seconds)),
            _ => {
                eprintln!("usage: tether-netprobe capture IF SECONDS");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "usage: tether-netprobe listen ADDR | connect ADDR [TIMEOUT_MS] | http-get ADDR PATH | capture IF SECONDS"
            );
            ExitCode::from(2)
        }
    }
}

fn listen(addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening {}", listener.local_addr().unwrap_or(addr));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        match stream.peer_addr() {
            Ok(peer) => println!("accepted {peer}"),
            Err(_) => continue,
        }
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut writer = match stream.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if writeln!(writer, "{line}").is_err() {
                    break;
                }
            }
        });
    }
    ExitCode::SUCCESS
}

fn connect(addr: SocketAddr, timeout: Duration) -> ExitCode {
    let result = (|| -> std::io::Result<(SocketAddr, SocketAddr)> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"tether-netprobe\n")?;
        let mut echo = String::new();
        BufReader::new(&stream).read_line(&mut echo)?;
        if echo.trim_end() != "tether-netprobe" {
            return Err(std::io::Error::other(format!("unexpected echo {echo:?}")));
        }
        Ok((stream.local_addr()?, stream.peer_addr()?))
    })();
    match result {
        Ok((local, peer)) => {
            println!("connected {local} -> {peer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("failed {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> ExitCode {
    let result = (|| -> std::io::Result<Vec<u8>> {
        let timeout = Duration::from_secs(10);
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response) => {
            let mut stdout = std::io::stdout();
            if stdout.write_all(&response).and_then(|_| stdout.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("GET http://{addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the magic packets seen on `interface` for `duration`: raw frames of EtherType 0x0842,
/// and UDP datagrams (IPv4) carrying the pattern.
fn capture(interface: &str, duration: Duration) -> ExitCode {
    let Some(iface) = pnet_datalink::interfaces().into_iter().find(|i| i.name == interface) else {
        eprintln!("no interface {interface}");
        return ExitCode::FAILURE;
    };
    let config = pnet_datalink::Config { read_timeout: Some(Duration::from_millis(100)), ..Default::default() };
    let mut rx = match pnet_datalink::channel(&iface, config) {
        Ok(pnet_datalink::Channel::Ethernet(_, rx)) => rx,
        Ok(_) => {
            eprintln!("{interface}: not an Ethernet channel");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{interface}: {e} (raw sockets need root)");
            return ExitCode::FAILURE;
        }
    };
    println!("capturing {interface}");
    let _ = std::io::stdout().flush();
    let deadline = std::time::Instant::now() + duration;
    while std::time::Instant::now() < deadline {
        let Ok(frame) = rx.next() else { continue };
        if frame.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let kind = match ethertype {
            protocols::wol::ETHERTYPE => "ethertype-0842".to_owned(),
            0x0800 if frame.len() >= 14 + 20 + 8 && frame[14 + 9] == 17 => {
                let ihl = usize::from(frame[14] & 0x0F) * 4;
                match frame.get(14 + ihl + 2..14 + ihl + 4) {
                    Some(port) => format!("udp-{}", u16::from_be_bytes([port[0], port[1]])),
                    None => continue,
                }
            }
            _ => continue,
        };
        if let Some(target) = protocols::wol::find_target(&frame[14..]) {
            println!("magic {kind} {target}");
            let _ = std::io::stdout().flush();
        }
    }
    ExitCode::SUCCESS
}

//! The agent's session against a stand-in gateway (quinn on loopback, no store): capabilities in
//! the hello; a signed script run, followed by a fresh report and the result naming it; the
//! result sent again on the next connection until its receipt; a refusal; a message kept,
//! answered received then read, its receipts recorded; a relayed session to a local port.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use bytes::{Bytes, BytesMut};
use protocols::tap::{
    self, ActionBody, ActionKind, ActionStatus, Capabilities, Message, MessageBody, RefuseReason, SignDomain, Signed,
};
use protocols::telemetry::{Reading, Report};
use uuid::Uuid;

use agent::conn::Agent;
use agent::inbox::{self, Confirmed};
use agent::state::{AgentState, Enrollment, StateDir};

const WAIT: Duration = Duration::from_secs(10);

fn report() -> Report {
    Report {
        firewall: Reading::unknown("test"),
        antivirus: Reading::unknown("test"),
        last_full_scan: Reading::unknown("test"),
        updates: Reading::unknown("test"),
        backup: Reading::unknown("test"),
        os_version: Reading::unknown("test"),
        boot_time: Reading::unknown("test"),
        disk: Reading::unknown("test"),
        agent_version: "test".into(),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sign(key: &Ed25519KeyPair, domain: SignDomain, payload: BytesMut) -> Signed {
    let signature = key.sign(&tap::signed_message(domain, &payload)).as_ref().try_into().unwrap();
    Signed { payload: payload.freeze(), signature }
}

fn action(key: &Ed25519KeyPair, target: Uuid, script: &str) -> (Uuid, Message) {
    let body = ActionBody {
        id: Uuid::new_v4(),
        target,
        kind: ActionKind::Script,
        issued_at: now(),
        expires_at: now() + 600,
        timeout_secs: 30,
        issued_by: "tina@support.example".into(),
        body: script.into(),
    };
    let mut payload = BytesMut::new();
    body.encode(&mut payload);
    (body.id, Message::Action(sign(key, SignDomain::Action, payload)))
}

/// The gateway's end of the control stream.
struct Control {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Control {
    async fn write(&mut self, message: &Message) {
        let mut out = BytesMut::new();
        message.encode(&mut out);
        self.send.write_all(&out).await.unwrap();
    }

    async fn read(&mut self) -> Message {
        loop {
            if let Some((message, used)) = tap::decode(&self.buf, &tap::Limits::default()).unwrap() {
                let _ = self.buf.split_to(used);
                return message;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(WAIT, self.recv.read(&mut chunk)).await.expect("the agent is silent").unwrap();
            self.buf.extend_from_slice(&chunk[..n.expect("the agent closed the control stream")]);
        }
    }

    /// The next frame that is not a report (reports are checked by the caller when it matters).
    async fn read_skipping_reports(&mut self) -> Message {
        loop {
            match self.read().await {
                Message::Report { .. } => continue,
                other => return other,
            }
        }
    }
}

/// Accepts the agent's next connection: hello (checked), welcome; the connection and its control
/// stream.
async fn accept(endpoint: &quinn::Endpoint, uuid: Uuid) -> (quinn::Connection, Control) {
    let incoming = tokio::time::timeout(WAIT, endpoint.accept()).await.expect("no connection").unwrap();
    let connection = incoming.await.unwrap();
    let (send, recv) = tokio::time::timeout(WAIT, connection.accept_bi()).await.unwrap().unwrap();
    let mut control = Control { send, recv, buf: BytesMut::new() };
    match control.read().await {
        Message::Hello { uuid: said, capabilities, remote_help, .. } => {
            assert_eq!(said, uuid);
            assert!(remote_help);
            let all = Capabilities::TELEMETRY | Capabilities::ACTIONS | Capabilities::MESSAGES | Capabilities::RELAY;
            assert_eq!(capabilities, all);
        }
        other => panic!("expected a hello, got {other:?}"),
    }
    control.write(&Message::Welcome { server_time: now(), heartbeat_secs: 300 }).await;
    (connection, control)
}

struct Gateway {
    endpoint: quinn::Endpoint,
    key: Ed25519KeyPair,
}

/// A stand-in gateway, and a PC enrolled with it (state dir, with remote help on).
fn setup(state_dir: &std::path::Path, forward: u16) -> (Gateway, StateDir, Uuid) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().signed_by(&client_key, &issuer).unwrap();

    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![tap::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let endpoint =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let key = Ed25519KeyPair::generate().unwrap();

    let state = StateDir::open(state_dir).unwrap();
    let uuid = Uuid::new_v4();
    state
        .save_enrollment(&Enrollment {
            uuid,
            gateways: vec![endpoint.local_addr().unwrap().to_string()],
            signing_key: hex::encode(key.public_key().as_ref()),
            enrolled_at: now(),
        })
        .unwrap();
    std::fs::write(state.path("cert.pem"), client.pem()).unwrap();
    std::fs::write(state.path("key.pem"), client_key.serialize_pem()).unwrap();
    std::fs::write(state.path("gateway-ca.pem"), ca.pem()).unwrap();
    state.save_state(&AgentState { next_seq: 0, remote_help: true }).unwrap();
    std::fs::write(state.path("policy.toml"), format!("[forward]\nports = [{forward}]\n")).unwrap();
    (Gateway { endpoint, key }, state, uuid)
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test]
async fn a_session_carries_actions_messages_and_relayed_sessions() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (gateway, state, uuid) = setup(dir.path(), port);
    let source: Arc<dyn agent::collect::Collect> = Arc::new(report);
    let agent = Arc::new(Agent::new(state.clone(), source, "pc".into(), "Test OS".into()).unwrap());
    assert_eq!(agent.policy().forward.ports, [port]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let agent = Arc::clone(&agent);
        async move {
            agent
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        }
    });

    // A script: a fresh report, then the result naming it.
    let (connection, mut control) = accept(&gateway.endpoint, uuid).await;
    assert!(matches!(control.read().await, Message::Report { seq: 0, .. }));
    let (id, signed) = action(&gateway.key, uuid, "echo hello from $TETHER_ACTION_ID\n");
    control.write(&signed).await;
    let Message::Report { seq, .. } = control.read().await else { panic!("no report after the action") };
    assert_eq!(seq, 1);
    let Message::ActionResult(result) = control.read().await else { panic!("no result") };
    assert_eq!((result.id, result.status, result.exit_code), (id, ActionStatus::Completed, 0));
    assert_eq!(result.output, Bytes::from(format!("hello from {id}\n")));
    assert_eq!(result.report_seq, Some(1));

    // No receipt, connection lost: the next connection sends the reports, then the result.
    connection.close(0u32.into(), b"test");
    let (connection, mut control) = accept(&gateway.endpoint, uuid).await;
    assert!(matches!(control.read().await, Message::Report { seq: 0, .. }));
    assert!(matches!(control.read().await, Message::Report { seq: 1, .. }));
    let Message::ActionResult(again) = control.read().await else { panic!("the result was not sent again") };
    assert_eq!(again, result);
    control.write(&Message::Receipt { id }).await;
    eventually("the result is forgotten on its receipt", || state.path("results").read_dir().unwrap().count() == 0)
        .await;

    // The same action again: refused as a replay. Another machine's: refused as such.
    control.write(&signed).await;
    let Message::ActionResult(replayed) = control.read_skipping_reports().await else { panic!("no refusal") };
    assert_eq!((replayed.id, replayed.status, replayed.exit_code), (id, ActionStatus::Replayed, -1));
    let (other, signed) = action(&gateway.key, Uuid::new_v4(), "true\n");
    control.write(&signed).await;
    let Message::ActionResult(wrong) = control.read_skipping_reports().await else { panic!("no refusal") };
    assert_eq!((wrong.id, wrong.status), (other, ActionStatus::WrongTarget));

    // A message: received, then read once the user has read it; receipts recorded.
    let body = MessageBody {
        id: Uuid::new_v4(),
        issued_at: now(),
        expires_at: now() + 3600,
        target: uuid,
        from: "Tina".into(),
        text: "Your backup is fixed.".into(),
    };
    let mut payload = BytesMut::new();
    body.encode(&mut payload);
    control.write(&Message::Message(sign(&gateway.key, SignDomain::Message, payload))).await;
    assert_eq!(control.read_skipping_reports().await, Message::MessageState { id: body.id, read: false });
    assert_eq!(agent.messages_received(), 1);
    inbox::mark_read(&state, body.id).unwrap();
    assert_eq!(control.read_skipping_reports().await, Message::MessageState { id: body.id, read: true });
    control.write(&Message::Receipt { id: body.id }).await;
    control.write(&Message::Receipt { id: body.id }).await;
    eventually("the read state is confirmed", || {
        std::fs::read(state.path("inbox.json")).ok().is_some_and(|b| {
            let entries: Vec<inbox::Entry> = serde_json::from_slice(&b).unwrap();
            entries.iter().any(|e| e.id == body.id && e.confirmed == Confirmed::Read)
        })
    })
    .await;

    // A relayed session to the forwarded port; another port is refused.
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut frame = BytesMut::new();
    Message::ChannelOpen { channel: 1, port, requested_by: "tina".into() }.encode(&mut frame);
    frame.extend_from_slice(b"ping");
    send.write_all(&frame).await.unwrap();
    let mut answer = [0u8; tap::HEADER_LEN + 4];
    tokio::time::timeout(WAIT, recv.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(
        tap::decode(&answer, &tap::Limits::default()).unwrap().unwrap().0,
        Message::ChannelAccept { channel: 1 }
    );
    let mut echoed = [0u8; 4];
    tokio::time::timeout(WAIT, recv.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping");
    send.finish().unwrap();

    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut frame = BytesMut::new();
    Message::ChannelOpen { channel: 2, port: port.wrapping_add(1).max(1), requested_by: "tina".into() }
        .encode(&mut frame);
    send.write_all(&frame).await.unwrap();
    let answer = tokio::time::timeout(WAIT, recv.read_to_end(4096)).await.unwrap().unwrap();
    match tap::decode(&answer, &tap::Limits::default()).unwrap().unwrap().0 {
        Message::ChannelRefuse { channel: 2, reason: RefuseReason::PortNotAllowed, .. } => {}
        other => panic!("expected a refusal, got {other:?}"),
    }

    let _ = stop.send(());
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap().unwrap();
}

//! The WS-MAN client against a small firmware-like server on an in-memory stream: digest
//! challenges (fresh, reused, stale, refused), SOAP answers and faults, and TLS on 16993 with the
//! certificate pinned on first use.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;
use protocols::http_digest::{self, Authorization, Challenge, Expected};
use protocols::wsman::{self, Class, Element, Envelope, Header};
use uuid::Uuid;

use super::*;

const USER: &str = "admin";
const PASSWORD: &str = "P@ssw0rd";
const REALM: &str = "Digest:0123456789ABCDEF0123456789ABCDEF";

/// What the server saw and how it behaves.
#[derive(Debug, Default)]
struct Firmware {
    nonces_issued: u32,
    /// Calls the next authorized request's nonce stale once.
    expire_next: bool,
    /// `nc` values of the accepted requests.
    accepted_nc: Vec<String>,
    unauthenticated: u32,
}

impl Firmware {
    fn challenge(&mut self, stale: bool) -> Challenge {
        self.nonces_issued += 1;
        Challenge {
            realm: REALM.into(),
            nonce: format!("nonce-{}", self.nonces_issued),
            qop: vec!["auth".into()],
            stale,
            ..Challenge::default()
        }
    }
}

fn unauthorized(challenge: &Challenge) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("WWW-Authenticate", challenge.to_header_value().unwrap())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Answers a Get with an instance of the class it names, and anything else with a fault.
fn soap_answer(request: &[u8]) -> Response<Full<Bytes>> {
    let request = Envelope::parse(request, &wsman::Limits::default()).unwrap();
    let uri = request.header.resource_uri.clone().unwrap_or_default();
    let header = Header {
        action: wsman::action::GET_RESPONSE.into(),
        relates_to: request.header.message_id.clone(),
        resource_uri: Some(uri.clone()),
        ..Header::default()
    };
    let body = match Class::from_resource_uri(&uri) {
        Some(Class::CimSoftwareIdentity) if request.header.selector("InstanceID") == Some("AMT") => {
            Element::new(uri.clone(), "CIM_SoftwareIdentity")
                .with_child(Element::new(uri.clone(), "VersionString").with_text("16.1.27"))
        }
        _ => wsman::Fault {
            code: "Sender".into(),
            subcode: Some("DestinationUnreachable".into()),
            reason: "no such resource".into(),
            detail: None,
        }
        .to_element(wsman::ns::ADDRESSING),
    };
    let envelope = Envelope { header, body: Element::new(wsman::ns::SOAP, "Body").with_child(body) };
    Response::new(Full::new(Bytes::from(envelope.to_bytes().unwrap())))
}

async fn answer(firmware: Arc<Mutex<Firmware>>, request: HttpRequest<Incoming>) -> Response<Full<Bytes>> {
    let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let mut firmware = firmware.lock().unwrap();
    let Some(authorization) = authorization else {
        firmware.unauthenticated += 1;
        let challenge = firmware.challenge(false);
        return unauthorized(&challenge);
    };
    let auth = Authorization::parse(&authorization).unwrap();
    let current = format!("nonce-{}", firmware.nonces_issued);
    let expected = Expected { username: USER, password: PASSWORD, realm: REALM, nonce: &current };
    match http_digest::verify(&auth, "POST", &expected) {
        Ok(()) if firmware.expire_next => {
            firmware.expire_next = false;
            let challenge = firmware.challenge(true);
            unauthorized(&challenge)
        }
        Ok(()) => {
            firmware.accepted_nc.push(auth.nc.unwrap_or_default());
            soap_answer(&body)
        }
        Err(_) => {
            let challenge = firmware.challenge(false);
            unauthorized(&challenge)
        }
    }
}

/// A firmware-like server on one end of an in-memory stream; the other end.
fn firmware(state: Arc<Mutex<Firmware>>) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(server, state));
    client
}

async fn serve<IO>(io: IO, state: Arc<Mutex<Firmware>>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, std::convert::Infallible>(answer(state, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).await;
}

fn credentials(password: &str) -> Credentials {
    Credentials { user: USER.into(), password: password.into() }
}

#[tokio::test]
async fn digest_is_answered_once_and_the_nonce_reused_with_a_growing_count() {
    let state = Arc::new(Mutex::new(Firmware::default()));
    let (mut amt, pin) =
        connect(firmware(state.clone()), Uuid::new_v4(), PORT_HTTP, credentials(PASSWORD), None).await.unwrap();
    assert_eq!(pin, None);
    for _ in 0..3 {
        assert_eq!(amt.amt_version().await.unwrap(), "16.1.27");
    }
    let seen = state.lock().unwrap();
    assert_eq!(seen.unauthenticated, 1, "only the first request goes without credentials");
    assert_eq!(seen.nonces_issued, 1);
    assert_eq!(seen.accepted_nc, ["00000001", "00000002", "00000003"]);
}

#[tokio::test]
async fn a_stale_nonce_is_answered_again_and_a_wrong_password_is_named() {
    let state = Arc::new(Mutex::new(Firmware::default()));
    let (mut amt, _) =
        connect(firmware(state.clone()), Uuid::new_v4(), PORT_HTTP, credentials(PASSWORD), None).await.unwrap();
    amt.amt_version().await.unwrap();
    state.lock().unwrap().expire_next = true;
    assert_eq!(amt.amt_version().await.unwrap(), "16.1.27");
    assert_eq!(state.lock().unwrap().accepted_nc.last().map(String::as_str), Some("00000001"));

    let (mut wrong, _) =
        connect(firmware(state.clone()), Uuid::new_v4(), PORT_HTTP, credentials("nope"), None).await.unwrap();
    let err = wrong.amt_version().await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    assert!(err.to_string().contains("reading the AMT version") && err.to_string().contains("\"admin\""), "{err}");
}

#[tokio::test]
async fn a_fault_names_the_step_and_what_the_device_said() {
    let state = Arc::new(Mutex::new(Firmware::default()));
    let (mut amt, _) = connect(firmware(state), Uuid::new_v4(), PORT_HTTP, credentials(PASSWORD), None).await.unwrap();
    let err = amt.control_mode().await.unwrap_err().to_string();
    assert!(err.contains("reading the control mode") && err.contains("no such resource"), "{err}");
}

/// A TLS server with a fresh self-signed certificate in front of the firmware; its fingerprint.
fn tls_firmware(state: Arc<Mutex<Firmware>>) -> (tokio::io::DuplexStream, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["amt.local".into()]).unwrap().self_signed(&key).unwrap();
    let der = cert.der().clone();
    let fingerprint = crate::certs::fingerprint(&der);
    let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], private)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(tls) = acceptor.accept(server).await {
            serve(tls, state).await;
        }
    });
    (client, fingerprint)
}

#[tokio::test]
async fn tls_on_16993_pins_the_certificate_first_seen_and_refuses_another() {
    let state = Arc::new(Mutex::new(Firmware::default()));
    let uuid = Uuid::new_v4();
    let (io, fingerprint) = tls_firmware(state.clone());
    let (mut amt, pin) = connect(io, uuid, PORT_HTTPS, credentials(PASSWORD), None).await.unwrap();
    assert_eq!(pin.as_deref(), Some(fingerprint.as_str()), "the first certificate is pinned");
    assert_eq!(amt.amt_version().await.unwrap(), "16.1.27");

    let (io, again) = tls_firmware(state.clone());
    let err = connect(io, uuid, PORT_HTTPS, credentials(PASSWORD), Some(fingerprint.clone())).await.unwrap_err();
    assert!(err.to_string().contains(&again) && err.to_string().contains(&fingerprint), "{err}");
    assert_ne!(again, fingerprint);
}

#[test]
fn the_port_is_16992_unless_only_16993_is_forwarded() {
    assert_eq!(pick_port(&[16993, 16992, 16994]), PORT_HTTP);
    assert_eq!(pick_port(&[16993, 16995]), PORT_HTTPS);
    assert_eq!(pick_port(&[]), PORT_HTTP);
}

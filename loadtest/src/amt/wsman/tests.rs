//! The WS-MAN responder: digest, every call it answers, faults, enumeration contexts, the
//! firmware state it shares with redirection, and garbage.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use proptest::prelude::*;
use protocols::http_digest::{Authorization, Challenge};
use protocols::redir::SessionType;
use protocols::wsman::{
    self, ns, Class, Element, EndpointReference, EnumerateResponse, Envelope, Method, Property, PullResponse, Request,
    Selector,
};
use uuid::Uuid;

use super::digest::{Nonces, Verdict, MAX_NONCES, NONCE_LIFETIME};
use super::responder::{self, Context, Reply, BOOT_CONFIG};
use super::state::{ControlMode, Firmware, FirmwareConfig, REDIRECTION_NONE, REDIRECTION_SOL};
use super::*;
use crate::amt::service::Outbox;

const UUID: Uuid = Uuid::from_u128(0x12345678_9abc_def0_1234_56789abcdef0);
const TO: &str = "http://127.0.0.1:16992/wsman";
const PASSWORD: &str = "P@ssw0rd";

fn firmware_with(config: FirmwareConfig) -> Firmware {
    Firmware::new(FirmwareConfig { admin_password: PASSWORD.to_owned(), ..config }, Default::default())
}

fn firmware() -> Firmware {
    firmware_with(FirmwareConfig::default())
}

/// Runs `request` through its bytes, the responder, and the reply's bytes.
fn call(fw: &Firmware, request: &Request) -> Reply {
    let envelope = Envelope::parse(&request.to_bytes().unwrap(), &Default::default()).unwrap();
    let realm = realm_of(UUID);
    let reply = fw.with(UUID, |state, config, effects| {
        let cx = Context { uuid: UUID, config, now: Instant::now(), realm: &realm };
        responder::respond(&envelope, state, &cx, effects)
    });
    let bytes = reply.envelope.to_bytes().expect("the reply can be written");
    let reread = Envelope::parse(&bytes, &Default::default()).expect("the reply parses");
    assert_eq!(reread.header.relates_to, envelope.header.message_id, "RelatesTo is the request's MessageID");
    reply
}

fn payload(reply: &Reply) -> &Element {
    assert_eq!(reply.status, 200, "{:?}", reply.envelope.fault());
    reply.envelope.payload().expect("a payload")
}

fn fault_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 400);
    reply.envelope.fault().expect("a fault").subcode.unwrap_or_default()
}

fn get(fw: &Firmware, class: &str) -> Element {
    payload(&call(fw, &Request::get(TO, &responder::uri_of(class), Uuid::new_v4()))).clone()
}

fn prop(element: &Element, name: &str) -> String {
    element.child_text(name).unwrap_or_else(|| panic!("{name} missing in {element:?}")).to_owned()
}

fn invoke(fw: &Firmware, method: Method, parameters: Vec<Property>) -> u32 {
    let reply = call(fw, &Request::invoke(TO, method, Uuid::new_v4(), parameters));
    assert_eq!(reply.envelope.header.action, method.response_action());
    wsman::return_value(&reply.envelope).unwrap()
}

fn power(fw: &Firmware, state: u32) -> u32 {
    invoke(
        fw,
        Method::RequestPowerStateChange,
        vec![
            Property::text("PowerState", state.to_string()),
            Property::reference("ManagedElement", EndpointReference::managed_system()),
        ],
    )
}

fn power_state(fw: &Firmware) -> String {
    prop(&get(fw, "CIM_AssociatedPowerManagementService"), "PowerState")
}

// ---------------------------------------------------------------------------------------------
// HTTP and digest

struct Client {
    channel: WsmanChannel,
    out: BytesMut,
    close: bool,
    challenge: Option<Challenge>,
    nc: u32,
    password: String,
}

impl Client {
    fn new(fw: &Firmware) -> Self {
        let channel = WsmanService::new(fw.clone()).handler(UUID, 16992, tracing::Level::INFO);
        Self { channel, out: BytesMut::new(), close: false, challenge: None, nc: 0, password: PASSWORD.to_owned() }
    }

    /// Sends one raw request; returns (status, head, body).
    fn raw(&mut self, request: &[u8]) -> (u16, String, Vec<u8>) {
        self.out.clear();
        let mut outbox = Outbox::new(&mut self.out, 1 << 20, &mut self.close);
        assert_eq!(self.channel.on_data(request, &mut outbox), request.len());
        let text = &self.out[..];
        let end = text.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        let head = String::from_utf8_lossy(&text[..end]).into_owned();
        let status = head[9..12].parse().unwrap();
        (status, head, text[end + 4..].to_vec())
    }

    fn post(&mut self, body: &[u8], authorization: Option<String>) -> (u16, String, Vec<u8>) {
        let mut request = format!(
            "POST /wsman HTTP/1.1\r\nHost: 127.0.0.1:16992\r\nContent-Type: application/soap+xml;charset=UTF-8\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if let Some(value) = authorization {
            request.push_str(&format!("Authorization: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    fn authorization(&mut self) -> String {
        self.nc += 1;
        let challenge = self.challenge.as_ref().expect("challenged");
        Authorization::answer(challenge, "admin", &self.password, "POST", "/wsman", "0a4f113b", self.nc)
            .unwrap()
            .to_header_value()
            .unwrap()
    }

    /// Posts with the current nonce, taking a new challenge when answered 401.
    fn call(&mut self, request: &Request) -> (u16, String, Vec<u8>) {
        let body = request.to_bytes().unwrap();
        for _ in 0..2 {
            let auth = self.challenge.is_some().then(|| self.authorization());
            let response = self.post(&body, auth);
            if response.0 != 401 {
                return response;
            }
            self.take_challenge(&response.1);
        }
        panic!("still 401 after a fresh challenge");
    }

    fn take_challenge(&mut self, head: &str) -> Challenge {
        let value = head.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).expect("a challenge");
        let challenge = Challenge::parse(value).unwrap();
        self.challenge = Some(challenge.clone());
        self.nc = 0;
        challenge
    }
}

fn general_settings() -> Request {
    Request::get(TO, Class::AmtGeneralSettings.resource_uri(), Uuid::new_v4())
}

#[test]
fn a_request_without_credentials_gets_a_firmware_challenge() {
    let fw = firmware();
    let mut client = Client::new(&fw);
    let (status, head, _) = client.post(&general_settings().to_bytes().unwrap(), None);
    assert_eq!(status, 401);
    assert!(head.contains("Server: Intel(R) Active Management Technology 16.1.27.2176"), "{head}");
    let value = head.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).unwrap();
    assert!(value.starts_with("Digest realm=\"Digest:123456789ABCDEF0123456789ABCDEF0\", nonce=\""), "{value}");
    assert!(value.ends_with("stale=\"false\", qop=\"auth\""), "{value}");
    let challenge = client.take_challenge(&head);
    assert_eq!(challenge.nonce.len(), 32);
    assert!(challenge.offers_auth() && !challenge.stale);
}

#[test]
fn the_right_digest_is_accepted_with_increasing_nonce_counts_on_one_connection() {
    let fw = firmware();
    let mut client = Client::new(&fw);
    for _ in 0..3 {
        let (status, head, body) = client.call(&general_settings());
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("Content-Type: application/soap+xml;charset=UTF-8"), "{head}");
        let envelope = Envelope::parse(&body, &Default::default()).unwrap();
        assert_eq!(prop(envelope.payload().unwrap(), "DigestRealm"), realm_of(UUID));
    }
    assert_eq!(client.nc, 3, "one challenge, three requests");
}

#[test]
fn a_wrong_password_gets_a_fresh_nonce_and_not_stale() {
    let fw = firmware();
    let mut client = Client::new(&fw);
    let (_, head, _) = client.post(b"", None);
    let first = client.take_challenge(&head);
    client.password = "wrong".to_owned();
    let auth = client.authorization();
    let (status, head, _) = client.post(&general_settings().to_bytes().unwrap(), Some(auth));
    assert_eq!(status, 401);
    let second = client.take_challenge(&head);
    assert!(!second.stale);
    assert_ne!(first.nonce, second.nonce);
    // A wrong user likewise.
    client.password = PASSWORD.to_owned();
    let challenge = client.challenge.clone().unwrap();
    let auth = Authorization::answer(&challenge, "root", PASSWORD, "POST", "/wsman", "c", 1).unwrap();
    let (status, _, _) = client.post(b"", Some(auth.to_header_value().unwrap()));
    assert_eq!(status, 401);
}

#[test]
fn a_replayed_nonce_count_or_an_unknown_nonce_is_stale() {
    let fw = firmware();
    let mut client = Client::new(&fw);
    assert_eq!(client.call(&general_settings()).0, 200);
    // The same nc again.
    client.nc -= 1;
    let auth = client.authorization();
    let (status, head, _) = client.post(&general_settings().to_bytes().unwrap(), Some(auth));
    assert_eq!(status, 401);
    assert!(head.contains("stale=\"true\""), "{head}");
    // A nonce this device never issued, answered with the right password.
    let made_up =
        Challenge { realm: realm_of(UUID), nonce: "00".repeat(16), qop: vec!["auth".to_owned()], ..Default::default() };
    let auth = Authorization::answer(&made_up, "admin", PASSWORD, "POST", "/wsman", "c", 1).unwrap();
    let (status, head, _) = client.post(b"", Some(auth.to_header_value().unwrap()));
    assert_eq!(status, 401);
    assert!(head.contains("stale=\"true\""), "{head}");
    // Garbage in the header: refused, not stale.
    let (status, head, _) = client.post(b"", Some("Digest garbage".to_owned()));
    assert_eq!(status, 401);
    assert!(head.contains("stale=\"false\""), "{head}");
}

#[test]
fn nonces_expire_are_bounded_and_accept_out_of_order_counts_once() {
    let mut nonces = Nonces::default();
    let now = Instant::now();
    let realm = realm_of(UUID);
    let nonce = nonces.issue(now);
    let challenge = Challenge { realm: realm.clone(), nonce, qop: vec!["auth".to_owned()], ..Default::default() };
    let header = |nc| {
        Authorization::answer(&challenge, "admin", PASSWORD, "POST", "/wsman", "c", nc)
            .unwrap()
            .to_header_value()
            .unwrap()
    };
    let check = |nonces: &mut Nonces, nc, at| nonces.check(&header(nc), "POST", "admin", PASSWORD, &realm, at);
    assert_eq!(check(&mut nonces, 2, now), Verdict::Accepted);
    assert_eq!(check(&mut nonces, 1, now), Verdict::Accepted, "an older count not yet seen");
    assert_eq!(check(&mut nonces, 1, now), Verdict::Stale);
    assert_eq!(check(&mut nonces, 2, now), Verdict::Stale);
    assert_eq!(check(&mut nonces, 3, now + NONCE_LIFETIME), Verdict::Stale, "expired");
    assert!(matches!(check(&mut nonces, 0, now), Verdict::Refused(_)), "nc 0");
    for _ in 0..3 * MAX_NONCES {
        nonces.issue(now);
    }
    assert_eq!(nonces.len(), MAX_NONCES);
    assert_eq!(check(&mut nonces, 4, now), Verdict::Stale, "forgotten");
}

#[test]
fn get_html_and_bad_requests() {
    let fw = firmware();
    let mut client = Client::new(&fw);
    let (status, _, _) = client.raw(b"GET /index.htm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 401);
    let (status, _, _) = client.raw(b"\x16\x03\x01\x02\x00");
    assert_eq!(status, 400);
    assert!(client.close);
}

#[test]
fn malformed_xml_is_a_soap_fault_not_a_bare_400() {
    let fw = firmware();
    let mut client = Client::new(&fw);
    let (_, head, _) = client.post(b"", None);
    client.take_challenge(&head);
    let auth = client.authorization();
    let (status, head, body) = client.post(b"<not-xml", Some(auth));
    assert_eq!(status, 400, "{head}");
    let envelope = Envelope::parse(&body, &Default::default()).unwrap();
    assert_eq!(envelope.fault().unwrap().subcode.as_deref(), Some("SchemaValidationError"));
}

// ---------------------------------------------------------------------------------------------
// Get

#[test]
fn every_class_a_console_reads_answers_get() {
    let fw = firmware();
    let general = get(&fw, "AMT_GeneralSettings");
    assert_eq!(prop(&general, "HostName"), format!("amt-{}", UUID.simple()));
    assert_eq!(prop(&general, "DigestRealm"), realm_of(UUID));
    assert_eq!(general.namespace, Class::AmtGeneralSettings.resource_uri());
    let package = get(&fw, "CIM_ComputerSystemPackage");
    // SMBIOS order: 78563412-BC9A-F0DE-1234-56789ABCDEF0.
    assert_eq!(prop(&package, "PlatformGUID"), "78563412BC9AF0DE123456789ABCDEF0");
    let dependent = EndpointReference::from_element(package.child("Dependent").unwrap()).unwrap();
    assert_eq!(dependent.resource_uri, Class::CimComputerSystem.resource_uri());
    let setup = get(&fw, "AMT_SetupAndConfigurationService");
    assert_eq!((prop(&setup, "ProvisioningMode"), prop(&setup, "ProvisioningState")), ("1".into(), "2".into()));
    assert_eq!(prop(&setup, "Name"), "Intel(r) AMT Setup and Configuration Service");
    let redirection = get(&fw, "AMT_RedirectionService");
    assert_eq!(
        (prop(&redirection, "EnabledState"), prop(&redirection, "ListenerEnabled")),
        ("32771".into(), "true".into())
    );
    let boot = get(&fw, "AMT_BootSettingData");
    assert_eq!(prop(&boot, "InstanceID"), "Intel(r) AMT:BootSettingData 0");
    assert_eq!(prop(&boot, "UseIDER"), "false");
    let opt_in = get(&fw, "IPS_OptInService");
    assert_eq!((prop(&opt_in, "OptInRequired"), prop(&opt_in, "OptInState")), ("0".into(), "0".into()));
    let power = get(&fw, "CIM_AssociatedPowerManagementService");
    assert_eq!(prop(&power, "PowerState"), "2");
    assert_eq!(power.children_named("AvailableRequestedPowerStates").count(), 4);
    assert!(power.child("ServiceProvided").is_some() && power.child("UserOfService").is_some());
    let hbs = get(&fw, "IPS_HostBasedSetupService");
    assert_eq!(prop(&hbs, "CurrentControlMode"), "2");
}

#[test]
fn client_control_mode_and_consent_show_in_the_instances() {
    let fw = firmware_with(FirmwareConfig { control_mode: ControlMode::Client, consent: true, ..Default::default() });
    assert_eq!(prop(&get(&fw, "AMT_SetupAndConfigurationService"), "ProvisioningMode"), "4");
    assert_eq!(prop(&get(&fw, "IPS_OptInService"), "OptInRequired"), "4294967295");
    let fw = firmware_with(FirmwareConfig { redirection_enabled: false, ..Default::default() });
    let redirection = get(&fw, "AMT_RedirectionService");
    assert_eq!(
        (prop(&redirection, "EnabledState"), prop(&redirection, "ListenerEnabled")),
        ("32768".into(), "false".into())
    );
}

#[test]
fn selectors_pick_the_instance_or_fault() {
    let fw = firmware();
    let uri = Class::CimSoftwareIdentity.resource_uri();
    let amt = call(&fw, &Request::get(TO, uri, Uuid::new_v4()).with_selector(Selector::text("InstanceID", "AMT")));
    assert_eq!(prop(payload(&amt), "VersionString"), "16.1.27");
    assert_eq!(prop(payload(&amt), "IsEntity"), "true");
    let wrong = call(&fw, &Request::get(TO, uri, Uuid::new_v4()).with_selector(Selector::text("InstanceID", "nope")));
    assert_eq!(fault_of(&wrong), "InvalidSelectors");
    let boot = Class::AmtBootSettingData.resource_uri();
    let wrong = call(&fw, &Request::get(TO, boot, Uuid::new_v4()).with_selector(Selector::text("InstanceID", "x")));
    assert_eq!(fault_of(&wrong), "InvalidSelectors");
}

#[test]
fn the_configured_version_and_power_are_reported() {
    let fw = firmware_with(FirmwareConfig {
        amt_version: "12.0.45".to_owned(),
        powered_on: false,
        ..FirmwareConfig::default()
    });
    let uri = Class::CimSoftwareIdentity.resource_uri();
    let amt = call(&fw, &Request::get(TO, uri, Uuid::new_v4()).with_selector(Selector::text("InstanceID", "AMT")));
    assert_eq!(prop(payload(&amt), "VersionString"), "12.0.45");
    let (status, head, _) = Client::new(&fw).post(&general_settings().to_bytes().unwrap(), None);
    assert_eq!(status, 401);
    assert!(head.contains("Server: Intel(R) Active Management Technology 12.0.45.2176\r\n"), "{head}");
    assert_eq!(power_state(&fw), "8", "starts off");
    assert_eq!(power(&fw, 2), 0, "powers on");
    assert_eq!(power_state(&fw), "2");
}

#[test]
fn unknown_resources_and_actions_fault() {
    let fw = firmware();
    let reply = call(&fw, &Request::get(TO, "http://intel.com/wbem/wscim/1/amt-schema/1/AMT_Nope", Uuid::new_v4()));
    assert_eq!(fault_of(&reply), "DestinationUnreachable");
    assert_eq!(reply.envelope.header.action, wsman::action::ADDRESSING_FAULT);
    let mut request = general_settings();
    request.action = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete".to_owned();
    assert_eq!(fault_of(&call(&fw, &request)), "ActionNotSupported");
    // A method sent to another class's resource.
    let mut request = Request::invoke(TO, Method::StartOptIn, Uuid::new_v4(), vec![]);
    request.resource_uri = Class::AmtGeneralSettings.resource_uri().to_owned();
    assert_eq!(fault_of(&call(&fw, &request)), "DestinationUnreachable");
    // A method without its _INPUT body.
    let mut request = Request::invoke(TO, Method::RequestPowerStateChange, Uuid::new_v4(), vec![]);
    request.body = wsman::RequestBody::Empty;
    assert_eq!(fault_of(&call(&fw, &request)), "InvalidParameter");
    let request =
        Request::invoke(TO, Method::RequestPowerStateChange, Uuid::new_v4(), vec![Property::text("PowerState", "on")]);
    assert_eq!(fault_of(&call(&fw, &request)), "InvalidParameter");
}

// ---------------------------------------------------------------------------------------------
// Enumeration

#[test]
fn enumerate_and_pull_honour_max_elements_and_end() {
    let fw = firmware();
    let uri = Class::CimSoftwareIdentity.resource_uri();
    let reply = call(&fw, &Request::enumerate(TO, uri, Uuid::new_v4()));
    let response = EnumerateResponse::from_envelope(&reply.envelope).unwrap();
    assert!(response.items.is_empty() && !response.end_of_sequence);
    let context = response.context.unwrap();
    let mut ids = Vec::new();
    loop {
        let reply = call(&fw, &Request::pull(TO, uri, Uuid::new_v4(), &context, Some(4)));
        let pulled = PullResponse::from_envelope(&reply.envelope).unwrap();
        assert!(pulled.items.len() <= 4);
        ids.extend(pulled.items.iter().map(|i| prop(i, "InstanceID")));
        if pulled.end_of_sequence {
            assert!(pulled.context.is_none());
            break;
        }
        assert_eq!(pulled.context.as_deref(), Some(context.as_str()));
    }
    assert!(ids.contains(&"AMT".to_owned()) && ids.contains(&"Flash".to_owned()) && ids.len() >= 8, "{ids:?}");
    // The items carry no namespace declarations of their own (MeshCentral reads an element with
    // attributes as {Value, @attr}): the class namespace is declared on the response element.
    let reply = call(&fw, &Request::enumerate_optimized(TO, uri, Uuid::new_v4(), Some(100)));
    let text = String::from_utf8(reply.envelope.to_bytes().unwrap()).unwrap();
    let items = text.find(":Items>").expect("items");
    assert!(!text[items..].contains("xmlns:"), "{text}");
    // The context is gone after the end.
    let again = call(&fw, &Request::pull(TO, uri, Uuid::new_v4(), &context, None));
    assert_eq!(fault_of(&again), "InvalidEnumerationContext");
    let unknown = call(&fw, &Request::pull(TO, uri, Uuid::new_v4(), "made-up", None));
    assert_eq!(fault_of(&unknown), "InvalidEnumerationContext");
}

#[test]
fn every_listed_class_enumerates() {
    let fw = firmware();
    for class in [
        "CIM_SoftwareIdentity",
        "AMT_GeneralSettings",
        "AMT_SetupAndConfigurationService",
        "CIM_ComputerSystemPackage",
        "CIM_AssociatedPowerManagementService",
        "CIM_ServiceAvailableToElement",
        "AMT_BootSettingData",
        "AMT_RedirectionService",
        "IPS_OptInService",
    ] {
        let uri = responder::uri_of(class);
        let reply = call(&fw, &Request::enumerate_optimized(TO, &uri, Uuid::new_v4(), Some(100)));
        let response = EnumerateResponse::from_envelope(&reply.envelope).unwrap();
        assert!(response.end_of_sequence && response.context.is_none(), "{class}");
        assert!(!response.items.is_empty(), "{class}");
        assert!(response.items.iter().all(|i| i.name == class), "{class}");
    }
    let uri = responder::uri_of("AMT_PublicKeyCertificate");
    let reply = call(&fw, &Request::enumerate_optimized(TO, &uri, Uuid::new_v4(), None));
    assert!(EnumerateResponse::from_envelope(&reply.envelope).unwrap().items.is_empty());
}

#[test]
fn optimized_enumeration_returns_the_first_items_and_a_context_for_the_rest() {
    let fw = firmware();
    let uri = Class::CimSoftwareIdentity.resource_uri();
    let reply = call(&fw, &Request::enumerate_optimized(TO, uri, Uuid::new_v4(), Some(2)));
    let response = EnumerateResponse::from_envelope(&reply.envelope).unwrap();
    assert_eq!(response.items.len(), 2);
    assert!(!response.end_of_sequence);
    let context = response.context.unwrap();
    let released = call(&fw, &Request::release(TO, uri, Uuid::new_v4(), &context));
    assert_eq!(released.status, 200);
    assert_eq!(released.envelope.header.action, wsman::action::RELEASE_RESPONSE);
    let again = call(&fw, &Request::release(TO, uri, Uuid::new_v4(), &context));
    assert_eq!(fault_of(&again), "InvalidEnumerationContext");
    // A context of another resource.
    let reply = call(&fw, &Request::enumerate(TO, uri, Uuid::new_v4()));
    let context = EnumerateResponse::from_envelope(&reply.envelope).unwrap().context.unwrap();
    let other = call(&fw, &Request::pull(TO, Class::AmtGeneralSettings.resource_uri(), Uuid::new_v4(), &context, None));
    assert_eq!(fault_of(&other), "InvalidEnumerationContext");
}

#[test]
fn enumeration_contexts_are_bounded() {
    let fw = firmware();
    let uri = Class::CimSoftwareIdentity.resource_uri();
    let contexts: Vec<String> = (0..40)
        .map(|_| {
            let reply = call(&fw, &Request::enumerate(TO, uri, Uuid::new_v4()));
            EnumerateResponse::from_envelope(&reply.envelope).unwrap().context.unwrap()
        })
        .collect();
    assert!(fw.with(UUID, |state, _, _| state.enumerations.len()) <= state::MAX_ENUMERATIONS);
    assert_eq!(
        fault_of(&call(&fw, &Request::pull(TO, uri, Uuid::new_v4(), &contexts[0], None))),
        "InvalidEnumerationContext"
    );
    assert_eq!(call(&fw, &Request::pull(TO, uri, Uuid::new_v4(), &contexts[39], None)).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Put

#[test]
fn put_redirection_service_changes_only_the_listener() {
    let fw = firmware();
    let uri = Class::AmtRedirectionService.resource_uri();
    let properties = vec![
        Property::text("EnabledState", "32768"),
        Property::text("ListenerEnabled", "false"),
        Property::text("Name", "Intel(r) AMT Redirection Service"),
    ];
    let reply = call(&fw, &Request::put(TO, uri, Uuid::new_v4(), properties));
    assert_eq!(reply.envelope.header.action, wsman::action::PUT_RESPONSE);
    let updated = payload(&reply);
    assert_eq!((prop(updated, "EnabledState"), prop(updated, "ListenerEnabled")), ("32771".into(), "false".into()));
    let bad = call(&fw, &Request::put(TO, uri, Uuid::new_v4(), vec![Property::text("ListenerEnabled", "maybe")]));
    assert_eq!(fault_of(&bad), "InvalidRepresentation");
    assert!(fw.start_session(UUID, SessionType::Sol, None).is_err(), "listener off");
}

#[test]
fn put_boot_settings_keeps_the_writable_fields_and_refuses_bad_values() {
    let fw = firmware();
    let uri = Class::AmtBootSettingData.resource_uri();
    let mut instance = get(&fw, "AMT_BootSettingData");
    for child in &mut instance.children {
        match child.name.as_str() {
            "UseSOL" | "UseIDER" => child.text = "true".to_owned(),
            "IDERBootDevice" => child.text = "1".to_owned(),
            _ => {}
        }
    }
    let properties: Vec<Property> =
        instance.children.iter().map(|c| Property::text(c.name.clone(), c.text.clone())).collect();
    let reply = call(&fw, &Request::put(TO, uri, Uuid::new_v4(), properties));
    let updated = payload(&reply);
    assert_eq!(
        (prop(updated, "UseSOL"), prop(updated, "UseIDER"), prop(updated, "IDERBootDevice")),
        ("true".into(), "true".into(), "1".into())
    );
    assert_eq!(prop(&get(&fw, "AMT_BootSettingData"), "UseIDER"), "true", "kept");
    for (name, value) in [("IDERBootDevice", "2"), ("UseIDER", "yes"), ("FirmwareVerbosity", "-1")] {
        let bad = call(&fw, &Request::put(TO, uri, Uuid::new_v4(), vec![Property::text(name, value)]));
        assert_eq!(fault_of(&bad), "InvalidRepresentation", "{name}={value}");
    }
    assert_eq!(prop(&get(&fw, "AMT_BootSettingData"), "IDERBootDevice"), "1", "a refused Put changes nothing");
    let other = call(&fw, &Request::put(TO, Class::AmtGeneralSettings.resource_uri(), Uuid::new_v4(), vec![]));
    assert_eq!(fault_of(&other), "ActionNotSupported");
}

// ---------------------------------------------------------------------------------------------
// Methods

#[test]
fn redirection_state_changes_and_gates_sessions() {
    let fw = firmware();
    let change = |state: &str| invoke(&fw, Method::RequestStateChange, vec![Property::text("RequestedState", state)]);
    assert_eq!(change("32770"), 0);
    assert_eq!(prop(&get(&fw, "AMT_RedirectionService"), "EnabledState"), REDIRECTION_SOL.to_string());
    assert!(fw.start_session(UUID, SessionType::Ider, None).is_err(), "IDE-R disabled");
    let sol = fw.start_session(UUID, SessionType::Sol, None).expect("SOL enabled");
    drop(sol);
    assert_eq!(change("32768"), 0);
    assert!(fw.start_session(UUID, SessionType::Sol, None).is_err());
    assert_eq!(change("32772"), 5);
    assert_eq!(change("2"), 5);
    assert_eq!(prop(&get(&fw, "AMT_RedirectionService"), "EnabledState"), REDIRECTION_NONE.to_string());
}

#[test]
fn power_transitions_follow_firmware() {
    let fw = firmware();
    assert_eq!(power(&fw, 2), 2, "on when on");
    assert_eq!(power(&fw, 8), 0);
    assert_eq!(power_state(&fw), "8");
    assert_eq!(prop(&get(&fw, "IPS_PowerManagementService"), "OSPowerSavingState"), "0");
    for refused in [8, 5, 10] {
        assert_eq!(power(&fw, refused), 2, "{refused} when off");
    }
    assert_eq!(power(&fw, 2), 0);
    assert_eq!(power_state(&fw), "2");
    assert_eq!(power(&fw, 10), 0);
    assert_eq!(power(&fw, 5), 0);
    assert_eq!(power_state(&fw), "2");
    assert_eq!(power(&fw, 4), 1, "sleep is not simulated");
}

#[test]
fn off_and_cycle_are_refused_during_a_redirection_session_but_reset_works() {
    let fw = firmware();
    for kind in [SessionType::Sol, SessionType::Ider] {
        let session = fw.start_session(UUID, kind, None).unwrap();
        assert_eq!(power(&fw, 8), 2, "{kind:?}");
        assert_eq!(power(&fw, 5), 2, "{kind:?}");
        assert_eq!(power(&fw, 10), 0, "{kind:?}");
        assert_eq!(power_state(&fw), "2");
        drop(session);
    }
    assert_eq!(power(&fw, 8), 0, "no session any more");
}

#[test]
fn boot_order_and_role() {
    let fw = firmware();
    let cd = EndpointReference::boot_source("Intel(r) AMT: Force CD/DVD Boot");
    let order = |source: Option<EndpointReference>| {
        let parameters = source.map(|s| vec![Property::reference("Source", s)]).unwrap_or_default();
        let request = Request::invoke(TO, Method::ChangeBootOrder, Uuid::new_v4(), parameters)
            .with_selector(Selector::text("InstanceID", BOOT_CONFIG));
        wsman::return_value(&call(&fw, &request).envelope).unwrap()
    };
    assert_eq!(order(Some(cd)), 0);
    assert_eq!(fw.with(UUID, |s, _, _| s.boot_source.clone()).as_deref(), Some("Intel(r) AMT: Force CD/DVD Boot"));
    assert_eq!(order(None), 0);
    assert_eq!(fw.with(UUID, |s, _, _| s.boot_source.clone()), None);
    assert_eq!(order(Some(EndpointReference::boot_source("Intel(r) AMT: Force Floppy"))), 5);
    let wrong = Request::invoke(TO, Method::ChangeBootOrder, Uuid::new_v4(), vec![])
        .with_selector(Selector::text("InstanceID", "other"));
    assert_eq!(fault_of(&call(&fw, &wrong)), "InvalidSelectors");
    let role = |config: &str, role: &str| {
        invoke(
            &fw,
            Method::SetBootConfigRole,
            vec![
                Property::reference("BootConfigSetting", EndpointReference::boot_config(config)),
                Property::text("Role", role),
            ],
        )
    };
    assert_eq!(role(BOOT_CONFIG, "1"), 0);
    assert!(fw.with(UUID, |s, _, _| s.boot_role_set));
    assert_eq!(role("nope", "1"), 5);
    assert_eq!(role(BOOT_CONFIG, "7"), 5);
}

fn set_ider_boot(fw: &Firmware) {
    let uri = Class::AmtBootSettingData.resource_uri();
    let properties = vec![
        Property::text("UseIDER", "true"),
        Property::text("IDERBootDevice", "1"),
        Property::text("UseSOL", "true"),
    ];
    assert_eq!(call(fw, &Request::put(TO, uri, Uuid::new_v4(), properties)).status, 200);
}

#[test]
fn a_reset_with_use_ider_leaves_an_ider_boot_pending_until_taken() {
    let fw = firmware();
    assert_eq!(power(&fw, 10), 0);
    assert!(!fw.take_pending_boot(UUID, std::time::Instant::now()), "no UseIDER: from disk");
    set_ider_boot(&fw);
    assert_eq!(power(&fw, 10), 0);
    assert!(fw.take_pending_boot(UUID, std::time::Instant::now()));
    assert!(!fw.take_pending_boot(UUID, std::time::Instant::now()), "served once");
    // Kept until changed: the next cycle boots IDE-R again.
    assert_eq!(power(&fw, 5), 0);
    let id = fw.with(UUID, |s, _, _| s.pending_boot).expect("pending");
    // Nobody served it in time: from disk.
    fw.give_up_boot(UUID, id);
    assert!(!fw.take_pending_boot(UUID, std::time::Instant::now()));
    // Off clears a pending boot; on boots again.
    assert_eq!(power(&fw, 10), 0);
    assert_eq!(power(&fw, 8), 0);
    assert!(!fw.take_pending_boot(UUID, std::time::Instant::now()));
    assert_eq!(power(&fw, 2), 0);
    assert!(fw.take_pending_boot(UUID, std::time::Instant::now()));
}

#[test]
fn after_a_redial_only_an_ider_session_opened_since_the_power_change_serves_the_boot() {
    let fw = firmware_with(FirmwareConfig { redial_on_power_change: true, ..Default::default() });
    let before = std::time::Instant::now();
    set_ider_boot(&fw);
    assert_eq!(power(&fw, 10), 0);
    assert!(!fw.take_pending_boot(UUID, before), "the session from before the reset dies with the tunnel");
    assert!(fw.take_pending_boot(UUID, std::time::Instant::now()), "a session after the redial boots");
    assert!(!fw.take_pending_boot(UUID, std::time::Instant::now()), "served once");
}

#[test]
fn the_consent_flow() {
    let fw = firmware_with(FirmwareConfig { consent: true, ..Default::default() });
    assert_eq!(power(&fw, 10), 2, "no consent yet");
    assert_eq!(invoke(&fw, Method::RequestStateChange, vec![Property::text("RequestedState", "32771")]), 2);
    assert_eq!(fw.start_session(UUID, SessionType::Sol, None).err(), Some(state::SessionRefusal::NoConsent));
    let send = |code: &str| invoke(&fw, Method::SendOptInCode, vec![Property::text("OptInCode", code)]);
    assert_eq!(send("123456"), 2, "no code displayed");
    assert_eq!(invoke(&fw, Method::StartOptIn, vec![]), 0);
    assert_eq!(prop(&get(&fw, "IPS_OptInService"), "OptInState"), "2");
    let code = fw.with(UUID, |s, _, _| s.opt_in.code.clone()).unwrap();
    assert_eq!(code.len(), 6);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    assert_eq!(send(wrong), 2066);
    assert_eq!(send(wrong), 2066);
    assert_eq!(send(wrong), 2066);
    assert_eq!(prop(&get(&fw, "IPS_OptInService"), "OptInState"), "0", "voided after three");
    assert_eq!(send(&code), 2);
    assert_eq!(invoke(&fw, Method::StartOptIn, vec![]), 0);
    let code = fw.with(UUID, |s, _, _| s.opt_in.code.clone()).unwrap();
    assert_eq!(send(&code), 0);
    assert_eq!(prop(&get(&fw, "IPS_OptInService"), "OptInState"), "3");
    assert_eq!(power(&fw, 10), 0);
    let session = fw.start_session(UUID, SessionType::Ider, None).unwrap();
    assert_eq!(prop(&get(&fw, "IPS_OptInService"), "OptInState"), "4");
    drop(session);
    // Consent lasts past the session, until 5 minutes without one.
    assert_eq!(power(&fw, 10), 0);
    fw.with(UUID, |s, _, _| s.last_session = Instant::now() - Duration::from_secs(301));
    assert_eq!(power(&fw, 10), 2, "expired");
    assert_eq!(invoke(&fw, Method::StartOptIn, vec![]), 0);
    let code = fw.with(UUID, |s, _, _| s.opt_in.code.clone()).unwrap();
    assert_eq!(send(&code), 0);
    assert_eq!(invoke(&fw, Method::StartOptIn, vec![]), 2, "already given");
    assert_eq!(invoke(&fw, Method::CancelOptIn, vec![]), 0);
    assert_eq!(power(&fw, 10), 2);
}

#[test]
fn devices_have_separate_state() {
    let fw = firmware();
    assert_eq!(power(&fw, 8), 0);
    let other = Uuid::from_u128(7);
    assert_eq!(fw.with(other, |s, _, _| s.power), state::POWER_ON);
}

// ---------------------------------------------------------------------------------------------
// Garbage

fn valid_requests() -> Vec<Vec<u8>> {
    let uri = Class::CimSoftwareIdentity.resource_uri();
    [
        general_settings(),
        Request::enumerate(TO, uri, Uuid::nil()),
        Request::enumerate_optimized(TO, uri, Uuid::nil(), Some(3)),
        Request::pull(TO, uri, Uuid::nil(), "ctx", Some(2)),
        Request::invoke(TO, Method::RequestPowerStateChange, Uuid::nil(), vec![Property::text("PowerState", "10")]),
        Request::put(
            TO,
            Class::AmtBootSettingData.resource_uri(),
            Uuid::nil(),
            vec![Property::text("UseIDER", "true")],
        ),
    ]
    .iter()
    .map(|r| r.to_bytes().unwrap())
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_channel(data in proptest::collection::vec(any::<u8>(), 0..2048), split in 0usize..2048) {
        let fw = firmware();
        let mut channel = WsmanService::new(fw).handler(UUID, 16992, tracing::Level::DEBUG);
        let (mut out, mut close) = (BytesMut::new(), false);
        let split = split.min(data.len());
        for part in [&data[..split], &data[split..]] {
            let mut outbox = Outbox::new(&mut out, 1 << 20, &mut close);
            let taken = channel.on_data(part, &mut outbox);
            prop_assert!(taken <= part.len());
        }
    }

    #[test]
    fn mutated_requests_never_panic_the_responder(which in 0usize..6, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let fw = firmware();
        let mut document = valid_requests().swap_remove(which);
        for (at, byte) in edits {
            let at = at % document.len();
            document[at] = byte;
        }
        let realm = realm_of(UUID);
        let reply = match Envelope::parse(&document, &Default::default()) {
            Ok(envelope) => fw.with(UUID, |state, config, effects| {
                let cx = Context { uuid: UUID, config, now: Instant::now(), realm: &realm };
                responder::respond(&envelope, state, &cx, effects)
            }),
            Err(err) => responder::schema_fault(&err.to_string()),
        };
        prop_assert!(reply.status == 200 || reply.status == 400);
        // Whatever was echoed from the request (MessageID, ResourceURI), an answer goes out.
        let (status, bytes) = responder::to_bytes(&reply);
        prop_assert!(status == reply.status || status == 400);
        prop_assert!(Envelope::parse(&bytes, &Default::default()).is_ok());
    }
}

#[test]
fn the_classes_listed_have_their_namespaces() {
    for class in ["AMT_GeneralSettings", "CIM_SoftwareIdentity", "IPS_OptInService"] {
        assert_eq!(responder::class_of(&responder::uri_of(class)), Some(class));
    }
    assert_eq!(responder::class_of("http://intel.com/wbem/wscim/1/amt-schema/1/CIM_SoftwareIdentity"), None);
    let _ = ns::WSMAN;
}

#[test]
fn responses_have_no_empty_elements_for_meshcentral() {
    // MeshCentral's reader takes only `<x />` (with a space) as an empty element; AMT writes none.
    let fw = firmware();
    for class in [
        "AMT_RedirectionService",
        "AMT_BootSettingData",
        "AMT_SetupAndConfigurationService",
        "AMT_PublicKeyCertificate",
        "CIM_ServiceAvailableToElement",
    ] {
        let uri = responder::uri_of(class);
        let get = call(&fw, &Request::get(TO, &uri, Uuid::new_v4()));
        let enumerated = call(&fw, &Request::enumerate_optimized(TO, &uri, Uuid::new_v4(), Some(50)));
        for reply in [get, enumerated] {
            if reply.status == 200 {
                let text = String::from_utf8(reply.envelope.to_bytes().unwrap()).unwrap();
                assert!(!text.contains("/>"), "{class}: {text}");
            }
        }
    }
}

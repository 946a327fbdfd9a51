//! The WS-MAN answers of the simulated firmware: one request envelope in, one response envelope
//! (and its HTTP status) out, against the device's [`DeviceState`]. No I/O, no clock of its own
//! (`now` is passed in).
//!
//! Faults come with HTTP 400, as AMT sends them (MeshCentral's batch reads go on past a 400 and
//! stop at anything else): an unknown resource URI is `wsa:DestinationUnreachable`, an unknown
//! action `wsa:ActionNotSupported`, a document that is no WS-MAN envelope
//! `wsman:SchemaValidationError`, a selector that names no instance `wsman:InvalidSelectors`, an
//! unknown or expired enumeration context `wsen:InvalidEnumerationContext`, a Put with a bad
//! value `wxf:InvalidRepresentation`, a method call without its `<Method>_INPUT` or with a
//! parameter that is not a number `wsman:InvalidParameter`.
//!
//! Method ReturnValues (0 is success):
//! - `CIM_PowerManagementService.RequestPowerStateChange`: 0 for 2 (on, from off), 5 (cycle,
//!   from on), 8 (off, from on), 10 (reset, from on); **2** for an invalid transition, for off or
//!   cycle while a SOL or IDE-R session of the device is open (reset is allowed), and while user
//!   consent is required and not given; 1 (not supported) for other power states.
//! - `AMT_RedirectionService.RequestStateChange`: 0 for 32768..=32771; 5 (CIM "invalid
//!   parameter") for any other value; 2 while consent is required and not given.
//! - `CIM_BootConfigSetting.ChangeBootOrder`: 0 (no `Source` clears the boot order); 5 for a
//!   `Source` that names no CIM_BootSourceSetting.
//! - `CIM_BootService.SetBootConfigRole`: 0 for Role 0 or 1 and the boot configuration
//!   `Intel(r) AMT: Boot Configuration 0`; 5 otherwise.
//! - `IPS_OptInService.StartOptIn`: 0 (a new 6-digit code, OptInState 2); 2 (invalid state) when
//!   consent was already given. `SendOptInCode`: 0 (OptInState 3) for the right code; 2066
//!   (AMT's "unsupported", what firmware answers a wrong code with) for a wrong one, and the
//!   third wrong code voids the code (OptInState 0); 2 when no code is displayed.
//!   `CancelOptIn`: 0 (OptInState 0).

use std::time::Instant;

use protocols::redir::SessionType;
use protocols::wsman::{
    action, method_output, ns, Element, EndpointReference, EnumerateResponse, Envelope, Fault, Header, Method,
    PullResponse, Selector, SelectorValue, ANONYMOUS,
};
use rand::Rng;
use uuid::Uuid;

use super::state::{
    DeviceState, Effect, Enumeration, FirmwareConfig, OptIn, ENUMERATION_LIFETIME, MAX_ENUMERATIONS, MAX_WRONG_CODES,
    OPT_IN_ALL, POWER_OFF, POWER_ON, REDIRECTION_BOTH, REDIRECTION_NONE,
};

pub use crate::amt::http::{AMT_BUILD, AMT_VERSION};
/// The boot configuration `SetBootConfigRole` and `ChangeBootOrder` name.
pub const BOOT_CONFIG: &str = "Intel(r) AMT: Boot Configuration 0";
/// The boot sources `ChangeBootOrder` takes.
pub const BOOT_SOURCES: [&str; 3] =
    ["Intel(r) AMT: Force CD/DVD Boot", "Intel(r) AMT: Force Hard-drive Boot", "Intel(r) AMT: Force PXE Boot"];

/// A response and the HTTP status it goes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub envelope: Envelope,
}

/// What a request is about, for the device.
#[derive(Debug)]
pub struct Context<'a> {
    pub uuid: Uuid,
    pub config: &'a FirmwareConfig,
    pub now: Instant,
    /// The realm of the device's digest challenge (AMT_GeneralSettings.DigestRealm).
    pub realm: &'a str,
}

/// The classes this firmware knows, by name: the resource URI is the schema prefix and the name.
const KNOWN: [&str; 22] = [
    "AMT_GeneralSettings",
    "CIM_SoftwareIdentity",
    "CIM_ComputerSystemPackage",
    "AMT_SetupAndConfigurationService",
    "AMT_RedirectionService",
    "AMT_BootSettingData",
    "CIM_BootConfigSetting",
    "CIM_BootService",
    "CIM_BootSourceSetting",
    "CIM_AssociatedPowerManagementService",
    "CIM_ServiceAvailableToElement",
    "CIM_PowerManagementService",
    "CIM_ComputerSystem",
    "IPS_OptInService",
    "IPS_HostBasedSetupService",
    "IPS_PowerManagementService",
    "AMT_PublicKeyCertificate",
    "AMT_PublicPrivateKeyPair",
    "AMT_BootCapabilities",
    "CIM_Chassis",
    "CIM_BIOSElement",
    "AMT_EthernetPortSettings",
];

/// The class name a resource URI names, if this firmware knows it.
pub fn class_of(resource_uri: &str) -> Option<&'static str> {
    let name =
        [ns::AMT_SCHEMA, ns::CIM_SCHEMA, ns::IPS_SCHEMA].iter().find_map(|prefix| resource_uri.strip_prefix(prefix))?;
    let class = KNOWN.into_iter().find(|known| *known == name)?;
    (uri_of(class) == resource_uri).then_some(class)
}

/// The resource URI of a known class.
pub fn uri_of(class: &str) -> String {
    let prefix = if class.starts_with("AMT_") {
        ns::AMT_SCHEMA
    } else if class.starts_with("IPS_") {
        ns::IPS_SCHEMA
    } else {
        ns::CIM_SCHEMA
    };
    format!("{prefix}{class}")
}

/// A fault reply.
pub fn fault(request: &Header, subcode_ns: &str, subcode: &str, reason: impl Into<String>) -> Reply {
    let fault =
        Fault { code: "Sender".to_owned(), subcode: Some(subcode.to_owned()), reason: reason.into(), detail: None };
    let fault_action = if subcode_ns == ns::ADDRESSING { action::ADDRESSING_FAULT } else { action::WSMAN_FAULT };
    let envelope = Envelope::response(request, fault_action, Uuid::new_v4(), Some(fault.to_element(subcode_ns)));
    Reply { status: 400, envelope }
}

/// The reply to a document that is not a WS-MAN envelope.
pub fn schema_fault(reason: &str) -> Reply {
    fault(&Header::default(), ns::WSMAN, "SchemaValidationError", reason)
}

/// The reply's status and document. A reply that cannot be written (it would echo a value XML
/// cannot carry from the request, such as a MessageID with a control character) becomes a
/// `wsman:SchemaValidationError` fault that echoes nothing.
pub fn to_bytes(reply: &Reply) -> (u16, Vec<u8>) {
    match reply.envelope.to_bytes() {
        Ok(bytes) => (reply.status, bytes),
        Err(err) => {
            let fallback =
                fault(&Header::default(), ns::WSMAN, "SchemaValidationError", format!("cannot answer: {err}"));
            (400, fallback.envelope.to_bytes().unwrap_or_default())
        }
    }
}

/// Writes no empty elements, as AMT does not: a property without a value is left out (AMT omits
/// unset properties), an empty `Items` is left out, and `EndOfSequence` gets a space. MeshCentral's
/// XML reader (amt-xml.js) splits tags on spaces and only knows `<x />` with a space as an empty
/// element; a `<x/>` unbalances its tree and the whole response reads as nothing.
fn tidy(element: &mut Element) {
    element.children.retain(|c| !c.children.is_empty() || !c.text.is_empty() || c.name == "EndOfSequence");
    for child in &mut element.children {
        if child.name == "EndOfSequence" && child.children.is_empty() && child.text.is_empty() {
            child.text = " ".to_owned();
        }
        tidy(child);
    }
}

fn ok(request: &Header, response_action: impl Into<String>, mut payload: Option<Element>) -> Reply {
    if let Some(payload) = &mut payload {
        tidy(payload);
    }
    Reply { status: 200, envelope: Envelope::response(request, response_action, Uuid::new_v4(), payload) }
}

/// Answers one request.
pub fn respond(request: &Envelope, state: &mut DeviceState, cx: &Context<'_>, effects: &mut Vec<Effect>) -> Reply {
    let header = &request.header;
    let Some(resource_uri) = header.resource_uri.as_deref() else {
        return fault(header, ns::ADDRESSING, "DestinationUnreachable", "no ResourceURI");
    };
    let action = header.action.as_str();
    if let Some(method) = Method::from_action(action) {
        if method.class().resource_uri() != resource_uri {
            return fault(header, ns::ADDRESSING, "DestinationUnreachable", "the method is not the resource's");
        }
        return invoke(method, request, state, cx, effects);
    }
    let Some(class) = class_of(resource_uri) else {
        return fault(header, ns::ADDRESSING, "DestinationUnreachable", format!("no such resource: {resource_uri}"));
    };
    match action {
        action::GET => get(class, header, state, cx),
        action::PUT => put(class, request, state, cx),
        action::ENUMERATE => enumerate(class, request, state, cx),
        action::PULL => pull(request, state, cx),
        action::RELEASE => release(request, state),
        _ => fault(header, ns::ADDRESSING, "ActionNotSupported", format!("action not supported: {action}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Instances

fn instance(class: &str, props: Vec<(&str, String)>) -> Element {
    let uri = uri_of(class);
    let mut element = Element::new(uri.clone(), class);
    for (name, value) in props {
        element.children.push(Element::new(uri.clone(), name).with_text(value));
    }
    element
}

fn with_reference(mut element: Element, name: &str, reference: &EndpointReference) -> Element {
    let mut holder = Element::new(element.namespace.clone(), name);
    holder.children = reference.to_elements();
    element.children.push(holder);
    element
}

fn s(value: impl ToString) -> String {
    value.to_string()
}

/// The device UUID as AMT's PlatformGUID: SMBIOS byte order (the first three fields
/// little-endian), 32 uppercase hex digits.
pub fn platform_guid(uuid: Uuid) -> String {
    uuid.to_bytes_le().iter().map(|b| format!("{b:02X}")).collect()
}

fn power_service_ref() -> EndpointReference {
    EndpointReference {
        address: ANONYMOUS.to_owned(),
        resource_uri: uri_of("CIM_PowerManagementService"),
        selectors: vec![
            Selector::text("CreationClassName", "CIM_PowerManagementService"),
            Selector::text("Name", "Intel(r) AMT Power Management Service"),
            Selector::text("SystemCreationClassName", "CIM_ComputerSystem"),
            Selector::text("SystemName", "Intel(r) AMT"),
        ],
    }
}

/// Every instance of `class`, in this device's state.
pub fn instances(class: &str, state: &DeviceState, cx: &Context<'_>) -> Vec<Element> {
    let uuid = cx.uuid;
    let service = |class: &str, name: &str| {
        vec![
            ("CreationClassName", s(class)),
            ("ElementName", s(name)),
            ("Name", s(name)),
            ("SystemCreationClassName", s("CIM_ComputerSystem")),
            ("SystemName", s("Intel(r) AMT")),
        ]
    };
    match class {
        "AMT_GeneralSettings" => vec![instance(
            class,
            vec![
                ("AMTNetworkEnabled", s(1)),
                ("DDNSPeriodicUpdateInterval", s(1440)),
                ("DDNSTTL", s(900)),
                ("DDNSUpdateByDHCPServerEnabled", s(true)),
                ("DDNSUpdateEnabled", s(false)),
                ("DHCPv6ConfigurationTimeout", s(0)),
                ("DigestRealm", s(cx.realm)),
                ("DomainName", s("tether.test")),
                ("ElementName", s("Intel(r) AMT: General Settings")),
                ("HostName", format!("amt-{}", uuid.simple())),
                ("HostOSFQDN", format!("amt-{}.tether.test", uuid.simple())),
                ("IdleWakeTimeout", s(65535)),
                ("InstanceID", s("Intel(r) AMT: General Settings")),
                ("NetworkInterfaceEnabled", s(true)),
                ("PingResponseEnabled", s(true)),
                ("PowerSource", s(0)),
                ("PreferredAddressFamily", s(0)),
                ("PresenceNotificationInterval", s(0)),
                ("PrivacyLevel", s(0)),
                ("RmcpPingResponseEnabled", s(true)),
                ("SharedFQDN", s(true)),
                ("ThunderboltDockEnabled", s(0)),
                ("WsmanOnlyMode", s(false)),
            ],
        )],
        "CIM_SoftwareIdentity" => [
            ("Flash", cx.config.amt_version.clone()),
            ("Netstack", cx.config.amt_version.clone()),
            ("AMTApps", cx.config.amt_version.clone()),
            ("AMT", cx.config.amt_version.clone()),
            ("Sku", s(16392)),
            ("VendorID", s(8086)),
            ("Build Number", s(AMT_BUILD)),
            ("Recovery Version", cx.config.amt_version.clone()),
            ("Recovery Build Num", s(AMT_BUILD)),
            ("Legacy Mode", s("False")),
            ("AMT FW Core Version", cx.config.amt_version.clone()),
        ]
        .into_iter()
        .map(|(id, version)| {
            instance(class, vec![("InstanceID", s(id)), ("IsEntity", s(true)), ("VersionString", version)])
        })
        .collect(),
        "CIM_ComputerSystemPackage" => {
            let chassis = EndpointReference {
                address: ANONYMOUS.to_owned(),
                resource_uri: uri_of("CIM_Chassis"),
                selectors: vec![
                    Selector::text("CreationClassName", "CIM_Chassis"),
                    Selector::text("Tag", "CIM_Chassis"),
                ],
            };
            let element = instance(class, vec![("PlatformGUID", platform_guid(uuid))]);
            let element = with_reference(element, "Antecedent", &chassis);
            vec![with_reference(element, "Dependent", &EndpointReference::managed_system())]
        }
        "AMT_SetupAndConfigurationService" => {
            let mut props = service(class, "Intel(r) AMT Setup and Configuration Service");
            props.extend([
                ("EnabledState", s(5)),
                ("PasswordModel", s(1)),
                ("ProvisioningMode", s(cx.config.control_mode.provisioning_mode())),
                ("ProvisioningServerOTP", String::new()),
                ("ProvisioningState", s(2)),
                ("RequestedState", s(12)),
                ("ZeroTouchConfigurationEnabled", s(false)),
            ]);
            vec![instance(class, props)]
        }
        "AMT_RedirectionService" => {
            let mut props = service(class, "Intel(r) AMT Redirection Service");
            props.extend([
                ("AccessLog", s("")),
                ("EnabledState", s(state.redirection_state)),
                ("ListenerEnabled", s(state.listener)),
                ("RequestedState", s(state.redirection_state)),
            ]);
            vec![instance(class, props)]
        }
        "AMT_BootSettingData" => {
            let b = &state.boot;
            vec![instance(
                class,
                vec![
                    ("BIOSLastStatus", s(2)),
                    ("BIOSPause", s(b.bios_pause)),
                    ("BIOSSetup", s(b.bios_setup)),
                    ("BootMediaIndex", s(b.boot_media_index)),
                    ("ConfigurationDataReset", s(b.configuration_data_reset)),
                    ("ElementName", s("Intel(r) AMT Boot Configuration Settings")),
                    ("EnforceSecureBoot", s(false)),
                    ("FirmwareVerbosity", s(b.firmware_verbosity)),
                    ("ForcedProgressEvents", s(b.forced_progress_events)),
                    ("IDERBootDevice", s(b.ider_boot_device)),
                    ("InstanceID", s("Intel(r) AMT:BootSettingData 0")),
                    ("LockKeyboard", s(b.lock_keyboard)),
                    ("LockPowerButton", s(b.lock_power_button)),
                    ("LockResetButton", s(b.lock_reset_button)),
                    ("LockSleepButton", s(b.lock_sleep_button)),
                    ("OwningEntity", b.owning_entity.clone()),
                    ("ReflashBIOS", s(b.reflash_bios)),
                    ("SecureErase", s(b.secure_erase)),
                    ("UseIDER", s(b.use_ider)),
                    ("UseSOL", s(b.use_sol)),
                    ("UseSafeMode", s(b.use_safe_mode)),
                    ("UserPasswordBypass", s(b.user_password_bypass)),
                ],
            )]
        }
        "CIM_BootConfigSetting" => vec![instance(
            class,
            vec![("ElementName", s("Intel(r) AMT: Boot Configuration")), ("InstanceID", s(BOOT_CONFIG))],
        )],
        "CIM_BootService" => {
            let mut props = service(class, "Intel(r) AMT Boot Service");
            props.extend([("EnabledState", s(2)), ("OperationalStatus", s(0)), ("RequestedState", s(12))]);
            vec![instance(class, props)]
        }
        "CIM_BootSourceSetting" => BOOT_SOURCES
            .iter()
            .map(|id| {
                instance(
                    class,
                    vec![
                        ("ElementName", s("Intel(r) AMT: Boot Source")),
                        ("FailThroughSupported", s(2)),
                        ("InstanceID", s(id)),
                        ("StructuredBootString", s(id.rsplit(": ").next().unwrap_or(id))),
                    ],
                )
            })
            .collect(),
        "CIM_AssociatedPowerManagementService" | "CIM_ServiceAvailableToElement" => {
            let uri = uri_of(class);
            let mut element = instance(class, vec![]);
            for available in [2, 5, 8, 10] {
                element
                    .children
                    .push(Element::new(uri.clone(), "AvailableRequestedPowerStates").with_text(s(available)));
            }
            element.children.push(Element::new(uri.clone(), "PowerState").with_text(s(state.power)));
            element.children.push(Element::new(uri.clone(), "RequestedPowerState").with_text(s(state.power)));
            let element = with_reference(element, "ServiceProvided", &power_service_ref());
            vec![with_reference(element, "UserOfService", &EndpointReference::managed_system())]
        }
        "CIM_PowerManagementService" => {
            vec![instance(class, service(class, "Intel(r) AMT Power Management Service"))]
        }
        "IPS_PowerManagementService" => {
            let mut props = service(class, "Intel(r) AMT Power Management Service");
            props.push(("OSPowerSavingState", s(if state.power == POWER_ON { 2 } else { 0 })));
            vec![instance(class, props)]
        }
        "CIM_ComputerSystem" => [("ManagedSystem", "Managed System"), ("Intel(r) AMT", "Intel(r) AMT")]
            .into_iter()
            .map(|(name, element_name)| {
                let enabled = if name == "ManagedSystem" && state.power != POWER_ON { 3 } else { 2 };
                instance(
                    class,
                    vec![
                        ("CreationClassName", s("CIM_ComputerSystem")),
                        ("ElementName", s(element_name)),
                        ("EnabledState", s(enabled)),
                        ("Name", s(name)),
                        ("RequestedState", s(12)),
                    ],
                )
            })
            .collect(),
        "IPS_OptInService" => {
            let mut props = service(class, "Intel(r) AMT OptIn Service");
            props.extend([
                ("CanModifyOptInPolicy", s(1)),
                ("OptInCodeTimeout", s(120)),
                ("OptInDisplayTimeout", s(300)),
                ("OptInRequired", s(if cx.config.consent { OPT_IN_ALL } else { 0 })),
                ("OptInState", s(state.opt_in.state)),
            ]);
            vec![instance(class, props)]
        }
        "IPS_HostBasedSetupService" => {
            let mut props = service(class, "Intel(r) AMT Host Based Setup Service");
            props.extend([
                ("AllowedControlModes", s(2)),
                ("CertChainStatus", s(0)),
                ("ConfigurationNonce", s("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
                ("CurrentControlMode", s(cx.config.control_mode.current_control_mode())),
                ("EnabledState", s(5)),
                ("RequestedState", s(12)),
            ]);
            vec![instance(class, props)]
        }
        "CIM_Chassis" => vec![instance(
            class,
            vec![
                ("CreationClassName", s("CIM_Chassis")),
                ("ElementName", s("Managed System Chassis")),
                ("Manufacturer", s("Tether")),
                ("Model", s("amt-sim")),
                ("PackageType", s(3)),
                ("SerialNumber", s(uuid.simple())),
                ("Tag", s("CIM_Chassis")),
            ],
        )],
        "CIM_BIOSElement" => vec![instance(
            class,
            vec![
                ("ElementName", s("Primary BIOS")),
                ("Manufacturer", s("Tether")),
                ("Name", s("Primary BIOS")),
                ("PrimaryBIOS", s(true)),
                ("SoftwareElementID", s("amt-sim BIOS")),
                ("Version", s("1.0")),
            ],
        )],
        "AMT_BootCapabilities" => vec![instance(
            class,
            vec![
                ("ElementName", s("Intel(r) AMT: Boot Capabilities")),
                ("IDER", s(true)),
                ("InstanceID", s("Intel(r) AMT:BootCapabilities 0")),
                ("SOL", s(true)),
            ],
        )],
        // Known, with no instances (no certificates, no key pairs, no Ethernet port data).
        _ => Vec::new(),
    }
}

fn text_selectors(header: &Header) -> impl Iterator<Item = (&str, &str)> {
    header.selectors.iter().filter_map(|s| match &s.value {
        SelectorValue::Text(text) => Some((s.name.as_str(), text.as_str())),
        SelectorValue::Reference(_) => None,
    })
}

/// Whether `element` matches the text selectors it has properties for.
fn matches(element: &Element, selectors: &[(&str, &str)]) -> bool {
    selectors.iter().all(|(name, value)| match element.child(name) {
        Some(property) => property.text.trim() == value.trim(),
        None => true,
    })
}

// ---------------------------------------------------------------------------------------------
// Get, Put

fn get(class: &str, header: &Header, state: &DeviceState, cx: &Context<'_>) -> Reply {
    let selectors: Vec<(&str, &str)> = text_selectors(header).collect();
    let found = instances(class, state, cx).into_iter().find(|i| matches(i, &selectors));
    match found {
        Some(instance) => ok(header, action::GET_RESPONSE, Some(instance)),
        None if selectors.is_empty() && header.selectors.is_empty() => {
            fault(header, ns::WSMAN, "InvalidSelectors", format!("{class} has no instance to get"))
        }
        None => fault(header, ns::WSMAN, "InvalidSelectors", "the selectors name no instance"),
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn put(class: &str, request: &Envelope, state: &mut DeviceState, cx: &Context<'_>) -> Reply {
    let header = &request.header;
    let Some(body) = request.payload().filter(|p| p.name == class) else {
        return fault(header, ns::TRANSFER, "InvalidRepresentation", format!("the body is no {class}"));
    };
    let invalid = |what: &str| fault(header, ns::TRANSFER, "InvalidRepresentation", what.to_owned());
    match class {
        "AMT_RedirectionService" => {
            if let Some(listener) = body.child("ListenerEnabled") {
                let Some(value) = parse_bool(&listener.text) else { return invalid("ListenerEnabled is no boolean") };
                state.listener = value;
            }
            tracing::info!("redirection: EnabledState {} listener={}", state.redirection_state, state.listener);
        }
        "AMT_BootSettingData" => {
            let mut boot = state.boot.clone();
            let flags: [(&str, &mut bool); 15] = [
                ("UseSOL", &mut boot.use_sol),
                ("UseIDER", &mut boot.use_ider),
                ("BIOSPause", &mut boot.bios_pause),
                ("BIOSSetup", &mut boot.bios_setup),
                ("ConfigurationDataReset", &mut boot.configuration_data_reset),
                ("ForcedProgressEvents", &mut boot.forced_progress_events),
                ("LockKeyboard", &mut boot.lock_keyboard),
                ("LockPowerButton", &mut boot.lock_power_button),
                ("LockResetButton", &mut boot.lock_reset_button),
                ("LockSleepButton", &mut boot.lock_sleep_button),
                ("ReflashBIOS", &mut boot.reflash_bios),
                ("UseSafeMode", &mut boot.use_safe_mode),
                ("UserPasswordBypass", &mut boot.user_password_bypass),
                ("SecureErase", &mut boot.secure_erase),
                ("EnforceSecureBoot", &mut false),
            ];
            for (name, field) in flags {
                if let Some(property) = body.child(name) {
                    let Some(value) = parse_bool(&property.text) else {
                        return invalid(&format!("{name} is no boolean"));
                    };
                    *field = value;
                }
            }
            let numbers: [(&str, &mut u8, u8); 3] = [
                ("IDERBootDevice", &mut boot.ider_boot_device, 1),
                ("BootMediaIndex", &mut boot.boot_media_index, 255),
                ("FirmwareVerbosity", &mut boot.firmware_verbosity, 3),
            ];
            for (name, field, max) in numbers {
                if let Some(property) = body.child(name) {
                    match property.text.trim().parse::<u8>() {
                        Ok(value) if value <= max => *field = value,
                        _ => return invalid(&format!("{name} must be a number from 0 to {max}")),
                    }
                }
            }
            if let Some(owner) = body.child("OwningEntity") {
                boot.owning_entity = owner.text.chars().take(64).collect();
            }
            state.boot = boot;
            tracing::info!(
                "boot settings: UseIDER={} IDERBootDevice={} UseSOL={}",
                state.boot.use_ider,
                state.boot.ider_boot_device,
                state.boot.use_sol
            );
        }
        _ => {
            return fault(header, ns::ADDRESSING, "ActionNotSupported", format!("{class} cannot be written"));
        }
    }
    let updated = instances(class, state, cx).into_iter().next();
    ok(header, action::PUT_RESPONSE, updated)
}

// ---------------------------------------------------------------------------------------------
// Enumerate, Pull, Release

fn new_context(state: &mut DeviceState, resource_uri: &str, items: Vec<Element>, now: Instant) -> String {
    state.enumerations.retain(|e| e.expires > now);
    while state.enumerations.len() >= MAX_ENUMERATIONS {
        state.enumerations.remove(0);
    }
    let context =
        format!("{:08X}-0000-0000-0000-{:012X}", rand::rng().random::<u32>(), rand::rng().random::<u64>() >> 16);
    state.enumerations.push(Enumeration {
        context: context.clone(),
        resource_uri: resource_uri.to_owned(),
        items,
        expires: now + ENUMERATION_LIFETIME,
    });
    context
}

/// `MaxElements` of a request, within 1..=1000 (absent: 1, as DSP0226 says).
fn max_elements(element: Option<&Element>) -> Result<usize, ()> {
    match element {
        None => Ok(1),
        Some(e) => match e.text.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok((n as usize).min(1000)),
            _ => Err(()),
        },
    }
}

/// Puts the items' class namespace in scope on the Enumerate/Pull response element, so that the
/// writer declares it there rather than on every item. AMT declares all namespaces on the
/// envelope, and MeshCentral's parser (amt-xml.js) turns an element that carries any attribute,
/// an `xmlns:` declaration included, into `{Value, @attr}`, which hides the item's properties.
/// [`protocols::wsman`]'s writer declares a namespace where it is first used and has no bare
/// declaration, so the namespace is used by one attribute naming the class; MeshCentral reads
/// no attribute of that element.
fn in_scope(mut response: Element, class: &str) -> Element {
    response.attributes.push(protocols::wsman::Attribute {
        namespace: uri_of(class),
        name: "Class".to_owned(),
        value: class.to_owned(),
    });
    response
}

fn enumerate(class: &str, request: &Envelope, state: &mut DeviceState, cx: &Context<'_>) -> Reply {
    let header = &request.header;
    let Some(body) = request.payload().filter(|p| p.is(ns::ENUMERATION, "Enumerate")) else {
        return fault(header, ns::WSMAN, "SchemaValidationError", "no wsen:Enumerate in the body");
    };
    let mut items = instances(class, state, cx);
    let resource_uri = uri_of(class);
    let response = if body.child_ns(ns::WSMAN, "OptimizeEnumeration").is_some() {
        let Ok(max) = max_elements(body.child_ns(ns::WSMAN, "MaxElements")) else {
            return fault(header, ns::WSMAN, "InvalidParameter", "MaxElements is not a positive number");
        };
        let rest = items.split_off(max.min(items.len()));
        let end = rest.is_empty();
        let context = (!end).then(|| new_context(state, &resource_uri, rest, cx.now));
        EnumerateResponse { context, items, end_of_sequence: end }
    } else {
        let context = new_context(state, &resource_uri, items, cx.now);
        EnumerateResponse { context: Some(context), items: Vec::new(), end_of_sequence: false }
    };
    ok(header, action::ENUMERATE_RESPONSE, Some(in_scope(response.to_element(), class)))
}

fn context_of(request: &Envelope, name: &str) -> Option<String> {
    request
        .payload()
        .filter(|p| p.is(ns::ENUMERATION, name))
        .and_then(|p| p.child_ns(ns::ENUMERATION, "EnumerationContext"))
        .map(|c| c.text.trim().to_owned())
}

fn pull(request: &Envelope, state: &mut DeviceState, cx: &Context<'_>) -> Reply {
    let header = &request.header;
    let Some(context) = context_of(request, "Pull") else {
        return fault(header, ns::WSMAN, "SchemaValidationError", "no wsen:Pull with an EnumerationContext");
    };
    let max = request.payload().and_then(|p| p.child_ns(ns::ENUMERATION, "MaxElements"));
    let Ok(max) = max_elements(max) else {
        return fault(header, ns::WSMAN, "InvalidParameter", "MaxElements is not a positive number");
    };
    state.enumerations.retain(|e| e.expires > cx.now);
    let Some(index) = state.enumerations.iter().position(|e| e.context == context) else {
        return fault(header, ns::ENUMERATION, "InvalidEnumerationContext", "unknown or expired enumeration context");
    };
    let enumeration = &mut state.enumerations[index];
    let class = class_of(&enumeration.resource_uri).unwrap_or_default();
    if header.resource_uri.as_deref() != Some(enumeration.resource_uri.as_str()) {
        return fault(header, ns::ENUMERATION, "InvalidEnumerationContext", "the context is another resource's");
    }
    let rest = enumeration.items.split_off(max.min(enumeration.items.len()));
    let items = std::mem::replace(&mut enumeration.items, rest);
    let end = enumeration.items.is_empty();
    let response = if end {
        state.enumerations.remove(index);
        PullResponse { items, context: None, end_of_sequence: true }
    } else {
        enumeration.expires = cx.now + ENUMERATION_LIFETIME;
        PullResponse { items, context: Some(context), end_of_sequence: false }
    };
    ok(header, action::PULL_RESPONSE, Some(in_scope(response.to_element(), class)))
}

fn release(request: &Envelope, state: &mut DeviceState) -> Reply {
    let header = &request.header;
    let Some(context) = context_of(request, "Release") else {
        return fault(header, ns::WSMAN, "SchemaValidationError", "no wsen:Release with an EnumerationContext");
    };
    let before = state.enumerations.len();
    state.enumerations.retain(|e| e.context != context);
    if state.enumerations.len() == before {
        return fault(header, ns::ENUMERATION, "InvalidEnumerationContext", "unknown enumeration context");
    }
    ok(header, action::RELEASE_RESPONSE, None)
}

// ---------------------------------------------------------------------------------------------
// Methods

fn power_name(state: u32) -> &'static str {
    match state {
        2 => "on",
        5 => "cycle",
        8 => "off",
        10 => "reset",
        _ => "?",
    }
}

fn invoke(
    method: Method,
    request: &Envelope,
    state: &mut DeviceState,
    cx: &Context<'_>,
    effects: &mut Vec<Effect>,
) -> Reply {
    let header = &request.header;
    let input = method.input_element();
    let Some(body) = request.payload().filter(|p| p.name == input) else {
        return fault(header, ns::WSMAN, "InvalidParameter", format!("the body is no {input}"));
    };
    // A numeric parameter: Ok(None) when absent, Err(()) when not a number.
    let number = |name: &str| -> Result<Option<u32>, ()> {
        match body.child(name) {
            None => Ok(None),
            Some(e) => e.text.trim().parse::<u32>().map(Some).map_err(|_| ()),
        }
    };
    let not_a_number = |name: &str| fault(header, ns::WSMAN, "InvalidParameter", format!("{name} is not a number"));
    let uuid = cx.uuid;
    let return_value = match method {
        Method::RequestPowerStateChange => {
            let requested = match number("PowerState") {
                Ok(Some(value)) => value,
                Ok(None) => return fault(header, ns::WSMAN, "InvalidParameter", "PowerState is missing"),
                Err(()) => return not_a_number("PowerState"),
            };
            request_power(requested, state, cx, effects)
        }
        Method::RequestStateChange => {
            let requested = match number("RequestedState") {
                Ok(Some(value)) => value,
                Ok(None) => return fault(header, ns::WSMAN, "InvalidParameter", "RequestedState is missing"),
                Err(()) => return not_a_number("RequestedState"),
            };
            if state.lacks_consent(cx.config.consent, cx.now) {
                tracing::info!("redirection: RequestStateChange {requested} refused: no user consent");
                2
            } else if (REDIRECTION_NONE..=REDIRECTION_BOTH).contains(&requested) {
                state.redirection_state = requested;
                tracing::info!("redirection: EnabledState {requested} listener={}", state.listener);
                0
            } else {
                5
            }
        }
        Method::ChangeBootOrder => {
            if header.selector("InstanceID").is_some_and(|id| id != BOOT_CONFIG) {
                return fault(header, ns::WSMAN, "InvalidSelectors", "no such boot configuration");
            }
            match body.child("Source") {
                None => {
                    state.boot_source = None;
                    tracing::info!("boot order: cleared");
                    0
                }
                Some(source) => {
                    let id = EndpointReference::from_element(source).ok().and_then(|r| {
                        r.selectors.iter().find(|s| s.name == "InstanceID").and_then(|s| s.as_text().map(str::to_owned))
                    });
                    match id.filter(|id| BOOT_SOURCES.contains(&id.as_str())) {
                        Some(id) => {
                            tracing::info!("boot order: {id}");
                            state.boot_source = Some(id);
                            0
                        }
                        None => 5,
                    }
                }
            }
        }
        Method::SetBootConfigRole => {
            let role = match number("Role") {
                Ok(role) => role,
                Err(()) => return not_a_number("Role"),
            };
            let config =
                body.child("BootConfigSetting").and_then(|c| EndpointReference::from_element(c).ok()).and_then(|r| {
                    r.selectors.iter().find(|s| s.name == "InstanceID").and_then(|s| s.as_text().map(str::to_owned))
                });
            if matches!(role, Some(0 | 1)) && config.as_deref() == Some(BOOT_CONFIG) {
                state.boot_role_set = true;
                tracing::info!("boot config role: {BOOT_CONFIG} for the next boot");
                0
            } else {
                5
            }
        }
        Method::StartOptIn => {
            if state.opt_in.state >= 3 {
                2
            } else {
                let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
                tracing::info!("user consent code for {uuid}: {code}");
                effects.push(Effect::Print(uuid, format!("user consent code: {code}")));
                state.opt_in = OptIn { state: 2, code: Some(code), wrong: 0 };
                0
            }
        }
        Method::SendOptInCode => {
            let sent = body.child("OptInCode").map(|c| c.text.trim().to_owned()).unwrap_or_default();
            match (&state.opt_in.code, state.opt_in.state) {
                (Some(code), 2) if *code == sent => {
                    state.opt_in.state = 3;
                    state.opt_in.code = None;
                    state.last_session = cx.now;
                    tracing::info!("consent: code accepted (OptInState 3)");
                    0
                }
                (Some(_), 2) => {
                    state.opt_in.wrong += 1;
                    if state.opt_in.wrong >= MAX_WRONG_CODES {
                        state.opt_in = OptIn { state: 0, code: None, wrong: 0 };
                        tracing::info!("consent: {MAX_WRONG_CODES} wrong codes; the code is void (OptInState 0)");
                    } else {
                        tracing::info!("consent: wrong code ({} of {MAX_WRONG_CODES})", state.opt_in.wrong);
                    }
                    2066
                }
                _ => 2,
            }
        }
        Method::CancelOptIn => {
            state.opt_in = OptIn { state: 0, code: None, wrong: 0 };
            tracing::info!("consent: cancelled (OptInState 0)");
            0
        }
    };
    ok(header, method.response_action(), Some(method_output(method, return_value)))
}

fn request_power(requested: u32, state: &mut DeviceState, cx: &Context<'_>, effects: &mut Vec<Effect>) -> u32 {
    let uuid = cx.uuid;
    let from = power_name(state.power);
    if !matches!(requested, 2 | 5 | 8 | 10) {
        tracing::info!("power: {requested} not supported");
        return 1;
    }
    if state.lacks_consent(cx.config.consent, cx.now) {
        tracing::info!("power: {} refused: no user consent", power_name(requested));
        return 2;
    }
    let valid = if state.power == POWER_ON { requested != 2 } else { requested == 2 };
    if !valid {
        tracing::info!("power: {from} -> {} refused: invalid transition", power_name(requested));
        return 2;
    }
    if matches!(requested, 5 | 8) && state.in_session() {
        let which = match (state.sol_open, state.ider_open) {
            (true, true) => "SOL and IDE-R sessions are",
            (true, false) => "a SOL session is",
            _ => "an IDE-R session is",
        };
        tracing::info!("power: {from} -> {} refused: {which} open", power_name(requested));
        return 2;
    }
    tracing::info!("power: {from} -> {}", power_name(requested));
    state.power = if requested == 8 { POWER_OFF } else { POWER_ON };
    if requested == 8 {
        state.pending_boot = None;
    } else {
        state.boot(uuid, effects);
    }
    if cx.config.redial_on_power_change {
        state.pending_boot_after = state.pending_boot.map(|_| cx.now);
        effects.push(Effect::DropTunnel(uuid));
    }
    0
}

/// The redirection session kinds a device state has open (for tests and logs).
pub fn open_sessions(state: &DeviceState) -> Vec<SessionType> {
    let mut kinds = Vec::new();
    if state.sol_open {
        kinds.push(SessionType::Sol);
    }
    if state.ider_open {
        kinds.push(SessionType::Ider);
    }
    kinds
}

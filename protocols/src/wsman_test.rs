//! Tests of the WS-MAN envelopes: resource URIs and actions, requests as MeshCentral and Intel's
//! builders write them, AMT-shaped responses (a Get of AMT_GeneralSettings, Enumerate and Pull,
//! a method's output, faults), limits, and property tests (requests with arbitrary strings
//! round-trip through the parser; arbitrary bytes never panic; whatever parses re-writes to a
//! document that parses to the same envelope).

use super::*;
use proptest::prelude::*;

const TO: &str = "http://192.168.1.2:16992/wsman";

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

fn parse(document: &str) -> Result<Envelope, WsmanError> {
    Envelope::parse(document.as_bytes(), &Limits::default())
}

fn round_trip(request: &Request) -> Envelope {
    let bytes = request.to_bytes().expect("write");
    Envelope::parse(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

// ---------------------------------------------------------------------------------------------
// Classes and methods

#[test]
fn resource_uris_are_schema_prefix_and_class_name() {
    for class in Class::ALL {
        let expected_schema = match &class.name()[..4] {
            "AMT_" => Schema::Amt,
            "CIM_" => Schema::Cim,
            "IPS_" => Schema::Ips,
            other => panic!("{class:?} has prefix {other}"),
        };
        assert_eq!(class.schema(), expected_schema);
        assert_eq!(class.resource_uri(), format!("{}{}", class.schema().prefix(), class.name()));
        assert_eq!(Class::from_resource_uri(class.resource_uri()), Some(class));
    }
    assert_eq!(
        Class::AmtGeneralSettings.resource_uri(),
        "http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings"
    );
    assert_eq!(
        Class::CimSoftwareIdentity.resource_uri(),
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_SoftwareIdentity"
    );
    assert_eq!(Class::IpsOptInService.resource_uri(), "http://intel.com/wbem/wscim/1/ips-schema/1/IPS_OptInService");
    assert_eq!(Class::from_resource_uri("http://example.com/X"), None);
}

#[test]
fn method_actions_are_resource_uri_slash_name() {
    for method in Method::ALL {
        assert_eq!(method.action(), format!("{}/{}", method.class().resource_uri(), method.name()));
        assert_eq!(Method::from_action(method.action()), Some(method));
        assert_eq!(method.response_action(), format!("{}Response", method.action()));
    }
    assert_eq!(
        Method::RequestPowerStateChange.action(),
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService/RequestPowerStateChange"
    );
    assert_eq!(Method::RequestPowerStateChange.input_element(), "RequestPowerStateChange_INPUT");
    assert_eq!(Method::SendOptInCode.output_element(), "SendOptInCode_OUTPUT");
}

// ---------------------------------------------------------------------------------------------
// Requests

#[test]
fn get_request_header() {
    let request = Request::get(TO, Class::AmtGeneralSettings.resource_uri(), id(1));
    let envelope = round_trip(&request);
    assert_eq!(envelope.header.action, action::GET);
    assert_eq!(envelope.header.to.as_deref(), Some(TO));
    assert_eq!(envelope.header.resource_uri.as_deref(), Some(Class::AmtGeneralSettings.resource_uri()));
    assert_eq!(envelope.header.message_id.as_deref(), Some("uuid:00000000-0000-0000-0000-000000000001"));
    assert_eq!(envelope.header.reply_to.as_deref(), Some(ANONYMOUS));
    assert_eq!(envelope.header.operation_timeout.as_deref(), Some("PT60S"));
    assert_eq!(envelope.header.selectors, []);
    assert_eq!(envelope.payload(), None);

    let text = String::from_utf8(request.to_bytes().expect("write")).expect("UTF-8");
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><s:Envelope "), "{text}");
    assert!(
        text.contains(
            "<a:Action s:mustUnderstand=\"true\">http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</a:Action>"
        ),
        "{text}"
    );
    assert!(text.contains("<s:Body/>"), "{text}");
}

#[test]
fn get_with_selector() {
    let request = Request::get(TO, Class::CimSoftwareIdentity.resource_uri(), id(2))
        .with_selector(Selector::text("InstanceID", "AMT"));
    let envelope = round_trip(&request);
    assert_eq!(envelope.header.selector("InstanceID"), Some("AMT"));
    let text = String::from_utf8(request.to_bytes().expect("write")).expect("UTF-8");
    assert!(text.contains("<w:SelectorSet><w:Selector Name=\"InstanceID\">AMT</w:Selector></w:SelectorSet>"), "{text}");
}

#[test]
fn request_power_state_change_has_an_epr_parameter() {
    let request = Request::invoke(
        TO,
        Method::RequestPowerStateChange,
        id(3),
        vec![
            Property::text("PowerState", "10"),
            Property::reference("ManagedElement", EndpointReference::managed_system()),
        ],
    )
    .with_selector(Selector::text("Name", "Intel(r) AMT Power Management Service"));
    let envelope = round_trip(&request);
    assert_eq!(envelope.header.action, Method::RequestPowerStateChange.action());
    assert_eq!(envelope.header.resource_uri.as_deref(), Some(Class::CimPowerManagementService.resource_uri()));
    let input = envelope.payload().expect("input");
    assert!(input.is(Class::CimPowerManagementService.resource_uri(), "RequestPowerStateChange_INPUT"));
    assert_eq!(input.child_text("PowerState"), Some("10"));
    let managed = input.child("ManagedElement").expect("ManagedElement");
    assert_eq!(managed.child("ManagedElement"), None);
    assert_eq!(EndpointReference::from_element(managed), Ok(EndpointReference::managed_system()));
    assert_eq!(
        managed.child("ReferenceParameters").and_then(|r| r.child("ResourceURI")).map(Element::text),
        Some("http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ComputerSystem")
    );
}

#[test]
fn change_boot_order_and_set_boot_config_role() {
    let change = Request::invoke(
        TO,
        Method::ChangeBootOrder,
        id(4),
        vec![Property::reference("Source", EndpointReference::boot_source("Intel(r) AMT: Force CD/DVD Boot"))],
    )
    .with_selector(Selector::text("InstanceID", "Intel(r) AMT: Boot Configuration 0"));
    let envelope = round_trip(&change);
    let source = envelope.payload().and_then(|p| p.child("Source")).expect("Source");
    let source = EndpointReference::from_element(source).expect("EPR");
    assert_eq!(source.resource_uri, Class::CimBootSourceSetting.resource_uri());
    assert_eq!(source.selectors, [Selector::text("InstanceID", "Intel(r) AMT: Force CD/DVD Boot")]);

    let role = Request::invoke(
        TO,
        Method::SetBootConfigRole,
        id(5),
        vec![
            Property::reference(
                "BootConfigSetting",
                EndpointReference::boot_config("Intel(r) AMT: Boot Configuration 0"),
            ),
            Property::text("Role", "1"),
        ],
    )
    .with_selector(Selector::text("Name", "Intel(r) AMT Boot Service"));
    let envelope = round_trip(&role);
    let input = envelope.payload().expect("input");
    assert_eq!(input.name, "SetBootConfigRole_INPUT");
    assert_eq!(input.child_text("Role"), Some("1"));
}

#[test]
fn epr_valued_selector_round_trips() {
    let reference = EndpointReference::managed_system();
    let request = Request::get(TO, Class::CimAssociatedPowerManagementService.resource_uri(), id(6))
        .with_selector(Selector { name: "UserOfService".into(), value: SelectorValue::Reference(reference.clone()) });
    let envelope = round_trip(&request);
    assert_eq!(envelope.header.selectors, request.selectors);
    assert_eq!(envelope.header.selector("UserOfService"), None, "not a text selector");
}

#[test]
fn put_writes_the_class_element_in_its_namespace() {
    let request = Request::put(
        TO,
        Class::AmtBootSettingData.resource_uri(),
        id(7),
        vec![
            Property::text("InstanceID", "Intel(r) AMT:BootSettingData 0"),
            Property::text("UseSOL", "true"),
            Property::text("UseIDER", "true"),
            Property::text("IDERBootDevice", "1"),
        ],
    );
    let envelope = round_trip(&request);
    assert_eq!(envelope.header.action, action::PUT);
    let instance = envelope.payload().expect("instance");
    assert!(instance.is(Class::AmtBootSettingData.resource_uri(), "AMT_BootSettingData"));
    assert_eq!(instance.child_text("UseIDER"), Some("true"));
    assert!(instance.children.iter().all(|p| p.namespace == Class::AmtBootSettingData.resource_uri()));
}

#[test]
fn enumerate_and_pull_bodies() {
    let envelope = round_trip(&Request::enumerate(TO, Class::AmtGeneralSettings.resource_uri(), id(8)));
    assert_eq!(envelope.header.action, action::ENUMERATE);
    let enumerate = envelope.payload().expect("Enumerate");
    assert!(enumerate.is(ns::ENUMERATION, "Enumerate"));
    assert!(enumerate.children.is_empty());

    let mut optimized = Request::enumerate(TO, Class::CimSoftwareIdentity.resource_uri(), id(9));
    optimized.body = RequestBody::Enumerate { optimize: Some(Some(25)) };
    let envelope = round_trip(&optimized);
    let enumerate = envelope.payload().expect("Enumerate");
    assert!(enumerate.child_ns(ns::WSMAN, "OptimizeEnumeration").is_some());
    assert_eq!(enumerate.child_ns(ns::WSMAN, "MaxElements").map(Element::text), Some("25"));

    let envelope = round_trip(&Request::pull(
        TO,
        Class::CimSoftwareIdentity.resource_uri(),
        id(10),
        "C4000000-0000-0000-0000-000000000000",
        Some(999),
    ));
    assert_eq!(envelope.header.action, action::PULL);
    let pull = envelope.payload().expect("Pull");
    assert!(pull.is(ns::ENUMERATION, "Pull"));
    assert_eq!(
        pull.child_ns(ns::ENUMERATION, "EnumerationContext").map(Element::text),
        Some("C4000000-0000-0000-0000-000000000000")
    );
    assert_eq!(pull.child_ns(ns::ENUMERATION, "MaxElements").map(Element::text), Some("999"));
}

#[test]
fn values_are_escaped() {
    let nasty = "a<b>&c\"d'e\r\nf\tg ]]> &amp; \u{1F600}";
    let request = Request::put(TO, "http://example.com/x?a=1&b=\"2\"/C_X", id(11), vec![Property::text("P", nasty)])
        .with_selector(Selector::text("N", nasty));
    let envelope = round_trip(&request);
    assert_eq!(envelope.header.selector("N"), Some(nasty));
    assert_eq!(envelope.payload().and_then(|p| p.child_text("P")), Some(nasty));
    assert_eq!(envelope.header.resource_uri.as_deref(), Some("http://example.com/x?a=1&b=\"2\"/C_X"));
}

#[test]
fn writing_refuses_what_xml_cannot_carry() {
    let request = Request::get(TO, "http://example.com/x", id(12)).with_selector(Selector::text("N", "a\u{1}b"));
    assert_eq!(request.to_bytes(), Err(WriteError::InvalidChar(1)));
    let request = Request::put(TO, "http://example.com/x", id(12), vec![Property::text("bad name", "v")]);
    assert_eq!(request.to_bytes(), Err(WriteError::InvalidName("bad name".into())));
    let request = Request::put(TO, "http://example.com/x", id(12), vec![Property::text("a:b", "v")]);
    assert_eq!(request.to_bytes(), Err(WriteError::InvalidName("a:b".into())));
    let mut envelope = Request::get(TO, "u", id(12)).to_envelope();
    envelope.body.children.push(Element::new("", "x").with_attribute("", "xmlns", "evil"));
    assert_eq!(envelope.to_bytes(), Err(WriteError::InvalidName("xmlns".into())));
    envelope.body.children[0] = Element::new(ns::XMLNS, "x");
    assert_eq!(envelope.to_bytes(), Err(WriteError::ReservedNamespace(ns::XMLNS.into())));
}

// ---------------------------------------------------------------------------------------------
// Responses as AMT sends them (written after the samples in MeshCentral's and Intel's sources:
// AMT uses prefixes a, b, c, g, h, … of its own choosing and declares them on the envelope)

const GET_GENERAL_SETTINGS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:d="http://schemas.xmlsoap.org/ws/2005/02/trust" xmlns:e="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" xmlns:f="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd" xmlns:g="http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <a:Header>
    <b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To>
    <b:RelatesTo>uuid:00000000-0000-0000-0000-000000000001</b:RelatesTo>
    <b:Action a:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse</b:Action>
    <b:MessageID>uuid:00000000-8086-8086-8086-000000000042</b:MessageID>
    <c:ResourceURI>http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings</c:ResourceURI>
  </a:Header>
  <a:Body>
    <g:AMT_GeneralSettings>
      <g:AMTNetworkEnabled>1</g:AMTNetworkEnabled>
      <g:DDNSPeriodicUpdateInterval>1440</g:DDNSPeriodicUpdateInterval>
      <g:DDNSTTL>900</g:DDNSTTL>
      <g:DDNSUpdateByDHCPServerEnabled>true</g:DDNSUpdateByDHCPServerEnabled>
      <g:DDNSUpdateEnabled>false</g:DDNSUpdateEnabled>
      <g:DHCPv6ConfigurationTimeout>0</g:DHCPv6ConfigurationTimeout>
      <g:DigestRealm>Digest:A3829B3827DE4D33D4449B366831FD01</g:DigestRealm>
      <g:DomainName>example.lan</g:DomainName>
      <g:ElementName>Intel(r) AMT: General Settings</g:ElementName>
      <g:HostName>pc-042</g:HostName>
      <g:HostOSFQDN xsi:nil="true"/>
      <g:IdleWakeTimeout>65535</g:IdleWakeTimeout>
      <g:InstanceID>Intel(r) AMT: General Settings</g:InstanceID>
      <g:NetworkInterfaceEnabled>true</g:NetworkInterfaceEnabled>
      <g:PingResponseEnabled>true</g:PingResponseEnabled>
      <g:PowerSource>0</g:PowerSource>
      <g:PreferredAddressFamily>0</g:PreferredAddressFamily>
      <g:PresenceNotificationInterval>0</g:PresenceNotificationInterval>
      <g:PrivacyLevel>0</g:PrivacyLevel>
      <g:RmcpPingResponseEnabled>true</g:RmcpPingResponseEnabled>
      <g:SharedFQDN>true</g:SharedFQDN>
      <g:ThunderboltDockEnabled>0</g:ThunderboltDockEnabled>
      <g:WsmanOnlyMode>false</g:WsmanOnlyMode>
    </g:AMT_GeneralSettings>
  </a:Body>
</a:Envelope>"#;

#[test]
fn amt_get_general_settings_response() {
    let envelope = parse(GET_GENERAL_SETTINGS).expect("parse");
    assert_eq!(envelope.header.action, action::GET_RESPONSE);
    assert_eq!(envelope.header.relates_to.as_deref(), Some("uuid:00000000-0000-0000-0000-000000000001"));
    assert_eq!(envelope.header.to.as_deref(), Some(ANONYMOUS));
    assert_eq!(envelope.header.resource_uri.as_deref(), Some(Class::AmtGeneralSettings.resource_uri()));
    let settings = envelope.payload_or_fault().expect("payload");
    assert!(settings.is(Class::AmtGeneralSettings.resource_uri(), "AMT_GeneralSettings"));
    assert_eq!(settings.child_text("HostName"), Some("pc-042"));
    assert_eq!(settings.child_text("DigestRealm"), Some("Digest:A3829B3827DE4D33D4449B366831FD01"));
    assert!(settings.child("HostOSFQDN").expect("HostOSFQDN").is_nil());
    assert!(!settings.child("HostName").expect("HostName").is_nil());
    assert_eq!(settings.children.len(), 23);
    assert_rewrites_to_same(&envelope);
}

const ENUMERATE_RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?><a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:g="http://schemas.xmlsoap.org/ws/2004/09/enumeration"><a:Header><b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To><b:RelatesTo>uuid:00000000-0000-0000-0000-000000000008</b:RelatesTo><b:Action a:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/enumeration/EnumerateResponse</b:Action><b:MessageID>uuid:00000000-8086-8086-8086-000000000043</b:MessageID><c:ResourceURI>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_SoftwareIdentity</c:ResourceURI></a:Header><a:Body><g:EnumerateResponse><g:EnumerationContext>0B000000-0000-0000-0000-000000000000</g:EnumerationContext></g:EnumerateResponse></a:Body></a:Envelope>"#;

#[test]
fn amt_enumerate_response() {
    let envelope = parse(ENUMERATE_RESPONSE).expect("parse");
    assert_eq!(envelope.header.action, action::ENUMERATE_RESPONSE);
    let response = EnumerateResponse::from_envelope(&envelope).expect("EnumerateResponse");
    assert_eq!(response.context.as_deref(), Some("0B000000-0000-0000-0000-000000000000"));
    assert!(response.items.is_empty());
    assert!(!response.end_of_sequence);
    assert_eq!(PullResponse::from_envelope(&envelope), Err(WsmanError::MissingElement("PullResponse")));
    assert_rewrites_to_same(&envelope);
}

const PULL_RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:g="http://schemas.xmlsoap.org/ws/2004/09/enumeration" xmlns:h="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_SoftwareIdentity">
<a:Header>
<b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To>
<b:RelatesTo>uuid:00000000-0000-0000-0000-000000000010</b:RelatesTo>
<b:Action a:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/enumeration/PullResponse</b:Action>
<b:MessageID>uuid:00000000-8086-8086-8086-000000000044</b:MessageID>
<c:ResourceURI>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_SoftwareIdentity</c:ResourceURI>
</a:Header>
<a:Body>
<g:PullResponse>
<g:Items>
<h:CIM_SoftwareIdentity><h:InstanceID>Flash</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>16.1.27</h:VersionString></h:CIM_SoftwareIdentity>
<h:CIM_SoftwareIdentity><h:InstanceID>Netstack</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>16.1.27</h:VersionString></h:CIM_SoftwareIdentity>
<h:CIM_SoftwareIdentity><h:InstanceID>AMT</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>16.1.27</h:VersionString></h:CIM_SoftwareIdentity>
</g:Items>
<g:EndOfSequence></g:EndOfSequence>
</g:PullResponse>
</a:Body>
</a:Envelope>"#;

#[test]
fn amt_pull_response_with_end_of_sequence() {
    let envelope = parse(PULL_RESPONSE).expect("parse");
    let response = PullResponse::from_envelope(&envelope).expect("PullResponse");
    assert!(response.end_of_sequence);
    assert_eq!(response.context, None);
    assert_eq!(response.items.len(), 3);
    let amt = response.items.iter().find(|item| item.child_text("InstanceID") == Some("AMT")).expect("AMT");
    assert!(amt.is(Class::CimSoftwareIdentity.resource_uri(), "CIM_SoftwareIdentity"));
    assert_eq!(amt.child_text("VersionString"), Some("16.1.27"));
    assert_rewrites_to_same(&envelope);
}

const POWER_OUTPUT: &str = r#"<?xml version="1.0" encoding="UTF-8"?><a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:g="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService"><a:Header><b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To><b:RelatesTo>uuid:00000000-0000-0000-0000-000000000003</b:RelatesTo><b:Action a:mustUnderstand="true">http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService/RequestPowerStateChangeResponse</b:Action><b:MessageID>uuid:00000000-8086-8086-8086-000000000045</b:MessageID><c:ResourceURI>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService</c:ResourceURI></a:Header><a:Body><g:RequestPowerStateChange_OUTPUT><g:ReturnValue>0</g:ReturnValue></g:RequestPowerStateChange_OUTPUT></a:Body></a:Envelope>"#;

#[test]
fn amt_method_output_return_value() {
    let envelope = parse(POWER_OUTPUT).expect("parse");
    assert_eq!(envelope.header.action, Method::RequestPowerStateChange.response_action());
    assert_eq!(return_value(&envelope), Ok(0));
    let refused = POWER_OUTPUT.replace("<g:ReturnValue>0<", "<g:ReturnValue> 2 <");
    assert_eq!(return_value(&parse(&refused).expect("parse")), Ok(2));
    let garbage = POWER_OUTPUT.replace("<g:ReturnValue>0<", "<g:ReturnValue>x<");
    assert_eq!(
        return_value(&parse(&garbage).expect("parse")),
        Err(WsmanError::NotANumber { field: "ReturnValue", value: "x".into() })
    );
    assert_eq!(return_value(&parse(GET_GENERAL_SETTINGS).expect("parse")), Err(WsmanError::MissingElement("_OUTPUT")));
}

const FAULT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">
<a:Header>
<b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To>
<b:RelatesTo>uuid:00000000-0000-0000-0000-000000000002</b:RelatesTo>
<b:Action a:mustUnderstand="true">http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</b:Action>
<b:MessageID>uuid:00000000-8086-8086-8086-000000000046</b:MessageID>
</a:Header>
<a:Body>
<a:Fault>
<a:Code><a:Value>a:Sender</a:Value><a:Subcode><a:Value>c:InvalidSelectors</a:Value></a:Subcode></a:Code>
<a:Reason><a:Text xml:lang="en-US">The Selectors for the resource were not valid.</a:Text></a:Reason>
<a:Detail><c:FaultDetail>http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidValue</c:FaultDetail></a:Detail>
</a:Fault>
</a:Body>
</a:Envelope>"#;

#[test]
fn amt_fault() {
    let envelope = parse(FAULT).expect("parse");
    assert_eq!(envelope.header.action, action::WSMAN_FAULT);
    let fault = envelope.fault().expect("fault");
    assert_eq!(
        fault,
        Fault {
            code: "Sender".into(),
            subcode: Some("InvalidSelectors".into()),
            reason: "The Selectors for the resource were not valid.".into(),
            detail: Some("http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidValue".into()),
        }
    );
    assert_eq!(return_value(&envelope), Err(WsmanError::Fault(Box::new(fault.clone()))));
    assert_eq!(PullResponse::from_envelope(&envelope), Err(WsmanError::Fault(Box::new(fault.clone()))));
    assert_eq!(
        fault.to_string(),
        "Sender/InvalidSelectors: The Selectors for the resource were not valid. (http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidValue)"
    );
    let reason =
        envelope.body.child("Fault").and_then(|f| f.child("Reason")).and_then(|r| r.child("Text")).expect("Text");
    assert_eq!(
        reason.attributes,
        [Attribute { namespace: ns::XML.into(), name: "lang".into(), value: "en-US".into() }]
    );
    assert_rewrites_to_same(&envelope);
}

#[test]
fn a_responder_writes_responses_and_faults() {
    let request = Request::get(TO, Class::AmtGeneralSettings.resource_uri(), id(20)).to_envelope();
    let settings = Element::new(Class::AmtGeneralSettings.resource_uri(), "AMT_GeneralSettings")
        .with_child(Element::new(Class::AmtGeneralSettings.resource_uri(), "HostName").with_text("pc & co"));
    let response = Envelope::response(&request.header, action::GET_RESPONSE, id(21), Some(settings.clone()));
    let parsed = Envelope::parse(&response.to_bytes().expect("write"), &Limits::default()).expect("parse");
    assert_eq!(parsed.header.relates_to, request.header.message_id);
    assert_eq!(parsed.header.resource_uri, request.header.resource_uri);
    assert_eq!(parsed.payload(), Some(&settings));

    let fault = Fault {
        code: "Sender".into(),
        subcode: Some("DestinationUnreachable".into()),
        reason: "No route can be determined to reach the destination role defined by the WS-Addressing To.".into(),
        detail: None,
    };
    let response =
        Envelope::response(&request.header, action::ADDRESSING_FAULT, id(22), Some(fault.to_element(ns::ADDRESSING)));
    let parsed = Envelope::parse(&response.to_bytes().expect("write"), &Limits::default()).expect("parse");
    assert_eq!(parsed.fault(), Some(fault));
}

// ---------------------------------------------------------------------------------------------
// Requests as other clients write them (the simulator parses these)

/// The shape MeshCentral (`amt-wsman.js`) and Intel's wsman-messages builders send: the SOAP
/// namespace as the default namespace, unprefixed Header and Body, and the EPR's parts with
/// their own default-namespace declarations (Intel's form).
const INTEL_SET_BOOT_CONFIG_ROLE: &str = r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns="http://www.w3.org/2003/05/soap-envelope"><Header><a:Action>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootService/SetBootConfigRole</a:Action><a:To>/wsman</a:To><w:ResourceURI>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootService</w:ResourceURI><a:MessageID>7</a:MessageID><a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout></Header><Body><r:SetBootConfigRole_INPUT xmlns:r="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootService"><r:BootConfigSetting><Address xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing">http://schemas.xmlsoap.org/ws/2004/08/addressing</Address><ReferenceParameters xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing"><ResourceURI xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootConfigSetting</ResourceURI><SelectorSet xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Selector Name="InstanceID">Intel(r) AMT: Boot Configuration 0</Selector></SelectorSet></ReferenceParameters></r:BootConfigSetting><r:Role>1</r:Role></r:SetBootConfigRole_INPUT></Body></Envelope>"#;

#[test]
fn intel_shaped_request_with_default_namespaces() {
    let envelope = parse(INTEL_SET_BOOT_CONFIG_ROLE).expect("parse");
    assert_eq!(Method::from_action(&envelope.header.action), Some(Method::SetBootConfigRole));
    assert_eq!(envelope.header.to.as_deref(), Some("/wsman"));
    assert_eq!(envelope.header.message_id.as_deref(), Some("7"));
    assert_eq!(envelope.header.reply_to.as_deref(), Some(ANONYMOUS));
    let input = envelope.payload().expect("input");
    assert!(input.is(Class::CimBootService.resource_uri(), "SetBootConfigRole_INPUT"));
    let reference = EndpointReference::from_element(input.child("BootConfigSetting").expect("parameter")).expect("EPR");
    assert_eq!(reference.address, ns::ADDRESSING);
    assert_eq!(reference.resource_uri, Class::CimBootConfigSetting.resource_uri());
    assert_eq!(reference.selectors, [Selector::text("InstanceID", "Intel(r) AMT: Boot Configuration 0")]);
    assert_rewrites_to_same(&envelope);
}

/// The shape of a Python `amtctrl`-style client's power request: pretty-printed, `wsman:Name`
/// on the selector inside the reference, `s:mustUnderstand` on several headers.
const AMTCTRL_POWER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
 xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing"
 xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
 xmlns:n1="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService">
  <s:Header>
    <wsa:Action s:mustUnderstand="true">http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService/RequestPowerStateChange</wsa:Action>
    <wsa:To s:mustUnderstand="true">http://127.0.0.1:16992/wsman</wsa:To>
    <wsman:ResourceURI s:mustUnderstand="true">http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService</wsman:ResourceURI>
    <wsa:MessageID s:mustUnderstand="true">uuid:0a0b0c0d-0000-4000-8000-000000000001</wsa:MessageID>
    <wsa:ReplyTo><wsa:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo>
    <wsman:SelectorSet><wsman:Selector Name="Name">Intel(r) AMT Power Management Service</wsman:Selector></wsman:SelectorSet>
  </s:Header>
  <s:Body>
    <n1:RequestPowerStateChange_INPUT>
      <n1:PowerState>8</n1:PowerState>
      <n1:ManagedElement>
        <wsa:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address>
        <wsa:ReferenceParameters>
          <wsman:ResourceURI>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ComputerSystem</wsman:ResourceURI>
          <wsman:SelectorSet><wsman:Selector wsman:Name="Name">ManagedSystem</wsman:Selector></wsman:SelectorSet>
        </wsa:ReferenceParameters>
      </n1:ManagedElement>
    </n1:RequestPowerStateChange_INPUT>
  </s:Body>
</s:Envelope>"#;

#[test]
fn amtctrl_shaped_power_request() {
    let envelope = parse(AMTCTRL_POWER).expect("parse");
    assert_eq!(Method::from_action(&envelope.header.action), Some(Method::RequestPowerStateChange));
    assert_eq!(envelope.header.selector("Name"), Some("Intel(r) AMT Power Management Service"));
    let input = envelope.payload().expect("input");
    assert_eq!(input.child_text("PowerState"), Some("8"));
    let managed = EndpointReference::from_element(input.child("ManagedElement").expect("parameter")).expect("EPR");
    assert_eq!(managed.address, ANONYMOUS);
    assert_eq!(managed.resource_uri, Class::CimComputerSystem.resource_uri());
    assert_eq!(managed.selectors, [Selector::text("Name", "ManagedSystem")]);
    assert_rewrites_to_same(&envelope);
}

#[test]
fn a_responder_writes_enumerations_and_method_outputs() {
    let request = Request::enumerate_optimized(TO, Class::CimSoftwareIdentity.resource_uri(), id(30), Some(5));
    let request = request.to_envelope();
    let item = |id: &str| {
        Element::new(Class::CimSoftwareIdentity.resource_uri(), "CIM_SoftwareIdentity")
            .with_child(Element::new(Class::CimSoftwareIdentity.resource_uri(), "InstanceID").with_text(id))
    };
    let enumerate =
        EnumerateResponse { context: Some("ctx-1".into()), items: vec![item("Flash")], end_of_sequence: false };
    let response =
        Envelope::response(&request.header, action::ENUMERATE_RESPONSE, id(31), Some(enumerate.to_element()));
    let parsed = Envelope::parse(&response.to_bytes().expect("write"), &Limits::default()).expect("parse");
    assert_eq!(EnumerateResponse::from_envelope(&parsed), Ok(enumerate));

    for pull in [
        PullResponse { items: vec![item("Netstack")], context: Some("ctx-1".into()), end_of_sequence: false },
        PullResponse { items: vec![item("AMT")], context: None, end_of_sequence: true },
    ] {
        let response = Envelope::response(&request.header, action::PULL_RESPONSE, id(32), Some(pull.to_element()));
        let parsed = Envelope::parse(&response.to_bytes().expect("write"), &Limits::default()).expect("parse");
        assert_eq!(PullResponse::from_envelope(&parsed), Ok(pull));
    }

    let request = Request::release(TO, Class::CimSoftwareIdentity.resource_uri(), id(33), "ctx-1");
    assert_eq!(round_trip(&request).header.action, action::RELEASE);

    let invoke = Request::invoke(TO, Method::SendOptInCode, id(34), vec![Property::text("OptInCode", "123456")]);
    let response = Envelope::response(
        &invoke.to_envelope().header,
        Method::SendOptInCode.response_action(),
        id(35),
        Some(method_output(Method::SendOptInCode, 2066)),
    );
    let parsed = Envelope::parse(&response.to_bytes().expect("write"), &Limits::default()).expect("parse");
    assert_eq!(return_value(&parsed), Ok(2066));
    assert!(parsed.payload().expect("output").is(Class::IpsOptInService.resource_uri(), "SendOptInCode_OUTPUT"));
}

// ---------------------------------------------------------------------------------------------
// Refusals and limits

#[test]
fn refusals() {
    assert!(matches!(parse("<a"), Err(WsmanError::MalformedXml(_))));
    assert!(matches!(parse(""), Err(WsmanError::MalformedXml(_))));
    assert!(matches!(parse("<x></y>"), Err(WsmanError::MalformedXml(_))));
    assert!(matches!(parse("<x/><y/>"), Err(WsmanError::MalformedXml(_))));
    assert!(matches!(parse("<x>&foo;</x>"), Err(WsmanError::MalformedXml(_))));
    assert!(matches!(parse("<p:x/>"), Err(WsmanError::MalformedXml(_))));
    assert!(matches!(parse("<x a='1' a='2'/>"), Err(WsmanError::MalformedXml(_))));
    assert!(matches!(parse("<x xmlns:p='u' xmlns:q='u' p:a='1' q:a='2'/>"), Err(WsmanError::MalformedXml(_))));
    assert_eq!(parse("<x>&#1;</x>"), Err(WsmanError::InvalidChar(1)));
    assert_eq!(parse("<x>\u{1}</x>"), Err(WsmanError::InvalidChar(1)));
    assert_eq!(Envelope::parse(b"<x>\xff</x>", &Limits::default()), Err(WsmanError::NotUtf8));
    assert_eq!(parse("<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>"), Err(WsmanError::DtdNotAllowed));
    assert_eq!(parse("<Envelope/>"), Err(WsmanError::NotAnEnvelope));
    let soap = ns::SOAP;
    assert_eq!(parse(&format!("<s:Envelope xmlns:s='{soap}'/>")), Err(WsmanError::MissingHeader("Header")));
    assert_eq!(
        parse(&format!("<s:Envelope xmlns:s='{soap}'><s:Header/><s:Body/></s:Envelope>")),
        Err(WsmanError::MissingHeader("Action"))
    );
    assert_eq!(parse(&format!("<s:Envelope xmlns:s='{soap}'><s:Header/></s:Envelope>")), Err(WsmanError::MissingBody));
    let no_name = GET_GENERAL_SETTINGS.replace(
        "</c:ResourceURI>\n  </a:Header>",
        "</c:ResourceURI><c:SelectorSet><c:Selector>x</c:Selector></c:SelectorSet></a:Header>",
    );
    assert_eq!(parse(&no_name), Err(WsmanError::SelectorWithoutName));
}

#[test]
fn comments_and_cdata_and_references() {
    let soap = ns::SOAP;
    let wsa = ns::ADDRESSING;
    let document = format!(
        "\u{feff}<?xml version='1.0'?><!-- hi --><s:Envelope xmlns:s='{soap}' xmlns:a='{wsa}'><s:Header><a:Action>x<![CDATA[<&>]]>&#x41;&amp;&#10;\r\n</a:Action></s:Header><s:Body/></s:Envelope>\n"
    );
    let envelope = parse(&document).expect("parse");
    assert_eq!(envelope.header.action, "x<&>A&\n\n");
}

fn nested(depth: usize) -> String {
    let soap = ns::SOAP;
    let wsa = ns::ADDRESSING;
    let inner = format!("{}{}", "<x>".repeat(depth), "</x>".repeat(depth));
    format!("<s:Envelope xmlns:s='{soap}' xmlns:a='{wsa}'><s:Header><a:Action>x</a:Action></s:Header><s:Body>{inner}</s:Body></s:Envelope>")
}

#[test]
fn depth_limit() {
    // Envelope, Body, then the nested elements.
    let max = Limits::default().max_depth;
    assert!(parse(&nested(max - 2)).is_ok());
    assert_eq!(parse(&nested(max - 1)), Err(WsmanError::TooDeep { max }));
    assert_eq!(parse(&nested(100_000)), Err(WsmanError::TooDeep { max }));
}

#[test]
fn size_and_count_limits() {
    let limits = Limits { max_document_len: 100, ..Limits::default() };
    assert_eq!(Envelope::parse(&[b' '; 101], &limits), Err(WsmanError::TooLarge { len: 101, max: 100 }));
    let huge = vec![b'x'; DEFAULT_MAX_DOCUMENT_LEN + 1];
    assert!(matches!(Envelope::parse(&huge, &Limits::default()), Err(WsmanError::TooLarge { .. })));

    let limits = Limits { max_elements: 10, ..Limits::default() };
    let soap = ns::SOAP;
    let many = format!("<s:Envelope xmlns:s='{soap}'>{}</s:Envelope>", "<x/>".repeat(10));
    assert_eq!(Envelope::parse(many.as_bytes(), &limits), Err(WsmanError::TooManyElements { max: 10 }));

    let limits = Limits { max_attributes: 2, ..Limits::default() };
    assert_eq!(
        Envelope::parse(b"<x xmlns:p='u' a='1' b='2' c='3'/>", &limits),
        Err(WsmanError::TooManyAttributes { max: 2 })
    );
    assert!(matches!(Envelope::parse(b"<x xmlns:p='u' a='1' b='2'/>", &limits), Err(WsmanError::NotAnEnvelope)));
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Parses `envelope`'s bytes and checks they give back the same envelope.
fn assert_rewrites_to_same(envelope: &Envelope) {
    let bytes = envelope.to_bytes().expect("write");
    let again = Envelope::parse(&bytes, &Limits::default()).expect("parse the rewrite");
    assert_eq!(&again, envelope, "{}", String::from_utf8_lossy(&bytes));
}

/// Any string XML 1.0 can carry.
fn xml_string() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("XML character", |&c| is_xml_char(c)), 0..24)
        .prop_map(|chars| chars.into_iter().collect())
}

fn xml_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9._-]{0,12}"
}

fn selector() -> impl Strategy<Value = Selector> {
    let text = (xml_string(), xml_string()).prop_map(|(name, value)| Selector::text(name, value));
    let reference =
        (xml_string(), xml_string(), xml_string(), proptest::collection::vec((xml_string(), xml_string()), 0..3))
            .prop_map(|(name, address, resource_uri, inner)| Selector {
                name,
                value: SelectorValue::Reference(EndpointReference {
                    address,
                    resource_uri,
                    selectors: inner.into_iter().map(|(n, v)| Selector::text(n, v)).collect(),
                }),
            });
    prop_oneof![3 => text, 1 => reference]
}

fn property() -> impl Strategy<Value = Property> {
    let text = (xml_name(), xml_string()).prop_map(|(name, value)| Property::text(name, value));
    let reference =
        (xml_name(), xml_string(), xml_string(), proptest::collection::vec((xml_string(), xml_string()), 0..3))
            .prop_map(|(name, address, resource_uri, selectors)| {
                Property::reference(
                    name,
                    EndpointReference {
                        address,
                        resource_uri,
                        selectors: selectors.into_iter().map(|(n, v)| Selector::text(n, v)).collect(),
                    },
                )
            });
    prop_oneof![3 => text, 1 => reference]
}

fn request() -> impl Strategy<Value = Request> {
    let body = prop_oneof![
        Just(RequestBody::Empty),
        proptest::collection::vec(property(), 0..5).prop_map(|properties| RequestBody::Put { properties }),
        (xml_name(), proptest::collection::vec(property(), 0..5))
            .prop_map(|(method, parameters)| RequestBody::Invoke { method, parameters }),
        proptest::option::of(proptest::option::of(any::<u32>()))
            .prop_map(|optimize| RequestBody::Enumerate { optimize }),
        (xml_string(), proptest::option::of(any::<u32>()))
            .prop_map(|(context, max_elements)| RequestBody::Pull { context, max_elements }),
        xml_string().prop_map(|context| RequestBody::Release { context }),
    ];
    // A Put names its element after the resource URI's last segment, which must be a name.
    let resource_uri = (xml_string(), xml_name()).prop_map(|(base, class)| format!("{base}/{class}"));
    (
        xml_string(),
        resource_uri,
        xml_string(),
        any::<u128>(),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(selector(), 0..4),
        body,
    )
        .prop_map(|(to, resource_uri, action, message_id, operation_timeout_secs, selectors, body)| Request {
            to,
            resource_uri,
            action,
            message_id: message_id_of(uuid::Uuid::from_u128(message_id)),
            operation_timeout_secs,
            selectors,
            body,
        })
}

fn property_of(element: &Element) -> Property {
    if element.child_ns(ns::ADDRESSING, "ReferenceParameters").is_some() {
        Property::reference(element.name.clone(), EndpointReference::from_element(element).expect("EPR"))
    } else {
        Property::text(element.name.clone(), element.text.clone())
    }
}

proptest! {
    #[test]
    fn requests_round_trip(request in request()) {
        let envelope = round_trip(&request);
        prop_assert_eq!(&envelope, &request.to_envelope());
        let header = &envelope.header;
        prop_assert_eq!(&header.action, &request.action);
        prop_assert_eq!(header.to.as_ref(), Some(&request.to));
        prop_assert_eq!(header.resource_uri.as_ref(), Some(&request.resource_uri));
        prop_assert_eq!(header.message_id.as_ref(), Some(&request.message_id));
        prop_assert_eq!(&header.selectors, &request.selectors);
        let payload = envelope.payload();
        match &request.body {
            RequestBody::Empty => prop_assert!(payload.is_none()),
            RequestBody::Put { properties } | RequestBody::Invoke { parameters: properties, .. } => {
                let payload = payload.expect("payload");
                prop_assert_eq!(&payload.namespace, &request.resource_uri);
                let read: Vec<Property> = payload.children.iter().map(property_of).collect();
                prop_assert_eq!(&read, properties);
            }
            RequestBody::Pull { context, .. } | RequestBody::Release { context } => {
                let payload = payload.expect("payload");
                prop_assert_eq!(payload.child_ns(ns::ENUMERATION, "EnumerationContext").map(Element::text), Some(context.as_str()));
            }
            RequestBody::Enumerate { optimize } => {
                let payload = payload.expect("payload");
                prop_assert_eq!(payload.child_ns(ns::WSMAN, "OptimizeEnumeration").is_some(), optimize.is_some());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::parse(&bytes, &Limits::default());
        let _ = Envelope::parse(&bytes, &Limits { max_document_len: 64, max_depth: 3, max_elements: 4, max_attributes: 1 });
    }

    #[test]
    fn mutated_samples_never_panic_and_rewrite_to_the_same(
        sample in prop_oneof![
            Just(GET_GENERAL_SETTINGS), Just(PULL_RESPONSE), Just(FAULT), Just(POWER_OUTPUT),
            Just(INTEL_SET_BOOT_CONFIG_ROLE), Just(AMTCTRL_POWER),
        ],
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = sample.as_bytes().to_vec();
        for (at, byte) in cuts {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        if let Ok(envelope) = Envelope::parse(&bytes, &Limits::default()) {
            assert_rewrites_to_same(&envelope);
        }
    }
}

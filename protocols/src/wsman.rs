//! WS-Management (DMTF DSP0226) as Intel AMT speaks it on ports 16992/16993: the resource URIs and
//! actions of the classes Tether uses, a request builder that writes SOAP 1.2 envelopes, a bounded
//! parser that reads any envelope (requests for the simulator, responses for the gateway) into a
//! small generic tree, and typed extraction of what a client needs from a response
//! (enumeration contexts, pulled items, a method's `ReturnValue`, SOAP faults).
//!
//! XML is read and written with quick-xml; no XML is assembled from strings, and every text and
//! attribute value is escaped, so any value that XML 1.0 can carry round-trips. Values it cannot
//! carry (control characters other than tab, line feed and carriage return; U+FFFE, U+FFFF) are a
//! [`WriteError::InvalidChar`] when writing and a [`WsmanError::InvalidChar`] when reading.
//!
//! The message layouts follow what MeshCentral (`amt/amt-wsman.js`) and Intel's wsman-messages
//! builders send: `wsa:Action`, `wsa:To`, `wsman:ResourceURI`, `wsa:MessageID`, `wsa:ReplyTo`
//! anonymous, `wsman:OperationTimeout` and an optional `wsman:SelectorSet` in the header; a method's
//! input is `<Method>_INPUT` in the class's namespace, its output `<Method>_OUTPUT`.
//!
//! What this module does not do: HTTP (see [`crate::http_digest`] for the authentication AMT
//! requires), TLS, sockets, or knowing which calls make up a workflow. It checks XML
//! well-formedness as far as quick-xml does plus names, characters and namespaces; it does not
//! validate against the WS-MAN or CIM schemas, and DTDs are refused (SOAP forbids them).

use quick_xml::events::attributes::Attribute as XmlAttribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::NsReader;
use quick_xml::Writer;
use std::borrow::Cow;

/// Namespace URIs.
pub mod ns {
    /// SOAP 1.2 envelope.
    pub const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
    /// WS-Addressing (the 2004/08 version WS-MAN 1.x uses).
    pub const ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
    /// WS-Management.
    pub const WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
    /// WS-Enumeration.
    pub const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
    /// WS-Transfer.
    pub const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";
    /// XML Schema instance (`xsi:nil`).
    pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
    /// The `xml:` prefix's namespace (`xml:lang` on a fault's reason).
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
    /// Intel AMT classes (`AMT_*`); a class's resource URI is this followed by its name.
    pub const AMT_SCHEMA: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
    /// DMTF CIM classes (`CIM_*`).
    pub const CIM_SCHEMA: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/";
    /// Intel platform services classes (`IPS_*`).
    pub const IPS_SCHEMA: &str = "http://intel.com/wbem/wscim/1/ips-schema/1/";
    /// Reserved for namespace declarations; never an element's or attribute's namespace.
    pub(crate) const XMLNS: &str = "http://www.w3.org/2000/xmlns/";
}

/// Action URIs of WS-Transfer, WS-Enumeration and WS-Addressing faults.
pub mod action {
    pub const GET: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get";
    pub const GET_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse";
    pub const PUT: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put";
    pub const PUT_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/PutResponse";
    pub const ENUMERATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate";
    pub const ENUMERATE_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/EnumerateResponse";
    pub const PULL: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull";
    pub const PULL_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/PullResponse";
    pub const RELEASE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release";
    pub const RELEASE_RESPONSE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/ReleaseResponse";
    /// WS-Addressing fault action (AMT sends it with e.g. `wsa:DestinationUnreachable`).
    pub const ADDRESSING_FAULT: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault";
    /// WS-Management fault action (e.g. `wsman:InvalidSelectors`, `wsman:AccessDenied`).
    pub const WSMAN_FAULT: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault";
}

/// The `wsa:Address` of an anonymous `wsa:ReplyTo` (reply on the same HTTP connection).
pub const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

/// The operation timeout MeshCentral and Intel's builders send, in seconds (`PT60S`).
pub const DEFAULT_OPERATION_TIMEOUT_SECS: u32 = 60;

/// Largest document [`Envelope::parse`] accepts by default. A Pull of AMT's largest classes
/// (MeshCentral asks for up to 99,999 characters) fits with room to spare.
pub const DEFAULT_MAX_DOCUMENT_LEN: usize = 1024 * 1024;
/// Deepest element nesting accepted by default: an EPR-valued selector inside a reference
/// parameter of a pulled item is about 10 deep.
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// Most elements in one document accepted by default.
pub const DEFAULT_MAX_ELEMENTS: usize = 20_000;
/// Most attributes on one element accepted by default (namespace declarations not counted).
pub const DEFAULT_MAX_ATTRIBUTES: usize = 32;

/// Bounds [`Envelope::parse`] enforces, so that a peer's document costs memory and time in
/// proportion to its length and never deep recursion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest document, in bytes ([`WsmanError::TooLarge`]).
    pub max_document_len: usize,
    /// Deepest nesting of elements, the envelope being depth 1 ([`WsmanError::TooDeep`]).
    /// Walking, cloning, comparing, writing and dropping an [`Element`] recurse once per level,
    /// so this also bounds stack use: keep it in the tens.
    pub max_depth: usize,
    /// Most elements in the document ([`WsmanError::TooManyElements`]).
    pub max_elements: usize,
    /// Most attributes on one element ([`WsmanError::TooManyAttributes`]).
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_document_len: DEFAULT_MAX_DOCUMENT_LEN,
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: DEFAULT_MAX_ELEMENTS,
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classes and methods

/// Which schema a class belongs to, by its name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    Amt,
    Cim,
    Ips,
}

impl Schema {
    /// The namespace a class name is appended to, to make its resource URI.
    pub fn prefix(self) -> &'static str {
        match self {
            Schema::Amt => ns::AMT_SCHEMA,
            Schema::Cim => ns::CIM_SCHEMA,
            Schema::Ips => ns::IPS_SCHEMA,
        }
    }
}

macro_rules! amt {
    ($name:literal) => {
        concat!("http://intel.com/wbem/wscim/1/amt-schema/1/", $name)
    };
}
macro_rules! cim {
    ($name:literal) => {
        concat!("http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/", $name)
    };
}
macro_rules! ips {
    ($name:literal) => {
        concat!("http://intel.com/wbem/wscim/1/ips-schema/1/", $name)
    };
}

/// The CIM, AMT and IPS classes Tether reads, writes or invokes methods on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Host name, domain, network settings; MeshCentral's first enumeration.
    AmtGeneralSettings,
    /// Firmware components; the instance with InstanceID `AMT` carries the AMT version.
    CimSoftwareIdentity,
    /// Links the computer system to its chassis; carries the PlatformGUID.
    CimComputerSystemPackage,
    /// Provisioning state and control mode.
    AmtSetupAndConfigurationService,
    /// SOL/IDE-R enablement (`RequestStateChange`) and the redirection listener.
    AmtRedirectionService,
    /// UseSOL, UseIDER, IDERBootDevice, ... for the next boot.
    AmtBootSettingData,
    /// The boot configuration; `ChangeBootOrder` sets the one-time boot source.
    CimBootConfigSetting,
    /// `SetBootConfigRole` makes a boot configuration the next boot's.
    CimBootService,
    /// Boot sources referenced by `ChangeBootOrder` (e.g. `Intel(r) AMT: Force CD/DVD Boot`).
    CimBootSourceSetting,
    /// Associates the power management service with the system; carries the PowerState.
    CimAssociatedPowerManagementService,
    /// `RequestPowerStateChange`.
    CimPowerManagementService,
    /// The managed system (`ManagedSystem`), referenced by `RequestPowerStateChange`.
    CimComputerSystem,
    /// User consent: state, `StartOptIn`, `SendOptInCode`, `CancelOptIn`.
    IpsOptInService,
}

impl Class {
    /// Every class, for tests and lookups.
    pub const ALL: [Class; 13] = [
        Class::AmtGeneralSettings,
        Class::CimSoftwareIdentity,
        Class::CimComputerSystemPackage,
        Class::AmtSetupAndConfigurationService,
        Class::AmtRedirectionService,
        Class::AmtBootSettingData,
        Class::CimBootConfigSetting,
        Class::CimBootService,
        Class::CimBootSourceSetting,
        Class::CimAssociatedPowerManagementService,
        Class::CimPowerManagementService,
        Class::CimComputerSystem,
        Class::IpsOptInService,
    ];

    /// The class name, as in the schema (`AMT_GeneralSettings`); also the element name of an
    /// instance in a Get response or Put request.
    pub fn name(self) -> &'static str {
        let uri = self.resource_uri();
        &uri[self.schema().prefix().len()..]
    }

    /// Which schema the class is in.
    pub fn schema(self) -> Schema {
        match self {
            Class::AmtGeneralSettings
            | Class::AmtSetupAndConfigurationService
            | Class::AmtRedirectionService
            | Class::AmtBootSettingData => Schema::Amt,
            Class::CimSoftwareIdentity
            | Class::CimComputerSystemPackage
            | Class::CimBootConfigSetting
            | Class::CimBootService
            | Class::CimBootSourceSetting
            | Class::CimAssociatedPowerManagementService
            | Class::CimPowerManagementService
            | Class::CimComputerSystem => Schema::Cim,
            Class::IpsOptInService => Schema::Ips,
        }
    }

    /// The resource URI (also the namespace of the class's properties and method parameters).
    pub fn resource_uri(self) -> &'static str {
        match self {
            Class::AmtGeneralSettings => amt!("AMT_GeneralSettings"),
            Class::CimSoftwareIdentity => cim!("CIM_SoftwareIdentity"),
            Class::CimComputerSystemPackage => cim!("CIM_ComputerSystemPackage"),
            Class::AmtSetupAndConfigurationService => amt!("AMT_SetupAndConfigurationService"),
            Class::AmtRedirectionService => amt!("AMT_RedirectionService"),
            Class::AmtBootSettingData => amt!("AMT_BootSettingData"),
            Class::CimBootConfigSetting => cim!("CIM_BootConfigSetting"),
            Class::CimBootService => cim!("CIM_BootService"),
            Class::CimBootSourceSetting => cim!("CIM_BootSourceSetting"),
            Class::CimAssociatedPowerManagementService => cim!("CIM_AssociatedPowerManagementService"),
            Class::CimPowerManagementService => cim!("CIM_PowerManagementService"),
            Class::CimComputerSystem => cim!("CIM_ComputerSystem"),
            Class::IpsOptInService => ips!("IPS_OptInService"),
        }
    }

    /// The class a resource URI names, if it is one of [`Class::ALL`].
    pub fn from_resource_uri(uri: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|class| class.resource_uri() == uri)
    }
}

/// The extrinsic methods Tether invokes. The action of a call is the class's resource URI, `/`,
/// and the method name; its body is `<Name>_INPUT` in the class's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// CIM_PowerManagementService: `PowerState` (2 on, 5 cycle, 8 off, 10 reset) and
    /// `ManagedElement`, a reference to the CIM_ComputerSystem `ManagedSystem`.
    RequestPowerStateChange,
    /// AMT_RedirectionService: `RequestedState` (32768 none, 32769 IDE-R, 32770 SOL, 32771 both).
    RequestStateChange,
    /// CIM_BootConfigSetting: `Source`, a reference to a CIM_BootSourceSetting (none to clear).
    ChangeBootOrder,
    /// CIM_BootService: `BootConfigSetting` (a reference) and `Role` (1: next boot only).
    SetBootConfigRole,
    /// IPS_OptInService: asks the PC to show a consent code.
    StartOptIn,
    /// IPS_OptInService: `OptInCode`, the code the PC user reads out.
    SendOptInCode,
    /// IPS_OptInService: withdraws a consent request or ends consent.
    CancelOptIn,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::RequestPowerStateChange,
        Method::RequestStateChange,
        Method::ChangeBootOrder,
        Method::SetBootConfigRole,
        Method::StartOptIn,
        Method::SendOptInCode,
        Method::CancelOptIn,
    ];

    /// The class the method is invoked on.
    pub fn class(self) -> Class {
        match self {
            Method::RequestPowerStateChange => Class::CimPowerManagementService,
            Method::RequestStateChange => Class::AmtRedirectionService,
            Method::ChangeBootOrder => Class::CimBootConfigSetting,
            Method::SetBootConfigRole => Class::CimBootService,
            Method::StartOptIn | Method::SendOptInCode | Method::CancelOptIn => Class::IpsOptInService,
        }
    }

    /// The method name.
    pub fn name(self) -> &'static str {
        let action = self.action();
        &action[self.class().resource_uri().len() + 1..]
    }

    /// The request's `wsa:Action`: `<resource URI>/<name>`.
    pub fn action(self) -> &'static str {
        match self {
            Method::RequestPowerStateChange => cim!("CIM_PowerManagementService/RequestPowerStateChange"),
            Method::RequestStateChange => amt!("AMT_RedirectionService/RequestStateChange"),
            Method::ChangeBootOrder => cim!("CIM_BootConfigSetting/ChangeBootOrder"),
            Method::SetBootConfigRole => cim!("CIM_BootService/SetBootConfigRole"),
            Method::StartOptIn => ips!("IPS_OptInService/StartOptIn"),
            Method::SendOptInCode => ips!("IPS_OptInService/SendOptInCode"),
            Method::CancelOptIn => ips!("IPS_OptInService/CancelOptIn"),
        }
    }

    /// The response's `wsa:Action`: the request's followed by `Response`.
    pub fn response_action(self) -> String {
        format!("{}Response", self.action())
    }

    /// The local name of the body element of the request (`<name>_INPUT`).
    pub fn input_element(self) -> String {
        format!("{}_INPUT", self.name())
    }

    /// The local name of the body element of the response (`<name>_OUTPUT`).
    pub fn output_element(self) -> String {
        format!("{}_OUTPUT", self.name())
    }

    /// The method a request's action names, if it is one of [`Method::ALL`].
    pub fn from_action(action: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|method| method.action() == action)
    }
}

// ---------------------------------------------------------------------------------------------
// The generic tree

/// An XML element: namespace URI (empty for none) and local name, attributes, text, children.
///
/// `text` is all the element's character data (entities and character references resolved, line
/// ends normalised), concatenated; where it sat between the children is not kept (WS-MAN has no
/// mixed content). Whitespace is kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub namespace: String,
    pub name: String,
    pub attributes: Vec<Attribute>,
    pub text: String,
    pub children: Vec<Element>,
}

/// An attribute: namespace URI (empty for none), local name, value (unescaped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribute {
    pub namespace: String,
    pub name: String,
    pub value: String,
}

impl Element {
    /// An empty element.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Element { namespace: namespace.into(), name: name.into(), ..Element::default() }
    }

    /// This element with `text` as its text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// This element with `child` appended.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    /// This element with an attribute appended.
    pub fn with_attribute(
        mut self,
        namespace: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.attributes.push(Attribute { namespace: namespace.into(), name: name.into(), value: value.into() });
        self
    }

    /// Whether the element has this namespace and local name.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.namespace == namespace && self.name == name
    }

    /// The first child with this local name, in any namespace.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    /// The first child with this namespace and local name.
    pub fn child_ns(&self, namespace: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.is(namespace, name))
    }

    /// Every child with this local name, in any namespace (a multi-valued property).
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The element's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text of the first child with this local name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(Element::text)
    }

    /// The value of the attribute with this local name, in any namespace.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|attribute| attribute.name == name).map(|attribute| attribute.value.as_str())
    }

    /// Whether the element carries `xsi:nil="true"` (a property with no value).
    pub fn is_nil(&self) -> bool {
        self.attributes.iter().any(|a| a.namespace == ns::XSI && a.name == "nil" && a.value.trim() == "true")
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors and references

/// A `wsman:Selector`: picks an instance by a key property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub name: String,
    pub value: SelectorValue,
}

/// A selector's value: text, or a reference to another instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorValue {
    Text(String),
    Reference(EndpointReference),
}

impl Selector {
    /// A selector with a text value.
    pub fn text(name: impl Into<String>, value: impl Into<String>) -> Self {
        Selector { name: name.into(), value: SelectorValue::Text(value.into()) }
    }

    /// The text value, if it is one.
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            SelectorValue::Text(text) => Some(text),
            SelectorValue::Reference(_) => None,
        }
    }
}

/// A WS-Addressing endpoint reference to a WS-MAN instance: the service's address, the class's
/// resource URI, and the selectors that pick the instance. Written as the content of the element
/// that holds it (an `wsa:EndpointReference` in a selector, a method parameter such as
/// `ManagedElement`, a property in a Put).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReference {
    pub address: String,
    pub resource_uri: String,
    pub selectors: Vec<Selector>,
}

impl EndpointReference {
    /// A reference to an instance of `class` at the anonymous address. (Python AMT clients send
    /// the anonymous address here; Intel's wsman-messages sends the WS-Addressing namespace URI;
    /// both are in use against real firmware, so a responder should not insist on either.)
    pub fn new(class: Class, selectors: Vec<Selector>) -> Self {
        EndpointReference { address: ANONYMOUS.to_owned(), resource_uri: class.resource_uri().to_owned(), selectors }
    }

    /// The reference `RequestPowerStateChange` takes as `ManagedElement`: the CIM_ComputerSystem
    /// named `ManagedSystem`.
    pub fn managed_system() -> Self {
        EndpointReference::new(
            Class::CimComputerSystem,
            vec![Selector::text("CreationClassName", "CIM_ComputerSystem"), Selector::text("Name", "ManagedSystem")],
        )
    }

    /// A reference to the CIM_BootSourceSetting with this InstanceID (`ChangeBootOrder`'s
    /// `Source`), e.g. `Intel(r) AMT: Force CD/DVD Boot`.
    pub fn boot_source(instance_id: impl Into<String>) -> Self {
        EndpointReference::new(Class::CimBootSourceSetting, vec![Selector::text("InstanceID", instance_id)])
    }

    /// A reference to the CIM_BootConfigSetting with this InstanceID (`SetBootConfigRole`'s
    /// `BootConfigSetting`), e.g. `Intel(r) AMT: Boot Configuration 0`.
    pub fn boot_config(instance_id: impl Into<String>) -> Self {
        EndpointReference::new(Class::CimBootConfigSetting, vec![Selector::text("InstanceID", instance_id)])
    }

    /// The children of an element holding this reference: `wsa:Address` and
    /// `wsa:ReferenceParameters` with `wsman:ResourceURI` and (when there are selectors)
    /// `wsman:SelectorSet`.
    pub fn to_elements(&self) -> Vec<Element> {
        let mut parameters = Element::new(ns::ADDRESSING, "ReferenceParameters")
            .with_child(Element::new(ns::WSMAN, "ResourceURI").with_text(self.resource_uri.clone()));
        if !self.selectors.is_empty() {
            parameters.children.push(selector_set_element(&self.selectors));
        }
        vec![Element::new(ns::ADDRESSING, "Address").with_text(self.address.clone()), parameters]
    }

    /// Reads a reference from the element holding it. Missing parts read as empty.
    pub fn from_element(holder: &Element) -> Result<Self, WsmanError> {
        let address = holder.child_ns(ns::ADDRESSING, "Address").map(|a| a.text.clone()).unwrap_or_default();
        let parameters = holder.child_ns(ns::ADDRESSING, "ReferenceParameters");
        let resource_uri =
            parameters.and_then(|p| p.child_ns(ns::WSMAN, "ResourceURI")).map(|r| r.text.clone()).unwrap_or_default();
        let selectors = match parameters.and_then(|p| p.child_ns(ns::WSMAN, "SelectorSet")) {
            Some(set) => selectors_from_set(set)?,
            None => Vec::new(),
        };
        Ok(EndpointReference { address, resource_uri, selectors })
    }
}

fn selector_set_element(selectors: &[Selector]) -> Element {
    let mut set = Element::new(ns::WSMAN, "SelectorSet");
    for selector in selectors {
        let mut element = Element::new(ns::WSMAN, "Selector").with_attribute("", "Name", selector.name.clone());
        match &selector.value {
            SelectorValue::Text(text) => element.text = text.clone(),
            SelectorValue::Reference(reference) => {
                let mut epr = Element::new(ns::ADDRESSING, "EndpointReference");
                epr.children = reference.to_elements();
                element.children.push(epr);
            }
        }
        set.children.push(element);
    }
    set
}

fn selectors_from_set(set: &Element) -> Result<Vec<Selector>, WsmanError> {
    let mut selectors = Vec::new();
    for element in set.children.iter().filter(|c| c.is(ns::WSMAN, "Selector")) {
        // `Name` is unqualified in DSP0226's examples and what AMT, MeshCentral and Intel's
        // builders send; some clients qualify it (`wsman:Name`) inside references.
        let name_in =
            |namespace: &str| element.attributes.iter().find(|a| a.namespace == namespace && a.name == "Name");
        let name = name_in("").or_else(|| name_in(ns::WSMAN)).ok_or(WsmanError::SelectorWithoutName)?.value.clone();
        let value = match element.child_ns(ns::ADDRESSING, "EndpointReference") {
            Some(epr) => SelectorValue::Reference(EndpointReference::from_element(epr)?),
            None => SelectorValue::Text(element.text.clone()),
        };
        selectors.push(Selector { name, value });
    }
    Ok(selectors)
}

// ---------------------------------------------------------------------------------------------
// Envelopes

/// The WS-MAN header fields of an envelope. When reading, each is the first header element of
/// its name; others are ignored. When writing, absent fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// `wsa:Action` (required).
    pub action: String,
    /// `wsa:MessageID` (`uuid:…`).
    pub message_id: Option<String>,
    /// `wsa:RelatesTo`: in a response, the request's MessageID.
    pub relates_to: Option<String>,
    /// `wsa:To`.
    pub to: Option<String>,
    /// `wsa:ReplyTo`'s `wsa:Address`.
    pub reply_to: Option<String>,
    /// `wsman:ResourceURI`.
    pub resource_uri: Option<String>,
    /// `wsman:OperationTimeout`, an xs:duration such as `PT60S`.
    pub operation_timeout: Option<String>,
    /// `wsman:SelectorSet`'s selectors, in order.
    pub selectors: Vec<Selector>,
}

impl Header {
    /// The text value of the selector with this name.
    pub fn selector(&self, name: &str) -> Option<&str> {
        self.selectors.iter().find(|s| s.name == name).and_then(Selector::as_text)
    }
}

/// A SOAP 1.2 envelope: the WS-MAN header fields and the `s:Body` element (whose children are
/// the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub header: Header,
    pub body: Element,
}

/// Why a document is not a WS-MAN envelope this module accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsmanError {
    #[error("malformed XML: {0}")]
    MalformedXml(String),
    #[error("the document is {len} bytes, more than {max}")]
    TooLarge { len: usize, max: usize },
    #[error("elements nest deeper than {max}")]
    TooDeep { max: usize },
    #[error("more than {max} elements")]
    TooManyElements { max: usize },
    #[error("an element has more than {max} attributes")]
    TooManyAttributes { max: usize },
    #[error("the document is not UTF-8")]
    NotUtf8,
    #[error("a character XML does not allow: U+{0:04X}")]
    InvalidChar(u32),
    #[error("a DTD (SOAP forbids them)")]
    DtdNotAllowed,
    #[error("the root is not a SOAP 1.2 Envelope")]
    NotAnEnvelope,
    #[error("the envelope has no {0}")]
    MissingHeader(&'static str),
    #[error("the envelope has no Body")]
    MissingBody,
    #[error("a selector without a Name")]
    SelectorWithoutName,
    #[error("the body has no {0}")]
    MissingElement(&'static str),
    #[error("{field} is not a number: {value:?}")]
    NotANumber { field: &'static str, value: String },
    #[error("the device answered with a fault: {0}")]
    Fault(Box<Fault>),
}

/// Why an envelope could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("a character XML cannot carry: U+{0:04X}")]
    InvalidChar(u32),
    #[error("not an XML name: {0:?}")]
    InvalidName(String),
    #[error("an element or attribute in a reserved namespace: {0:?}")]
    ReservedNamespace(String),
}

impl Envelope {
    /// Parses a document under `limits`. Never panics; every refusal is a [`WsmanError`].
    pub fn parse(document: &[u8], limits: &Limits) -> Result<Envelope, WsmanError> {
        let root = parse_document(document, limits)?;
        if !root.is(ns::SOAP, "Envelope") {
            return Err(WsmanError::NotAnEnvelope);
        }
        let header_element = root.child_ns(ns::SOAP, "Header").ok_or(WsmanError::MissingHeader("Header"))?;
        let body = root.child_ns(ns::SOAP, "Body").ok_or(WsmanError::MissingBody)?.clone();
        let text_of = |namespace: &str, name: &str| header_element.child_ns(namespace, name).map(|e| e.text.clone());
        let header = Header {
            action: text_of(ns::ADDRESSING, "Action").ok_or(WsmanError::MissingHeader("Action"))?,
            message_id: text_of(ns::ADDRESSING, "MessageID"),
            relates_to: text_of(ns::ADDRESSING, "RelatesTo"),
            to: text_of(ns::ADDRESSING, "To"),
            reply_to: header_element
                .child_ns(ns::ADDRESSING, "ReplyTo")
                .map(|r| r.child_ns(ns::ADDRESSING, "Address").map(|a| a.text.clone()).unwrap_or_default()),
            resource_uri: text_of(ns::WSMAN, "ResourceURI"),
            operation_timeout: text_of(ns::WSMAN, "OperationTimeout"),
            selectors: match header_element.child_ns(ns::WSMAN, "SelectorSet") {
                Some(set) => selectors_from_set(set)?,
                None => Vec::new(),
            },
        };
        Ok(Envelope { header, body })
    }

    /// A response to `request`: `action`, a MessageID of the responder's choosing, RelatesTo
    /// the request's MessageID, To anonymous, the request's ResourceURI, and `payload` as the
    /// body (none for an empty body).
    pub fn response(
        request: &Header,
        action: impl Into<String>,
        message_id: uuid::Uuid,
        payload: Option<Element>,
    ) -> Self {
        let mut body = Element::new(ns::SOAP, "Body");
        body.children.extend(payload);
        Envelope {
            header: Header {
                action: action.into(),
                message_id: Some(message_id_of(message_id)),
                relates_to: request.message_id.clone(),
                to: Some(ANONYMOUS.to_owned()),
                reply_to: None,
                resource_uri: request.resource_uri.clone(),
                operation_timeout: None,
                selectors: Vec::new(),
            },
            body,
        }
    }

    /// The first element in the body.
    pub fn payload(&self) -> Option<&Element> {
        self.body.children.first()
    }

    /// The fault this envelope carries, if its body is a SOAP fault.
    pub fn fault(&self) -> Option<Fault> {
        let fault = self.body.child_ns(ns::SOAP, "Fault")?;
        Some(Fault::from_element(fault))
    }

    /// The payload, or the fault as an error: what a client wants from any response.
    pub fn payload_or_fault(&self) -> Result<&Element, WsmanError> {
        if let Some(fault) = self.fault() {
            return Err(WsmanError::Fault(Box::new(fault)));
        }
        self.payload().ok_or(WsmanError::MissingElement("payload"))
    }

    /// The envelope as a UTF-8 document with an XML declaration.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        let mut root = Element::new(ns::SOAP, "Envelope");
        root.children.push(self.header_element());
        root.children.push(self.body.clone());
        let mut writer = Writer::new(Vec::new());
        let decl = quick_xml::events::BytesDecl::new("1.0", Some("UTF-8"), None);
        write_event(&mut writer, Event::Decl(decl));
        let mut scopes = Scopes::new();
        write_element(&mut writer, &root, &mut scopes, true)?;
        Ok(writer.into_inner())
    }

    fn header_element(&self) -> Element {
        let header = &self.header;
        let mut element = Element::new(ns::SOAP, "Header");
        let mut push = |namespace: &str, name: &str, value: &Option<String>| {
            if let Some(value) = value {
                element.children.push(Element::new(namespace, name).with_text(value.clone()));
            }
        };
        push(ns::ADDRESSING, "To", &header.to);
        push(ns::WSMAN, "ResourceURI", &header.resource_uri);
        if let Some(reply_to) = &header.reply_to {
            element.children.push(
                Element::new(ns::ADDRESSING, "ReplyTo")
                    .with_child(Element::new(ns::ADDRESSING, "Address").with_text(reply_to.clone())),
            );
        }
        element.children.push(
            Element::new(ns::ADDRESSING, "Action")
                .with_attribute(ns::SOAP, "mustUnderstand", "true")
                .with_text(header.action.clone()),
        );
        let mut push = |namespace: &str, name: &str, value: &Option<String>| {
            if let Some(value) = value {
                element.children.push(Element::new(namespace, name).with_text(value.clone()));
            }
        };
        push(ns::ADDRESSING, "MessageID", &header.message_id);
        push(ns::ADDRESSING, "RelatesTo", &header.relates_to);
        push(ns::WSMAN, "OperationTimeout", &header.operation_timeout);
        if !header.selectors.is_empty() {
            element.children.push(selector_set_element(&header.selectors));
        }
        element
    }
}

/// `uuid:` followed by the UUID's hyphenated lowercase form, as a `wsa:MessageID`.
pub fn message_id_of(id: uuid::Uuid) -> String {
    format!("uuid:{}", id.hyphenated())
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A property of an instance (Put) or a parameter of a method (Invoke).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub name: String,
    pub value: Value,
}

/// A property's or parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Reference(EndpointReference),
}

impl Property {
    /// A property with a text value.
    pub fn text(name: impl Into<String>, value: impl Into<String>) -> Self {
        Property { name: name.into(), value: Value::Text(value.into()) }
    }

    /// A property whose value is a reference to an instance.
    pub fn reference(name: impl Into<String>, value: EndpointReference) -> Self {
        Property { name: name.into(), value: Value::Reference(value) }
    }

    fn to_element(&self, namespace: &str) -> Element {
        let mut element = Element::new(namespace, self.name.clone());
        match &self.value {
            Value::Text(text) => element.text = text.clone(),
            Value::Reference(reference) => element.children = reference.to_elements(),
        }
        element
    }
}

/// The body of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// No payload (Get, Delete).
    Empty,
    /// Put: an instance, the class element (named by the resource URI's last segment) in the
    /// class's namespace, holding one element per property (a multi-valued property repeats).
    Put { properties: Vec<Property> },
    /// A method call: `<method>_INPUT` in the class's namespace, one element per parameter.
    Invoke { method: String, parameters: Vec<Property> },
    /// `wsen:Enumerate`; with `optimize`, `wsman:OptimizeEnumeration` and (when given)
    /// `wsman:MaxElements`, so that the response carries the first items.
    Enumerate { optimize: Option<Option<u32>> },
    /// `wsen:Pull` with the context of an Enumerate response and, when given, `MaxElements`.
    Pull { context: String, max_elements: Option<u32> },
    /// `wsen:Release` of an enumeration context.
    Release { context: String },
}

/// A WS-MAN request, ready to be written with [`Request::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `wsa:To`: the service's URL, e.g. `http://192.168.1.2:16992/wsman`.
    pub to: String,
    pub resource_uri: String,
    pub action: String,
    /// `wsa:MessageID`, normally [`message_id_of`] a fresh UUID.
    pub message_id: String,
    /// Written as `PT<n>S`.
    pub operation_timeout_secs: Option<u32>,
    pub selectors: Vec<Selector>,
    pub body: RequestBody,
}

impl Request {
    fn new(to: &str, resource_uri: &str, action: &str, message_id: uuid::Uuid, body: RequestBody) -> Self {
        Request {
            to: to.to_owned(),
            resource_uri: resource_uri.to_owned(),
            action: action.to_owned(),
            message_id: message_id_of(message_id),
            operation_timeout_secs: Some(DEFAULT_OPERATION_TIMEOUT_SECS),
            selectors: Vec::new(),
            body,
        }
    }

    /// WS-Transfer Get of the instance `resource_uri` (and the selectors, if any) name.
    pub fn get(to: &str, resource_uri: &str, message_id: uuid::Uuid) -> Self {
        Request::new(to, resource_uri, action::GET, message_id, RequestBody::Empty)
    }

    /// WS-Transfer Put of an instance with these properties.
    pub fn put(to: &str, resource_uri: &str, message_id: uuid::Uuid, properties: Vec<Property>) -> Self {
        Request::new(to, resource_uri, action::PUT, message_id, RequestBody::Put { properties })
    }

    /// A method call on the method's class.
    pub fn invoke(to: &str, method: Method, message_id: uuid::Uuid, parameters: Vec<Property>) -> Self {
        let body = RequestBody::Invoke { method: method.name().to_owned(), parameters };
        Request::new(to, method.class().resource_uri(), method.action(), message_id, body)
    }

    /// WS-Enumeration Enumerate of a class's instances (without optimization: the response
    /// holds only a context to Pull with).
    pub fn enumerate(to: &str, resource_uri: &str, message_id: uuid::Uuid) -> Self {
        Request::new(to, resource_uri, action::ENUMERATE, message_id, RequestBody::Enumerate { optimize: None })
    }

    /// WS-Enumeration Enumerate with `wsman:OptimizeEnumeration` (and `wsman:MaxElements` when
    /// given): the response carries the first items along with the context.
    pub fn enumerate_optimized(
        to: &str,
        resource_uri: &str,
        message_id: uuid::Uuid,
        max_elements: Option<u32>,
    ) -> Self {
        let body = RequestBody::Enumerate { optimize: Some(max_elements) };
        Request::new(to, resource_uri, action::ENUMERATE, message_id, body)
    }

    /// WS-Enumeration Release of an enumeration context the client will not pull to the end.
    pub fn release(to: &str, resource_uri: &str, message_id: uuid::Uuid, context: &str) -> Self {
        let body = RequestBody::Release { context: context.to_owned() };
        Request::new(to, resource_uri, action::RELEASE, message_id, body)
    }

    /// WS-Enumeration Pull with an Enumerate response's context.
    pub fn pull(
        to: &str,
        resource_uri: &str,
        message_id: uuid::Uuid,
        context: &str,
        max_elements: Option<u32>,
    ) -> Self {
        let body = RequestBody::Pull { context: context.to_owned(), max_elements };
        Request::new(to, resource_uri, action::PULL, message_id, body)
    }

    /// This request with a selector appended.
    pub fn with_selector(mut self, selector: Selector) -> Self {
        self.selectors.push(selector);
        self
    }

    /// The request as an envelope (what [`Request::to_bytes`] writes).
    pub fn to_envelope(&self) -> Envelope {
        let mut body = Element::new(ns::SOAP, "Body");
        let payload = match &self.body {
            RequestBody::Empty => None,
            RequestBody::Put { properties } => {
                let class = self.resource_uri.rsplit('/').next().unwrap_or_default();
                let mut instance = Element::new(self.resource_uri.clone(), class);
                instance.children = properties.iter().map(|p| p.to_element(&self.resource_uri)).collect();
                Some(instance)
            }
            RequestBody::Invoke { method, parameters } => {
                let mut input = Element::new(self.resource_uri.clone(), format!("{method}_INPUT"));
                input.children = parameters.iter().map(|p| p.to_element(&self.resource_uri)).collect();
                Some(input)
            }
            RequestBody::Enumerate { optimize } => {
                let mut enumerate = Element::new(ns::ENUMERATION, "Enumerate");
                if let Some(max_elements) = optimize {
                    enumerate.children.push(Element::new(ns::WSMAN, "OptimizeEnumeration"));
                    if let Some(max) = max_elements {
                        enumerate.children.push(Element::new(ns::WSMAN, "MaxElements").with_text(max.to_string()));
                    }
                }
                Some(enumerate)
            }
            RequestBody::Pull { context, max_elements } => {
                let mut pull = Element::new(ns::ENUMERATION, "Pull")
                    .with_child(Element::new(ns::ENUMERATION, "EnumerationContext").with_text(context.clone()));
                if let Some(max) = max_elements {
                    pull.children.push(Element::new(ns::ENUMERATION, "MaxElements").with_text(max.to_string()));
                }
                Some(pull)
            }
            RequestBody::Release { context } => Some(
                Element::new(ns::ENUMERATION, "Release")
                    .with_child(Element::new(ns::ENUMERATION, "EnumerationContext").with_text(context.clone())),
            ),
        };
        body.children.extend(payload);
        Envelope {
            header: Header {
                action: self.action.clone(),
                message_id: Some(self.message_id.clone()),
                relates_to: None,
                to: Some(self.to.clone()),
                reply_to: Some(ANONYMOUS.to_owned()),
                resource_uri: Some(self.resource_uri.clone()),
                operation_timeout: self.operation_timeout_secs.map(|secs| format!("PT{secs}S")),
                selectors: self.selectors.clone(),
            },
            body,
        }
    }

    /// The request as a UTF-8 document.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        self.to_envelope().to_bytes()
    }
}

// ---------------------------------------------------------------------------------------------
// Typed extraction from responses

/// What an Enumerate response says: the context to Pull with and, with optimization, the first
/// items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumerateResponse {
    pub context: Option<String>,
    pub items: Vec<Element>,
    pub end_of_sequence: bool,
}

/// What a Pull response says: the items, the context for the next Pull (absent at the end), and
/// whether the enumeration has ended (`wsen:EndOfSequence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResponse {
    pub items: Vec<Element>,
    pub context: Option<String>,
    pub end_of_sequence: bool,
}

impl EnumerateResponse {
    /// Reads an Enumerate response (a fault is [`WsmanError::Fault`]).
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, WsmanError> {
        let response = envelope.payload_or_fault()?;
        if !response.is(ns::ENUMERATION, "EnumerateResponse") {
            return Err(WsmanError::MissingElement("EnumerateResponse"));
        }
        let context = response.child_ns(ns::ENUMERATION, "EnumerationContext").map(|c| c.text.clone());
        // With OptimizeEnumeration, DSP0226 puts the items and the end marker in the WS-MAN
        // namespace; the WS-Enumeration names are accepted too.
        let either =
            |name: &str| response.child_ns(ns::WSMAN, name).or_else(|| response.child_ns(ns::ENUMERATION, name));
        let items = either("Items").map(|i| i.children.clone()).unwrap_or_default();
        let end_of_sequence = either("EndOfSequence").is_some();
        if context.is_none() && !end_of_sequence {
            return Err(WsmanError::MissingElement("EnumerationContext"));
        }
        Ok(EnumerateResponse { context, items, end_of_sequence })
    }
}

impl EnumerateResponse {
    /// The `wsen:EnumerateResponse` body element a responder sends; with items (an optimized
    /// enumeration) they go in `wsman:Items`, and `wsman:EndOfSequence` marks the end.
    pub fn to_element(&self) -> Element {
        let mut response = Element::new(ns::ENUMERATION, "EnumerateResponse");
        if let Some(context) = &self.context {
            response.children.push(Element::new(ns::ENUMERATION, "EnumerationContext").with_text(context.clone()));
        }
        if !self.items.is_empty() {
            let mut items = Element::new(ns::WSMAN, "Items");
            items.children = self.items.clone();
            response.children.push(items);
        }
        if self.end_of_sequence {
            response.children.push(Element::new(ns::WSMAN, "EndOfSequence"));
        }
        response
    }
}

impl PullResponse {
    /// The `wsen:PullResponse` body element a responder sends: the context when there is more,
    /// `wsen:Items`, and `wsen:EndOfSequence` at the end.
    pub fn to_element(&self) -> Element {
        let mut response = Element::new(ns::ENUMERATION, "PullResponse");
        if let Some(context) = &self.context {
            response.children.push(Element::new(ns::ENUMERATION, "EnumerationContext").with_text(context.clone()));
        }
        let mut items = Element::new(ns::ENUMERATION, "Items");
        items.children = self.items.clone();
        response.children.push(items);
        if self.end_of_sequence {
            response.children.push(Element::new(ns::ENUMERATION, "EndOfSequence"));
        }
        response
    }

    /// Reads a Pull response (a fault is [`WsmanError::Fault`]).
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, WsmanError> {
        let response = envelope.payload_or_fault()?;
        if !response.is(ns::ENUMERATION, "PullResponse") {
            return Err(WsmanError::MissingElement("PullResponse"));
        }
        Ok(PullResponse {
            items: response.child_ns(ns::ENUMERATION, "Items").map(|i| i.children.clone()).unwrap_or_default(),
            context: response.child_ns(ns::ENUMERATION, "EnumerationContext").map(|c| c.text.clone()),
            end_of_sequence: response.child_ns(ns::ENUMERATION, "EndOfSequence").is_some(),
        })
    }
}

/// The body element a responder sends for a method call: `<Method>_OUTPUT` in the class's
/// namespace with `ReturnValue`.
pub fn method_output(method: Method, return_value: u32) -> Element {
    let namespace = method.class().resource_uri();
    Element::new(namespace, method.output_element())
        .with_child(Element::new(namespace, "ReturnValue").with_text(return_value.to_string()))
}

/// A method's `ReturnValue` from its `<Method>_OUTPUT` (0 is success; the rest is per method).
/// A fault is [`WsmanError::Fault`].
pub fn return_value(envelope: &Envelope) -> Result<u32, WsmanError> {
    let output = envelope.payload_or_fault()?;
    if !output.name.ends_with("_OUTPUT") {
        return Err(WsmanError::MissingElement("_OUTPUT"));
    }
    let value = output.child("ReturnValue").ok_or(WsmanError::MissingElement("ReturnValue"))?;
    value.text.trim().parse().map_err(|_| WsmanError::NotANumber { field: "ReturnValue", value: value.text.clone() })
}

/// A SOAP 1.2 fault. Code and subcode are the local parts of their QName values (`Sender`,
/// `DestinationUnreachable`, `InvalidSelectors`, `AccessDenied`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    pub code: String,
    pub subcode: Option<String>,
    /// The first `s:Reason/s:Text`.
    pub reason: String,
    /// The text of `s:Detail` and its descendants, trimmed (AMT puts a `wsman:FaultDetail` URI
    /// there); `None` without a Detail.
    pub detail: Option<String>,
}

impl Fault {
    /// Reads a fault from an `s:Fault` element. Missing parts read as empty.
    pub fn from_element(fault: &Element) -> Self {
        let code = fault.child_ns(ns::SOAP, "Code");
        let value_of =
            |code: &Element| code.child_ns(ns::SOAP, "Value").map(|v| local_part(&v.text)).unwrap_or_default();
        Fault {
            code: code.map(value_of).unwrap_or_default(),
            subcode: code.and_then(|c| c.child_ns(ns::SOAP, "Subcode")).map(value_of),
            reason: fault
                .child_ns(ns::SOAP, "Reason")
                .and_then(|r| r.child_ns(ns::SOAP, "Text"))
                .map(|t| t.text.trim().to_owned())
                .unwrap_or_default(),
            detail: fault.child_ns(ns::SOAP, "Detail").map(|d| {
                let mut text = String::new();
                collect_text(d, &mut text);
                text.trim().to_owned()
            }),
        }
    }

    /// A fault body for a responder: `s:Fault` with the code (a SOAP code such as `Sender`),
    /// the subcode in `subcode_namespace` (e.g. [`ns::WSMAN`] for `InvalidSelectors`,
    /// [`ns::ADDRESSING`] for `DestinationUnreachable`), the reason and, when given, the detail
    /// as a `wsman:FaultDetail`. QName values need a prefix declared on the envelope, so a
    /// subcode namespace other than those [`Envelope::to_bytes`] always declares (SOAP,
    /// addressing, WS-MAN, enumeration, transfer) is written in the WS-MAN namespace.
    pub fn to_element(&self, subcode_namespace: &str) -> Element {
        let mut code = Element::new(ns::SOAP, "Code")
            .with_child(Element::new(ns::SOAP, "Value").with_text(format!("s:{}", self.code)));
        if let Some(subcode) = &self.subcode {
            let prefix = fixed_prefix(subcode_namespace).unwrap_or("w");
            code.children.push(
                Element::new(ns::SOAP, "Subcode")
                    .with_child(Element::new(ns::SOAP, "Value").with_text(format!("{prefix}:{subcode}"))),
            );
        }
        let mut fault =
            Element::new(ns::SOAP, "Fault").with_child(code).with_child(Element::new(ns::SOAP, "Reason").with_child(
                Element::new(ns::SOAP, "Text").with_attribute(ns::XML, "lang", "en-US").with_text(self.reason.clone()),
            ));
        if let Some(detail) = &self.detail {
            fault.children.push(
                Element::new(ns::SOAP, "Detail")
                    .with_child(Element::new(ns::WSMAN, "FaultDetail").with_text(detail.clone())),
            );
        }
        fault
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(subcode) = &self.subcode {
            write!(f, "/{subcode}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

fn local_part(qname: &str) -> String {
    let qname = qname.trim();
    qname.rsplit(':').next().unwrap_or(qname).to_owned()
}

fn collect_text(element: &Element, out: &mut String) {
    out.push_str(&element.text);
    for child in &element.children {
        collect_text(child, out);
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Parses a document into its root element under `limits`.
pub fn parse_document(document: &[u8], limits: &Limits) -> Result<Element, WsmanError> {
    if document.len() > limits.max_document_len {
        return Err(WsmanError::TooLarge { len: document.len(), max: limits.max_document_len });
    }
    let text = std::str::from_utf8(document).map_err(|_| WsmanError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = NsReader::from_str(text);
    let config = reader.config_mut();
    config.expand_empty_elements = true;
    config.check_end_names = true;
    config.check_comments = true;
    config.allow_unmatched_ends = false;
    config.allow_dangling_amp = false;
    config.trim_text(false);

    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let (resolved, event) = reader.read_resolved_event().map_err(malformed)?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(WsmanError::MalformedXml("a second root element".into()));
                }
                elements += 1;
                if elements > limits.max_elements {
                    return Err(WsmanError::TooManyElements { max: limits.max_elements });
                }
                if stack.len() >= limits.max_depth {
                    return Err(WsmanError::TooDeep { max: limits.max_depth });
                }
                let namespace = namespace_of(resolved)?;
                let name = name_str(start.local_name().into_inner())?;
                let mut element = Element::new(namespace, name);
                for attribute in start.attributes() {
                    let attribute = attribute.map_err(malformed)?;
                    if attribute.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    if element.attributes.len() >= limits.max_attributes {
                        return Err(WsmanError::TooManyAttributes { max: limits.max_attributes });
                    }
                    let (resolved, local) = reader.resolve_attribute(attribute.key);
                    let namespace = namespace_of(resolved)?;
                    let name = name_str(local.into_inner())?;
                    if element.attributes.iter().any(|a| a.namespace == namespace && a.name == name) {
                        return Err(WsmanError::MalformedXml(format!("attribute {name:?} given twice")));
                    }
                    let value = attribute_value(&attribute.value)?;
                    element.attributes.push(Attribute { namespace, name, value });
                }
                stack.push(element);
            }
            Event::End(_) => {
                let element = stack.pop().ok_or_else(|| WsmanError::MalformedXml("an unmatched end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Text(text) => {
                let content = text.xml10_content().map_err(|_| WsmanError::NotUtf8)?;
                push_text(&mut stack, &content)?;
            }
            Event::CData(data) => {
                let content = data.xml10_content().map_err(|_| WsmanError::NotUtf8)?;
                if stack.is_empty() {
                    return Err(WsmanError::MalformedXml("CDATA outside the root element".into()));
                }
                push_text(&mut stack, &content)?;
            }
            Event::GeneralRef(reference) => {
                let resolved: String = if reference.is_char_ref() {
                    match reference.resolve_char_ref().map_err(malformed)? {
                        Some(c) => c.to_string(),
                        None => return Err(WsmanError::MalformedXml("a bad character reference".into())),
                    }
                } else {
                    let name = reference.decode().map_err(|_| WsmanError::NotUtf8)?;
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(value) => value.to_owned(),
                        None => return Err(WsmanError::MalformedXml(format!("an undefined entity &{name};"))),
                    }
                };
                if stack.is_empty() {
                    return Err(WsmanError::MalformedXml("a reference outside the root element".into()));
                }
                push_text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err(WsmanError::DtdNotAllowed),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Empty(_) => {
                // expand_empty_elements turns these into Start and End.
                return Err(WsmanError::MalformedXml("an unexpanded empty element".into()));
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(WsmanError::MalformedXml("the document ends inside an element".into()));
    }
    root.ok_or_else(|| WsmanError::MalformedXml("no root element".into()))
}

fn malformed(error: impl std::fmt::Display) -> WsmanError {
    WsmanError::MalformedXml(error.to_string())
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), WsmanError> {
    check_chars(text).map_err(WsmanError::InvalidChar)?;
    match stack.last_mut() {
        Some(element) => element.text.push_str(text),
        None => {
            if !text.chars().all(is_xml_space) {
                return Err(WsmanError::MalformedXml("text outside the root element".into()));
            }
        }
    }
    Ok(())
}

fn namespace_of(resolved: ResolveResult<'_>) -> Result<String, WsmanError> {
    match resolved {
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Bound(namespace) => {
            // quick-xml hands over the declaration's value as written: unescape it here.
            let namespace = attribute_value(namespace.into_inner())?;
            if namespace == ns::XMLNS {
                return Err(WsmanError::MalformedXml("an element or attribute in the xmlns namespace".into()));
            }
            Ok(namespace)
        }
        ResolveResult::Unknown(prefix) => {
            Err(WsmanError::MalformedXml(format!("undeclared prefix {:?}", String::from_utf8_lossy(&prefix))))
        }
    }
}

fn name_str(bytes: &[u8]) -> Result<String, WsmanError> {
    let name = std::str::from_utf8(bytes).map_err(|_| WsmanError::NotUtf8)?;
    if !is_name(name) {
        return Err(WsmanError::MalformedXml(format!("not an XML name: {name:?}")));
    }
    Ok(name.to_owned())
}

/// An attribute value: raw tab, line feed and carriage return become spaces (XML's attribute
/// value normalisation), then references are resolved.
fn attribute_value(raw: &[u8]) -> Result<String, WsmanError> {
    let raw = std::str::from_utf8(raw).map_err(|_| WsmanError::NotUtf8)?;
    let normalized: String = raw.replace("\r\n", " ").chars().map(|c| if is_xml_space(c) { ' ' } else { c }).collect();
    let value = quick_xml::escape::unescape(&normalized).map_err(malformed)?.into_owned();
    check_chars(&value).map_err(WsmanError::InvalidChar)?;
    Ok(value)
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// The first character XML 1.0 does not allow, as its code point.
fn check_chars(text: &str) -> Result<(), u32> {
    match text.chars().find(|&c| !is_xml_char(c)) {
        Some(c) => Err(u32::from(c)),
        None => Ok(()),
    }
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// A local name (an NCName, simplified): ASCII letters, digits, `.`, `-`, `_` and any non-ASCII
/// character other than those XML forbids, not starting with a digit, `.` or `-`.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else { return false };
    let ok = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '.' | '-' | '_')
            || (!c.is_ascii() && is_xml_char(c) && c != '\u{feff}')
    };
    ok(first) && !first.is_ascii_digit() && !matches!(first, '.' | '-') && chars.all(ok)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Prefixes declared on every envelope written.
const FIXED_PREFIXES: [(&str, &str); 6] = [
    ("s", ns::SOAP),
    ("a", ns::ADDRESSING),
    ("w", ns::WSMAN),
    ("e", ns::ENUMERATION),
    ("t", ns::TRANSFER),
    ("xsi", ns::XSI),
];

fn fixed_prefix(namespace: &str) -> Option<&'static str> {
    FIXED_PREFIXES.iter().find(|(_, uri)| *uri == namespace).map(|(prefix, _)| *prefix)
}

/// Namespace bindings in scope while writing: fixed ones, then one frame per open element.
struct Scopes {
    frames: Vec<Vec<(String, String)>>,
    next: usize,
}

impl Scopes {
    fn new() -> Self {
        Scopes { frames: Vec::new(), next: 0 }
    }

    fn lookup(&self, namespace: &str) -> Option<String> {
        if namespace == ns::XML {
            return Some("xml".to_owned());
        }
        if let Some(prefix) = fixed_prefix(namespace) {
            return Some(prefix.to_owned());
        }
        self.frames.iter().rev().flatten().find(|(uri, _)| uri == namespace).map(|(_, prefix)| prefix.clone())
    }

    /// The prefix for `namespace`, declaring a new one in the current frame if needed.
    fn prefix_for(&mut self, namespace: &str, declarations: &mut Vec<(String, String)>) -> String {
        if let Some(prefix) = self.lookup(namespace) {
            return prefix;
        }
        if let Some((_, prefix)) = declarations.iter().find(|(uri, _)| uri == namespace) {
            return prefix.clone();
        }
        self.next += 1;
        let prefix = format!("n{}", self.next);
        declarations.push((namespace.to_owned(), prefix.clone()));
        prefix
    }
}

fn write_element(
    writer: &mut Writer<Vec<u8>>,
    element: &Element,
    scopes: &mut Scopes,
    root: bool,
) -> Result<(), WriteError> {
    check_name(&element.name)?;
    let mut declarations: Vec<(String, String)> = Vec::new();
    let qname = qualified(scopes, &element.namespace, &element.name, &mut declarations)?;
    let mut attributes: Vec<(String, String)> = Vec::new();
    for attribute in &element.attributes {
        check_name(&attribute.name)?;
        if attribute.namespace.is_empty() && attribute.name == "xmlns" {
            return Err(WriteError::InvalidName(attribute.name.clone()));
        }
        let name = qualified(scopes, &attribute.namespace, &attribute.name, &mut declarations)?;
        check_chars(&attribute.value).map_err(WriteError::InvalidChar)?;
        attributes.push((name, escape(&attribute.value, true)));
    }
    let mut start = BytesStart::new(qname.clone());
    if root {
        for (prefix, uri) in FIXED_PREFIXES {
            push_attribute(&mut start, &format!("xmlns:{prefix}"), &escape(uri, true));
        }
    }
    for (uri, prefix) in &declarations {
        check_chars(uri).map_err(WriteError::InvalidChar)?;
        push_attribute(&mut start, &format!("xmlns:{prefix}"), &escape(uri, true));
    }
    for (name, value) in &attributes {
        push_attribute(&mut start, name, value);
    }
    check_chars(&element.text).map_err(WriteError::InvalidChar)?;
    if element.text.is_empty() && element.children.is_empty() {
        write_event(writer, Event::Empty(start));
        return Ok(());
    }
    write_event(writer, Event::Start(start));
    if !element.text.is_empty() {
        write_event(writer, Event::Text(BytesText::from_escaped(escape(&element.text, false))));
    }
    scopes.frames.push(declarations);
    for child in &element.children {
        let written = write_element(writer, child, scopes, false);
        if written.is_err() {
            scopes.frames.pop();
            return written;
        }
    }
    scopes.frames.pop();
    write_event(writer, Event::End(BytesEnd::new(qname)));
    Ok(())
}

fn qualified(
    scopes: &mut Scopes,
    namespace: &str,
    name: &str,
    declarations: &mut Vec<(String, String)>,
) -> Result<String, WriteError> {
    if namespace.is_empty() {
        return Ok(name.to_owned());
    }
    if namespace == ns::XMLNS {
        return Err(WriteError::ReservedNamespace(namespace.to_owned()));
    }
    Ok(format!("{}:{name}", scopes.prefix_for(namespace, declarations)))
}

fn check_name(name: &str) -> Result<(), WriteError> {
    if is_name(name) {
        Ok(())
    } else {
        Err(WriteError::InvalidName(name.to_owned()))
    }
}

fn push_attribute(start: &mut BytesStart<'_>, name: &str, escaped_value: &str) {
    start.push_attribute(XmlAttribute {
        key: QName(name.as_bytes()),
        value: Cow::Owned(escaped_value.as_bytes().to_vec()),
    });
}

/// Escapes `&`, `<`, `>` (and in attributes `"`, `'`) as entities, and carriage returns (and in
/// attributes tabs and line feeds) as character references, so that a reader's line-end and
/// attribute normalisation gives back exactly `text`.
fn escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '"' if attribute => out.push_str("&quot;"),
            '\'' if attribute => out.push_str("&apos;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
    out
}

/// Writes into a `Vec`, which cannot fail.
fn write_event(writer: &mut Writer<Vec<u8>>, event: Event<'_>) {
    // Writing to a Vec<u8> never returns an I/O error.
    let _ = writer.write_event(event);
}

#[cfg(test)]
#[path = "wsman_test.rs"]
mod tests;

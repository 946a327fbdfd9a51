//! The AMT calls Tether makes over WS-Management, typed: what the firmware says about itself,
//! redirection (SOL/IDE-R) enablement, the one-time boot, power, and user consent. Each call names
//! its step, so an error says which step failed and what the device answered.
//!
//! The sequences follow what MeshCommander and Intel's samples send to real firmware:
//! - enable redirection: `AMT_RedirectionService.RequestStateChange(32768 + 2·SOL + IDE-R)`, then
//!   a Put of the service with `ListenerEnabled`;
//! - boot from IDE-R: a Put of `AMT_BootSettingData` with `UseIDER`, `IDERBootDevice` and
//!   `UseSOL`, `CIM_BootService.SetBootConfigRole(Boot Configuration 0, role 1)`, and
//!   `CIM_BootConfigSetting.ChangeBootOrder()` without a source (no forced boot device: the IDE-R
//!   flags decide), then `RequestPowerStateChange` (10 reset when on, 2 on when off);
//! - power state: the `PowerState` of `CIM_AssociatedPowerManagementService` (enumerated).

use protocols::wsman::{self, Class, Element, EndpointReference, Method, Property, Request, Selector};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::client::{CallError, Client};

/// The boot configuration AMT uses for one-time boots.
pub const BOOT_CONFIG: &str = "Intel(r) AMT: Boot Configuration 0";

/// Redirection states of `AMT_RedirectionService.RequestStateChange`.
pub const REDIRECTION_NONE: u32 = 32768;
pub const REDIRECTION_IDER: u32 = 32769;
pub const REDIRECTION_SOL: u32 = 32770;
pub const REDIRECTION_BOTH: u32 = 32771;

/// A step that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {kind}")]
pub struct AmtError {
    pub step: &'static str,
    pub kind: AmtErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum AmtErrorKind {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the device's answer has no {0}")]
    Missing(&'static str),
    #[error("the device's answer is not what WS-MAN says: {0}")]
    Malformed(String),
    #[error("the device refused (ReturnValue {value}{})", meaning.map(|m| format!(": {m}")).unwrap_or_default())]
    Refused { value: u32, meaning: Option<&'static str> },
}

impl AmtError {
    /// Whether the device refused the AMT credentials.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self.kind, AmtErrorKind::Call(CallError::Unauthorized { .. }))
    }

    /// Whether the connection (not the device's answer) failed.
    pub fn is_connection(&self) -> bool {
        matches!(self.kind, AmtErrorKind::Call(CallError::Connection(_) | CallError::Timeout))
    }
}

/// Power states of `RequestPowerStateChange` and `PowerState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    On,
    Cycle,
    Off,
    Reset,
}

impl PowerAction {
    pub fn value(self) -> u32 {
        match self {
            PowerAction::On => 2,
            PowerAction::Cycle => 5,
            PowerAction::Off => 8,
            PowerAction::Reset => 10,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Cycle => "cycle",
            PowerAction::Off => "off",
            PowerAction::Reset => "reset",
        }
    }
}

/// CIM PowerState "on".
pub const POWER_ON: u32 = 2;

/// A CIM power state as a word.
pub fn power_state_name(state: u32) -> &'static str {
    match state {
        2 => "on",
        3 => "sleep (light)",
        4 => "sleep (deep)",
        5 => "power cycle (off soft)",
        6 => "off (hard)",
        7 => "hibernate",
        8 => "off",
        9 => "power cycle (off hard)",
        10 => "master bus reset",
        11 => "diagnostic interrupt",
        12 => "off (soft graceful)",
        13 => "off (hard graceful)",
        14 => "master bus reset graceful",
        15 => "power cycle (off soft graceful)",
        16 => "power cycle (off hard graceful)",
        _ => "unknown",
    }
}

/// What `AMT_RedirectionService` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirection {
    pub enabled_state: u32,
    pub sol: bool,
    pub ider: bool,
    pub listener: bool,
}

impl Redirection {
    fn from_state(enabled_state: u32, listener: bool) -> Self {
        let (sol, ider) = match enabled_state {
            REDIRECTION_BOTH => (true, true),
            REDIRECTION_SOL => (true, false),
            REDIRECTION_IDER => (false, true),
            _ => (false, false),
        };
        Redirection { enabled_state, sol, ider, listener }
    }

    /// The state asking for these features.
    pub fn requested_state(sol: bool, ider: bool) -> u32 {
        REDIRECTION_NONE + 2 * u32::from(sol) + u32::from(ider)
    }
}

/// `AMT_BootSettingData` as the device returned it: every property in order (so that a Put
/// writes back exactly what was found), with the ones Tether changes readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSettings {
    pub properties: Vec<(String, String)>,
}

/// The device a one-time IDE-R boot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IderDevice {
    Floppy,
    Cd,
}

impl BootSettings {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.properties.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.trim() == "true")
    }

    pub fn use_sol(&self) -> bool {
        self.flag("UseSOL")
    }

    pub fn use_ider(&self) -> bool {
        self.flag("UseIDER")
    }

    pub fn ider_device(&self) -> Option<IderDevice> {
        match self.get("IDERBootDevice").map(str::trim) {
            Some("0") => Some(IderDevice::Floppy),
            Some("1") => Some(IderDevice::Cd),
            _ => None,
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        match self.properties.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.properties.push((name.to_owned(), value.to_owned())),
        }
    }

    /// These settings with a one-time boot from IDE-R (`None`: no IDE-R boot) and SOL as asked;
    /// the BIOS pauses and locks Tether does not use are cleared, as MeshCommander does.
    pub fn with_ider_boot(&self, device: Option<IderDevice>, sol: bool) -> BootSettings {
        let mut next = self.clone();
        next.set("UseIDER", if device.is_some() { "true" } else { "false" });
        next.set("IDERBootDevice", if device == Some(IderDevice::Cd) { "1" } else { "0" });
        next.set("UseSOL", if sol { "true" } else { "false" });
        for flag in ["BIOSPause", "BIOSSetup", "ConfigurationDataReset", "LockKeyboard", "ReflashBIOS", "UseSafeMode"] {
            if next.get(flag).is_some() {
                next.set(flag, "false");
            }
        }
        next
    }

    /// A short description for logs and the audit record.
    pub fn summary(&self) -> String {
        format!(
            "UseIDER={} IDERBootDevice={} UseSOL={}",
            self.use_ider(),
            self.get("IDERBootDevice").unwrap_or("?"),
            self.use_sol()
        )
    }
}

/// User consent (`IPS_OptInService`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// 0 none, 1 KVM only, 4294967295 every redirection and boot change.
    pub required: u32,
    /// 0 not started, 1 requested, 2 code displayed, 3 received, 4 in session.
    pub state: u32,
}

impl Consent {
    /// Whether operations need a code the PC user reads out before they are allowed.
    pub fn needs_code(&self) -> bool {
        self.required != 0 && self.required != 1 && self.state < 3
    }
}

/// What `tether rescue` (and `tether power status`) learns about a device before changing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub amt_version: String,
    /// The UUID the firmware reports (CIM_ComputerSystemPackage.PlatformGUID).
    pub platform_uuid: Option<Uuid>,
    /// `admin` (ACM), `client` (CCM) or the raw ProvisioningMode.
    pub control_mode: String,
    pub host_name: Option<String>,
    pub redirection: Redirection,
    pub boot: BootSettings,
    pub power_state: u32,
    pub power: String,
    pub consent: Consent,
}

/// Typed AMT calls on one WS-MAN session.
#[derive(Debug)]
pub struct Amt {
    client: Client,
}

fn err(step: &'static str) -> impl Fn(CallError) -> AmtError {
    move |e| AmtError { step, kind: AmtErrorKind::Call(e) }
}

fn missing(step: &'static str, what: &'static str) -> AmtError {
    AmtError { step, kind: AmtErrorKind::Missing(what) }
}

fn malformed(step: &'static str, what: impl std::fmt::Display) -> AmtError {
    AmtError { step, kind: AmtErrorKind::Malformed(what.to_string()) }
}

fn number(step: &'static str, element: &Element, name: &'static str) -> Result<u32, AmtError> {
    let text = element.child_text(name).ok_or_else(|| missing(step, name))?;
    text.trim().parse().map_err(|_| malformed(step, format!("{name} is {text:?}, not a number")))
}

/// `Intel(r) AMT` service selectors (CreationClassName, Name, SystemCreationClassName, SystemName).
fn service_selectors(mut request: Request, class: &str, name: &str) -> Request {
    for (key, value) in [
        ("CreationClassName", class),
        ("Name", name),
        ("SystemCreationClassName", "CIM_ComputerSystem"),
        ("SystemName", "Intel(r) AMT"),
    ] {
        request = request.with_selector(Selector::text(key, value));
    }
    request
}

/// The meaning of a non-zero ReturnValue of `RequestPowerStateChange`, as AMT documents it.
fn power_refusal(value: u32) -> Option<&'static str> {
    match value {
        1 => Some("not supported"),
        2 => Some(
            "the device cannot make that change now (AMT refuses off and cycle while a SOL or IDE-R session is \
             open: use reset, or end the session; and on only when off, reset only when on)",
        ),
        4 => Some("failed"),
        5 => Some("invalid parameter"),
        4096 => Some("accepted, in progress"),
        _ => None,
    }
}

impl Amt {
    pub fn new(client: Client) -> Amt {
        Amt { client }
    }

    async fn call(&mut self, step: &'static str, request: Request) -> Result<wsman::Envelope, AmtError> {
        self.client.call(&request).await.map_err(err(step))
    }

    async fn get(&mut self, step: &'static str, class: Class, selector: Option<Selector>) -> Result<Element, AmtError> {
        let mut request = Request::get(&self.client.to(), class.resource_uri(), Uuid::new_v4());
        if let Some(selector) = selector {
            request = request.with_selector(selector);
        }
        let envelope = self.call(step, request).await?;
        let instance = envelope.payload().ok_or_else(|| missing(step, class.name()))?;
        if instance.name != class.name() {
            return Err(malformed(step, format!("expected {}, got {}", class.name(), instance.name)));
        }
        Ok(instance.clone())
    }

    /// Every instance of `class` (Enumerate, then Pull to the end; at most 64 pulls).
    async fn enumerate(&mut self, step: &'static str, class: Class) -> Result<Vec<Element>, AmtError> {
        let to = self.client.to();
        let envelope = self.call(step, Request::enumerate(&to, class.resource_uri(), Uuid::new_v4())).await?;
        let first = wsman::EnumerateResponse::from_envelope(&envelope).map_err(|e| malformed(step, e))?;
        let mut items = first.items;
        let mut context = if first.end_of_sequence { None } else { first.context };
        for _ in 0..64 {
            let Some(ctx) = context.take() else { return Ok(items) };
            let request = Request::pull(&to, class.resource_uri(), Uuid::new_v4(), &ctx, Some(16));
            let envelope = self.call(step, request).await?;
            let page = wsman::PullResponse::from_envelope(&envelope).map_err(|e| malformed(step, e))?;
            items.extend(page.items);
            context = if page.end_of_sequence { None } else { page.context };
        }
        Err(malformed(step, "the enumeration did not end after 64 pulls"))
    }

    async fn invoke(
        &mut self,
        step: &'static str,
        request: Request,
        meaning: fn(u32) -> Option<&'static str>,
    ) -> Result<(), AmtError> {
        let envelope = self.call(step, request).await?;
        match wsman::return_value(&envelope).map_err(|e| malformed(step, e))? {
            0 => Ok(()),
            value => Err(AmtError { step, kind: AmtErrorKind::Refused { value, meaning: meaning(value) } }),
        }
    }

    /// `AMT_GeneralSettings`: the host name, and proof that the credentials work.
    pub async fn general_settings(&mut self) -> Result<Element, AmtError> {
        self.get("reading AMT_GeneralSettings", Class::AmtGeneralSettings, None).await
    }

    /// The AMT firmware version (CIM_SoftwareIdentity `AMT`).
    pub async fn amt_version(&mut self) -> Result<String, AmtError> {
        const STEP: &str = "reading the AMT version (CIM_SoftwareIdentity)";
        let identity = self.get(STEP, Class::CimSoftwareIdentity, Some(Selector::text("InstanceID", "AMT"))).await?;
        identity.child_text("VersionString").map(|v| v.trim().to_owned()).ok_or_else(|| missing(STEP, "VersionString"))
    }

    /// The UUID the firmware reports: PlatformGUID, 32 hex digits in SMBIOS byte order.
    pub async fn platform_uuid(&mut self) -> Result<Uuid, AmtError> {
        const STEP: &str = "reading the platform GUID (CIM_ComputerSystemPackage)";
        let package = self.get(STEP, Class::CimComputerSystemPackage, None).await?;
        let text = package.child_text("PlatformGUID").ok_or_else(|| missing(STEP, "PlatformGUID"))?;
        let bytes = hex::decode(text.trim()).map_err(|_| malformed(STEP, format!("PlatformGUID {text:?}")))?;
        let bytes: [u8; 16] =
            bytes.try_into().map_err(|_| malformed(STEP, format!("PlatformGUID {text:?} is not 16 bytes")))?;
        Ok(Uuid::from_bytes_le(bytes))
    }

    /// The control mode: `admin`, `client`, or the ProvisioningMode number.
    pub async fn control_mode(&mut self) -> Result<String, AmtError> {
        const STEP: &str = "reading the control mode (AMT_SetupAndConfigurationService)";
        let service = self.get(STEP, Class::AmtSetupAndConfigurationService, None).await?;
        Ok(match number(STEP, &service, "ProvisioningMode")? {
            1 => "admin".to_owned(),
            4 => "client".to_owned(),
            other => format!("provisioning mode {other}"),
        })
    }

    async fn redirection_instance(&mut self) -> Result<Element, AmtError> {
        self.get("reading the redirection state (AMT_RedirectionService)", Class::AmtRedirectionService, None).await
    }

    /// Which redirection features are enabled, and the listener.
    pub async fn redirection(&mut self) -> Result<Redirection, AmtError> {
        let service = self.redirection_instance().await?;
        let state = number("reading the redirection state (AMT_RedirectionService)", &service, "EnabledState")?;
        let listener = service.child_text("ListenerEnabled").is_some_and(|v| v.trim() == "true");
        Ok(Redirection::from_state(state, listener))
    }

    /// Enables (or disables) SOL and IDE-R and the redirection listener.
    pub async fn set_redirection(&mut self, sol: bool, ider: bool) -> Result<Redirection, AmtError> {
        let to = self.client.to();
        let state = Redirection::requested_state(sol, ider);
        let request = Request::invoke(
            &to,
            Method::RequestStateChange,
            Uuid::new_v4(),
            vec![Property::text("RequestedState", state.to_string())],
        );
        let request = service_selectors(request, "AMT_RedirectionService", "Intel(r) AMT Redirection Service");
        self.invoke("enabling redirection (AMT_RedirectionService.RequestStateChange)", request, |v| match v {
            2 => Some("not ready, or consent is required"),
            _ => None,
        })
        .await?;
        let service = self.redirection_instance().await?;
        let listener = sol || ider;
        let properties = service
            .children
            .iter()
            .map(|p| {
                let value = if p.name == "ListenerEnabled" { listener.to_string() } else { p.text.clone() };
                Property::text(p.name.clone(), value)
            })
            .collect();
        let request = Request::put(&to, Class::AmtRedirectionService.resource_uri(), Uuid::new_v4(), properties);
        self.call("setting the redirection listener (AMT_RedirectionService Put)", request).await?;
        self.redirection().await
    }

    /// The boot settings for the next boot.
    pub async fn boot_settings(&mut self) -> Result<BootSettings, AmtError> {
        let data = self.get("reading the boot settings (AMT_BootSettingData)", Class::AmtBootSettingData, None).await?;
        Ok(BootSettings { properties: data.children.iter().map(|p| (p.name.clone(), p.text.clone())).collect() })
    }

    /// Writes the boot settings.
    pub async fn put_boot_settings(&mut self, settings: &BootSettings) -> Result<(), AmtError> {
        let properties = settings.properties.iter().map(|(n, v)| Property::text(n.clone(), v.clone())).collect();
        let request =
            Request::put(&self.client.to(), Class::AmtBootSettingData.resource_uri(), Uuid::new_v4(), properties);
        self.call("writing the boot settings (AMT_BootSettingData Put)", request).await.map(drop)
    }

    /// Makes Boot Configuration 0 the next boot's, with no forced source (the boot settings'
    /// IDE-R flags decide).
    pub async fn arm_one_time_boot(&mut self) -> Result<(), AmtError> {
        let to = self.client.to();
        let request = Request::invoke(
            &to,
            Method::SetBootConfigRole,
            Uuid::new_v4(),
            vec![
                Property::reference("BootConfigSetting", EndpointReference::boot_config(BOOT_CONFIG)),
                Property::text("Role", "1"),
            ],
        );
        let request = service_selectors(request, "CIM_BootService", "Intel(r) AMT Boot Service");
        self.invoke("setting the boot configuration role (CIM_BootService.SetBootConfigRole)", request, |_| None)
            .await?;
        let request = Request::invoke(&to, Method::ChangeBootOrder, Uuid::new_v4(), Vec::new())
            .with_selector(Selector::text("InstanceID", BOOT_CONFIG));
        self.invoke("clearing the boot order (CIM_BootConfigSetting.ChangeBootOrder)", request, |_| None).await
    }

    /// The power state (CIM_AssociatedPowerManagementService.PowerState).
    pub async fn power_state(&mut self) -> Result<u32, AmtError> {
        const STEP: &str = "reading the power state (CIM_AssociatedPowerManagementService)";
        let items = self.enumerate(STEP, Class::CimAssociatedPowerManagementService).await?;
        let item = items.first().ok_or_else(|| missing(STEP, "an instance"))?;
        number(STEP, item, "PowerState")
    }

    /// Asks for a power change.
    pub async fn power(&mut self, action: PowerAction) -> Result<(), AmtError> {
        let request = Request::invoke(
            &self.client.to(),
            Method::RequestPowerStateChange,
            Uuid::new_v4(),
            vec![
                Property::text("PowerState", action.value().to_string()),
                Property::reference("ManagedElement", EndpointReference::managed_system()),
            ],
        );
        let request = service_selectors(request, "CIM_PowerManagementService", "Intel(r) AMT Power Management Service");
        self.invoke(
            "changing the power state (CIM_PowerManagementService.RequestPowerStateChange)",
            request,
            power_refusal,
        )
        .await
    }

    /// User consent: what the device requires and where it is.
    pub async fn consent(&mut self) -> Result<Consent, AmtError> {
        const STEP: &str = "reading user consent (IPS_OptInService)";
        let service = self.get(STEP, Class::IpsOptInService, None).await?;
        Ok(Consent { required: number(STEP, &service, "OptInRequired")?, state: number(STEP, &service, "OptInState")? })
    }

    fn opt_in_request(&self, method: Method, parameters: Vec<Property>) -> Request {
        let request = Request::invoke(&self.client.to(), method, Uuid::new_v4(), parameters);
        service_selectors(request, "IPS_OptInService", "Intel(r) AMT OptIn Service")
    }

    /// Makes the PC show a consent code.
    pub async fn start_consent(&mut self) -> Result<(), AmtError> {
        let request = self.opt_in_request(Method::StartOptIn, Vec::new());
        self.invoke("asking the PC to show a consent code (IPS_OptInService.StartOptIn)", request, |v| match v {
            2 => Some("consent is not required, or was already asked for"),
            _ => None,
        })
        .await
    }

    /// Enters the code the PC user read out.
    pub async fn send_consent_code(&mut self, code: &str) -> Result<(), AmtError> {
        let request = self.opt_in_request(Method::SendOptInCode, vec![Property::text("OptInCode", code.to_owned())]);
        self.invoke("entering the consent code (IPS_OptInService.SendOptInCode)", request, |v| match v {
            2066 => Some("wrong code; after three wrong codes a new one must be asked for"),
            2 => Some("no code is being shown (ask for one again)"),
            _ => None,
        })
        .await
    }

    /// Everything [`Facts`] holds.
    pub async fn facts(&mut self) -> Result<Facts, AmtError> {
        let general = self.general_settings().await?;
        let amt_version = self.amt_version().await?;
        let platform_uuid = self.platform_uuid().await.ok();
        let control_mode = self.control_mode().await?;
        let redirection = self.redirection().await?;
        let boot = self.boot_settings().await?;
        let power_state = self.power_state().await?;
        let consent = self.consent().await?;
        Ok(Facts {
            amt_version,
            platform_uuid,
            control_mode,
            host_name: general.child_text("HostName").map(str::to_owned),
            redirection,
            boot,
            power_state,
            power: power_state_name(power_state).to_owned(),
            consent,
        })
    }
}

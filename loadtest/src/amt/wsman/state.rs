//! The simulated firmware's state per device UUID, shared by the WS-MAN responder (16992 and
//! 16993, every channel) and the redirection service (16994/16995), and kept across tunnel
//! redials: power, the next boot's settings, the redirection service's enablement, user consent,
//! the open SOL/IDE-R sessions, a pending IDE-R boot, the digest nonces and enumeration contexts.
//!
//! A fleet shares one [`Firmware`] value, so everything is keyed by UUID. One mutex guards the
//! map; nothing blocks while holding it. Side effects that reach outside the map (console lines,
//! waking an IDE-R channel, dropping a tunnel, the IDE-R boot's give-up timer) are returned as
//! [`Effect`]s and carried out by [`Firmware::apply`] once the lock is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protocols::redir::SessionType;
use protocols::wsman::Element;
use uuid::Uuid;

use super::digest::Nonces;
use crate::amt::http::AMT_VERSION;
use crate::amt::redirection::console::SerialConsoles;
use crate::amt::service::ChannelWaker;

/// Power states as CIM_AssociatedPowerManagementService reports them.
pub const POWER_ON: u32 = 2;
pub const POWER_OFF: u32 = 8;

/// AMT_RedirectionService.EnabledState values.
pub const REDIRECTION_NONE: u32 = 32768;
pub const REDIRECTION_IDER: u32 = 32769;
pub const REDIRECTION_SOL: u32 = 32770;
pub const REDIRECTION_BOTH: u32 = 32771;

/// IPS_OptInService.OptInRequired for "consent for everything".
pub const OPT_IN_ALL: u32 = 4_294_967_295;

/// How long consent outlives the last redirection session.
pub const CONSENT_IDLE: Duration = Duration::from_secs(5 * 60);
/// Wrong consent codes before the code is voided.
pub const MAX_WRONG_CODES: u8 = 3;
/// Enumeration contexts kept per device, and how long one lives unused.
pub const MAX_ENUMERATIONS: usize = 16;
pub const ENUMERATION_LIFETIME: Duration = Duration::from_secs(120);

/// Admin (1) or client (4) control mode, as AMT_SetupAndConfigurationService.ProvisioningMode
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMode {
    Admin,
    Client,
}

impl ControlMode {
    /// AMT_SetupAndConfigurationService.ProvisioningMode.
    pub fn provisioning_mode(self) -> u32 {
        match self {
            ControlMode::Admin => 1,
            ControlMode::Client => 4,
        }
    }

    /// IPS_HostBasedSetupService.CurrentControlMode (1 CCM, 2 ACM).
    pub fn current_control_mode(self) -> u32 {
        match self {
            ControlMode::Admin => 2,
            ControlMode::Client => 1,
        }
    }
}

/// What every device of a simulator starts with.
#[derive(Clone)]
pub struct FirmwareConfig {
    /// The admin account (WS-MAN digest and redirection).
    pub admin_user: String,
    pub admin_password: String,
    pub control_mode: ControlMode,
    /// User consent required for everything (`--consent`).
    pub consent: bool,
    /// SOL and IDE-R enabled and the listener on at start (else 32768 and off).
    pub redirection_enabled: bool,
    /// Drop the tunnel after answering a power change (`--redial-on-power-change`).
    pub redial_on_power_change: bool,
    /// How long a boot waits for an IDE-R session to serve it (60 s).
    pub ider_boot_wait: Duration,
    /// Delay between answering a power change and dropping the tunnel (200 ms).
    pub drop_delay: Duration,
    /// The firmware version reported (`16.1.27`, [`AMT_VERSION`]): CIM_SoftwareIdentity, the
    /// HTTP `Server` header, the RMCP pong.
    pub amt_version: String,
    /// Devices start powered on (else off; a power-on request boots them).
    pub powered_on: bool,
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        Self {
            admin_user: "admin".to_owned(),
            admin_password: "admin".to_owned(),
            control_mode: ControlMode::Admin,
            consent: false,
            redirection_enabled: true,
            redial_on_power_change: false,
            ider_boot_wait: Duration::from_secs(60),
            drop_delay: Duration::from_millis(200),
            amt_version: AMT_VERSION.to_owned(),
            powered_on: true,
        }
    }
}

impl std::fmt::Debug for FirmwareConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareConfig")
            .field("admin_user", &self.admin_user)
            .field("admin_password", &"<redacted>")
            .field("control_mode", &self.control_mode)
            .field("consent", &self.consent)
            .field("redirection_enabled", &self.redirection_enabled)
            .field("redial_on_power_change", &self.redial_on_power_change)
            .field("amt_version", &self.amt_version)
            .field("powered_on", &self.powered_on)
            .finish_non_exhaustive()
    }
}

/// AMT_BootSettingData's writable fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootSettings {
    pub use_sol: bool,
    pub use_ider: bool,
    /// 0 floppy, 1 CD.
    pub ider_boot_device: u8,
    pub bios_pause: bool,
    pub bios_setup: bool,
    pub boot_media_index: u8,
    pub configuration_data_reset: bool,
    pub firmware_verbosity: u8,
    pub forced_progress_events: bool,
    pub lock_keyboard: bool,
    pub lock_power_button: bool,
    pub lock_reset_button: bool,
    pub lock_sleep_button: bool,
    pub reflash_bios: bool,
    pub use_safe_mode: bool,
    pub user_password_bypass: bool,
    pub secure_erase: bool,
    pub owning_entity: String,
}

/// IPS_OptInService's state.
#[derive(Debug, Clone)]
pub struct OptIn {
    /// 0 not started, 1 requested, 2 displayed, 3 received, 4 in session.
    pub state: u32,
    pub code: Option<String>,
    pub wrong: u8,
}

/// An enumeration in progress: what is left to pull.
#[derive(Debug, Clone)]
pub struct Enumeration {
    pub context: String,
    pub resource_uri: String,
    pub items: Vec<Element>,
    pub expires: Instant,
}

/// One device's firmware state.
#[derive(Debug)]
pub struct DeviceState {
    pub power: u32,
    pub boot: BootSettings,
    /// The one-time boot source set by ChangeBootOrder (a CIM_BootSourceSetting InstanceID).
    pub boot_source: Option<String>,
    /// SetBootConfigRole was called since the last boot.
    pub boot_role_set: bool,
    pub redirection_state: u32,
    pub listener: bool,
    pub opt_in: OptIn,
    pub sol_open: bool,
    pub ider_open: bool,
    /// When the last redirection session ended (for consent's idle expiry).
    pub last_session: Instant,
    /// An IDE-R boot waiting for a session to serve it, with the id that its give-up timer
    /// names.
    pub pending_boot: Option<u64>,
    /// With `--redial-on-power-change`: the pending boot is served only by an IDE-R session
    /// opened after this instant (the console's session from before the power change dies with
    /// the tunnel; the BIOS boots once the console is back).
    pub pending_boot_after: Option<Instant>,
    next_boot_id: u64,
    /// The open IDE-R session's channel, woken when a boot becomes pending.
    pub ider_waker: Option<ChannelWaker>,
    pub nonces: Nonces,
    pub enumerations: Vec<Enumeration>,
    /// Tells the device's driver to drop its tunnel (redial on power change).
    pub drop_tunnel: Arc<tokio::sync::Notify>,
}

impl DeviceState {
    fn new(config: &FirmwareConfig, now: Instant) -> Self {
        Self {
            power: if config.powered_on { POWER_ON } else { POWER_OFF },
            boot: BootSettings::default(),
            boot_source: None,
            boot_role_set: false,
            redirection_state: if config.redirection_enabled { REDIRECTION_BOTH } else { REDIRECTION_NONE },
            listener: config.redirection_enabled,
            opt_in: OptIn { state: 0, code: None, wrong: 0 },
            sol_open: false,
            ider_open: false,
            last_session: now,
            pending_boot: None,
            pending_boot_after: None,
            next_boot_id: 0,
            ider_waker: None,
            nonces: Nonces::default(),
            enumerations: Vec::new(),
            drop_tunnel: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether a SOL or IDE-R session is open.
    pub fn in_session(&self) -> bool {
        self.sol_open || self.ider_open
    }

    /// Whether consent is needed and not (or no longer) given. Consent ends when no redirection
    /// session has been open for [`CONSENT_IDLE`].
    pub fn lacks_consent(&mut self, required: bool, now: Instant) -> bool {
        if !required {
            return false;
        }
        if self.opt_in.state >= 3 && !self.in_session() && now.duration_since(self.last_session) >= CONSENT_IDLE {
            tracing::info!("consent: expired after {}s without a redirection session", CONSENT_IDLE.as_secs());
            self.opt_in = OptIn { state: 0, code: None, wrong: 0 };
        }
        self.opt_in.state < 3
    }

    /// Marks a boot: pending on IDE-R when the boot settings ask for it, else from disk.
    pub fn boot(&mut self, uuid: Uuid, effects: &mut Vec<Effect>) {
        let ider = self.boot.use_ider;
        self.boot_role_set = false;
        if ider {
            self.next_boot_id += 1;
            let id = self.next_boot_id;
            self.pending_boot = Some(id);
            let device = if self.boot.ider_boot_device == 1 { "CD-ROM" } else { "floppy" };
            effects.push(Effect::Print(uuid, format!("BIOS: booting from IDE-R {device}")));
            if let Some(waker) = &self.ider_waker {
                effects.push(Effect::Wake(waker.clone()));
            }
            effects.push(Effect::GiveUpBoot(uuid, id));
        } else {
            self.pending_boot = None;
            effects.push(Effect::Print(uuid, "BIOS: booting from disk".to_owned()));
            effects.push(Effect::Print(uuid, format!("amt-{} login:", uuid.simple())));
        }
    }
}

/// Something to do once the state lock is released.
#[derive(Debug)]
pub enum Effect {
    /// A line on the device's serial console (and in the log).
    Print(Uuid, String),
    /// Wake an IDE-R channel: a boot is pending.
    Wake(ChannelWaker),
    /// After the IDE-R wait, boot from disk if the boot with this id is still pending.
    GiveUpBoot(Uuid, u64),
    /// Drop the device's tunnel shortly (redial on power change).
    DropTunnel(Uuid),
}

/// Why the redirection service refuses a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    #[error("redirection of this kind is disabled (EnabledState {0})")]
    Disabled(u32),
    #[error("the redirection listener is off")]
    ListenerOff,
    #[error("user consent has not been given")]
    NoConsent,
}

/// The state of every device of a simulator. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Firmware {
    config: Arc<FirmwareConfig>,
    devices: Arc<Mutex<HashMap<Uuid, DeviceState>>>,
    consoles: SerialConsoles,
}

impl std::fmt::Debug for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firmware").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Default for Firmware {
    fn default() -> Self {
        Self::new(FirmwareConfig::default(), SerialConsoles::new())
    }
}

impl Firmware {
    /// Devices start powered on, with `config`'s redirection and consent settings; firmware lines
    /// go to `consoles` (the redirection service's, so that SOL shows them).
    pub fn new(config: FirmwareConfig, consoles: SerialConsoles) -> Self {
        Self { config: Arc::new(config), devices: Arc::default(), consoles }
    }

    pub fn config(&self) -> &FirmwareConfig {
        &self.config
    }

    pub fn consoles(&self) -> &SerialConsoles {
        &self.consoles
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, DeviceState>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on device `uuid`'s state (created on first use), then carries out the effects it
    /// returned.
    pub fn with<R>(&self, uuid: Uuid, f: impl FnOnce(&mut DeviceState, &FirmwareConfig, &mut Vec<Effect>) -> R) -> R {
        let mut effects = Vec::new();
        let result = {
            let mut devices = self.lock();
            let state = devices.entry(uuid).or_insert_with(|| DeviceState::new(&self.config, Instant::now()));
            f(state, &self.config, &mut effects)
        };
        self.apply(effects);
        result
    }

    /// Carries out effects (outside the lock).
    pub fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Print(uuid, line) => self.consoles.print(uuid, &line),
                Effect::Wake(waker) => waker.wake(),
                Effect::GiveUpBoot(uuid, id) => {
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else { continue };
                    let firmware = self.clone();
                    let wait = self.config.ider_boot_wait;
                    runtime.spawn(async move {
                        tokio::time::sleep(wait).await;
                        firmware.give_up_boot(uuid, id);
                    });
                }
                Effect::DropTunnel(uuid) => {
                    let notify = self.with(uuid, |state, _, _| Arc::clone(&state.drop_tunnel));
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else { continue };
                    let delay = self.config.drop_delay;
                    runtime.spawn(async move {
                        tokio::time::sleep(delay).await;
                        notify.notify_one();
                    });
                }
            }
        }
    }

    /// The boot `id` found no IDE-R session in time: it boots from disk.
    pub fn give_up_boot(&self, uuid: Uuid, id: u64) {
        self.with(uuid, |state, _, effects| {
            if state.pending_boot == Some(id) {
                state.pending_boot = None;
                effects.push(Effect::Print(uuid, "BIOS: no IDE-R session; booting from disk".to_owned()));
                effects.push(Effect::Print(uuid, format!("amt-{} login:", uuid.simple())));
            }
        });
    }

    /// Takes the pending IDE-R boot, if any: the caller (an IDE-R session opened at `opened`,
    /// whose console enabled the registers) serves it. After a power change that drops the tunnel,
    /// only a session opened after the change may.
    pub fn take_pending_boot(&self, uuid: Uuid, opened: Instant) -> bool {
        self.with(uuid, |state, _, _| {
            if state.pending_boot_after.is_some_and(|after| opened < after) {
                return false;
            }
            state.pending_boot_after = None;
            state.pending_boot.take().is_some()
        })
    }

    /// The signal that drops device `uuid`'s tunnel (its driver waits on it).
    pub fn tunnel_drop(&self, uuid: Uuid) -> Arc<tokio::sync::Notify> {
        self.with(uuid, |state, _, _| Arc::clone(&state.drop_tunnel))
    }

    /// A console starts a SOL or IDE-R session: refused when redirection of that kind is
    /// disabled, the listener is off, or consent is required and not given; else the session is
    /// marked open (consent state 3 becomes 4) until the guard is dropped.
    pub fn start_session(
        &self,
        uuid: Uuid,
        kind: SessionType,
        waker: Option<ChannelWaker>,
    ) -> Result<SessionGuard, SessionRefusal> {
        self.with(uuid, |state, config, _| {
            let bit = match kind {
                SessionType::Ider => REDIRECTION_IDER,
                SessionType::Sol => REDIRECTION_SOL,
                SessionType::Kvm => return Err(SessionRefusal::Disabled(state.redirection_state)),
            };
            if state.redirection_state & bit != bit || state.redirection_state == REDIRECTION_NONE {
                return Err(SessionRefusal::Disabled(state.redirection_state));
            }
            if !state.listener {
                return Err(SessionRefusal::ListenerOff);
            }
            if state.lacks_consent(config.consent, Instant::now()) {
                return Err(SessionRefusal::NoConsent);
            }
            if config.consent && state.opt_in.state == 3 {
                state.opt_in.state = 4;
                tracing::info!("consent: in session (OptInState 4)");
            }
            match kind {
                SessionType::Ider => {
                    state.ider_open = true;
                    state.ider_waker = waker;
                }
                _ => state.sol_open = true,
            }
            Ok(SessionGuard { firmware: self.clone(), uuid, kind })
        })
    }
}

/// An open redirection session of a device; marks it closed when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    firmware: Firmware,
    uuid: Uuid,
    kind: SessionType,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let kind = self.kind;
        self.firmware.with(self.uuid, |state, _, _| {
            match kind {
                SessionType::Ider => {
                    state.ider_open = false;
                    state.ider_waker = None;
                }
                _ => state.sol_open = false,
            }
            state.last_session = Instant::now();
        });
    }
}

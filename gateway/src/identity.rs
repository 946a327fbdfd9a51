//! Device identity: who may claim which UUID. A UUID is only what a device says; it is trusted as
//! far as the credential that admitted it, and a live tunnel keeps its UUID against any newcomer.
//!
//! - [`authenticate`] checks a device's MPS credentials under the configured
//!   [`DevicePolicy`]: the device's own password if the operator set
//!   one, else the MPS account named by the username (`open`, `pinned`); only registered devices
//!   with their own password (`registered`); and under `pinned`, the credential the UUID was first
//!   admitted with. An MPS account issued for a subscriber (`tether subscriber mps-account`)
//!   admits only UUIDs enrolled for that subscriber, and a machine whose subscriber has such an
//!   account is refused through the gateway-wide account: a device of one subscriber cannot
//!   claim another's machine, and the gateway-wide account stays for machines not yet assigned
//!   (or of subscribers without an account of their own). Every refusal takes one argon2 run (against a dummy hash when there is nothing
//!   to check against), so an unknown user, an unknown UUID and a wrong password look the same
//!   on the wire and in time. A UUID that keeps failing from one source gets in only with a
//!   password already proven good; a source or UUID in back-off otherwise gets one real check
//!   every few seconds (see `limits`), so neither a misconfigured neighbour behind the same NAT
//!   nor an attacker failing for a UUID locks the real device out.
//! - [`claim`] puts an authenticated tunnel in the registry. A UUID held by a live tunnel is never
//!   taken over: the holder must fail a liveness probe (a keepalive request it does not answer
//!   within `devices.liveness_timeout_ms`), wherever the newcomer comes from; and an older
//!   connection (in accept order) never evicts a newer one.
//!
//! What it does not do: speak APF (the `cira` driver calls these and answers the device) or
//! write records (the driver hands conflicts to the journal).

use std::net::SocketAddr;
use std::time::Duration;

use uuid::Uuid;

use crate::auth::CheckError;
use crate::config::DevicePolicy;
use crate::metrics::AuthFailureReason;
use crate::registry::{Liveness, TunnelHandle};
use crate::state::Shared;
use crate::store::{DeviceAuth, StoreError};

/// The credential that admitted a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An MPS account, by name (gateway-wide or a subscriber's).
    Account(String),
    /// The device's own password.
    Device,
}

impl Credential {
    /// How the store records a pin to this credential.
    pub fn pin(&self) -> String {
        match self {
            Credential::Account(user) => format!("account:{user}"),
            Credential::Device => "device".to_string(),
        }
    }
}

/// Why a device was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Answered with USERAUTH_FAILURE (the device may try again, up to the session's limit).
    #[error("authentication failed ({})", .0.as_str())]
    Auth(AuthFailureReason),
    /// The source or UUID is in back-off after repeated failures: disconnect.
    #[error("too many recent authentication failures; retry in {0:?}")]
    Backoff(Duration),
    /// The check could not finish in time (argon2 saturated): disconnect, the device retries.
    #[error("authentication could not be checked in time")]
    Timeout,
    /// Another tunnel holds the UUID and answered the liveness probe (or is newer).
    #[error("UUID held by a live tunnel from {live}")]
    Conflict { live: String },
}

/// Checks a device's credentials; see the module doc. `deadline` bounds the whole check.
pub async fn authenticate(
    shared: &Shared,
    uuid: Uuid,
    remote: SocketAddr,
    username: &[u8],
    password: &[u8],
    deadline: tokio::time::Instant,
) -> Result<Credential, Refusal> {
    let ip = remote.ip();
    let backoff = shared.limiter.auth_blocked(ip, Some(uuid));
    let known_good_only = backoff.is_some() && !shared.limiter.slow_check_allowed(ip, uuid);
    let verdict = check(shared, uuid, username, password, deadline, known_good_only).await;
    match (verdict, backoff) {
        (Ok(credential), _) => Ok(credential),
        (Err(CheckFailure::Timeout), _) => Err(Refusal::Timeout),
        (Err(_), Some(wait)) => Err(Refusal::Backoff(wait)),
        (Err(CheckFailure::Refused(reason)), None) => {
            if reason != AuthFailureReason::Busy {
                shared.limiter.auth_failed(ip, Some(uuid));
            }
            Err(Refusal::Auth(reason))
        }
    }
}

enum CheckFailure {
    Refused(AuthFailureReason),
    Timeout,
}

impl From<CheckError> for CheckFailure {
    fn from(err: CheckError) -> Self {
        match err {
            CheckError::Busy => CheckFailure::Refused(AuthFailureReason::Busy),
            CheckError::Timeout => CheckFailure::Timeout,
        }
    }
}

async fn check(
    shared: &Shared,
    uuid: Uuid,
    username: &[u8],
    password: &[u8],
    deadline: tokio::time::Instant,
    known_good_only: bool,
) -> Result<Credential, CheckFailure> {
    let policy = shared.config.devices.policy;
    let user = std::str::from_utf8(username).ok().map(str::to_string);
    let store = &shared.store;
    let (device, account, binding) = with_store(deadline, async {
        let device = store.device_auth(uuid).await?;
        let account = match &user {
            Some(user) => store.mps_account(user).await?.map(|(hash, subscriber)| (user.clone(), hash, subscriber)),
            None => None,
        };
        let binding = store.machine_binding(uuid).await?;
        Ok((device, account, binding))
    })
    .await?;
    // An account admits only the machines it may speak for; checked after the password, so
    // that a wrong password and a wrong subscriber look the same to a device without one.
    let account_fits = account.as_ref().is_none_or(|(_, _, subscriber)| match (subscriber, binding) {
        (Some(issued_for), Some((enrolled_for, _))) => *issued_for == enrolled_for,
        (Some(_), None) => false,
        (None, Some((_, has_own_account))) => !has_own_account,
        (None, None) => true,
    });
    let account = account.map(|(user, hash, _)| (user, hash));
    let own_password = device.as_ref().and_then(|d: &DeviceAuth| d.password_hash.clone());
    // What to check the password against, and what it proves if it matches.
    let target: Result<(String, Credential), AuthFailureReason> = match (policy, own_password, account) {
        (_, Some(hash), _) => Ok((hash, Credential::Device)),
        (DevicePolicy::Registered, None, _) => Err(AuthFailureReason::NotRegistered),
        (_, None, Some((user, hash))) => Ok((hash, Credential::Account(user))),
        (_, None, None) => Err(AuthFailureReason::UnknownUser),
    };
    let (hash, credential) = match target {
        Ok(target) => target,
        Err(reason) => {
            // Take as long as a wrong password would.
            if !known_good_only {
                shared.passwords.check_dummy(password, deadline).await?;
            }
            return Err(CheckFailure::Refused(reason));
        }
    };
    let ok = if known_good_only {
        shared.passwords.is_known_good(&hash, password)
    } else {
        shared.passwords.check(&hash, password, deadline).await?
    };
    if !ok {
        return Err(CheckFailure::Refused(AuthFailureReason::BadPassword));
    }
    if matches!(credential, Credential::Account(_)) && !account_fits {
        tracing::info!(%uuid, "refused: the MPS account is not the one for this machine's subscriber");
        return Err(CheckFailure::Refused(AuthFailureReason::CredentialMismatch));
    }
    let known_pin = device.and_then(|d| d.pinned);
    if policy == DevicePolicy::Pinned && known_pin.as_ref().is_some_and(|pin| *pin != credential.pin()) {
        return Err(CheckFailure::Refused(AuthFailureReason::CredentialMismatch));
    }
    if policy == DevicePolicy::Pinned && known_pin.is_none() {
        // First admission: pin it (the store keeps the first pin if two race).
        let pin = credential.pin();
        let pinned = with_store(deadline, store.pin_device(uuid, &pin)).await?;
        if pinned != credential.pin() {
            return Err(CheckFailure::Refused(AuthFailureReason::CredentialMismatch));
        }
    }
    Ok(credential)
}

/// Runs store calls bounded by the check's deadline; a store error refuses the device (counted
/// as `unknown`, and logged).
async fn with_store<T>(
    deadline: tokio::time::Instant,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, CheckFailure> {
    match tokio::time::timeout_at(deadline, call).await {
        Err(_) => Err(CheckFailure::Timeout),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot check a device's credentials against the store");
            Err(CheckFailure::Refused(AuthFailureReason::Unknown))
        }
    }
}

/// What a successful claim found.
#[derive(Debug)]
pub struct Claimed {
    /// The dead tunnel this one replaced (already told to close).
    pub replaced: Option<TunnelHandle>,
}

/// Registers `handle` for its UUID and kind; see the module doc.
pub async fn claim(shared: &Shared, handle: TunnelHandle) -> Result<Claimed, Refusal> {
    let registry = &shared.registry;
    // A few rounds at most: each lost race means another connection changed the entry meanwhile.
    for _ in 0..4 {
        let current = match registry.try_insert(handle.clone()) {
            Ok(()) => {
                if let Err(refusal) = claim_across_fleet(shared, &handle).await {
                    registry.remove(handle.uuid, handle.kind, handle.id);
                    return Err(refusal);
                }
                return Ok(Claimed { replaced: None });
            }
            Err(current) => current,
        };
        if current.id > handle.id {
            // A newer connection holds the UUID: connection order wins, not auth order.
            return Err(Refusal::Conflict { live: current.remote.to_string() });
        }
        match current.probe(shared.liveness_timeout()).await {
            Some(Liveness::Alive) | Some(Liveness::Busy) => {
                return Err(Refusal::Conflict { live: current.remote.to_string() })
            }
            None => {
                if registry.replace_if(current.id, handle.clone()) {
                    current.close(crate::metrics::CloseReason::Replaced);
                    return Ok(Claimed { replaced: Some(current) });
                }
            }
        }
    }
    match registry.get(handle.uuid, handle.kind) {
        Some(current) => Err(Refusal::Conflict { live: current.remote.to_string() }),
        None => Err(Refusal::Timeout),
    }
}

/// When the store says another gateway of the fleet holds the UUID: the same liveness rule, asked
/// of that gateway over the fleet link. A gateway that is down (its link refuses connections, or
/// its heartbeat is stale) holds nothing; one that cannot be asked while its heartbeat is fresh
/// gets the benefit of the doubt (the claim is refused for now, and the device retries). The
/// record then names this gateway, in one statement that fails if another gateway claimed the
/// UUID meanwhile.
async fn claim_across_fleet(shared: &Shared, handle: &TunnelHandle) -> Result<(), Refusal> {
    use crate::fleet::peers::{ClaimAnswer, LinkError};
    let uuid = handle.uuid;
    let deadline = tokio::time::Instant::now() + shared.liveness_timeout() + Duration::from_secs(2);
    let holder = with_store(deadline, shared.store.holder(uuid)).await.map_err(|_| Refusal::Timeout)?;
    let elsewhere = holder.filter(|i| *i != shared.instance);
    if let Some(instance) = &elsewhere {
        let asked = match &shared.peers {
            Some(peers) => tokio::time::timeout_at(deadline, peers.claim(instance, uuid, handle.remote)).await.ok(),
            None => None,
        };
        match asked {
            Some(Ok(ClaimAnswer::Alive { live })) => {
                return Err(Refusal::Conflict { live: format!("{live} (via gateway {instance})") })
            }
            Some(Ok(ClaimAnswer::Free)) | Some(Err(LinkError::Down { .. })) => {}
            other => {
                let stale_after = Duration::from_secs(shared.config.fleet.stale_after_secs);
                let alive = match with_store(deadline, shared.store.instance(instance)).await {
                    Ok(Some(record)) => record.is_alive(stale_after),
                    Ok(None) => false,
                    Err(_) => true,
                };
                if alive {
                    tracing::warn!(%uuid, %instance, answer = ?other.map(|r| r.map_err(|e| e.to_string())),
                        "a device claims a UUID another gateway holds, and that gateway cannot be asked; refusing for now");
                    return Err(Refusal::Timeout);
                }
            }
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let claim = shared.store.claim_device(uuid, now, handle.remote, &shared.instance, elsewhere.as_deref());
    match with_store(deadline, claim).await {
        Ok(true) => Ok(()),
        // Another gateway admitted the UUID since we looked: the device retries, and meets the
        // liveness rule then.
        Ok(false) | Err(_) => Err(Refusal::Timeout),
    }
}

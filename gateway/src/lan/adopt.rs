//! Adoption: an operator binds an AMT PC on this gateway's LAN to its UUID, after which it is a
//! device of kind `lan` (see `tunnel`).
//!
//! The PC's UUID is read through WS-MAN with its admin account (`CIM_ComputerSystemPackage`'s
//! PlatformGUID, over TLS on 16993), or given by hand (then the operator vouches for it). Either
//! way the certificate the PC presents on 16993 now is pinned: every later connection must see
//! the same one. A PC with no TLS port open (older firmware) is adopted on 16992/16994.
//!
//! What it does not do: decide who may adopt (the API's scope), or reach the PC afterwards.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

use super::probe::{self, HTTPS_PORT, HTTP_PORT, REDIRECTION_PORT};
use super::{Interface, LanError};
use crate::state::Shared;
use crate::store::{LanAdoption, StoreError};
use crate::wsman::{self, Amt, AmtError, Credentials};

/// What an operator asks to adopt.
#[derive(Debug, Clone, Deserialize)]
pub struct AdoptRequest {
    pub ip: String,
    /// Given by hand; otherwise read through WS-MAN with the account below.
    pub uuid: Option<Uuid>,
    pub amt_user: Option<String>,
    pub amt_password: Option<String>,
    /// Keep the account (sealed) for later AMT calls to this PC.
    #[serde(default)]
    pub remember: bool,
}

/// Why an adoption failed.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Lan(#[from] LanError),
    #[error("{0} is not an IPv4 address")]
    BadAddress(String),
    #[error("nothing answers on AMT's ports 16993 or 16992 at {0}: is it an AMT PC, and switched to standby or on?")]
    NotAmt(Ipv4Addr),
    #[error("give the PC's AMT admin password (amt_password; the CLI's --password or AMT_PASSWORD) to read its UUID, or give its UUID by hand (--uuid)")]
    NeedAccount,
    #[error("{0}")]
    Amt(AmtError),
    #[error("{0}")]
    Tls(String),
    #[error("device {uuid} is already adopted (at {ip} on gateway {instance}); forget it first (`tether lan forget {uuid}`)")]
    Adopted { uuid: Uuid, ip: String, instance: String },
    #[error("{ip} is already adopted as device {uuid} on this gateway; forget that one first")]
    AddressTaken { ip: String, uuid: Uuid },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Adopts the PC at `request.ip`; what was stored.
pub async fn adopt(shared: &Arc<Shared>, request: &AdoptRequest, by: &str) -> Result<LanAdoption, AdoptError> {
    let ip: Ipv4Addr = request.ip.trim().parse().map_err(|_| AdoptError::BadAddress(request.ip.clone()))?;
    let iface = Interface::holding(&shared.config.lan, ip)?;
    let timeout = Duration::from_millis(shared.config.lan.probe_timeout_ms);

    // What answers: TLS on 16993 (its certificate is pinned from now on), and the plain ports.
    let tls = match probe::connect(ip, HTTPS_PORT, timeout).await {
        Ok(tcp) => Some(probe::tls(tcp, None, timeout).await.map_err(AdoptError::Tls)?),
        Err(_) => None,
    };
    let plain = probe::connect(ip, HTTP_PORT, timeout).await.is_ok()
        && probe::connect(ip, REDIRECTION_PORT, timeout).await.is_ok();
    let pin = tls.as_ref().map(|(_, fingerprint)| fingerprint.clone());
    if pin.is_none() && !plain {
        return Err(AdoptError::NotAmt(ip));
    }

    let account = request.amt_password.clone().filter(|p| !p.is_empty()).map(|password| Credentials {
        user: request.amt_user.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| "admin".into()),
        password,
    });
    let uuid = match request.uuid {
        Some(uuid) => uuid,
        None => {
            let credentials = account.clone().ok_or(AdoptError::NeedAccount)?;
            let host = format!("{ip}:{}", if tls.is_some() { HTTPS_PORT } else { HTTP_PORT });
            let mut amt = match tls {
                Some((stream, _)) => session(stream, &host, credentials).await?,
                None => {
                    let tcp = probe::connect(ip, HTTP_PORT, timeout).await.map_err(|_| AdoptError::NotAmt(ip))?;
                    session(tcp, &host, credentials).await?
                }
            };
            amt.platform_uuid().await.map_err(AdoptError::Amt)?
        }
    };

    if let Some(existing) = shared.store.lan_device(uuid).await? {
        return Err(AdoptError::Adopted { uuid, ip: existing.ip, instance: existing.instance });
    }
    let mac = shared.store.lan_host_by_ip(&shared.instance, &ip.to_string()).await?.map(|h| h.mac);
    let adoption = LanAdoption {
        uuid,
        instance: shared.instance.clone(),
        ip: ip.to_string(),
        mac,
        tls_pin: pin,
        plain_ports: plain,
        adopted_at: OffsetDateTime::now_utc(),
        adopted_by: by.to_owned(),
    };
    if !shared.store.adopt_lan_device(&adoption).await? {
        // The UUID was free a moment ago: the address is taken.
        let taken = shared
            .store
            .lan_devices(Some(&shared.instance), None, crate::store::MAX_LAN_ROWS)
            .await?
            .into_iter()
            .find(|d| d.ip == adoption.ip);
        return Err(match taken {
            Some(other) => AdoptError::AddressTaken { ip: adoption.ip, uuid: other.uuid },
            None => AdoptError::Adopted { uuid, ip: adoption.ip, instance: shared.instance.clone() },
        });
    }
    if let (true, Some(account)) = (request.remember, &account) {
        let sealed = shared.sealer.seal(uuid, account.password.as_bytes());
        shared.store.remember_amt_account(uuid, Some((&account.user, &sealed)), OffsetDateTime::now_utc()).await?;
    }
    info!(
        %uuid,
        %ip,
        interface = %iface.name,
        tls_pin = adoption.tls_pin.as_deref().unwrap_or("none (plain ports)"),
        by,
        how = if request.uuid.is_some() { "UUID given by hand" } else { "UUID read through WS-MAN" },
        "LAN device adopted"
    );
    super::tunnel::spawn(Arc::clone(shared), adoption.clone());
    Ok(adoption)
}

/// A WS-MAN session over a connection to the PC's web port (TLS already done when it is 16993).
async fn session<IO>(io: IO, host: &str, credentials: Credentials) -> Result<Amt, AdoptError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = wsman::Client::handshake(io, host, credentials).await.map_err(|e| {
        AdoptError::Amt(AmtError { step: "connecting to the PC's WS-MAN port", kind: wsman::AmtErrorKind::Call(e) })
    })?;
    Ok(Amt::new(client))
}

/// Forgets an adopted PC: it leaves the registry, and the gateway reaches it no more. Whether it
/// was adopted.
pub async fn forget(shared: &Shared, uuid: Uuid) -> Result<bool, StoreError> {
    let forgotten = shared.store.forget_lan_device(uuid).await?;
    shared.lan.stop_tunnel(uuid);
    if forgotten {
        info!(%uuid, "LAN device forgotten");
    }
    Ok(forgotten)
}

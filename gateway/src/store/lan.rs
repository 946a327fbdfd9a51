//! The appliance's LAN: the hosts a scan found on it (by MAC, per gateway: each gateway of a fleet
//! has its own LAN), and the AMT PCs an operator adopted as devices (by UUID: the address the
//! gateway may reach, the certificate pinned at adoption, the gateway on whose LAN it is).
//!
//! What it does not do: scan, probe or reach anything (`crate::lan`).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// Most hosts or adopted devices one query returns.
pub const MAX_LAN_ROWS: u32 = 10_000;

/// A host a scan found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LanHost {
    /// The gateway whose LAN it is on.
    pub instance: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ip: String,
    pub interface: String,
    /// Whether it answered as Intel AMT (an RMCP pong from Intel, or an AMT `Server:` header).
    pub amt: bool,
    /// AMT's version as it reported it without credentials (`16.1.27`, or `16.1` from a pong).
    pub amt_version: Option<String>,
    /// `pre-provisioning`, `in provisioning` or `provisioned` (from the pong).
    pub provisioning: Option<String>,
    /// AMT's ports that accepted a connection (16992, 16993), and 623 when it answered a ping.
    pub amt_ports: Vec<u16>,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

/// An AMT PC adopted as a device of kind `lan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LanAdoption {
    pub uuid: Uuid,
    /// The gateway that reaches it (the one on its LAN).
    pub instance: String,
    /// The only address the gateway connects to for this device.
    pub ip: String,
    pub mac: Option<String>,
    /// SHA-256 of the certificate it presented on 16993 at adoption; `None`: it had no TLS port
    /// open, and is reached on 16992/16994 in the clear.
    pub tls_pin: Option<String>,
    /// 16992/16994 accepted connections at adoption.
    pub plain_ports: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub adopted_at: OffsetDateTime,
    pub adopted_by: String,
}

fn ports_text(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn ports_parse(text: &str) -> Vec<u16> {
    text.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

fn host_row(r: &dyn Cols) -> sqlx::Result<LanHost> {
    Ok(LanHost {
        instance: r.string(0)?,
        mac: r.string(1)?,
        ip: r.string(2)?,
        interface: r.string(3)?,
        amt: r.bool(4)?,
        amt_version: r.text(5)?,
        provisioning: r.text(6)?,
        amt_ports: ports_parse(&r.string(7)?),
        first_seen: r.time(8)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        last_seen: r.time(9)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
    })
}

fn adoption_row(r: &dyn Cols) -> sqlx::Result<LanAdoption> {
    Ok(LanAdoption {
        uuid: Uuid::parse_str(&r.string(0)?).unwrap_or_default(),
        instance: r.string(1)?,
        ip: r.string(2)?,
        mac: r.text(3)?,
        tls_pin: r.text(4)?,
        plain_ports: r.bool(5)?,
        adopted_at: r.time(6)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        adopted_by: r.string(7)?,
    })
}

impl Store {
    /// Records what one scan found, in one transaction: a host seen before keeps its first
    /// sighting and takes the rest from this scan.
    pub async fn save_lan_hosts(&self, hosts: &[LanHost]) -> Result<(), StoreError> {
        let stmts: Vec<Stmt> = hosts
            .iter()
            .map(|host| {
                Stmt::new(
                    "INSERT INTO lan_hosts (instance, mac, ip, interface, amt, amt_version, provisioning, amt_ports,
                         first_seen, last_seen)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (instance, mac) DO UPDATE SET ip = $3, interface = $4, amt = $5, amt_version = $6,
                         provisioning = $7, amt_ports = $8, last_seen = $10",
                )
                .str(&host.instance)
                .str(&host.mac)
                .str(&host.ip)
                .str(&host.interface)
                .bool(host.amt)
                .text(host.amt_version.clone())
                .text(host.provisioning.clone())
                .text(ports_text(&host.amt_ports))
                .time(host.first_seen)
                .time(host.last_seen)
            })
            .collect();
        self.execute_all(&stmts).await
    }

    /// The hosts found on the LAN of `instance` (every gateway's with `None`), by address.
    pub async fn lan_hosts(&self, instance: Option<&str>) -> Result<Vec<LanHost>, StoreError> {
        let stmt = match instance {
            Some(instance) => Stmt::new(
                "SELECT instance, mac, ip, interface, amt, amt_version, provisioning, amt_ports, first_seen, last_seen
                 FROM lan_hosts WHERE instance = $1 ORDER BY instance, ip, mac LIMIT $2",
            )
            .str(instance),
            None => Stmt::new(
                "SELECT instance, mac, ip, interface, amt, amt_version, provisioning, amt_ports, first_seen, last_seen
                 FROM lan_hosts ORDER BY instance, ip, mac LIMIT $1",
            ),
        }
        .int(i64::from(MAX_LAN_ROWS));
        self.fetch_all(stmt, host_row).await
    }

    /// The host last seen at `ip` on the LAN of `instance`.
    pub async fn lan_host_by_ip(&self, instance: &str, ip: &str) -> Result<Option<LanHost>, StoreError> {
        let stmt = Stmt::new(
            "SELECT instance, mac, ip, interface, amt, amt_version, provisioning, amt_ports, first_seen, last_seen
             FROM lan_hosts WHERE instance = $1 AND ip = $2 ORDER BY last_seen DESC LIMIT 1",
        )
        .str(instance)
        .str(ip);
        self.fetch_optional(stmt, host_row).await
    }

    /// Adopts a LAN PC; false when its UUID is adopted already, or its address is taken on that
    /// gateway's LAN.
    pub async fn adopt_lan_device(&self, adoption: &LanAdoption) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO lan_devices (uuid, instance, ip, mac, tls_pin, plain_ports, adopted_at, adopted_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT DO NOTHING",
        )
        .text(adoption.uuid.to_string())
        .str(&adoption.instance)
        .str(&adoption.ip)
        .text(adoption.mac.clone())
        .text(adoption.tls_pin.clone())
        .bool(adoption.plain_ports)
        .time(adoption.adopted_at)
        .str(&adoption.adopted_by);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The adopted device with this UUID.
    pub async fn lan_device(&self, uuid: Uuid) -> Result<Option<LanAdoption>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, instance, ip, mac, tls_pin, plain_ports, adopted_at, adopted_by
             FROM lan_devices WHERE uuid = $1",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, adoption_row).await
    }

    /// The devices adopted on the LAN of `instance` (every gateway's with `None`), by UUID,
    /// those after `after` first.
    pub async fn lan_devices(
        &self,
        instance: Option<&str>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<LanAdoption>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, instance, ip, mac, tls_pin, plain_ports, adopted_at, adopted_by FROM lan_devices
             WHERE ($1 IS NULL OR instance = $1) AND ($2 IS NULL OR uuid > $2) ORDER BY uuid LIMIT $3",
        )
        .text(instance.map(str::to_owned))
        .text(after.map(|u| u.to_string()))
        .int(i64::from(limit.clamp(1, MAX_LAN_ROWS)));
        self.fetch_all(stmt, adoption_row).await
    }

    /// Forgets an adopted device; whether it was adopted.
    pub async fn forget_lan_device(&self, uuid: Uuid) -> Result<bool, StoreError> {
        let stmt = Stmt::new("DELETE FROM lan_devices WHERE uuid = $1").text(uuid.to_string());
        Ok(self.execute(stmt).await? > 0)
    }
}

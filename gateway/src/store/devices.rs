//! Devices in the store: registration and own passwords, the credential each UUID is pinned to,
//! the life-cycle record (hello, connected, ports, keepalive, disconnect, and which gateway holds
//! the tunnel), UUID conflict reports; and the MPS accounts devices log in with.
//!
//! The record writes are [`Stmt`] builders, so that the journal can batch them in one
//! transaction. A gateway only ever ends its own tunnels' records: a disconnect names the
//! instance that writes it, and changes nothing once another gateway holds the device.

use std::net::SocketAddr;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// What the store knows of one device. Password hashes are never part of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRecord {
    pub uuid: Uuid,
    /// Added by an operator (`tether device add`), rather than first seen on the wire.
    pub registered: bool,
    pub has_password: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_seen: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_hello: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_keepalive: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
    pub remote_addr: Option<String>,
    pub ports: Vec<u16>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_disconnect: Option<OffsetDateTime>,
    pub last_disconnect_reason: Option<String>,
    /// Replacements flagged as two machines sharing the UUID, by gateways before device identity
    /// was enforced; such claims are now refused and counted in `conflict_count`.
    pub duplicate_count: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_duplicate_at: Option<OffsetDateTime>,
    pub duplicate_note: Option<String>,
    /// The credential the UUID is bound to (`account:USER` or `device`), under the `pinned` policy.
    pub pinned_credential: Option<String>,
    /// Claims for this UUID refused because its tunnel was live and answering.
    pub conflict_count: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_conflict_at: Option<OffsetDateTime>,
    pub conflict_note: Option<String>,
    /// The gateway instance that holds (or last held) the device's tunnel.
    pub instance: Option<String>,
}

/// What admission needs to know of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    /// Added by an operator.
    pub registered: bool,
    /// Its own MPS password, if the operator set one.
    pub password_hash: Option<String>,
    /// The credential it is pinned to (`account:USER` or `device`).
    pub pinned: Option<String>,
}

/// Largest page of devices one query returns.
pub const MAX_PAGE: u32 = 1000;

/// One page of the device list, in UUID order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePage {
    /// Devices after this UUID.
    pub after: Option<Uuid>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: u32,
}

impl Default for DevicePage {
    fn default() -> Self {
        Self { after: None, limit: MAX_PAGE }
    }
}

fn ports_text(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

macro_rules! device_select {
    ($tail:literal) => {
        concat!(
            "SELECT uuid, registered, password_hash IS NOT NULL, first_seen, last_hello, last_keepalive, \
             connected_since, remote_addr, ports, last_disconnect, last_disconnect_reason, duplicate_count, \
             last_duplicate_at, duplicate_note, pinned_credential, conflict_count, last_conflict_at, conflict_note, \
             instance_id FROM devices ",
            $tail
        )
    };
}

fn device_row(r: &dyn Cols) -> sqlx::Result<DeviceRecord> {
    Ok(DeviceRecord {
        uuid: Uuid::parse_str(&r.string(0)?).unwrap_or_default(),
        registered: r.bool(1)?,
        has_password: r.bool(2)?,
        first_seen: r.time(3)?,
        last_hello: r.time(4)?,
        last_keepalive: r.time(5)?,
        connected_since: r.time(6)?,
        remote_addr: r.text(7)?,
        ports: r.string(8)?.split(',').filter_map(|p| p.parse().ok()).collect(),
        last_disconnect: r.time(9)?,
        last_disconnect_reason: r.text(10)?,
        duplicate_count: r.count(11)?,
        last_duplicate_at: r.time(12)?,
        duplicate_note: r.text(13)?,
        pinned_credential: r.text(14)?,
        conflict_count: r.count(15)?,
        last_conflict_at: r.time(16)?,
        conflict_note: r.text(17)?,
        instance: r.text(18)?,
    })
}

fn add_device(uuid: Uuid, password_hash: Option<&str>) -> Stmt {
    Stmt::new(
        "INSERT INTO devices (uuid, registered, password_hash, pinned_credential)
             VALUES ($1, $2, $3, CASE WHEN $3 IS NULL THEN NULL ELSE 'device' END)
         ON CONFLICT (uuid) DO UPDATE SET registered = excluded.registered, password_hash = excluded.password_hash,
             pinned_credential = CASE WHEN excluded.password_hash IS NULL THEN devices.pinned_credential
                                      ELSE 'device' END",
    )
    .text(uuid.to_string())
    .bool(true)
    .text(password_hash.map(str::to_string))
}

// The device-record writes, batched by the journal. `instance` is the gateway that writes.

pub(crate) fn hello(uuid: Uuid, at: OffsetDateTime, remote: SocketAddr) -> Stmt {
    Stmt::new(
        "INSERT INTO devices (uuid, first_seen, last_hello, remote_addr) VALUES ($1, $2, $2, $3)
         ON CONFLICT (uuid) DO UPDATE SET first_seen = COALESCE(devices.first_seen, excluded.first_seen),
             last_hello = excluded.last_hello, remote_addr = excluded.remote_addr",
    )
    .text(uuid.to_string())
    .time(at)
    .text(remote.to_string())
}

pub(crate) fn connected(uuid: Uuid, at: OffsetDateTime, remote: SocketAddr, instance: &str) -> Stmt {
    Stmt::new(
        "INSERT INTO devices (uuid, first_seen, connected_since, remote_addr, instance_id) VALUES ($1, $2, $2, $3, $4)
         ON CONFLICT (uuid) DO UPDATE SET first_seen = COALESCE(devices.first_seen, excluded.first_seen),
             connected_since = excluded.connected_since, remote_addr = excluded.remote_addr, ports = '',
             instance_id = excluded.instance_id",
    )
    .text(uuid.to_string())
    .time(at)
    .text(remote.to_string())
    .str(instance)
}

pub(crate) fn ports(uuid: Uuid, ports: &[u16], instance: &str) -> Stmt {
    Stmt::new("UPDATE devices SET ports = $2 WHERE uuid = $1 AND instance_id = $3")
        .text(uuid.to_string())
        .text(ports_text(ports))
        .str(instance)
}

pub(crate) fn keepalive(uuid: Uuid, at: OffsetDateTime) -> Stmt {
    Stmt::new("UPDATE devices SET last_keepalive = $2 WHERE uuid = $1").text(uuid.to_string()).time(at)
}

pub(crate) fn disconnected(uuid: Uuid, at: OffsetDateTime, reason: &str, instance: &str) -> Stmt {
    Stmt::new(
        "UPDATE devices SET connected_since = NULL, last_disconnect = $2, last_disconnect_reason = $3
         WHERE uuid = $1 AND instance_id = $4 AND connected_since IS NOT NULL",
    )
    .text(uuid.to_string())
    .time(at)
    .str(reason)
    .str(instance)
}

/// A claim for a live device's UUID was refused: `live` holds the tunnel, `claimant` asked.
pub(crate) fn conflict(uuid: Uuid, at: OffsetDateTime, live: &str, claimant: SocketAddr) -> Stmt {
    let note = format!(
        "a connection from {claimant} claimed this UUID while the device was connected and answering from {live}; \
         it was refused (an impostor, or a second machine with the same UUID)"
    );
    Stmt::new(
        "INSERT INTO devices (uuid, conflict_count, last_conflict_at, conflict_note) VALUES ($1, 1, $2, $3)
         ON CONFLICT (uuid) DO UPDATE SET conflict_count = devices.conflict_count + 1,
             last_conflict_at = excluded.last_conflict_at, conflict_note = excluded.conflict_note",
    )
    .text(uuid.to_string())
    .time(at)
    .text(note)
}

impl Store {
    /// Adds the MPS account `username`, or gives it a new password hash.
    pub async fn set_mps_account(&self, username: &str, password_hash: &str) -> Result<(), StoreError> {
        self.execute(
            Stmt::new(
                "INSERT INTO mps_accounts (username, password_hash, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash",
            )
            .str(username)
            .str(password_hash)
            .time(OffsetDateTime::now_utc()),
        )
        .await
        .map(drop)
    }

    /// Adds the MPS account `username` unless it exists; false if it did.
    pub async fn add_mps_account_if_absent(&self, username: &str, password_hash: &str) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO mps_accounts (username, password_hash, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (username) DO NOTHING",
        )
        .str(username)
        .str(password_hash)
        .time(OffsetDateTime::now_utc());
        Ok(self.execute(stmt).await? > 0)
    }

    /// Removes an MPS account; false if there was none by that name.
    pub async fn remove_mps_account(&self, username: &str) -> Result<bool, StoreError> {
        let n = self.execute(Stmt::new("DELETE FROM mps_accounts WHERE username = $1").str(username)).await?;
        Ok(n > 0)
    }

    /// The MPS account names, sorted.
    pub async fn mps_accounts(&self) -> Result<Vec<String>, StoreError> {
        self.fetch_all(Stmt::new("SELECT username FROM mps_accounts ORDER BY username"), |r| r.string(0)).await
    }

    /// The password hash of one MPS account.
    pub async fn mps_account_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        Ok(self.mps_account(username).await?.map(|(hash, _)| hash))
    }

    /// One MPS account: its password hash and the subscriber it was issued for (`None`: the
    /// gateway-wide account).
    pub async fn mps_account(&self, username: &str) -> Result<Option<(String, Option<i64>)>, StoreError> {
        let stmt = Stmt::new("SELECT password_hash, subscriber_id FROM mps_accounts WHERE username = $1").str(username);
        self.fetch_optional(stmt, |r| Ok((r.string(0)?, r.int(1)?))).await
    }

    /// Issues (or re-issues, with a new password) the MPS account `username` for a subscriber.
    /// Refused if that name is the gateway-wide account or another subscriber's.
    pub async fn set_subscriber_mps_account(
        &self,
        username: &str,
        password_hash: &str,
        subscriber_id: i64,
    ) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO mps_accounts (username, password_hash, created_at, subscriber_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash
             WHERE mps_accounts.subscriber_id = excluded.subscriber_id",
        )
        .str(username)
        .str(password_hash)
        .time(OffsetDateTime::now_utc())
        .int(subscriber_id);
        Ok(self.execute(stmt).await? > 0)
    }

    /// Registers a device (or updates its password; `None` clears a device password). A device
    /// given its own password is pinned to it: the operator has said which credential it uses.
    pub async fn add_device(&self, uuid: Uuid, password_hash: Option<&str>) -> Result<(), StoreError> {
        self.execute(add_device(uuid, password_hash)).await.map(drop)
    }

    /// Registers many devices in one transaction per thousand (`tether device import`: all of
    /// them or, on an error, none of the failing thousand and none after it); `progress` is
    /// called after each thousand with the number written.
    pub async fn add_devices(
        &self,
        devices: &[(Uuid, Option<String>)],
        mut progress: impl FnMut(usize),
    ) -> Result<(), StoreError> {
        let mut done = 0;
        for chunk in devices.chunks(1000) {
            let stmts: Vec<Stmt> = chunk.iter().map(|(uuid, hash)| add_device(*uuid, hash.as_deref())).collect();
            self.execute_all(&stmts).await?;
            done += chunk.len();
            progress(done);
        }
        Ok(())
    }

    /// Forgets a device entirely (registration, password, pin, history); false if unknown.
    pub async fn remove_device(&self, uuid: Uuid) -> Result<bool, StoreError> {
        let n = self.execute(Stmt::new("DELETE FROM devices WHERE uuid = $1").text(uuid.to_string())).await?;
        Ok(n > 0)
    }

    /// What admission needs to know of a UUID (`None`: never seen nor registered).
    pub async fn device_auth(&self, uuid: Uuid) -> Result<Option<DeviceAuth>, StoreError> {
        let stmt = Stmt::new("SELECT registered, password_hash, pinned_credential FROM devices WHERE uuid = $1")
            .text(uuid.to_string());
        self.fetch_optional(stmt, |r| {
            Ok(DeviceAuth { registered: r.bool(0)?, password_hash: r.text(1)?, pinned: r.text(2)? })
        })
        .await
    }

    /// Pins `uuid` to `credential` unless it is pinned already; returns the pin in force.
    pub async fn pin_device(&self, uuid: Uuid, credential: &str) -> Result<String, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO devices (uuid, pinned_credential) VALUES ($1, $2)
             ON CONFLICT (uuid) DO UPDATE SET
                 pinned_credential = COALESCE(devices.pinned_credential, excluded.pinned_credential)
             RETURNING pinned_credential",
        )
        .text(uuid.to_string())
        .str(credential);
        Ok(self.fetch_optional(stmt, |r| r.string(0)).await?.unwrap_or_default())
    }

    /// Writes device-record statements (from the builders above) in one transaction.
    pub(crate) async fn record(&self, stmts: &[Stmt]) -> Result<(), StoreError> {
        self.execute_all(stmts).await
    }

    /// Marks the devices whose tunnels `instance` held as disconnected (the gateway restarted);
    /// with `legacy`, also connected records that name no instance (written before fleets).
    pub async fn mark_instance_disconnected(
        &self,
        instance: &str,
        at: OffsetDateTime,
        reason: &str,
        legacy: bool,
    ) -> Result<u64, StoreError> {
        self.execute(
            Stmt::new(
                "UPDATE devices SET connected_since = NULL, last_disconnect = $1, last_disconnect_reason = $2
                 WHERE connected_since IS NOT NULL AND (instance_id = $3 OR ($4 AND instance_id IS NULL))",
            )
            .time(at)
            .str(reason)
            .str(instance)
            .bool(legacy),
        )
        .await
    }

    /// One page of device records, in UUID order.
    pub async fn list_devices(&self, page: DevicePage) -> Result<Vec<DeviceRecord>, StoreError> {
        let after = page.after.map(|u| u.to_string()).unwrap_or_default();
        let stmt = Stmt::new(device_select!("WHERE uuid > $1 ORDER BY uuid LIMIT $2"))
            .text(after)
            .int(i64::from(page.limit.clamp(1, MAX_PAGE)));
        self.fetch_all(stmt, device_row).await
    }

    pub async fn device(&self, uuid: Uuid) -> Result<Option<DeviceRecord>, StoreError> {
        self.fetch_optional(Stmt::new(device_select!("WHERE uuid = $1")).text(uuid.to_string()), device_row).await
    }

    /// Records `instance` as holding `uuid`'s tunnel, unless another gateway claimed it since
    /// `expected` (the holder this gateway checked: none, or one found dead or free) was read:
    /// the check and the write are one statement, so two gateways admitting one UUID at the same
    /// moment cannot both win. False if another gateway holds it now.
    pub async fn claim_device(
        &self,
        uuid: Uuid,
        at: OffsetDateTime,
        remote: SocketAddr,
        instance: &str,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO devices (uuid, first_seen, connected_since, remote_addr, instance_id) VALUES ($1, $2, $2, $3, $4)
             ON CONFLICT (uuid) DO UPDATE SET first_seen = COALESCE(devices.first_seen, excluded.first_seen),
                 connected_since = excluded.connected_since, remote_addr = excluded.remote_addr, ports = '',
                 instance_id = excluded.instance_id
             WHERE devices.connected_since IS NULL OR devices.instance_id IS NULL
                OR devices.instance_id = excluded.instance_id OR devices.instance_id = $5
             RETURNING instance_id",
        )
        .text(uuid.to_string())
        .time(at)
        .text(remote.to_string())
        .str(instance)
        .text(expected.map(str::to_string));
        Ok(self.fetch_optional(stmt, |r| r.text(0)).await?.is_some())
    }

    /// The instance recorded as holding `uuid`'s live tunnel, if it is connected; else the one
    /// on whose LAN it was adopted.
    pub async fn holder(&self, uuid: Uuid) -> Result<Option<String>, StoreError> {
        let stmt = Stmt::new(
            "SELECT instance_id FROM devices WHERE uuid = $1 AND connected_since IS NOT NULL
             UNION ALL SELECT instance FROM lan_devices WHERE uuid = $1 LIMIT 1",
        )
        .text(uuid.to_string());
        Ok(self.fetch_optional(stmt, |r| r.text(0)).await?.flatten())
    }
}

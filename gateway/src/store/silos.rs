//! The silos' tables (`docs/silos.md`).
//!
//! On a **root**: the registry of maintenance silos (`silos`), the silo each machine was given to
//! (`silo_assignments`), and each subscriber's entitlement (`entitlements`: service, tier, until
//! when, the region and OEM its machines should go to) under a random opaque id, the only name of
//! the subscriber that leaves the root.
//!
//! On a **maintenance** silo: the clients its certificates admitted (`silo_clients`), keyed by
//! machine UUID, with the subscriber's opaque id and the entitlement the certificate carried. No
//! name, email or phone number is ever written here.
//!
//! What it does not do: decide which certificate admits a client (`silo`), or issue one
//! (`agents::keys`).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{is_unique_violation, Cols, Stmt, Store, StoreError};

/// The service every entitlement names today.
pub const SERVICE_SUPPORT: &str = "support";
/// The tier a subscriber has until an operator says otherwise.
pub const DEFAULT_TIER: &str = "standard";

/// A maintenance silo to register at the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSilo {
    pub name: String,
    /// Where its agents connect: HOST:PORT of its agent listener.
    pub location: String,
    /// Machines it may be given at most.
    pub capacity: i64,
    pub region: Option<String>,
    pub oem: Option<String>,
    /// Its signing key (hex of the Ed25519 public key): what it reports to the root is signed with it.
    pub signing_key: Option<String>,
    /// Its portal (https://HOST:PORT): the root's portal sends people there, signed in.
    pub portal_url: Option<String>,
    pub now: OffsetDateTime,
}

/// A registered maintenance silo, with how many machines it has been given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiloRecord {
    pub name: String,
    pub location: String,
    pub capacity: i64,
    pub region: Option<String>,
    pub oem: Option<String>,
    pub assigned: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Its portal, where the root's portal sends people signed in (`None`: not given).
    pub portal_url: Option<String>,
}

/// A subscriber's entitlement, as the root keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntitlementRecord {
    pub subscriber_id: i64,
    /// Random, made once: what certificates and maintenance silos know the subscriber by.
    pub opaque_id: String,
    pub service: String,
    pub tier: String,
    /// The entitlement ends then (certificates never outlive it); `None`: while the subscription lasts.
    #[serde(with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    /// The region and OEM whose silos its machines should go to, when there is room.
    pub region: Option<String>,
    pub oem: Option<String>,
}

/// What an operator changes of an entitlement (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntitlementChange {
    pub tier: Option<String>,
    /// `Some(None)` clears the end.
    pub valid_until: Option<Option<OffsetDateTime>>,
    pub region: Option<Option<String>>,
    pub oem: Option<Option<String>>,
}

/// A client a maintenance silo admitted, as its certificate describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiloClient {
    pub uuid: Uuid,
    /// The subscriber's opaque id.
    pub subscriber: String,
    pub service: String,
    pub tier: String,
    /// The certificate's serial (hex).
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub entitled_until: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// The silo it moved here from, if it did (its history came along).
    pub moved_from: Option<String>,
}

/// Why a silo could not be registered or chosen.
#[derive(Debug, thiserror::Error)]
pub enum SiloError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a silo named {0} is registered already")]
    Exists(String),
    #[error("no maintenance silo has room for another machine: register one (`tether silo add`) or raise a capacity")]
    NoRoom,
    #[error("no subscriber {0}")]
    NoSubscriber(i64),
}

impl SiloError {
    pub fn code(&self) -> &'static str {
        match self {
            SiloError::Store(_) => "store",
            SiloError::Exists(_) => "silo_exists",
            SiloError::NoRoom => "no_silo_room",
            SiloError::NoSubscriber(_) => "unknown_subscriber",
        }
    }
}

fn silo_row(r: &dyn Cols) -> sqlx::Result<SiloRecord> {
    Ok(SiloRecord {
        name: r.string(0)?,
        location: r.string(1)?,
        capacity: r.int(2)?.unwrap_or(0),
        region: r.text(3)?,
        oem: r.text(4)?,
        created_at: r.time(5)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        assigned: r.int(6)?.unwrap_or(0),
        portal_url: r.text(7)?,
    })
}

fn entitlement_row(r: &dyn Cols) -> sqlx::Result<EntitlementRecord> {
    Ok(EntitlementRecord {
        subscriber_id: r.int(0)?.unwrap_or(0),
        opaque_id: r.string(1)?,
        service: r.string(2)?,
        tier: r.string(3)?,
        valid_until: r.time(4)?,
        region: r.text(5)?,
        oem: r.text(6)?,
    })
}

/// The silos, each with how many machines it was given; `silos!(" WHERE …")` adds to it.
macro_rules! silos {
    ($rest:literal) => {
        concat!(
            "SELECT s.name, s.location, s.capacity, s.region, s.oem, s.created_at,
                (SELECT COUNT(*) FROM silo_assignments a WHERE a.silo = s.name), s.portal_url
             FROM silos s",
            $rest
        )
    };
}

/// The silo a new machine of this entitlement goes to: one with room, the subscriber's OEM
/// first, then its region, then the emptiest (by share of capacity), then by name.
pub fn choose(silos: &[SiloRecord], entitlement: &EntitlementRecord) -> Option<SiloRecord> {
    let matches = |want: &Option<String>, have: &Option<String>| want.is_some() && want == have;
    silos.iter().filter(|s| s.assigned < s.capacity).cloned().min_by(|a, b| {
        let key = |s: &SiloRecord| (!matches(&entitlement.oem, &s.oem), !matches(&entitlement.region, &s.region));
        // a.assigned / a.capacity < b.assigned / b.capacity, without division.
        let fill =
            (i128::from(a.assigned) * i128::from(b.capacity)).cmp(&(i128::from(b.assigned) * i128::from(a.capacity)));
        key(a).cmp(&key(b)).then(fill).then_with(|| a.name.cmp(&b.name))
    })
}

impl Store {
    /// Registers a maintenance silo (root).
    pub async fn add_silo(&self, silo: &NewSilo) -> Result<(), SiloError> {
        let stmt = Stmt::new(
            "INSERT INTO silos (name, location, capacity, region, oem, created_at, signing_key, portal_url)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .str(&silo.name)
        .str(&silo.location)
        .int(silo.capacity)
        .text(silo.region.clone())
        .text(silo.oem.clone())
        .time(silo.now)
        .text(silo.signing_key.clone())
        .text(silo.portal_url.clone());
        match self.execute(stmt).await {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => Err(SiloError::Exists(silo.name.clone())),
            Err(err) => Err(err.into()),
        }
    }

    /// The registered silos, by name (root).
    pub async fn silos(&self) -> Result<Vec<SiloRecord>, StoreError> {
        self.fetch_all(Stmt::new(silos!(" ORDER BY s.name")), silo_row).await
    }

    /// One silo by name (root).
    pub async fn silo(&self, name: &str) -> Result<Option<SiloRecord>, StoreError> {
        self.fetch_optional(Stmt::new(silos!(" WHERE s.name = $1")).str(name), silo_row).await
    }

    /// The silo machine `uuid` was given to, if any (root).
    pub async fn assigned_silo(&self, uuid: Uuid) -> Result<Option<SiloRecord>, StoreError> {
        let sql = silos!(" WHERE s.name = (SELECT silo FROM silo_assignments WHERE uuid = $1)");
        self.fetch_optional(Stmt::new(sql).text(uuid.to_string()), silo_row).await
    }

    /// Records that machine `uuid` is served by silo `silo` (root): after its enrollment
    /// succeeded, so that refused enrollments take no room.
    pub async fn assign_silo(&self, uuid: Uuid, silo: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let sql = "INSERT INTO silo_assignments (uuid, silo, assigned_at) VALUES ($1, $2, $3)
             ON CONFLICT (uuid) DO UPDATE SET silo = $2, assigned_at = $3";
        self.execute(Stmt::new(sql).text(uuid.to_string()).str(silo).time(now)).await.map(drop)
    }

    /// Subscriber `subscriber_id`'s entitlement, made with the defaults (and a new opaque id) the
    /// first time it is asked for (root).
    pub async fn entitlement(&self, subscriber_id: i64) -> Result<EntitlementRecord, SiloError> {
        let exists = Stmt::new("SELECT id FROM subscribers WHERE id = $1").int(subscriber_id);
        if self.fetch_optional(exists, |r| r.int(0)).await?.is_none() {
            return Err(SiloError::NoSubscriber(subscriber_id));
        }
        let insert = Stmt::new(
            "INSERT INTO entitlements (subscriber_id, opaque_id, service, tier) VALUES ($1, $2, $3, $4)
             ON CONFLICT (subscriber_id) DO NOTHING",
        )
        .int(subscriber_id)
        .text(Uuid::new_v4().to_string())
        .str(SERVICE_SUPPORT)
        .str(DEFAULT_TIER);
        self.execute(insert).await?;
        let select = Stmt::new(
            "SELECT subscriber_id, opaque_id, service, tier, valid_until, region, oem FROM entitlements
             WHERE subscriber_id = $1",
        )
        .int(subscriber_id);
        self.fetch_optional(select, entitlement_row).await?.ok_or(SiloError::NoSubscriber(subscriber_id))
    }

    /// Changes subscriber `subscriber_id`'s entitlement (root); the entitlement after.
    pub async fn change_entitlement(
        &self,
        subscriber_id: i64,
        change: &EntitlementChange,
    ) -> Result<EntitlementRecord, SiloError> {
        let current = self.entitlement(subscriber_id).await?;
        let tier = change.tier.clone().unwrap_or(current.tier);
        let valid_until = change.valid_until.unwrap_or(current.valid_until);
        let region = change.region.clone().unwrap_or(current.region);
        let oem = change.oem.clone().unwrap_or(current.oem);
        let stmt = Stmt::new(
            "UPDATE entitlements SET tier = $2, valid_until = $3, region = $4, oem = $5 WHERE subscriber_id = $1",
        )
        .int(subscriber_id)
        .text(tier)
        .int(valid_until.map(super::millis))
        .text(region)
        .text(oem);
        self.execute(stmt).await?;
        self.entitlement(subscriber_id).await
    }

    /// Sets where silo `name`'s portal is (root); whether the silo is registered.
    pub async fn set_silo_portal(&self, name: &str, portal_url: Option<String>) -> Result<bool, StoreError> {
        let stmt = Stmt::new("UPDATE silos SET portal_url = $2 WHERE name = $1").str(name).text(portal_url);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The silos with a portal that hold machines of these subscribers (`None`: every silo with
    /// a portal), by name (root).
    pub async fn silo_portals(&self, subscribers: Option<&[i64]>) -> Result<Vec<SiloRecord>, StoreError> {
        let Some(subscribers) = subscribers else {
            return self
                .fetch_all(Stmt::new(silos!(" WHERE s.portal_url IS NOT NULL ORDER BY s.name")), silo_row)
                .await;
        };
        let mut found: Vec<SiloRecord> = Vec::new();
        for &subscriber in subscribers {
            let stmt = Stmt::new(silos!(
                " WHERE s.portal_url IS NOT NULL AND s.name IN (SELECT a.silo FROM silo_assignments a
                     JOIN machines m ON m.uuid = a.uuid WHERE m.subscriber_id = $1) ORDER BY s.name"
            ))
            .int(subscriber);
            for silo in self.fetch_all(stmt, silo_row).await? {
                if !found.iter().any(|f| f.name == silo.name) {
                    found.push(silo);
                }
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Records a client a maintenance silo admitted, or that it was seen again.
    pub async fn silo_client_seen(&self, client: &SiloClient) -> Result<(), StoreError> {
        // The subscriber gets its number here (what the portal's policy knows it by).
        let number = Stmt::new("INSERT INTO silo_subscribers (opaque) VALUES ($1) ON CONFLICT (opaque) DO NOTHING")
            .str(&client.subscriber);
        self.execute(number).await?;
        let sql =
            "INSERT INTO silo_clients (uuid, subscriber, service, tier, serial, entitled_until, first_seen, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (uuid) DO UPDATE SET subscriber = $2, service = $3, tier = $4, serial = $5,
                entitled_until = $6, last_seen = $7";
        let stmt = Stmt::new(sql)
            .text(client.uuid.to_string())
            .str(&client.subscriber)
            .str(&client.service)
            .str(&client.tier)
            .str(&client.serial)
            .time(client.entitled_until)
            .time(client.last_seen);
        self.execute(stmt).await.map(drop)
    }

    /// The clients a maintenance silo admitted, by UUID.
    pub async fn silo_clients(&self) -> Result<Vec<SiloClient>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, subscriber, service, tier, serial, entitled_until, first_seen, last_seen, moved_from
             FROM silo_clients ORDER BY uuid LIMIT 10000",
        );
        self.fetch_all(stmt, |r| {
            Ok(SiloClient {
                uuid: r.string(0)?.parse().unwrap_or_default(),
                subscriber: r.string(1)?,
                service: r.string(2)?,
                tier: r.string(3)?,
                serial: r.string(4)?,
                entitled_until: r.time(5)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                first_seen: r.time(6)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                last_seen: r.time(7)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                moved_from: r.text(8)?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silo(name: &str, capacity: i64, assigned: i64, region: Option<&str>, oem: Option<&str>) -> SiloRecord {
        SiloRecord {
            name: name.into(),
            location: format!("{name}:4433"),
            capacity,
            region: region.map(Into::into),
            oem: oem.map(Into::into),
            assigned,
            created_at: OffsetDateTime::UNIX_EPOCH,
            portal_url: None,
        }
    }

    fn wanting(region: Option<&str>, oem: Option<&str>) -> EntitlementRecord {
        EntitlementRecord {
            subscriber_id: 1,
            opaque_id: "x".into(),
            service: SERVICE_SUPPORT.into(),
            tier: DEFAULT_TIER.into(),
            valid_until: None,
            region: region.map(Into::into),
            oem: oem.map(Into::into),
        }
    }

    #[test]
    fn a_machine_goes_to_its_oem_then_its_region_then_the_emptiest_silo_with_room() {
        let silos = [
            silo("a", 10, 9, Some("eu"), None),
            silo("b", 10, 1, Some("us"), None),
            silo("c", 100, 20, Some("us"), Some("acme")),
            silo("d", 5, 5, Some("eu"), Some("acme")),
        ];
        let name = |w| choose(&silos, &w).map(|s| s.name);
        assert_eq!(name(wanting(None, None)).as_deref(), Some("b"), "emptiest by share");
        assert_eq!(name(wanting(Some("eu"), None)).as_deref(), Some("a"), "its region, d being full");
        assert_eq!(name(wanting(Some("eu"), Some("acme"))).as_deref(), Some("c"), "its OEM before its region");
        let full = [silo("a", 1, 1, None, None)];
        assert_eq!(choose(&full, &wanting(None, None)), None);
    }
}

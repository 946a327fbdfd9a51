//! `tether silo …`: the operator's side of silos (`docs/silos.md`), on the store of the gateway
//! whose data dir it is given. On a root: register maintenance silos and write the bundle each
//! joins with, list them, change a subscriber's entitlement. On a maintenance silo: join a root,
//! list the clients admitted.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use time::OffsetDateTime;

use crate::exit;
use crate::operator::{open_store, rfc3339, StoreArgs};
use crate::silo;
use crate::store::{EntitlementChange, NewSilo, SiloError};

#[derive(Subcommand, Debug)]
pub enum SiloAction {
    /// (root) Register a maintenance silo and write the bundle it joins with.
    Add {
        /// Its name (a-z, 0-9, '-', '_', '.'), as certificates will name it.
        name: String,
        /// Where its agents connect: HOST:PORT of its agent listener.
        #[arg(long)]
        location: String,
        /// Machines it may be given at most.
        #[arg(long, default_value_t = 10_000)]
        capacity: u32,
        /// Its region (machines of subscribers preferring it go there first).
        #[arg(long)]
        region: Option<String>,
        /// The OEM it serves (preferred over the region).
        #[arg(long)]
        oem: Option<String>,
        /// This root's API as the silo reaches it (https://HOST:PORT): revocations are pulled there.
        #[arg(long)]
        root_api: String,
        /// The silo's signing key (public half, hex), as `tether silo key` prints it there: the
        /// bundle carries the root's certification of it, so that agents accept what it signs.
        #[arg(long)]
        signing_key: String,
        /// How long that certification holds.
        #[arg(long, default_value_t = 365)]
        key_valid_days: u32,
        /// Where to write the bundle (public certificates and keys only).
        #[arg(long)]
        bundle: PathBuf,
        /// Its portal (https://HOST:PORT, as browsers reach it): the root's portal sends people
        /// there, signed in (`tether silo portal` changes it later).
        #[arg(long)]
        portal_url: Option<String>,
    },
    /// (root) Set or clear where a silo's portal is: the root's portal sends people there, signed in.
    Portal {
        name: String,
        /// https://HOST:PORT as browsers reach it.
        #[arg(required_unless_present = "clear")]
        url: Option<String>,
        /// No portal: the root's portal stops offering it.
        #[arg(long, conflicts_with = "url")]
        clear: bool,
    },
    /// (maintenance) Print this silo's signing key (public half, hex), for `tether silo add
    /// --signing-key` on the root.
    Key,
    /// (root) The registered silos, with the machines each was given.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// (root) Show or change a subscriber's entitlement (tier, end, preferred region and OEM).
    Entitle {
        subscriber_id: i64,
        #[arg(long)]
        tier: Option<String>,
        /// The entitlement ends then (RFC 3339); certificates issued after never outlive it.
        #[arg(long, conflicts_with = "no_end")]
        until: Option<String>,
        /// The entitlement lasts as long as the subscription.
        #[arg(long)]
        no_end: bool,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        oem: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// (root) Move machines to another maintenance silo: each gets a certificate naming it,
    /// delivered through the silo it leaves, with its history (`docs/silos.md`).
    Move {
        /// The machines to move (UUIDs).
        uuids: Vec<uuid::Uuid>,
        /// Also every machine of this subscriber (its id on the root).
        #[arg(long)]
        subscriber: Option<i64>,
        /// The silo they go to.
        #[arg(long)]
        to: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// (root) The aggregates each maintenance silo last sent (machines by meter, connected, alerts
    /// and actions of the last day), and their sum.
    Aggregates {
        /// Print JSON (with the counts per reason, tier and subscriber's opaque id).
        #[arg(long)]
        json: bool,
    },
    /// (maintenance) Join the root whose bundle this is (`tether silo add` wrote it there).
    Join { bundle: PathBuf },
    /// (maintenance) The clients this silo admitted.
    Clients {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(action: SiloAction, store_args: &StoreArgs, data_dir: &Path) -> Result<()> {
    match action {
        SiloAction::Add {
            name,
            location,
            capacity,
            region,
            oem,
            root_api,
            signing_key,
            key_valid_days,
            bundle,
            portal_url,
        } => {
            silo::check_name(&name).map_err(|e| exit::bad_input(e.to_string()))?;
            let portal_url = portal_url.as_deref().map(portal_origin).transpose()?;
            let silo_key: [u8; 32] = hex::decode(signing_key.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| exit::bad_input("--signing-key must be 64 hex digits, as `tether silo key` prints"))?;
            if !root_api.starts_with("https://") {
                return Err(exit::bad_input(format!("--root-api must be https://HOST:PORT, not {root_api:?}")));
            }
            let store = open_store(store_args, data_dir).await?;
            let new = NewSilo {
                name: name.clone(),
                location,
                capacity: capacity.into(),
                region,
                oem,
                signing_key: Some(hex::encode(silo_key)),
                portal_url,
                now: OffsetDateTime::now_utc(),
            };
            match store.add_silo(&new).await {
                Err(err @ SiloError::Exists(_)) => return Err(exit::refused(err.to_string())),
                other => other?,
            }
            let record = store.silo(&name).await?.context("the silo just added is not in the store")?;
            let keys = crate::agents::keys::AgentKeys::load_or_create(data_dir)
                .context("preparing the root's agent CA and signing key")?;
            let written = silo::write_bundle(&keys, data_dir, &record, &root_api, silo_key, key_valid_days);
            std::fs::write(&bundle, serde_json::to_string_pretty(&written)?)
                .with_context(|| format!("writing {}", bundle.display()))?;
            println!(
                "silo {name} registered (capacity {capacity}); on it: `tether silo join {}` then `tether gateway --role \
                 maintenance`",
                bundle.display()
            );
            Ok(())
        }
        SiloAction::Portal { name, url, clear } => {
            let url = if clear { None } else { url.as_deref().map(portal_origin).transpose()? };
            let store = open_store(store_args, data_dir).await?;
            if !store.set_silo_portal(&name, url.clone()).await? {
                return Err(exit::not_found(format!("no silo named {name} is registered (`tether silo list`)")));
            }
            match url {
                Some(url) => println!("silo {name}'s portal is {url}: the root's portal sends people there, signed in"),
                None => println!("silo {name} has no portal now"),
            }
            Ok(())
        }
        SiloAction::List { json } => {
            let silos = open_store(store_args, data_dir).await?.silos().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&silos)?);
            } else {
                println!(
                    "{:16}  {:28}  {:>9}  {:>8}  {:10}  OEM",
                    "NAME", "LOCATION", "MACHINES", "CAPACITY", "REGION"
                );
                for s in &silos {
                    println!(
                        "{:16}  {:28}  {:>9}  {:>8}  {:10}  {}",
                        s.name,
                        s.location,
                        s.assigned,
                        s.capacity,
                        s.region.as_deref().unwrap_or("-"),
                        s.oem.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        SiloAction::Entitle { subscriber_id, tier, until, no_end, region, oem, json } => {
            let valid_until = match (until, no_end) {
                (Some(text), _) => Some(Some(
                    OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| exit::bad_input(format!("--until {text:?} is not RFC 3339: {e}")))?,
                )),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let change = EntitlementChange {
                tier,
                valid_until,
                region: region.map(|r| Some(r).filter(|r| !r.is_empty())),
                oem: oem.map(|o| Some(o).filter(|o| !o.is_empty())),
            };
            let store = open_store(store_args, data_dir).await?;
            let entitlement = match store.change_entitlement(subscriber_id, &change).await {
                Err(err @ SiloError::NoSubscriber(_)) => return Err(exit::not_found(err.to_string())),
                other => other?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&entitlement)?);
            } else {
                println!(
                    "subscriber {} ({}): {} {}, until {}, region {}, OEM {}",
                    entitlement.subscriber_id,
                    entitlement.opaque_id,
                    entitlement.service,
                    entitlement.tier,
                    entitlement.valid_until.map(rfc3339).unwrap_or_else(|| "the subscription's end".into()),
                    entitlement.region.as_deref().unwrap_or("-"),
                    entitlement.oem.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        SiloAction::Move { mut uuids, subscriber, to, json } => {
            let store = open_store(store_args, data_dir).await?;
            if let Some(subscriber) = subscriber {
                let machines = store.machines_of(subscriber).await?;
                if machines.is_empty() {
                    return Err(exit::not_found(format!("subscriber {subscriber} has no machines")));
                }
                uuids.extend(machines.iter().map(|m| m.uuid));
            }
            uuids.sort();
            uuids.dedup();
            if uuids.is_empty() {
                return Err(exit::bad_input("name the machines to move (UUIDs, or --subscriber ID)"));
            }
            let config = crate::operator::load_config(store_args, data_dir)?;
            let lifetime = time::Duration::days(config.agents.cert_valid_days.into());
            let keys = crate::agents::keys::AgentKeys::load_or_create(data_dir)
                .context("loading the root's agent CA and signing key")?;
            let mut ordered = Vec::new();
            for uuid in uuids {
                let record = silo::moves::order(&store, &keys, uuid, &to, lifetime).await?;
                if !json {
                    println!(
                        "{uuid}: {} -> {} (certificate {}); it moves on its next contact with {}",
                        record.from_silo, record.to_silo, record.serial, record.from_silo
                    );
                }
                ordered.push(serde_json::json!({
                    "uuid": uuid,
                    "move_id": record.id,
                    "from": record.from_silo,
                    "to": record.to_silo,
                    "serial": record.serial,
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&ordered)?);
            }
            Ok(())
        }
        SiloAction::Aggregates { json } => {
            let store = open_store(store_args, data_dir).await?;
            let across = silo::aggregates::across(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&across)?);
                return Ok(());
            }
            println!(
                "{:16}  {:>8}  {:>6}  {:>6}  {:>6}  {:>7}  {:>9}  {:>10}  {:>11}  RECEIVED",
                "SILO", "MACHINES", "GREEN", "YELLOW", "RED", "UNRATED", "CONNECTED", "ALERTS 24H", "ACTIONS 24H"
            );
            let row = |name: &str, a: &silo::aggregates::Aggregates, received: String| {
                let m = &a.machines;
                println!(
                    "{:16}  {:>8}  {:>6}  {:>6}  {:>6}  {:>7}  {:>9}  {:>10}  {:>11}  {received}",
                    name, m.machines, m.green, m.yellow, m.red, m.unrated, a.connected, a.alerts_24h, a.actions_24h
                );
            };
            for one in &across.silos {
                let received = OffsetDateTime::from_unix_timestamp(one.received_at).map(rfc3339).unwrap_or_default();
                row(&one.aggregates.silo, &one.aggregates, received);
            }
            row("(all)", &across.total, String::new());
            Ok(())
        }
        SiloAction::Key => {
            crate::paths::ensure_data_dir(data_dir)?;
            let keys = crate::agents::keys::AgentKeys::load_or_create(data_dir)
                .context("preparing this gateway's signing key")?;
            println!("{}", hex::encode(keys.signing_public()));
            Ok(())
        }
        SiloAction::Join { bundle } => {
            crate::paths::ensure_data_dir(data_dir)?;
            let joined = silo::join(data_dir, &bundle).map_err(|e| exit::bad_input(format!("{e:#}")))?;
            println!(
                "joined the root at {} as silo {}: start it with `tether gateway --role maintenance` (agents will be \
                 sent to {})",
                joined.root_api, joined.silo, joined.location
            );
            Ok(())
        }
        SiloAction::Clients { json } => {
            let clients = open_store(store_args, data_dir).await?.silo_clients().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&clients)?);
            } else {
                println!(
                    "{:36}  {:36}  {:10}  {:20}  {:20}  MOVED FROM",
                    "UUID", "SUBSCRIBER", "TIER", "ENTITLED UNTIL", "LAST SEEN"
                );
                for c in &clients {
                    println!(
                        "{:36}  {:36}  {:10}  {:20}  {:20}  {}",
                        c.uuid,
                        c.subscriber,
                        c.tier,
                        rfc3339(c.entitled_until),
                        rfc3339(c.last_seen),
                        c.moved_from.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
    }
}

/// A silo's portal URL as given, checked (`https://HOST[:PORT]`).
fn portal_origin(url: &str) -> Result<String> {
    silo::signin::check_portal_url(url).map_err(|e| exit::bad_input(format!("--portal-url: {e}")))
}

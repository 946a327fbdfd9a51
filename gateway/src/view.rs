//! How devices look to callers, whoever asks (the API, or another gateway over the fleet link):
//! a device's record merged with its live state, and the status a refused channel open maps to.

use axum::http::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use std::collections::BTreeSet;

use crate::metrics::{ChannelRefusal, TunnelKind};
use crate::registry::OpenRefused;
use crate::state::Shared;
use crate::store::{DeviceRecord, LanAdoption};

/// A device as the API shows it: the stored record (a CIRA device's) and its adoption on the LAN,
/// with live state from this gateway's registry when it holds a tunnel, and from the record when
/// another gateway of the fleet does. `kinds` names how it is reached (`cira`, `lan`).
pub fn device_view(shared: &Shared, record: Option<DeviceRecord>, lan: Option<LanAdoption>, uuid: Uuid) -> Value {
    let live = shared.registry.any(uuid);
    let mut kinds: BTreeSet<&str> =
        TunnelKind::ALL.iter().filter(|kind| shared.registry.get(uuid, **kind).is_some()).map(|k| k.as_str()).collect();
    if record.is_some() {
        kinds.insert(TunnelKind::Cira.as_str());
    }
    if lan.is_some() {
        kinds.insert(TunnelKind::Lan.as_str());
    }
    // Connected through another gateway: the record says so, and names it; a LAN PC is reached
    // by the gateway on its LAN.
    let elsewhere = record
        .as_ref()
        .is_some_and(|r| r.connected_since.is_some() && r.instance.as_deref().is_some_and(|i| i != shared.instance))
        || lan.as_ref().is_some_and(|l| l.instance != shared.instance);
    let mut view = record.and_then(|r| serde_json::to_value(r).ok()).unwrap_or_else(|| json!({ "uuid": uuid }));
    if let Value::Object(map) = &mut view {
        map.insert("kinds".into(), json!(kinds));
        map.insert("connected".into(), Value::Bool(live.is_some() || elsewhere));
        if let Some(live) = live {
            map.insert("ports".into(), json!(live.ports()));
            map.insert("remote_addr".into(), json!(live.remote.to_string()));
            map.insert("instance".into(), json!(shared.instance));
        } else if !map.contains_key("ports") {
            map.insert("ports".into(), json!([]));
        }
        if let Some(lan) = lan {
            map.entry("instance").or_insert_with(|| json!(lan.instance));
            map.insert("lan".into(), json!(lan));
        }
        map.entry("remote_addr").or_insert(Value::Null);
        map.entry("last_hello").or_insert(Value::Null);
    }
    view
}

/// The status a refused channel open answers with (a timeout is also counted).
pub fn open_refused_status(shared: &Shared, refused: &OpenRefused) -> StatusCode {
    match refused {
        OpenRefused::NotConnected(_) | OpenRefused::TunnelGone => StatusCode::NOT_FOUND,
        OpenRefused::PortNotForwarded(_) => StatusCode::CONFLICT,
        OpenRefused::TooManyChannels => StatusCode::SERVICE_UNAVAILABLE,
        OpenRefused::DeviceRefused(_) => StatusCode::BAD_GATEWAY,
        OpenRefused::NotAllowed(_) => StatusCode::FORBIDDEN,
        OpenRefused::Timeout => {
            shared.metrics.channel_open_refused(ChannelRefusal::Timeout);
            StatusCode::GATEWAY_TIMEOUT
        }
    }
}

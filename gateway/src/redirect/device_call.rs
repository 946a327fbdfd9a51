//! What the technician's commands send the gateway's WS-MAN client: the device's AMT account, and
//! a call that may wait on the device (`tether rescue`, `power`, `boot`, the gateway's IDE-R).

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::client::{api_error, ApiClient};

/// How long a call that waits on the device may take (a WS-MAN session of several calls).
pub(crate) const DEVICE_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The device's AMT admin account, for the gateway's WS-MAN calls.
#[derive(Debug, Clone, clap::Args)]
pub struct AmtArgs {
    /// The AMT account on the device.
    #[arg(long, env = "AMT_USER", default_value = "admin")]
    pub user: String,
    /// The AMT account's password (as the PC user reads it out); may be left out once the gateway
    /// remembers it (--remember).
    #[arg(long, env = "AMT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Have the gateway keep the password for this device, sealed at rest.
    #[arg(long)]
    pub remember: bool,
}

impl AmtArgs {
    pub(crate) fn body(&self, mut extra: Value) -> Value {
        if let Value::Object(map) = &mut extra {
            map.insert("amt_user".into(), json!(self.user));
            if let Some(password) = &self.password {
                map.insert("amt_password".into(), json!(password));
            }
            map.insert("remember".into(), json!(self.remember));
        }
        extra
    }
}

/// POSTs to an endpoint that waits on a device; a refusal becomes an error with the API's message.
pub(crate) async fn post(client: &ApiClient, path: &str, body: &Value) -> Result<Value> {
    let (status, value) = client.post_with_timeout(path, body, DEVICE_CALL_TIMEOUT).await?;
    if !status.is_success() {
        return Err(api_error(status, &value).into());
    }
    Ok(value)
}

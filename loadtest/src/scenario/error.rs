//! Why a scenario could not run (as opposed to running and falling short of its goal, which is
//! an [`Outcome`](super::Outcome) in its report).

use std::io;

use crate::amt::TlsSetupError;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("worker {index}: {detail}")]
    Worker { index: usize, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("tether forward to device {uuid}: {detail}")]
    Forward { uuid: uuid::Uuid, detail: String },
    #[error("stream {stream}: {detail}")]
    Traffic { stream: usize, detail: String },
    #[error("agents: {0}")]
    Agents(String),
    #[error("the gateway process {pid}: {detail}")]
    Gateway { pid: u32, detail: String },
}

impl ScenarioError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| ScenarioError::Io { what, source }
    }
}

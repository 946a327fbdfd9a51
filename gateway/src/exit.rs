//! The exit codes of the `tether` command, and the errors that choose them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | failed (anything not below, e.g. a support script that exited non-zero) |
//! | 2 | bad input: a wrong argument or file (clap's usage errors are 2 as well) |
//! | 3 | not found: the device, user, token, … does not exist |
//! | 4 | refused: the token, the policy or the device said no |
//! | 5 | unreachable: the gateway, or the device behind it, could not be reached in time |
//!
//! A command says which with a [`Failure`] (`exit::not_found(…)`), or lets an [`ApiError`] or an
//! I/O error say it; [`code_of`] reads the first that says anything along the error's chain.
//! What it does not do: print (main prints `Error: …` as before).

use std::io::ErrorKind;

use hyper::StatusCode;

/// Why a command failed, as its exit code tells a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Failed = 1,
    BadInput = 2,
    NotFound = 3,
    Refused = 4,
    Unreachable = 5,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What an API status says to a script.
    pub fn of_status(status: StatusCode) -> Exit {
        match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => Exit::NotFound,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => Exit::Refused,
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::UNSUPPORTED_MEDIA_TYPE => Exit::BadInput,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                Exit::Unreachable
            }
            _ => Exit::Failed,
        }
    }
}

/// A failure with its exit code and a message a person can act on.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    Failure { exit: Exit::NotFound, message: message.into() }.into()
}

pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
    Failure { exit: Exit::BadInput, message: message.into() }.into()
}

pub fn refused(message: impl Into<String>) -> anyhow::Error {
    Failure { exit: Exit::Refused, message: message.into() }.into()
}

pub fn unreachable(message: impl Into<String>) -> anyhow::Error {
    Failure { exit: Exit::Unreachable, message: message.into() }.into()
}

/// An answer of the API that is not a success: its status, message and stable code.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(*.status, .message.as_deref(), .code.as_deref()))]
pub struct ApiError {
    pub status: StatusCode,
    pub message: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, body: &serde_json::Value) -> ApiError {
        let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_string);
        ApiError { status, message: text("error"), code: text("code") }
    }
}

fn describe(status: StatusCode, message: Option<&str>, code: Option<&str>) -> String {
    let code = code.map(|c| format!(", code {c}")).unwrap_or_default();
    match message {
        Some(message) => format!("{message} (HTTP {}{code})", status.as_u16()),
        None => format!("the API answered HTTP {status}"),
    }
}

/// The exit code for `err`: the first cause along its chain that says one, else 1.
pub fn code_of(err: &anyhow::Error) -> u8 {
    err.chain().find_map(exit_of).unwrap_or(Exit::Failed).code()
}

fn exit_of(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    if let Some(failure) = cause.downcast_ref::<Failure>() {
        return Some(failure.exit);
    }
    if let Some(api) = cause.downcast_ref::<ApiError>() {
        return Some(Exit::of_status(api.status));
    }
    if cause.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
        return Some(Exit::Unreachable);
    }
    let io = cause.downcast_ref::<std::io::Error>()?;
    match io.kind() {
        ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::TimedOut
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::AddrNotAvailable => Some(Exit::Unreachable),
        ErrorKind::NotFound => Some(Exit::NotFound),
        ErrorKind::PermissionDenied => Some(Exit::Refused),
        ErrorKind::InvalidInput | ErrorKind::InvalidData => Some(Exit::BadInput),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn the_first_cause_that_says_something_chooses_the_code() {
        assert_eq!(code_of(&anyhow::anyhow!("plain")), 1);
        assert_eq!(code_of(&not_found("no device").context("showing the device")), 3);
        let api = ApiError::new(StatusCode::FORBIDDEN, &serde_json::json!({"error": "no", "code": "not_related"}));
        assert_eq!(api.to_string(), "no (HTTP 403, code not_related)");
        assert_eq!(code_of(&anyhow::Error::new(api).context("listing")), 4);
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert_eq!(code_of(&Err::<(), _>(refused).context("connecting").unwrap_err()), 5);
        assert_eq!(code_of(&bad_input("--alerts takes red, yellow, green")), 2);
        assert_eq!(Exit::of_status(StatusCode::NOT_FOUND), Exit::NotFound);
        assert_eq!(Exit::of_status(StatusCode::CONFLICT), Exit::Failed);
        assert_eq!(Exit::of_status(StatusCode::GATEWAY_TIMEOUT), Exit::Unreachable);
    }
}

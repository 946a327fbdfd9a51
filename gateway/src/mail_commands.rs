//! `tether mail list` and `tether mail test ADDRESS`: the operator's view of the mail outbox and
//! a test letter through it. Like the account commands, they act on the data dir's store
//! directly; the running gateway's worker sends what `mail test` queues.
//!
//! What it does not do: send anything itself (a gateway with `[mail]` configured does).

use anyhow::{bail, Result};
use clap::Subcommand;
use time::OffsetDateTime;

use crate::config::Config;
use crate::operator::rfc3339;
use crate::store::{MailState, Store, MAX_MAIL_BATCH};

#[derive(Subcommand, Debug)]
pub enum MailAction {
    /// The outbox, newest first: each mail's kind, recipient, state (queued, sent, gave_up),
    /// attempts and last error.
    List {
        /// How many mails at most.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Queue a test mail to ADDRESS; the gateway sends it like any other (see `mail list`).
    Test { address: String },
}

/// The longest error shown in the table (the whole one is in `--json`).
const ERROR_COLUMN: usize = 80;

pub async fn mail_command(store: &Store, config: &Config, action: MailAction) -> Result<()> {
    match action {
        MailAction::List { limit, json } => {
            let mails = store.list_outbox(limit.clamp(1, MAX_MAIL_BATCH)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&mails)?);
                return Ok(());
            }
            println!(
                "{:>6}  {:24}  {:30}  {:8}  {:>8}  {:20}  LAST ERROR",
                "ID", "KIND", "TO", "STATE", "ATTEMPTS", "WHEN"
            );
            for m in mails {
                let when = match m.state {
                    MailState::Sent => m.sent_at,
                    MailState::GaveUp => m.gave_up_at,
                    MailState::Queued => Some(m.next_attempt_at),
                };
                let error: String = m.last_error.as_deref().unwrap_or("-").chars().take(ERROR_COLUMN).collect();
                println!(
                    "{:>6}  {:24}  {:30}  {:8}  {:>8}  {:20}  {error}",
                    m.id,
                    m.kind,
                    m.recipient,
                    m.state.as_str(),
                    m.attempts,
                    when.map(rfc3339).unwrap_or_default(),
                );
            }
        }
        MailAction::Test { address } => {
            if address.parse::<lettre::message::Mailbox>().is_err() {
                bail!("{address:?} is not an email address");
            }
            let id = crate::mail::enqueue_test(store, &address, OffsetDateTime::now_utc()).await?;
            println!("test mail {id} to {address} queued");
            if config.mail.smtp_host.is_none() {
                println!("mail.smtp_host is unset in the configuration: it waits in the outbox until one is set");
            } else {
                println!("the running gateway sends it within mail.poll_interval_secs; see `tether mail list`");
            }
        }
    }
    Ok(())
}

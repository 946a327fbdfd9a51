//! `tether user …`, `tether subscriber …`, `tether machine enroll` and `tether contact …`: the
//! operator's account commands. Like `tether token create`, they act on the data dir's store
//! directly, as the built-in operator (the CLI on the gateway's host is the operator's), through
//! the same flows as the API and the portal (`crate::flows`): every change appends an audit row
//! and queues its mail in the outbox, which the running gateway sends.
//!
//! What it does not do: go through the API (`tether` commands that reach a gateway over the
//! network do), or send mail itself.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::Config;
use crate::exit::{self, Exit, Failure};
use crate::flows::{self, Actor, FlowError, Flows, NewUser, Registration, MAX_PASSWORD};
use crate::operator::rfc3339;
use crate::policy::Role;
use crate::store::{Acceptance, AccountError, Store, SubscriberPii, TokenScope, UserRecord};

#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Create a user (a subscriber's owner, a support contact, or with --operator an operator).
    /// The password is asked for on the terminal, or read from the first line of stdin.
    Add {
        username: String,
        /// The user's email address (where mail to them goes).
        #[arg(long)]
        email: Option<String>,
        /// An operator: sees and may do everything.
        #[arg(long)]
        operator: bool,
        /// Read the password from the first line of stdin instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Suspend a user: every request with their tokens is refused and their open relays end
    /// within seconds.
    Suspend { username: String },
    /// Lift a user's suspension.
    Unsuspend { username: String },
    /// Change a user's email (or, with --contact, the contact email of one of their relations)
    /// on their behalf: a link goes to the new address, and nothing changes until it is
    /// followed (in the portal).
    Email {
        username: String,
        new_email: String,
        /// The contact relation whose contact email changes, instead of the account's email.
        #[arg(long, value_name = "CONTACT_ID")]
        contact: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SubscriberAction {
    /// Register a subscriber owned by an existing user (`tether user add` first), with an
    /// active subscription.
    Register {
        /// The user who owns the subscriber (at most one subscriber per user).
        #[arg(long, value_name = "USERNAME")]
        owner: String,
        /// The subscriber's name (personal data, kept apart).
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        phone: Option<String>,
        /// Machines the subscription allows.
        #[arg(long, default_value_t = 5)]
        max_machines: u32,
        /// Support contacts (invited or active) the subscription allows.
        #[arg(long, default_value_t = 5)]
        max_contacts: u32,
    },
    /// List the subscribers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Terminate a subscription: its contacts lose access at once (open relays end within
    /// seconds) and are told by mail; the reason is kept for operators only.
    Terminate {
        id: i64,
        #[arg(long)]
        reason: String,
    },
    /// Issue an MPS account for a subscriber's AMT devices (or a new password for it): prints
    /// the username and password once. From then on its machines must authenticate with it (or
    /// their own device passwords), and no other subscriber's device can claim them.
    MpsAccount {
        id: i64,
        /// The account's name (letters and digits, as AMT allows) [default: sub<ID>].
        #[arg(long)]
        username: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MachineAction {
    /// Enroll a machine for a subscriber: binds UUID when given (an AMT PC's UUID; its owner and
    /// active contacts see it), and prints a one-time token for `tether-agent enroll --token`.
    Enroll {
        subscriber_id: i64,
        /// The machine's UUID; leave it out to let the agent tell its own at enrollment.
        uuid: Option<Uuid>,
        #[arg(long)]
        nickname: Option<String>,
        /// Make N tokens (one per PC of a rollout), printed one per line; without a UUID only.
        #[arg(long, default_value_t = 1, conflicts_with = "uuid", value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContactAction {
    /// Invite EMAIL as a support contact of a subscriber: the invitation mail (with the accept
    /// link) is queued in the outbox; prints the link and the invitation's GUID.
    Invite { subscriber_id: i64, email: String },
    /// Accept an invitation for an existing user (`tether user add` first).
    Accept {
        guid: Uuid,
        /// The user who becomes the contact.
        #[arg(long, value_name = "USERNAME")]
        user: String,
        /// The version of the terms the user accepted.
        #[arg(long, value_name = "VERSION")]
        terms: String,
        /// How the subscriber sees the contact [default: the username].
        #[arg(long)]
        nickname: Option<String>,
        /// The health changes to be alerted of: any of red, yellow, green (back to green),
        /// comma-separated; `none` for no alerts.
        #[arg(long, value_name = "LIST", default_value = "red,yellow,green")]
        alerts: String,
        /// Also post alerts as JSON to this https URL (a chat's incoming webhook).
        #[arg(long, value_name = "URL")]
        webhook: Option<String>,
        /// Mail alerts to this address instead of the user's.
        #[arg(long, value_name = "EMAIL")]
        contact_email: Option<String>,
    },
    /// Remove a contact (invited or active) of a subscriber: their requests are refused at once
    /// and their open relays end within seconds.
    Remove { subscriber_id: i64, contact_id: i64 },
    /// A contact leaves a subscriber, on their behalf: their access ends at once and the
    /// subscriber is told by mail.
    Leave {
        subscriber_id: i64,
        /// The contact who leaves.
        #[arg(long, value_name = "USERNAME")]
        user: String,
    },
    /// List a subscriber's contacts, in every state.
    List {
        subscriber_id: i64,
        #[arg(long)]
        json: bool,
    },
}

/// What a flow's refusal means for the operator at the terminal.
fn explain(err: FlowError) -> anyhow::Error {
    let advice = match &err {
        FlowError::Account(AccountError::InvitationExpired) => {
            "ask the subscriber for a new invitation (`tether contact invite`)"
        }
        FlowError::Account(AccountError::NoSuchInvitation) => "check the GUID printed by `tether contact invite`",
        FlowError::Account(AccountError::NoSuchSubscriber(_)) => "see `tether subscriber list`",
        FlowError::Account(AccountError::NoSuchContact(_)) => "see `tether contact list SUBSCRIBER_ID`",
        FlowError::Account(AccountError::ContactLimit { .. } | AccountError::MachineLimit { .. }) => {
            "remove one first, or register the subscription with a higher limit"
        }
        FlowError::Account(AccountError::MachineTaken(_)) => "a machine belongs to one subscriber",
        FlowError::Account(AccountError::SubscriptionTerminated(_)) => "a terminated subscription cannot change",
        FlowError::Account(AccountError::Suspended) => "lift the suspension first (`tether user unsuspend`)",
        _ => "",
    };
    let exit = match &err {
        FlowError::NotFound(_)
        | FlowError::Account(
            AccountError::NoSuchUser(_)
            | AccountError::NoSuchSubscriber(_)
            | AccountError::NoSuchInvitation
            | AccountError::NoSuchContact(_)
            | AccountError::NoSuchEmailChange,
        ) => Exit::NotFound,
        FlowError::BadInput(_) => Exit::BadInput,
        FlowError::Store(_) | FlowError::Account(AccountError::Store(_) | AccountError::Hash(_)) => Exit::Failed,
        FlowError::Denied(_) | FlowError::Account(_) => Exit::Refused,
    };
    let message = if advice.is_empty() { err.to_string() } else { format!("{err}: {advice}") };
    Failure { exit, message }.into()
}

async fn user(store: &Store, username: &str) -> Result<UserRecord> {
    store.user_by_name(username).await?.ok_or_else(|| {
        exit::not_found(format!("the gateway has no user {username:?}; create it with `tether user add {username}`"))
    })
}

/// The flows as the CLI runs them: now, with the gateway's configuration.
fn flows<'a>(store: &'a Store, config: &'a Config, public_url: &'a str) -> Flows<'a> {
    Flows { store, accounts: &config.accounts, public_url, now: OffsetDateTime::now_utc() }
}

/// A password: the first line of stdin, or asked for on the terminal without echo.
fn read_password(from_stdin: bool, username: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if from_stdin {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        if !stdin.is_terminal() {
            bail!("no terminal to ask for the password on: pipe it with --password-stdin");
        }
        eprint!("password for {username}: ");
        std::io::stderr().flush().ok();
        let echo_off = std::process::Command::new("stty").arg("-echo").status().is_ok_and(|s| s.success());
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        if echo_off {
            let _ = std::process::Command::new("stty").arg("echo").status();
            eprintln!();
        }
        read.context("reading the password")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.len() > MAX_PASSWORD {
        return Err(exit::bad_input(format!("the password is longer than {MAX_PASSWORD} bytes")));
    }
    Ok(password)
}

pub async fn user_command(store: &Store, config: &Config, action: UserAction) -> Result<()> {
    let public_url = config.mail_public_url();
    let flows = flows(store, config, &public_url);
    let operator = Actor::operator(store).await.map_err(explain)?;
    match action {
        UserAction::Add { username, email, operator: is_operator, password_stdin } => {
            flows::username(&username).map_err(explain)?;
            let password = read_password(password_stdin, &username)?;
            let role = if is_operator { Role::Operator } else { Role::User };
            let new = NewUser { username: &username, email: email.as_deref(), password: &password, role };
            let id = flows.create_user(&operator, &new).await.map_err(explain)?;
            println!("user {username:?} created (id {id}, role {})", role.as_str());
        }
        UserAction::List { json } => {
            let users = store.list_users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
                return Ok(());
            }
            println!("{:>5}  {:24}  {:8}  {:30}  STATE", "ID", "USERNAME", "ROLE", "EMAIL");
            for u in users {
                let state = match (u.suspended_at, u.inactive_since) {
                    (Some(at), _) => format!("suspended since {}", rfc3339(at)),
                    (None, Some(at)) => format!("inactive since {}", rfc3339(at)),
                    (None, None) => "active".into(),
                };
                let email = u.email.unwrap_or_default();
                println!("{:>5}  {:24}  {:8}  {email:30}  {state}", u.id, u.username, u.role.as_str());
            }
        }
        UserAction::Suspend { username } => {
            let record = user(store, &username).await?;
            if !flows.suspend(&operator, record.id).await.map_err(explain)? {
                bail!("user {username:?} is suspended already");
            }
            println!("user {username:?} suspended: their tokens are refused and open relays end within seconds");
        }
        UserAction::Unsuspend { username } => {
            let record = user(store, &username).await?;
            if !flows.unsuspend(&operator, record.id).await.map_err(explain)? {
                bail!("user {username:?} is not suspended");
            }
            println!("user {username:?} may use their tokens again");
        }
        UserAction::Email { username, new_email, contact } => {
            let record = user(store, &username).await?;
            let actor = Actor::of(store, record.id, TokenScope::Attach).await.map_err(explain)?;
            flows.request_email_change(&actor, contact, &new_email).await.map_err(explain)?;
            println!("a confirmation link went to {new_email}; the change takes effect when it is followed");
        }
    }
    Ok(())
}

pub async fn subscriber_command(store: &Store, config: &Config, action: SubscriberAction) -> Result<()> {
    let public_url = config.mail_public_url();
    let flows = flows(store, config, &public_url);
    let operator = Actor::operator(store).await.map_err(explain)?;
    match action {
        SubscriberAction::Register { owner, name, email, phone, max_machines, max_contacts } => {
            let pii = SubscriberPii { name, email, phone, billing_note: None };
            let registration = Registration { owner: &owner, pii, max_machines, max_contacts };
            let id = flows.register_subscriber(&operator, registration).await.map_err(explain)?;
            println!("subscriber {id} registered, owned by {owner:?}");
            println!("enroll its machines with `tether machine enroll {id} [UUID]` (prints a token for `tether-agent enroll`)");
        }
        SubscriberAction::List { json } => {
            let subscribers = store.list_subscribers().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&subscribers)?);
                return Ok(());
            }
            println!("{:>5}  {:24}  {:24}  {:10}  LIMITS", "ID", "NAME", "OWNER", "STATUS");
            for s in subscribers {
                let r = &s.subscriber;
                println!(
                    "{:>5}  {:24}  {:24}  {:10}  {} machines, {} contacts",
                    r.id,
                    s.name,
                    s.owner,
                    r.status.as_str(),
                    r.max_machines,
                    r.max_contacts
                );
            }
        }
        SubscriberAction::Terminate { id, reason } => {
            let ended = flows.terminate(&operator, id, &reason).await.map_err(explain)?;
            println!(
                "subscription of subscriber {id} terminated; {ended} contact relations ended (they are told by mail)"
            );
        }
        SubscriberAction::MpsAccount { id, username } => {
            let (username, password) =
                flows.issue_mps_account(&operator, id, username.as_deref()).await.map_err(explain)?;
            println!("MPS account for subscriber {id}: provision its AMT devices with these (shown once)");
            println!("username: {username}");
            println!("password: {password}");
        }
    }
    Ok(())
}

pub async fn machine_command(store: &Store, config: &Config, action: MachineAction) -> Result<()> {
    let MachineAction::Enroll { subscriber_id, uuid, nickname, count } = action;
    let public_url = config.mail_public_url();
    let flows = flows(store, config, &public_url);
    let operator = Actor::operator(store).await.map_err(explain)?;
    let enrollment =
        flows.enroll_machine(&operator, subscriber_id, uuid, nickname.as_deref()).await.map_err(explain)?;
    match uuid {
        Some(uuid) if enrollment.new_machine => println!("machine {uuid} enrolled for subscriber {subscriber_id}"),
        Some(uuid) => println!("machine {uuid} is enrolled for subscriber {subscriber_id} already"),
        None if count > 1 => {
            println!("{count} enrollment tokens for machines of subscriber {subscriber_id}, one per PC")
        }
        None => println!("enrollment token for a machine of subscriber {subscriber_id}"),
    }
    let until = enrollment.token_expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    println!("on the PC: tether-agent enroll --gateway HOST --token TOKEN   (each usable once, until {until})");
    println!("{}", enrollment.token);
    for _ in 1..count {
        let more = flows.enroll_machine(&operator, subscriber_id, None, nickname.as_deref()).await.map_err(explain)?;
        println!("{}", more.token);
    }
    Ok(())
}

pub async fn contact_command(store: &Store, config: &Config, action: ContactAction) -> Result<()> {
    let public_url = config.mail_public_url();
    let flows = flows(store, config, &public_url);
    let operator = Actor::operator(store).await.map_err(explain)?;
    match action {
        ContactAction::Invite { subscriber_id, email } => {
            let invited = flows.invite(&operator, subscriber_id, &email).await.map_err(explain)?;
            println!(
                "{email} invited as contact {} of subscriber {subscriber_id}; the invitation expires {}",
                invited.contact_id,
                rfc3339(invited.expires_at)
            );
            println!("the invitation mail is queued in the outbox (`tether mail list`); its link is");
            println!("{}", invited.accept_url);
            println!("an operator accepts for an existing user with `tether contact accept GUID --user USERNAME --terms VERSION`");
            println!("{}", invited.guid);
        }
        ContactAction::Accept { guid, user: username, terms, nickname, alerts, webhook, contact_email } => {
            let record = user(store, &username).await?;
            let mut prefs = serde_json::Map::new();
            for level in ["red", "yellow", "green"] {
                prefs.insert(level.into(), serde_json::Value::Bool(false));
            }
            for level in alerts.split(',').map(str::trim).filter(|l| !l.is_empty() && *l != "none") {
                if !matches!(level, "red" | "yellow" | "green") {
                    return Err(exit::bad_input(format!(
                        "--alerts takes red, yellow and green (comma-separated) or none, not {level:?}"
                    )));
                }
                prefs.insert(level.into(), serde_json::Value::Bool(true));
            }
            if let Some(url) = webhook {
                prefs.insert("webhook".into(), serde_json::Value::String(url));
            }
            let acceptance = Acceptance {
                terms_version: terms,
                nickname: nickname.unwrap_or_else(|| username.clone()),
                contact_email,
                alert_prefs: serde_json::Value::Object(prefs),
            };
            // The person accepts: the flow acts as them (the GUID is the proof of the invitation).
            let actor = Actor::of(store, record.id, TokenScope::Attach).await.map_err(explain)?;
            let contact = flows.accept(&actor, guid, acceptance).await.map_err(explain)?;
            println!(
                "{username:?} is now an active contact ({}) of subscriber {} and sees its machines",
                contact.id, contact.subscriber_id
            );
        }
        ContactAction::Remove { subscriber_id, contact_id } => {
            let removed = flows.remove_contact(&operator, subscriber_id, contact_id).await.map_err(explain)?;
            let told = if removed.mail_due { "they are told by mail" } else { "no invitation was ever sent: no mail" };
            println!("contact {contact_id} removed from subscriber {subscriber_id}; their access ended ({told})");
        }
        ContactAction::Leave { subscriber_id, user: username } => {
            let record = user(store, &username).await?;
            let actor = Actor::of(store, record.id, TokenScope::Attach).await.map_err(explain)?;
            flows.leave(&actor, subscriber_id).await.map_err(explain)?;
            println!(
                "{username:?} left subscriber {subscriber_id}: their access ended, the subscriber is told by mail"
            );
        }
        ContactAction::List { subscriber_id, json } => {
            let contacts = flows.contacts(&operator, subscriber_id).await.map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&contacts)?);
                return Ok(());
            }
            println!("{:>5}  {:8}  {:30}  {:20}  INVITATION", "ID", "STATE", "EMAIL", "NICKNAME");
            for c in contacts {
                println!(
                    "{:>5}  {:8}  {:30}  {:20}  {}",
                    c.id,
                    c.state.as_str(),
                    c.mail_address(),
                    c.nickname.as_deref().unwrap_or("-"),
                    c.invitation_guid
                );
            }
        }
    }
    Ok(())
}

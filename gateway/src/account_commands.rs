//! `tether user …`, `tether subscriber …`, `tether machine enroll` and `tether contact …`: the
//! operator's account commands. Like `tether token create`, they act on the data dir's store
//! directly, as the built-in operator (the CLI on the gateway's host is the operator's); every
//! change appends an audit row.
//!
//! The mails the changes call for (an invitation, a removal, a termination) are queued in the
//! outbox (`mail`); a running gateway with `[mail]` configured sends them.
//!
//! What it does not do: send mail itself, or go through the API (the API's account endpoints
//! come with the portal).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::Config;
use crate::mail::{self, Letter};
use crate::operator::rfc3339;
use crate::policy::Role;
use crate::store::{Acceptance, AccountError, AuditAction, NewAudit, Store, SubscriberPii, UserRecord, OPERATOR};

/// Longest password taken (argon2 takes any length; this bounds the work).
const MAX_PASSWORD: usize = 1024;

#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Create a user (a subscriber's owner, a support contact, or with --operator an operator).
    /// The password is asked for on the terminal, or read from the first line of stdin.
    Add {
        username: String,
        /// The user's email address (where its mail goes).
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
    /// seconds); the reason is kept for operators only.
    Terminate {
        id: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum MachineAction {
    /// Enroll a device's UUID as a subscriber's machine: its owner and active contacts see it.
    Enroll {
        subscriber_id: i64,
        uuid: Uuid,
        #[arg(long)]
        nickname: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContactAction {
    /// Invite EMAIL as a support contact of a subscriber: queues the invitation mail (with the
    /// accept link) and prints the invitation's GUID last.
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
    },
    /// Remove a contact (invited or active) of a subscriber: their requests are refused at once
    /// and their open relays end within seconds.
    Remove { subscriber_id: i64, contact_id: i64 },
    /// List a subscriber's contacts, in every state.
    List {
        subscriber_id: i64,
        #[arg(long)]
        json: bool,
    },
}

/// What an account error means for the operator at the terminal.
fn explain(err: AccountError) -> anyhow::Error {
    let advice = match &err {
        AccountError::InvitationExpired => "ask the subscriber for a new invitation (`tether contact invite`)",
        AccountError::NoSuchInvitation => "check the GUID printed by `tether contact invite`",
        AccountError::NoSuchSubscriber(_) => "see `tether subscriber list`",
        AccountError::NoSuchContact(_) => "see `tether contact list SUBSCRIBER_ID`",
        AccountError::ContactLimit { .. } | AccountError::MachineLimit { .. } => {
            "remove one first, or register the subscription with a higher limit"
        }
        AccountError::MachineTaken(_) => "a machine belongs to one subscriber",
        AccountError::SubscriptionTerminated(_) => "a terminated subscription cannot change",
        AccountError::Suspended => "lift the suspension first (`tether user unsuspend`)",
        _ => "",
    };
    if advice.is_empty() {
        anyhow::Error::new(err)
    } else {
        anyhow::anyhow!("{err}: {advice}")
    }
}

async fn user(store: &Store, username: &str) -> Result<UserRecord> {
    store
        .user_by_name(username)
        .await?
        .with_context(|| format!("the gateway has no user {username:?}; create it with `tether user add {username}`"))
}

/// Appends an audit row acted by `actor` (the built-in operator when `None`).
async fn audit(
    store: &Store,
    actor: Option<i64>,
    action: AuditAction,
    machine: Option<Uuid>,
    subscriber: Option<i64>,
    detail: String,
) -> Result<()> {
    let actor = match actor {
        Some(id) => Some(id),
        None => store.user_by_name(OPERATOR).await?.map(|u| u.id),
    };
    let row = NewAudit {
        at: OffsetDateTime::now_utc(),
        actor_user_id: actor,
        action,
        machine_uuid: machine,
        subscriber_id: subscriber,
        detail,
    };
    store.append_audit(&row).await.context("appending the audit row")?;
    Ok(())
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
    if password.is_empty() {
        bail!("the password must not be empty");
    }
    if password.len() > MAX_PASSWORD {
        bail!("the password is longer than {MAX_PASSWORD} bytes");
    }
    Ok(password)
}

pub async fn user_command(store: &Store, action: UserAction) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    match action {
        UserAction::Add { username, email, operator, password_stdin } => {
            if username.is_empty() || username.len() > 64 || username.chars().any(char::is_whitespace) {
                bail!("a username is 1 to 64 characters without spaces");
            }
            let password = read_password(password_stdin, &username)?;
            let role = if operator { Role::Operator } else { Role::User };
            let id =
                store.create_user(&username, email.as_deref(), Some(&password), role, now).await.map_err(explain)?;
            audit(store, None, AuditAction::UserCreated, None, None, format!("{username} ({})", role.as_str())).await?;
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
            if !store.suspend_user(record.id, now).await.map_err(explain)? {
                bail!("user {username:?} is suspended already");
            }
            audit(store, None, AuditAction::UserSuspended, None, None, username.clone()).await?;
            println!("user {username:?} suspended: their tokens are refused and open relays end within seconds");
        }
        UserAction::Unsuspend { username } => {
            let record = user(store, &username).await?;
            if !store.unsuspend_user(record.id).await? {
                bail!("user {username:?} is not suspended");
            }
            audit(store, None, AuditAction::UserUnsuspended, None, None, username.clone()).await?;
            println!("user {username:?} may use their tokens again");
        }
    }
    Ok(())
}

pub async fn subscriber_command(store: &Store, action: SubscriberAction) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    match action {
        SubscriberAction::Register { owner, name, email, phone, max_machines, max_contacts } => {
            let owner_record = user(store, &owner).await?;
            let pii = SubscriberPii { name, email, phone, billing_note: None };
            let id = store
                .register_subscriber_for(owner_record.id, &pii, (max_machines, max_contacts), now)
                .await
                .map_err(explain)?;
            let detail = format!("owner {owner}, {max_machines} machines, {max_contacts} contacts");
            audit(store, None, AuditAction::SubscriberRegistered, None, Some(id), detail).await?;
            println!("subscriber {id} registered, owned by {owner:?}");
            println!("enroll its machines with `tether machine enroll {id} UUID`");
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
            let ended = store.terminate_subscription(id, &reason, now).await.map_err(explain)?;
            audit(store, None, AuditAction::SubscriptionTerminated, None, Some(id), reason).await?;
            // The letters never carry the reason: it stays with the operators.
            let subscriber = subscriber_name(store, id).await?;
            for contact in ended.iter().filter(|c| c.mail_due) {
                let letter =
                    Letter::SubscriptionTerminated { to: contact.mail_to.clone(), subscriber: subscriber.clone() };
                mail::enqueue(store, &letter, now).await.context("queueing the termination mails")?;
            }
            println!("subscription of subscriber {id} terminated; {} contact relations ended", ended.len());
        }
    }
    Ok(())
}

pub async fn machine_command(store: &Store, action: MachineAction) -> Result<()> {
    let MachineAction::Enroll { subscriber_id, uuid, nickname } = action;
    let now = OffsetDateTime::now_utc();
    let new = store.enroll_machine(subscriber_id, uuid, nickname.as_deref(), now).await.map_err(explain)?;
    if !new {
        println!("machine {uuid} is enrolled for subscriber {subscriber_id} already");
        return Ok(());
    }
    let detail = nickname.clone().unwrap_or_default();
    audit(store, None, AuditAction::MachineEnrolled, Some(uuid), Some(subscriber_id), detail).await?;
    println!("machine {uuid} enrolled for subscriber {subscriber_id}");
    Ok(())
}

/// The subscriber's name as mail shows it (its personal data's name, else `subscriber N`).
async fn subscriber_name(store: &Store, subscriber_id: i64) -> Result<String> {
    Ok(store
        .subscriber_pii(subscriber_id)
        .await?
        .map(|p| p.name)
        .unwrap_or_else(|| format!("subscriber {subscriber_id}")))
}

pub async fn contact_command(store: &Store, config: &Config, action: ContactAction) -> Result<()> {
    let accounts = &config.accounts;
    let now = OffsetDateTime::now_utc();
    match action {
        ContactAction::Invite { subscriber_id, email } => {
            if !email.contains('@') {
                bail!("{email:?} is not an email address");
            }
            let invitation = store
                .invite_contact(subscriber_id, &email, now, accounts.invitation_validity())
                .await
                .map_err(explain)?;
            audit(store, None, AuditAction::ContactInvited, None, Some(subscriber_id), email.clone()).await?;
            println!(
                "{email} invited as contact {} of subscriber {subscriber_id}; the invitation expires {}",
                invitation.contact_id,
                rfc3339(invitation.expires_at)
            );
            let letter = Letter::Invitation {
                to: email.clone(),
                subscriber: subscriber_name(store, subscriber_id).await?,
                accept_url: mail::link(&config.mail_public_url(), &format!("invitations/{}", invitation.guid)),
                expires_at: invitation.expires_at,
                guid: invitation.guid,
            };
            let id = mail::enqueue(store, &letter, now).await.context("queueing the invitation mail")?;
            println!(
                "invitation mail {id} queued (see `tether mail list`); the accept link ends in /invitations/GUID;"
            );
            println!("an operator accepts for them with `tether contact accept GUID --user USERNAME --terms VERSION`");
            println!("{}", invitation.guid);
        }
        ContactAction::Accept { guid, user: username, terms, nickname } => {
            let record = user(store, &username).await?;
            let acceptance = Acceptance {
                terms_version: terms,
                nickname: nickname.unwrap_or_else(|| username.clone()),
                contact_email: None,
                alert_prefs: serde_json::json!({}),
            };
            let contact = store.accept_invitation(guid, record.id, &acceptance, now).await.map_err(explain)?;
            let detail = format!("contact {} ({username})", contact.id);
            audit(store, Some(record.id), AuditAction::ContactAccepted, None, Some(contact.subscriber_id), detail)
                .await?;
            println!(
                "{username:?} is now an active contact ({}) of subscriber {} and sees its machines",
                contact.id, contact.subscriber_id
            );
        }
        ContactAction::Remove { subscriber_id, contact_id } => {
            let removed = store.remove_contact(subscriber_id, contact_id, now).await.map_err(explain)?;
            let detail = format!("contact {contact_id} (was {})", removed.was.as_str());
            audit(store, None, AuditAction::ContactRemoved, None, Some(subscriber_id), detail).await?;
            println!("contact {contact_id} removed from subscriber {subscriber_id}; their access ended");
            if removed.mail_due {
                let subscriber = subscriber_name(store, subscriber_id).await?;
                let letter = Letter::ContactRemoved { to: removed.mail_to.clone(), subscriber };
                let id = mail::enqueue(store, &letter, now).await.context("queueing the removal mail")?;
                println!("mail {id} to {} queued", removed.mail_to);
            }
        }
        ContactAction::List { subscriber_id, json } => {
            if store.subscriber(subscriber_id).await?.is_none() {
                bail!("no subscriber with id {subscriber_id}: see `tether subscriber list`");
            }
            let contacts = store.contacts_of(subscriber_id).await?;
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

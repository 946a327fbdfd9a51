//! The account flows, once: register a subscriber, enroll a machine, invite, accept, remove,
//! leave, terminate, suspend, change an email. The API (`api/accounts.rs`), the CLI
//! (`account_commands.rs`) and the portal call these, so that each flow asks the policy, changes
//! the store, appends its audit row and queues its mail the same way wherever it starts.
//!
//! Each flow takes the [`Actor`] (who acts, with the relations the store computed) and is
//! refused with the policy's [`Denied`] before anything is changed; a transition the store
//! refuses comes back as its [`AccountError`]. [`FlowError::code`] is stable for API bodies and
//! the portal; [`FlowError::status`] is the HTTP status to answer with.
//!
//! Mail goes through the outbox (`crate::mail`), queued after the change is committed: it is
//! sent, retried or given up by the mail worker, never here.
//!
//! What it does not do: parse requests or print (its callers do), or read a clock (`now` is
//! given, so tests can move it).

use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::AccountsConfig;
use crate::mail::{self, Letter};
use crate::policy::{self, Action, Denied, Principal, Relations, Resource, Role};
use crate::store::{
    Acceptance, AccountError, AuditAction, ContactRecord, EndedContact, NewAudit, NewEnrollmentToken, Store,
    StoreError, SubscriberPii, TokenScope, OPERATOR,
};

/// Longest username, email, nickname or other short text a flow takes.
pub const MAX_TEXT: usize = 254;

/// Why a flow was refused.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("refused: {0}")]
    Denied(#[from] Denied),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
}

impl FlowError {
    /// A stable code: the policy's, the store's transition's, or `bad_input` / `not_found`.
    pub fn code(&self) -> &'static str {
        match self {
            FlowError::Denied(denied) => denied.code(),
            FlowError::Account(err) => err.code(),
            FlowError::Store(_) => "store",
            FlowError::BadInput(_) => "bad_input",
            FlowError::NotFound(_) => "not_found",
        }
    }

    /// The HTTP status that says it.
    pub fn status(&self) -> u16 {
        match self {
            FlowError::Denied(_) => 403,
            FlowError::BadInput(_) => 400,
            FlowError::NotFound(_) => 404,
            FlowError::Store(_) => 503,
            FlowError::Account(err) => match err {
                AccountError::Store(_) => 503,
                AccountError::Hash(_) => 500,
                AccountError::NoSuchUser(_)
                | AccountError::NoSuchSubscriber(_)
                | AccountError::NoSuchInvitation
                | AccountError::NoSuchContact(_)
                | AccountError::NoSuchEmailChange
                | AccountError::NotAContact(_) => 404,
                AccountError::InvitationExpired | AccountError::EmailChangeExpired => 410,
                AccountError::Suspended => 403,
                AccountError::UsernameTaken(_)
                | AccountError::OwnsSubscriber(_)
                | AccountError::SubscriptionTerminated(_)
                | AccountError::MachineLimit { .. }
                | AccountError::MachineTaken(_)
                | AccountError::ContactLimit { .. }
                | AccountError::InvitationClosed(_)
                | AccountError::OwnInvitation
                | AccountError::AlreadyContact
                | AccountError::ContactEnded(_)
                | AccountError::OperatorNotSuspendable => 409,
            },
        }
    }
}

/// Who acts: a user as the policy sees it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: Principal,
    pub relations: Arc<Relations>,
}

impl Actor {
    /// User `user_id` acting with a credential of `scope` (a portal session acts as `attach`).
    pub async fn of(store: &Store, user_id: i64, scope: TokenScope) -> Result<Actor, FlowError> {
        let principal = store
            .principal(user_id, scope)
            .await?
            .ok_or_else(|| FlowError::NotFound(format!("no user with id {user_id}")))?;
        let relations = store.relations(user_id).await?;
        Ok(Actor { principal, relations: Arc::new(relations) })
    }

    /// The built-in operator (the CLI on the gateway's host acts as it).
    pub async fn operator(store: &Store) -> Result<Actor, FlowError> {
        let user = store
            .user_by_name(OPERATOR)
            .await?
            .ok_or_else(|| FlowError::NotFound("the built-in operator is missing from the store".into()))?;
        Actor::of(store, user.id, TokenScope::Attach).await
    }

    pub fn user_id(&self) -> i64 {
        self.principal.user_id
    }

    pub fn is_operator(&self) -> bool {
        self.principal.role == Role::Operator
    }

    /// What a user may always do to its own account (accept an invitation, change its email):
    /// anything, unless suspended or acting with a token of scope `read`.
    pub fn may_change_itself(&self) -> Result<(), FlowError> {
        if self.principal.suspended {
            return Err(Denied::Suspended.into());
        }
        if !self.principal.scope.allows(TokenScope::Attach) {
            return Err(Denied::Scope.into());
        }
        Ok(())
    }

    pub fn authorize(&self, action: Action, resource: Resource) -> Result<(), FlowError> {
        policy::authorize(&self.principal, &self.relations, action, resource).map_err(FlowError::Denied)
    }
}

/// A new user (`tether user add`, `POST /api/v1/users`, the portal's sign-up on acceptance).
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: Option<&'a str>,
    pub password: &'a str,
    pub role: Role,
}

/// A subscriber to register, owned by an existing user.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub owner: &'a str,
    pub pii: SubscriberPii,
    pub max_machines: u32,
    pub max_contacts: u32,
}

/// A machine enrolled: the UUID bound (if one was given) and the agent's one-time token.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Enrollment {
    pub uuid: Option<Uuid>,
    /// The UUID was bound by this call (false: no UUID, or bound for this subscriber already).
    pub new_machine: bool,
    /// For `tether-agent enroll --token`: shown once, usable once, until `token_expires_at`.
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub token_expires_at: OffsetDateTime,
}

/// An invitation made.
#[derive(Debug, Clone, Serialize)]
pub struct Invited {
    pub contact_id: i64,
    pub guid: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Where the invitee accepts (also in the mail).
    pub accept_url: String,
}

/// What an invitation link shows before it is accepted: who invites, and whether it is open.
#[derive(Debug, Clone, Serialize)]
pub struct InvitationView {
    pub guid: Uuid,
    pub subscriber: String,
    pub invited_email: String,
    /// `invited` (open), `expired`, or the state it ended in.
    pub state: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// What the person following the link can do.
    pub message: String,
}

/// The account flows, with what they share: the store, the durations, where links point and
/// the time of the request.
#[derive(Debug, Clone, Copy)]
pub struct Flows<'a> {
    pub store: &'a Store,
    pub accounts: &'a AccountsConfig,
    /// The portal's public address, without a trailing slash: links in mail point under it.
    pub public_url: &'a str,
    pub now: OffsetDateTime,
}

/// A short text field: trimmed, non-empty, no control characters, at most [`MAX_TEXT`].
/// A contact's alert preferences, checked: a JSON object of at most 1 KiB whose `red`, `yellow`,
/// `green` and `email` are booleans and `webhook` an https URL (`docs/health.md`).
pub fn checked_alert_prefs(prefs: serde_json::Value) -> Result<serde_json::Value, FlowError> {
    use serde_json::Value;
    let prefs = if prefs.is_null() { Value::Object(Default::default()) } else { prefs };
    let Some(map) = prefs.as_object() else {
        return Err(FlowError::BadInput("the alert preferences are a JSON object".into()));
    };
    if prefs.to_string().len() > 1024 {
        return Err(FlowError::BadInput("the alert preferences are too long".into()));
    }
    for (key, value) in map {
        match (key.as_str(), value) {
            ("red" | "yellow" | "green" | "email", Value::Bool(_)) => {}
            ("webhook", Value::String(url)) if url.is_empty() => {}
            ("webhook", Value::String(url)) => crate::health::Channels { email: true, webhook: Some(url.clone()) }
                .validate()
                .map_err(FlowError::BadInput)?,
            ("red" | "yellow" | "green" | "email", _) => {
                return Err(FlowError::BadInput(format!("alert preference {key:?} is true or false")))
            }
            _ => {
                return Err(FlowError::BadInput(format!(
                    "unknown alert preference {key:?}: red, yellow, green, email (true or false) and webhook (an https URL)"
                )))
            }
        }
    }
    Ok(prefs)
}

pub fn short_text(what: &str, text: &str) -> Result<String, FlowError> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_TEXT || text.chars().any(char::is_control) {
        return Err(FlowError::BadInput(format!(
            "{what} must be 1 to {MAX_TEXT} characters, without control characters"
        )));
    }
    Ok(text.to_string())
}

/// An email address as far as a flow checks one: one `@` with text on both sides, no spaces.
pub fn email_address(text: &str) -> Result<String, FlowError> {
    let text = short_text("an email address", text)?;
    match text.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !text.contains(char::is_whitespace) =>
        {
            Ok(text)
        }
        _ => Err(FlowError::BadInput(format!("{text:?} is not an email address"))),
    }
}

/// A username: 1 to 64 characters, no whitespace or control characters.
pub fn username(text: &str) -> Result<String, FlowError> {
    if text.is_empty() || text.len() > 64 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FlowError::BadInput("a username is 1 to 64 characters without spaces".into()));
    }
    Ok(text.to_string())
}

impl Flows<'_> {
    async fn audit(
        &self,
        actor: Option<i64>,
        action: AuditAction,
        machine: Option<Uuid>,
        subscriber: Option<i64>,
        detail: String,
    ) -> Result<(), FlowError> {
        let row = NewAudit {
            at: self.now,
            actor_user_id: actor,
            action,
            machine_uuid: machine,
            subscriber_id: subscriber,
            detail,
        };
        self.store.append_audit(&row).await?;
        Ok(())
    }

    async fn send(&self, letter: Letter) -> Result<(), FlowError> {
        mail::enqueue(self.store, &letter, self.now).await?;
        Ok(())
    }

    async fn subscriber_name(&self, subscriber_id: i64) -> Result<String, FlowError> {
        let pii = self.store.subscriber_pii(subscriber_id).await?;
        Ok(pii.map(|p| p.name).unwrap_or_else(|| format!("subscriber {subscriber_id}")))
    }

    pub fn accept_url(&self, guid: Uuid) -> String {
        format!("{}/portal/invitations/{guid}", self.public_url)
    }

    pub fn confirm_url(&self, secret: &str) -> String {
        format!("{}/portal/email/confirm?secret={secret}", self.public_url)
    }

    /// Creates a user (operators only). The password is hashed with argon2id.
    pub async fn create_user(&self, actor: &Actor, new: &NewUser<'_>) -> Result<i64, FlowError> {
        actor.authorize(Action::ManageUsers, Resource::Gateway)?;
        let username = username(new.username)?;
        let email = new.email.map(email_address).transpose()?;
        check_password(new.password)?;
        let id = self.store.create_user(&username, email.as_deref(), Some(new.password), new.role, self.now).await?;
        let detail = format!("{username} ({})", new.role.as_str());
        self.audit(Some(actor.user_id()), AuditAction::UserCreated, None, None, detail).await?;
        Ok(id)
    }

    /// Registers a subscriber owned by an existing user, with an active subscription.
    pub async fn register_subscriber(&self, actor: &Actor, reg: Registration<'_>) -> Result<i64, FlowError> {
        actor.authorize(Action::RegisterSubscriber, Resource::Gateway)?;
        let owner = self.store.user_by_name(reg.owner).await?.ok_or_else(|| {
            let owner = reg.owner;
            FlowError::NotFound(format!(
                "the gateway has no user {owner:?}: create it first (`tether user add {owner}`, or POST /api/v1/users)"
            ))
        })?;
        let pii = SubscriberPii {
            name: short_text("the subscriber's name", &reg.pii.name)?,
            email: email_address(&reg.pii.email)?,
            phone: reg.pii.phone.as_deref().map(|p| short_text("the phone number", p)).transpose()?,
            billing_note: reg.pii.billing_note.as_deref().map(|b| short_text("the billing note", b)).transpose()?,
        };
        let limits = (reg.max_machines, reg.max_contacts);
        let id = self.store.register_subscriber_for(owner.id, &pii, limits, self.now).await?;
        let detail = format!("owner {}, {} machines, {} contacts", reg.owner, reg.max_machines, reg.max_contacts);
        self.audit(Some(actor.user_id()), AuditAction::SubscriberRegistered, None, Some(id), detail).await?;
        Ok(id)
    }

    /// Enrolls a machine for a subscriber: binds `uuid` when given (an AMT PC's UUID, which is
    /// also its SMBIOS UUID), and makes a one-time enrollment token for `tether-agent enroll`
    /// (for that UUID only when one was given). The token is shown once; the store keeps its hash.
    pub async fn enroll_machine(
        &self,
        actor: &Actor,
        subscriber_id: i64,
        uuid: Option<Uuid>,
        nickname: Option<&str>,
    ) -> Result<Enrollment, FlowError> {
        actor.authorize(Action::EnrollMachine, Resource::Subscriber(subscriber_id))?;
        let nickname = nickname.map(|n| short_text("the nickname", n)).transpose()?;
        let mut new_machine = false;
        if let Some(uuid) = uuid {
            new_machine = self.store.enroll_machine(subscriber_id, uuid, nickname.as_deref(), self.now).await?;
            if new_machine {
                let detail = nickname.clone().unwrap_or_default();
                self.audit(
                    Some(actor.user_id()),
                    AuditAction::MachineEnrolled,
                    Some(uuid),
                    Some(subscriber_id),
                    detail,
                )
                .await?;
            }
        }
        let token = crate::auth::new_token().replacen("tth_", "tte_", 1);
        let expires_at = self.now + self.accounts.enrollment_token_validity();
        let new = NewEnrollmentToken {
            hash: crate::auth::hash_token(&token),
            subscriber_id,
            uuid,
            nickname,
            created_by: Some(actor.user_id()),
            now: self.now,
            expires_at,
        };
        let id = self.store.create_enrollment_token(&new).await?;
        let until = expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let detail = format!("enrollment token {id}, valid until {until}");
        self.audit(Some(actor.user_id()), AuditAction::EnrollmentTokenCreated, uuid, Some(subscriber_id), detail)
            .await?;
        Ok(Enrollment { uuid, new_machine, token, token_expires_at: expires_at })
    }

    /// Invites `email` as a support contact of a subscriber and mails the accept link.
    pub async fn invite(&self, actor: &Actor, subscriber_id: i64, email: &str) -> Result<Invited, FlowError> {
        actor.authorize(Action::ManageContacts, Resource::Subscriber(subscriber_id))?;
        let email = email_address(email)?;
        let invitation =
            self.store.invite_contact(subscriber_id, &email, self.now, self.accounts.invitation_validity()).await?;
        self.audit(Some(actor.user_id()), AuditAction::ContactInvited, None, Some(subscriber_id), email.clone())
            .await?;
        let accept_url = self.accept_url(invitation.guid);
        let letter = Letter::Invitation {
            to: email,
            subscriber: self.subscriber_name(subscriber_id).await?,
            accept_url: accept_url.clone(),
            expires_at: invitation.expires_at,
            guid: invitation.guid,
        };
        self.send(letter).await?;
        Ok(Invited {
            contact_id: invitation.contact_id,
            guid: invitation.guid,
            expires_at: invitation.expires_at,
            accept_url,
        })
    }

    /// What the link of invitation `guid` shows (anyone holding the GUID may read it: it was
    /// mailed to them).
    pub async fn invitation(&self, guid: Uuid) -> Result<InvitationView, FlowError> {
        let record = self.store.invitation(guid).await?.ok_or(AccountError::NoSuchInvitation)?;
        let open = record.state == crate::store::ContactState::Invited && record.expires_at > self.now;
        let (state, message) = if open {
            ("invited", "sign in or create an account, then accept the terms to become a support contact".into())
        } else if matches!(record.state, crate::store::ContactState::Invited | crate::store::ContactState::Expired) {
            ("expired", AccountError::InvitationExpired.to_string())
        } else {
            (record.state.as_str(), AccountError::InvitationClosed(record.state.as_str()).to_string())
        };
        Ok(InvitationView {
            guid,
            subscriber: self.subscriber_name(record.subscriber_id).await?,
            invited_email: record.invited_email,
            state,
            expires_at: record.expires_at,
            message,
        })
    }

    /// The actor accepts invitation `guid` (the GUID is the proof it was invited).
    pub async fn accept(&self, actor: &Actor, guid: Uuid, acceptance: Acceptance) -> Result<ContactRecord, FlowError> {
        actor.may_change_itself()?;
        let acceptance = Acceptance {
            terms_version: short_text("the terms version", &acceptance.terms_version)?,
            nickname: short_text("the nickname", &acceptance.nickname)?,
            contact_email: acceptance.contact_email.as_deref().map(email_address).transpose()?,
            alert_prefs: checked_alert_prefs(acceptance.alert_prefs)?,
        };
        let contact = self.store.accept_invitation(guid, actor.user_id(), &acceptance, self.now).await?;
        let detail = format!("contact {} ({})", contact.id, acceptance.nickname);
        self.audit(Some(actor.user_id()), AuditAction::ContactAccepted, None, Some(contact.subscriber_id), detail)
            .await?;
        Ok(contact)
    }

    /// Someone holding the GUID of an open invitation creates their own account (role user) to
    /// accept it with: the invitation is what allows it. The new user is the audit row's actor.
    /// Callers throttle by source before this (the password is hashed here).
    pub async fn sign_up(&self, guid: Uuid, new: &NewUser<'_>) -> Result<i64, FlowError> {
        let record = self.store.invitation(guid).await?.ok_or(AccountError::NoSuchInvitation)?;
        match record.state {
            crate::store::ContactState::Invited if record.expires_at > self.now => {}
            crate::store::ContactState::Invited | crate::store::ContactState::Expired => {
                return Err(AccountError::InvitationExpired.into())
            }
            state => return Err(AccountError::InvitationClosed(state.as_str()).into()),
        }
        let username = username(new.username)?;
        let email = new.email.map(email_address).transpose()?;
        check_password(new.password)?;
        let id = self.store.create_user(&username, email.as_deref(), Some(new.password), Role::User, self.now).await?;
        let detail = format!("{username} (user), to accept invitation {guid}");
        self.audit(Some(id), AuditAction::UserCreated, None, None, detail).await?;
        Ok(id)
    }

    /// The actor changes the nickname and alert preferences of their own active relation
    /// `contact_id`.
    pub async fn update_contact_prefs(
        &self,
        actor: &Actor,
        contact_id: i64,
        nickname: &str,
        alert_prefs: &serde_json::Value,
    ) -> Result<ContactRecord, FlowError> {
        actor.may_change_itself()?;
        let nickname = short_text("the nickname", nickname)?;
        let alert_prefs = &checked_alert_prefs(alert_prefs.clone())?;
        let contact = self.store.update_contact_prefs(actor.user_id(), contact_id, &nickname, alert_prefs).await?;
        let detail = format!("contact {contact_id} ({nickname}): alerts {alert_prefs}");
        self.audit(Some(actor.user_id()), AuditAction::ContactPrefsChanged, None, Some(contact.subscriber_id), detail)
            .await?;
        Ok(contact)
    }

    /// A subscriber's contacts, in every state (its owner and operators).
    pub async fn contacts(&self, actor: &Actor, subscriber_id: i64) -> Result<Vec<ContactRecord>, FlowError> {
        actor.authorize(Action::ViewSubscriberPii, Resource::Subscriber(subscriber_id))?;
        if self.store.subscriber(subscriber_id).await?.is_none() {
            return Err(AccountError::NoSuchSubscriber(subscriber_id).into());
        }
        Ok(self.store.contacts_of(subscriber_id).await?)
    }

    /// The subscriber removes a contact, invited or active: its access ends at once; it is
    /// told by mail unless no invitation was ever sent.
    pub async fn remove_contact(
        &self,
        actor: &Actor,
        subscriber_id: i64,
        contact_id: i64,
    ) -> Result<EndedContact, FlowError> {
        actor.authorize(Action::ManageContacts, Resource::Subscriber(subscriber_id))?;
        let removed = self.store.remove_contact(subscriber_id, contact_id, self.now).await?;
        let detail = format!("contact {contact_id} (was {})", removed.was.as_str());
        self.audit(Some(actor.user_id()), AuditAction::ContactRemoved, None, Some(subscriber_id), detail).await?;
        if removed.mail_due {
            let subscriber = self.subscriber_name(subscriber_id).await?;
            self.send(Letter::ContactRemoved { to: removed.mail_to.clone(), subscriber }).await?;
        }
        Ok(removed)
    }

    /// The actor stops being a contact of a subscriber; the subscriber is told.
    pub async fn leave(&self, actor: &Actor, subscriber_id: i64) -> Result<EndedContact, FlowError> {
        actor.authorize(Action::LeaveSubscriber, Resource::Subscriber(subscriber_id))?;
        let left = self.store.leave_subscriber(actor.user_id(), subscriber_id, self.now).await?;
        let contact = self.store.contact(left.contact_id).await?;
        let name = contact.and_then(|c| c.nickname).unwrap_or_else(|| left.mail_to.clone());
        self.audit(Some(actor.user_id()), AuditAction::ContactLeft, None, Some(subscriber_id), name.clone()).await?;
        if let Some(pii) = self.store.subscriber_pii(subscriber_id).await? {
            self.send(Letter::ContactLeft { to: pii.email, contact: name }).await?;
        }
        Ok(left)
    }

    /// Terminates a subscription (operators): its contacts lose access at once and are told,
    /// without the reason.
    pub async fn terminate(&self, actor: &Actor, subscriber_id: i64, reason: &str) -> Result<usize, FlowError> {
        actor.authorize(Action::TerminateSubscription, Resource::Subscriber(subscriber_id))?;
        let reason = short_text("the reason", reason)?;
        let ended = self.store.terminate_subscription(subscriber_id, &reason, self.now).await?;
        self.audit(Some(actor.user_id()), AuditAction::SubscriptionTerminated, None, Some(subscriber_id), reason)
            .await?;
        let subscriber = self.subscriber_name(subscriber_id).await?;
        for contact in ended.iter().filter(|c| c.mail_due) {
            let letter = Letter::SubscriptionTerminated { to: contact.mail_to.clone(), subscriber: subscriber.clone() };
            self.send(letter).await?;
        }
        Ok(ended.len())
    }

    /// Suspends a user centrally (operators): every request is refused and live relays are cut
    /// by the token watch within a second. False if it was suspended already.
    pub async fn suspend(&self, actor: &Actor, user_id: i64) -> Result<bool, FlowError> {
        actor.authorize(Action::SuspendUser, Resource::User(user_id))?;
        let user = self.store.user(user_id).await?.ok_or(AccountError::NoSuchUser(user_id))?;
        let done = self.store.suspend_user(user_id, self.now).await?;
        if done {
            self.audit(Some(actor.user_id()), AuditAction::UserSuspended, None, None, user.username).await?;
        }
        Ok(done)
    }

    /// Lifts a suspension (operators). False if the user was not suspended.
    pub async fn unsuspend(&self, actor: &Actor, user_id: i64) -> Result<bool, FlowError> {
        actor.authorize(Action::SuspendUser, Resource::User(user_id))?;
        let user = self.store.user(user_id).await?.ok_or(AccountError::NoSuchUser(user_id))?;
        let done = self.store.unsuspend_user(user_id).await?;
        if done {
            self.audit(Some(actor.user_id()), AuditAction::UserUnsuspended, None, None, user.username).await?;
        }
        Ok(done)
    }

    /// The actor asks to change its email (or, with `contact_id`, the contact email of that
    /// relation of theirs): a link goes to the new address, and nothing changes until it is
    /// followed.
    pub async fn request_email_change(
        &self,
        actor: &Actor,
        contact_id: Option<i64>,
        new_email: &str,
    ) -> Result<(), FlowError> {
        actor.may_change_itself()?;
        let new_email = email_address(new_email)?;
        let validity = self.accounts.email_change_validity();
        let secret =
            self.store.request_email_change(actor.user_id(), contact_id, &new_email, self.now, validity).await?;
        let detail = match contact_id {
            Some(id) => format!("contact {id}: {new_email}"),
            None => new_email.clone(),
        };
        self.audit(Some(actor.user_id()), AuditAction::EmailChangeRequested, None, None, detail).await?;
        let letter = Letter::EmailChange {
            to: new_email,
            confirm_url: self.confirm_url(&secret),
            expires_at: self.now + validity,
        };
        self.send(letter).await
    }

    /// Follows an email change link (the secret is the proof: it was mailed to the new address).
    pub async fn confirm_email_change(&self, secret: &str) -> Result<crate::store::EmailChanged, FlowError> {
        if secret.is_empty() || secret.len() > 128 {
            return Err(AccountError::NoSuchEmailChange.into());
        }
        let changed = self.store.confirm_email_change(secret, self.now).await?;
        let detail = match changed.contact_id {
            Some(id) => format!("contact {id}: {}", changed.new_email),
            None => changed.new_email.clone(),
        };
        self.audit(Some(changed.user_id), AuditAction::EmailChanged, None, None, detail).await?;
        Ok(changed)
    }

    /// Issues an MPS account for a subscriber's AMT devices (operators), or a new password for
    /// it: `username` (letters and digits, as AMT allows) defaults to `sub` and the subscriber's
    /// id. The password is returned once and only its argon2 hash is kept. From then on the
    /// subscriber's machines must use it (or their own device passwords): see `identity`.
    pub async fn issue_mps_account(
        &self,
        actor: &Actor,
        subscriber_id: i64,
        username: Option<&str>,
    ) -> Result<(String, String), FlowError> {
        actor.authorize(Action::IssueMpsAccount, Resource::Subscriber(subscriber_id))?;
        if self.store.subscriber(subscriber_id).await?.is_none() {
            return Err(AccountError::NoSuchSubscriber(subscriber_id).into());
        }
        let username = username.map_or_else(|| format!("sub{subscriber_id}"), str::to_string);
        if username.is_empty() || username.len() > 32 || !username.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(FlowError::BadInput(format!(
                "AMT allows only 1 to 32 letters and digits in the MPS username, not {username:?}"
            )));
        }
        let password = crate::auth::new_password();
        let hashed = password.clone();
        let hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(hashed.as_bytes()))
            .await
            .map_err(|err| FlowError::BadInput(format!("hashing the password failed: {err}")))?
            .map_err(AccountError::Hash)?;
        if !self.store.set_subscriber_mps_account(&username, &hash, subscriber_id).await? {
            return Err(FlowError::BadInput(format!(
                "the MPS account {username:?} is the gateway-wide account or another subscriber's; choose another name"
            )));
        }
        self.audit(Some(actor.user_id()), AuditAction::MpsAccountIssued, None, Some(subscriber_id), username.clone())
            .await?;
        Ok((username, password))
    }

    /// The scheduled sweeps: open invitations past their expiry become expired, and users
    /// inactive for longer than `accounts.inactive_days` become plain users. The numbers that
    /// changed.
    pub async fn sweep(&self) -> Result<(u64, u64), FlowError> {
        let expired = self.store.expire_invitations(self.now).await?;
        let plain = self.store.sweep_inactive(self.now, self.accounts.inactive_period()).await?;
        Ok((expired, plain))
    }
}

/// The time flows run at: the system's, shifted by an offset that only tests move (to expire
/// invitations and age former contacts without waiting for days).
#[derive(Debug, Default)]
pub struct Clock {
    shift_secs: std::sync::atomic::AtomicI64,
}

impl Clock {
    pub fn now(&self) -> OffsetDateTime {
        let shift = self.shift_secs.load(std::sync::atomic::Ordering::Relaxed);
        OffsetDateTime::now_utc() + time::Duration::seconds(shift)
    }

    /// Moves this clock forward by `by`.
    pub fn advance(&self, by: time::Duration) {
        self.shift_secs.fetch_add(by.whole_seconds(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Longest password taken (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD: usize = 1024;

/// A password a user may set: 8 to [`MAX_PASSWORD`] bytes.
pub fn check_password(password: &str) -> Result<(), FlowError> {
    if password.len() < 8 || password.len() > MAX_PASSWORD {
        return Err(FlowError::BadInput(format!("a password is 8 to {MAX_PASSWORD} bytes long")));
    }
    Ok(())
}

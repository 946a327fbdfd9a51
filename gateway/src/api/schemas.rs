//! What the API answers, as types: the records of the store, the flows, the LAN tools and AMT,
//! copied into structs that derive both `Serialize` (the handlers answer with them) and
//! `ToSchema` (the OpenAPI document describes them), so that the document and the answers cannot
//! drift apart. Each keeps the field names and the JSON its record had before it was typed.
//!
//! Two answers stay JSON built elsewhere and are only described here: a device
//! ([`DeviceView`], built by `crate::view` and also by other gateways of a fleet), and a report's
//! support parameters ([`SupportParameters`], `crate::agents::view`).
//!
//! What it does not do: answers that belong to one handler (they sit beside it), or errors
//! ([`ErrorBody`](super::ErrorBody)).

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::flows::{InvitationView, Invited};
use crate::lan::jobs::ScanStatus;
use crate::lan::wake::MagicSent;
use crate::policy::Role;
use crate::store::{
    ActionRecord, AgentRecord, AuditRecord, ContactRecord, ContactState, DeliveryRecord, LanAdoption, LanHost,
    MachineRecord, MessageDelivery, RedirectionRecord, SubscriberListing, SubscriberPii, SubscriberRecord,
    SubscriptionStatus, SupportAction, SupportMessage, TokenScope, UserRecord,
};
use crate::wsman::amt::{BootSettings, Consent, Facts, Redirection};

/// A user's role (subscriber owner and support contact are relations, not roles).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum UserRole {
    Operator,
    User,
}

impl From<Role> for UserRole {
    fn from(role: Role) -> UserRole {
        match role {
            Role::Operator => UserRole::Operator,
            Role::User => UserRole::User,
        }
    }
}

/// What a token allows: `read` (look), `attach` (also change things and open relays).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Scope {
    Read,
    Attach,
}

impl From<TokenScope> for Scope {
    fn from(scope: TokenScope) -> Scope {
        match scope {
            TokenScope::Read => Scope::Read,
            TokenScope::Attach => Scope::Attach,
        }
    }
}

/// A user; never its password hash or TOTP secret.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct User {
    pub id: i64,
    pub username: String,
    pub email: Option<String>,
    pub role: UserRole,
    pub has_password: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Suspended centrally by an operator: every access ends.
    #[serde(with = "time::serde::rfc3339::option")]
    pub suspended_at: Option<OffsetDateTime>,
    /// Since when the user, once a support contact, is an active contact of no subscriber.
    #[serde(with = "time::serde::rfc3339::option")]
    pub inactive_since: Option<OffsetDateTime>,
}

impl From<UserRecord> for User {
    fn from(r: UserRecord) -> User {
        User {
            id: r.id,
            username: r.username,
            email: r.email,
            role: r.role.into(),
            has_password: r.has_password,
            created_at: r.created_at,
            suspended_at: r.suspended_at,
            inactive_since: r.inactive_since,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Subscription {
    Active,
    Terminated,
}

impl From<SubscriptionStatus> for Subscription {
    fn from(status: SubscriptionStatus) -> Subscription {
        match status {
            SubscriptionStatus::Active => Subscription::Active,
            SubscriptionStatus::Terminated => Subscription::Terminated,
        }
    }
}

/// A subscriber and its subscription (maintenance data; the personal data is [`Pii`]).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Subscriber {
    pub id: i64,
    pub owner_user_id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub status: Subscription,
    pub max_machines: u64,
    pub max_contacts: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub terminated_at: Option<OffsetDateTime>,
}

impl From<SubscriberRecord> for Subscriber {
    fn from(r: SubscriberRecord) -> Subscriber {
        Subscriber {
            id: r.id,
            owner_user_id: r.owner_user_id,
            created_at: r.created_at,
            status: r.status.into(),
            max_machines: r.max_machines,
            max_contacts: r.max_contacts,
            started_at: r.started_at,
            terminated_at: r.terminated_at,
        }
    }
}

/// A subscriber's personal data.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Pii {
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub billing_note: Option<String>,
}

impl From<SubscriberPii> for Pii {
    fn from(p: SubscriberPii) -> Pii {
        Pii { name: p.name, email: p.email, phone: p.phone, billing_note: p.billing_note }
    }
}

/// A subscriber as a list shows it: its record, its owner's username, the name and email it gave.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SubscriberEntry {
    #[serde(flatten)]
    pub subscriber: Subscriber,
    pub owner: String,
    pub name: String,
    pub email: String,
}

impl From<SubscriberListing> for SubscriberEntry {
    fn from(l: SubscriberListing) -> SubscriberEntry {
        SubscriberEntry { subscriber: l.subscriber.into(), owner: l.owner, name: l.name, email: l.email }
    }
}

/// A machine (by its SMBIOS/AMT UUID) enrolled for a subscriber.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Machine {
    pub uuid: Uuid,
    pub subscriber_id: i64,
    pub nickname: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
}

impl From<MachineRecord> for Machine {
    fn from(m: MachineRecord) -> Machine {
        Machine { uuid: m.uuid, subscriber_id: m.subscriber_id, nickname: m.nickname, enrolled_at: m.enrolled_at }
    }
}

/// Where a contact relation is: `invited` (open), `active`, or how it ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum ContactStatus {
    Invited,
    Active,
    Expired,
    Removed,
    Left,
    Ended,
}

impl From<ContactState> for ContactStatus {
    fn from(state: ContactState) -> ContactStatus {
        match state {
            ContactState::Invited => ContactStatus::Invited,
            ContactState::Active => ContactStatus::Active,
            ContactState::Expired => ContactStatus::Expired,
            ContactState::Removed => ContactStatus::Removed,
            ContactState::Left => ContactStatus::Left,
            ContactState::Ended => ContactStatus::Ended,
        }
    }
}

/// A support contact of a subscriber, in any state.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Contact {
    pub id: i64,
    pub subscriber_id: i64,
    /// The contact's account, once accepted.
    pub user_id: Option<i64>,
    pub invitation_guid: Uuid,
    pub invited_email: String,
    #[serde(with = "time::serde::rfc3339")]
    pub invited_at: OffsetDateTime,
    /// Null: no invitation mail was ever sent.
    #[serde(with = "time::serde::rfc3339::option")]
    pub invitation_sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
    pub terms_version: Option<String>,
    pub nickname: Option<String>,
    /// Where the contact wants mail about this subscriber, if not the invited address.
    pub contact_email: Option<String>,
    /// The alert preferences, as accepted or changed since (any JSON).
    pub alert_prefs: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub state: ContactStatus,
}

impl From<ContactRecord> for Contact {
    fn from(c: ContactRecord) -> Contact {
        Contact {
            id: c.id,
            subscriber_id: c.subscriber_id,
            user_id: c.user_id,
            invitation_guid: c.invitation_guid,
            invited_email: c.invited_email,
            invited_at: c.invited_at,
            invitation_sent_at: c.invitation_sent_at,
            expires_at: c.expires_at,
            accepted_at: c.accepted_at,
            terms_version: c.terms_version,
            nickname: c.nickname,
            contact_email: c.contact_email,
            alert_prefs: c.alert_prefs,
            ended_at: c.ended_at,
            state: c.state.into(),
        }
    }
}

/// An invitation made: the accept link also went by mail.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Invitation {
    pub contact_id: i64,
    pub guid: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Where the invitee accepts (also in the mail).
    pub accept_url: String,
}

impl From<Invited> for Invitation {
    fn from(i: Invited) -> Invitation {
        Invitation { contact_id: i.contact_id, guid: i.guid, expires_at: i.expires_at, accept_url: i.accept_url }
    }
}

/// What an invitation link shows before it is accepted: who invites, and whether it is open.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct InvitationShown {
    pub guid: Uuid,
    /// The subscriber's name.
    pub subscriber: String,
    pub invited_email: String,
    /// `invited` (open), `expired`, or the state it ended in.
    #[schema(value_type = ContactStatus)]
    pub state: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// What the person following the link can do.
    pub message: String,
}

impl From<InvitationView> for InvitationShown {
    fn from(v: InvitationView) -> InvitationShown {
        InvitationShown {
            guid: v.guid,
            subscriber: v.subscriber,
            invited_email: v.invited_email,
            state: v.state,
            expires_at: v.expires_at,
            message: v.message,
        }
    }
}

/// One row of the audit, newest first. `action` is a code (`relay.attached`, `user.created`, …);
/// one of a newer gateway reads as written.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditRow {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor_user_id: Option<i64>,
    pub action: String,
    pub machine_uuid: Option<Uuid>,
    pub subscriber_id: Option<i64>,
    pub detail: String,
}

impl From<AuditRecord> for AuditRow {
    fn from(r: AuditRecord) -> AuditRow {
        AuditRow {
            id: r.id,
            at: r.at,
            actor_user_id: r.actor_user_id,
            action: r.action,
            machine_uuid: r.machine_uuid,
            subscriber_id: r.subscriber_id,
            detail: r.detail,
        }
    }
}

/// A remote-fix action a technician took on a device, and how it went.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeviceAction {
    pub id: i64,
    pub uuid: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub token_id: Option<i64>,
    /// The token's name.
    pub technician: String,
    /// `power.on`, `boot`, `rescue.start`, `session.close`, `lan.adopt`, …
    pub action: String,
    pub detail: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    pub message: Option<String>,
    /// The gateway that took it.
    pub instance: String,
}

impl From<ActionRecord> for DeviceAction {
    fn from(r: ActionRecord) -> DeviceAction {
        DeviceAction {
            id: r.id,
            uuid: r.uuid,
            at: r.at,
            token_id: r.token_id,
            technician: r.technician,
            action: r.action,
            detail: r.detail,
            outcome: r.outcome,
            message: r.message,
            instance: r.instance,
        }
    }
}

/// An AMT redirection session (SOL, IDE-R, KVM) relayed to a device, as the relay tap saw it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RedirectionSession {
    pub id: i64,
    pub uuid: Uuid,
    /// `sol`, `ider`, `kvm` or what the tap could not tell.
    pub kind: String,
    /// The name of the token that opened the relay.
    pub technician: String,
    /// The AMT user the session authenticated as.
    pub device_user: Option<String>,
    pub port: u16,
    pub instance: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Null while the session is open.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Until `ended_at`, or until now for an open session.
    pub duration_ms: i64,
    pub outcome: String,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
}

impl From<RedirectionRecord> for RedirectionSession {
    fn from(r: RedirectionRecord) -> RedirectionSession {
        RedirectionSession {
            id: r.id,
            uuid: r.uuid,
            kind: r.kind,
            technician: r.technician,
            device_user: r.device_user,
            port: r.port,
            instance: r.instance,
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration_ms: r.duration_ms,
            outcome: r.outcome,
            bytes_to_device: r.bytes_to_device,
            bytes_from_device: r.bytes_from_device,
        }
    }
}

/// A host a LAN scan found.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Host {
    /// The gateway whose LAN it is on.
    pub instance: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ip: String,
    pub interface: String,
    /// Whether it answered as Intel AMT.
    pub amt: bool,
    /// AMT's version as it reported it without credentials.
    pub amt_version: Option<String>,
    /// `pre-provisioning`, `in provisioning` or `provisioned`.
    pub provisioning: Option<String>,
    /// AMT's ports that accepted a connection (16992, 16993), and 623 when it answered a ping.
    pub amt_ports: Vec<u16>,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

impl From<LanHost> for Host {
    fn from(h: LanHost) -> Host {
        Host {
            instance: h.instance,
            mac: h.mac,
            ip: h.ip,
            interface: h.interface,
            amt: h.amt,
            amt_version: h.amt_version,
            provisioning: h.provisioning,
            amt_ports: h.amt_ports,
            first_seen: h.first_seen,
            last_seen: h.last_seen,
        }
    }
}

/// An AMT PC of the LAN adopted as a device of kind `lan`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Adoption {
    pub uuid: Uuid,
    /// The gateway that reaches it (the one on its LAN).
    pub instance: String,
    /// The only address the gateway connects to for this device.
    pub ip: String,
    pub mac: Option<String>,
    /// SHA-256 of the certificate it presented on 16993 at adoption; null: reached in the clear.
    pub tls_pin: Option<String>,
    /// 16992/16994 accepted connections at adoption.
    pub plain_ports: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub adopted_at: OffsetDateTime,
    pub adopted_by: String,
}

impl From<LanAdoption> for Adoption {
    fn from(a: LanAdoption) -> Adoption {
        Adoption {
            uuid: a.uuid,
            instance: a.instance,
            ip: a.ip,
            mac: a.mac,
            tls_pin: a.tls_pin,
            plain_ports: a.plain_ports,
            adopted_at: a.adopted_at,
            adopted_by: a.adopted_by,
        }
    }
}

/// A LAN scan's progress and, once done, what it found.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Scan {
    pub id: u64,
    pub interface: String,
    pub cidr: String,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// `arp`, `ping`, `probe`, then `done`.
    pub phase: &'static str,
    /// Addresses asked in the ARP sweep so far, of `total`.
    pub swept: u64,
    pub total: u64,
    /// Live hosts found so far, and those probed.
    pub live: u64,
    pub probed: u64,
    pub amt: u64,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub elapsed_ms: u64,
    /// Every live host found, once the scan is done.
    pub hosts: Vec<Host>,
    /// The gateway whose LAN it scans (in the answer that starts it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl From<ScanStatus> for Scan {
    fn from(s: ScanStatus) -> Scan {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Scan {
            id: s.id,
            interface: s.interface,
            cidr: s.cidr,
            state: s.state,
            phase: s.phase,
            swept: count(s.swept),
            total: count(s.total),
            live: count(s.live),
            probed: count(s.probed),
            amt: count(s.amt),
            error: s.error,
            started_at: s.started_at,
            elapsed_ms: s.elapsed_ms,
            hosts: s.hosts.into_iter().map(Host::from).collect(),
            instance: None,
        }
    }
}

/// A Wake-on-LAN magic packet sent.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MagicPacket {
    pub mac: String,
    pub interface: String,
    /// The raw frame went out.
    pub frame: bool,
    /// Where the UDP datagram went (`198.18.5.255:9`).
    pub udp: String,
}

impl From<MagicSent> for MagicPacket {
    fn from(m: MagicSent) -> MagicPacket {
        MagicPacket { mac: m.mac, interface: m.interface, frame: m.frame, udp: m.udp }
    }
}

/// A machine's agent as the gateway knows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Agent {
    pub uuid: Uuid,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub capabilities: u32,
    /// The PC user's consent to remote help.
    pub remote_help: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_hello: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_report: Option<OffsetDateTime>,
    pub remote_addr: Option<String>,
    /// The gateway holding its connection, while connected.
    pub instance_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
}

impl From<AgentRecord> for Agent {
    fn from(a: AgentRecord) -> Agent {
        Agent {
            uuid: a.uuid,
            hostname: a.hostname,
            os: a.os,
            agent_version: a.agent_version,
            capabilities: a.capabilities,
            remote_help: a.remote_help,
            enrolled_at: a.enrolled_at,
            last_hello: a.last_hello,
            last_report: a.last_report,
            remote_addr: a.remote_addr,
            instance_id: a.instance_id,
            connected_since: a.connected_since,
        }
    }
}

/// An alert sent (or being sent) to a support contact about a machine's health.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AlertDelivery {
    pub id: i64,
    pub uuid: Option<Uuid>,
    pub contact_id: i64,
    /// `email` or `webhook`.
    pub channel: String,
    pub kind: String,
    pub health: String,
    pub recipient: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub gave_up_at: Option<OffsetDateTime>,
    pub attempts: u64,
    pub last_error: Option<String>,
}

impl From<DeliveryRecord> for AlertDelivery {
    fn from(d: DeliveryRecord) -> AlertDelivery {
        AlertDelivery {
            id: d.id,
            uuid: d.uuid,
            contact_id: d.contact_id,
            channel: d.channel,
            kind: d.kind,
            health: d.health,
            recipient: d.recipient,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
            gave_up_at: d.gave_up_at,
            attempts: d.attempts,
            last_error: d.last_error,
        }
    }
}

/// A signed support action for a machine's agent, and where it is in its life.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SupportActionView {
    pub id: Uuid,
    /// The machine.
    pub uuid: Uuid,
    pub subscriber_id: Option<i64>,
    /// `script` or `instructions`.
    pub kind: String,
    pub body: String,
    pub timeout_secs: i64,
    pub issued_by_user_id: i64,
    pub issued_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// `pending`, `sent`, `expired`, or the result's status.
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub result_at: Option<OffsetDateTime>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    pub output: Option<String>,
    pub output_truncated: bool,
    /// Why the agent refused it or it failed.
    pub result_text: Option<String>,
    /// The telemetry report the agent took after the action.
    pub report_seq: Option<i64>,
}

impl From<SupportAction> for SupportActionView {
    fn from(a: SupportAction) -> SupportActionView {
        SupportActionView {
            id: a.id,
            uuid: a.uuid,
            subscriber_id: a.subscriber_id,
            kind: a.kind,
            body: a.body,
            timeout_secs: a.timeout_secs,
            issued_by_user_id: a.issued_by_user_id,
            issued_by: a.issued_by,
            created_at: a.created_at,
            expires_at: a.expires_at,
            state: a.state,
            sent_at: a.sent_at,
            result_at: a.result_at,
            exit_code: a.exit_code,
            duration_ms: a.duration_ms,
            output: a.output,
            output_truncated: a.output_truncated,
            result_text: a.result_text,
            report_seq: a.report_seq,
        }
    }
}

/// A signed message for PC users, with its delivery counts.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Message {
    pub id: Uuid,
    /// `machine`, `subscriber` or `gateway`.
    pub scope: String,
    pub subscriber_id: Option<i64>,
    pub uuid: Option<Uuid>,
    pub from_user_id: i64,
    pub from_name: String,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Machines it is for, how many of them have it, and how many PC users read it.
    pub machines: u64,
    pub sent: u64,
    pub received: u64,
    pub read: u64,
}

impl From<SupportMessage> for Message {
    fn from(m: SupportMessage) -> Message {
        Message {
            id: m.id,
            scope: m.scope,
            subscriber_id: m.subscriber_id,
            uuid: m.uuid,
            from_user_id: m.from_user_id,
            from_name: m.from_name,
            text: m.text,
            created_at: m.created_at,
            expires_at: m.expires_at,
            machines: m.machines,
            sent: m.sent,
            received: m.received,
            read: m.read,
        }
    }
}

/// One machine's copy of a message.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Delivery {
    pub uuid: Uuid,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub received_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
}

impl From<MessageDelivery> for Delivery {
    fn from(d: MessageDelivery) -> Delivery {
        Delivery { uuid: d.uuid, sent_at: d.sent_at, received_at: d.received_at, read_at: d.read_at }
    }
}

/// What `AMT_RedirectionService` says.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct RedirectionState {
    pub enabled_state: u32,
    pub sol: bool,
    pub ider: bool,
    pub listener: bool,
}

impl From<Redirection> for RedirectionState {
    fn from(r: Redirection) -> RedirectionState {
        RedirectionState { enabled_state: r.enabled_state, sol: r.sol, ider: r.ider, listener: r.listener }
    }
}

/// `AMT_BootSettingData` as the device returned it: every property, in order, as `[name, value]`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BootSettingData {
    #[schema(value_type = Vec<Vec<String>>)]
    pub properties: Vec<(String, String)>,
}

impl From<BootSettings> for BootSettingData {
    fn from(b: BootSettings) -> BootSettingData {
        BootSettingData { properties: b.properties }
    }
}

/// User consent (`IPS_OptInService`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct ConsentState {
    /// 0 none, 1 KVM only, 4294967295 every redirection and boot change.
    pub required: u32,
    /// 0 not started, 1 requested, 2 code displayed, 3 received, 4 in session.
    pub state: u32,
}

impl From<Consent> for ConsentState {
    fn from(c: Consent) -> ConsentState {
        ConsentState { required: c.required, state: c.state }
    }
}

/// What the gateway learns about a device through AMT before changing it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeviceFacts {
    pub amt_version: String,
    /// The UUID the firmware reports.
    pub platform_uuid: Option<Uuid>,
    /// `admin` (ACM), `client` (CCM) or the raw ProvisioningMode.
    pub control_mode: String,
    pub host_name: Option<String>,
    pub redirection: RedirectionState,
    pub boot: BootSettingData,
    pub power_state: u32,
    pub power: String,
    pub consent: ConsentState,
}

impl From<Facts> for DeviceFacts {
    fn from(f: Facts) -> DeviceFacts {
        DeviceFacts {
            amt_version: f.amt_version,
            platform_uuid: f.platform_uuid,
            control_mode: f.control_mode,
            host_name: f.host_name,
            redirection: f.redirection.into(),
            boot: f.boot.into(),
            power_state: f.power_state,
            power: f.power,
            consent: f.consent.into(),
        }
    }
}

/// How a device is reached.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Only described: `crate::view` names the kinds.
pub(super) enum DeviceKind {
    Cira,
    Agent,
    Lan,
}

/// A device as `GET /api/v1/devices` shows it (built by `crate::view::device_view`, here or on
/// the fleet's gateway holding it): its record when it ever connected over CIRA, with live state,
/// and its adoption when it is a LAN PC. The record's fields are absent for a device the gateway
/// knows only live or from the LAN.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // Only described: see above.
pub(super) struct DeviceView {
    pub uuid: Uuid,
    pub kinds: Vec<DeviceKind>,
    /// Held by this gateway or, as the record says, by another one of the fleet.
    pub connected: bool,
    /// Ports the device forwards (AMT: 16992-16995).
    pub ports: Vec<u16>,
    pub remote_addr: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_hello: Option<OffsetDateTime>,
    /// The gateway holding (or last holding) its tunnel.
    pub instance: Option<String>,
    /// Added by an operator (`tether device add`), rather than first seen on the wire.
    pub registered: Option<bool>,
    pub has_password: Option<bool>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_seen: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_keepalive: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_disconnect: Option<OffsetDateTime>,
    pub last_disconnect_reason: Option<String>,
    pub duplicate_count: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_duplicate_at: Option<OffsetDateTime>,
    pub duplicate_note: Option<String>,
    /// The credential the UUID is bound to (`account:USER` or `device`).
    pub pinned_credential: Option<String>,
    /// Claims for this UUID refused because its tunnel was live and answering.
    pub conflict_count: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_conflict_at: Option<OffsetDateTime>,
    pub conflict_note: Option<String>,
    /// Its adoption, for a LAN PC.
    pub lan: Option<Adoption>,
}

/// One support parameter: its value, or why the agent could not read it.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // Only described: `crate::agents::view` builds it.
pub(super) struct Reading {
    /// The value (its shape depends on the parameter; times are RFC 3339).
    pub value: Option<serde_json::Value>,
    /// Why there is no value.
    pub unknown: Option<String>,
}

/// A report's support parameters, each a [`Reading`] (`crate::agents::view::report_json`); a
/// stored report that no longer decodes shows only `error`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // Only described: see above.
pub(super) struct SupportParameters {
    /// `{"backend", "active", "rules", "default_deny"}`.
    pub firewall: Option<Reading>,
    /// `{"product", "running", "updater_running", "signatures_at"}`.
    pub antivirus: Option<Reading>,
    /// `{"finished_at", "threats_found", "threats_cleaned"}`.
    pub last_full_scan: Option<Reading>,
    /// `{"pending", "security_pending", "security_pending_since", "last_success"}`.
    pub updates: Option<Reading>,
    /// `{"last_snapshot"}`.
    pub backup: Option<Reading>,
    pub os_version: Option<Reading>,
    pub boot_time: Option<Reading>,
    /// `{"free_bytes", "total_bytes"}`.
    pub disk: Option<Reading>,
    pub agent_version: Option<String>,
    /// Why the stored report does not decode (then nothing else is shown).
    pub error: Option<String>,
}

/// A time as RFC 3339, or as Unix seconds when it cannot be written so (a clock far off).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only described: `crate::agents::view::rfc3339` writes it.
pub(super) enum ReportedTime {
    Rfc3339(#[serde(with = "time::serde::rfc3339")] OffsetDateTime),
    UnixSeconds(i64),
}

/// A string schema of its own (a component the request bodies refer to), for text the flows
/// check in one way everywhere.
macro_rules! text_schema {
    ($(#[doc = $doc:literal])+ $name:ident { max_length: $max:expr, pattern: $pattern:literal }) => {
        $(#[doc = $doc])+
        #[allow(dead_code)] // Only described: the fields are `String`s, checked by the flows.
        pub(super) struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let description = [$($doc.trim()),+].join(" ");
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(description))
                    .max_length($max)
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

// The patterns are anchored, and say in JSON Schema what `crate::flows` checks: no control
// characters (C0, DEL and C1), and for short texts at least one that is not whitespace (they are
// trimmed). The flows count the length limits in bytes of UTF-8; `maxLength` counts characters,
// which is the same for ASCII.
text_schema!(
    /// A short text (`flows::short_text`): at most 254 bytes once trimmed, not blank, no control
    /// characters.
    ShortText {
        max_length: Some(254),
        pattern: r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    }
);

text_schema!(
    /// An email address as far as the gateway checks one (`flows::email_address`): one `@` with
    /// text before it and a dot after it, no spaces, at most 254 bytes.
    Email {
        max_length: Some(254),
        pattern: r"^\s*[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]*\.[^@\s\x00-\x1f\x7f-\x9f]*\s*$"
    }
);

text_schema!(
    /// A username (`flows::username`): 1 to 64 bytes, no whitespace or control characters.
    Username { max_length: Some(64), pattern: r"^[^\s\x00-\x1f\x7f-\x9f]+$" }
);

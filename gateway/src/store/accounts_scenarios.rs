//! The accounts' life cycle, one scenario per function, written once against the store's public
//! API with an explicit clock: run on SQLite by the gateway's unit tests (`accounts_tests.rs`)
//! and on SQLite and a real PostgreSQL by `tests/tests/store.rs`, which include this file. The
//! including module provides the names imported below.

use super::{
    authorize, verify_password, Acceptance, AccountError, Action, AuditAction, ContactState, Denied, NewAudit,
    NewSubscriber, OffsetDateTime, Resource, Role, Store, SubscriberPii, SubscriptionStatus, TokenScope, Uuid,
};

const SECOND: time::Duration = time::Duration::SECOND;
const DAY: time::Duration = time::Duration::DAY;
const WEEK: time::Duration = time::Duration::WEEK;
const THREE_MONTHS: time::Duration = time::Duration::days(90);

/// The scenarios' epoch (2027-01-15).
pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time")
}

/// Registers subscriber `name` (user and subscriber ids).
async fn subscriber(store: &Store, name: &str, max_machines: u32, max_contacts: u32) -> (i64, i64) {
    let new = NewSubscriber {
        username: name.to_string(),
        password: None,
        pii: SubscriberPii {
            name: format!("{name} Ltd"),
            email: format!("{name}@example.org"),
            phone: Some("+1 555 0100".into()),
            billing_note: Some("net 30".into()),
        },
        max_machines,
        max_contacts,
    };
    let registered = store.register_subscriber(&new, t0()).await.unwrap();
    (registered.user_id, registered.subscriber_id)
}

async fn user(store: &Store, name: &str) -> i64 {
    store.create_user(name, Some(&format!("{name}@example.org")), None, Role::User, t0()).await.unwrap()
}

fn acceptance(nickname: &str) -> Acceptance {
    Acceptance {
        terms_version: "2027-01".into(),
        nickname: nickname.into(),
        contact_email: None,
        alert_prefs: serde_json::json!({"email": true, "webhook": null}),
    }
}

/// Whether `user_id` may `action` machine `uuid` (by the policy, on the relations the store
/// computes); for viewing, also checks that the visible-machines query agrees.
async fn may(store: &Store, user_id: i64, action: Action, uuid: Uuid) -> Result<(), Denied> {
    let principal = store.principal(user_id, TokenScope::Attach).await.unwrap().unwrap();
    let relations = store.relations(user_id).await.unwrap();
    let subscriber_id = store.machine(uuid).await.unwrap().map(|m| m.subscriber_id);
    let decision = authorize(&principal, &relations, action, Resource::Machine { uuid, subscriber_id });
    if action == Action::ViewMachine {
        let listed = store.visible_machines(&principal, None, 1000).await.unwrap().iter().any(|m| m.uuid == uuid);
        assert_eq!(listed, decision.is_ok(), "user {user_id}, machine {uuid}: the list and the policy disagree");
    }
    decision
}

async fn sees(store: &Store, user_id: i64, uuid: Uuid) -> bool {
    may(store, user_id, Action::ViewMachine, uuid).await.is_ok()
}

pub async fn invitations_expire_after_their_validity(store: &Store) {
    let (_, sub) = subscriber(store, "ann", 5, 5).await;
    let carol = user(store, "carol").await;
    let late = store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    assert_eq!(late.expires_at, t0() + WEEK);
    let swept = store.invite_contact(sub, "dave@example.org", t0(), WEEK).await.unwrap();
    assert_ne!(late.guid, swept.guid);
    assert_eq!(store.expire_invitations(t0() + WEEK - SECOND).await.unwrap(), 0);
    // At its expiry, swept or not, a link is refused as expired: a new invitation is needed.
    let err = store.accept_invitation(late.guid, carol, &acceptance("carol"), t0() + WEEK).await.unwrap_err();
    assert!(matches!(err, AccountError::InvitationExpired), "{err}");
    assert_eq!(err.code(), "invitation_expired");
    assert!(err.to_string().contains("new invitation"), "{err}");
    assert_eq!(store.expire_invitations(t0() + WEEK).await.unwrap(), 2);
    let record = store.invitation(swept.guid).await.unwrap().unwrap();
    assert_eq!((record.state, record.ended_at), (ContactState::Expired, Some(t0() + WEEK)));
    let err = store.accept_invitation(swept.guid, carol, &acceptance("carol"), t0() + DAY).await.unwrap_err();
    assert!(matches!(err, AccountError::InvitationExpired), "{err}");
    assert!(!store.mark_invitation_sent(swept.guid, t0()).await.unwrap());
    let err = store.accept_invitation(Uuid::new_v4(), carol, &acceptance("carol"), t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchInvitation), "{err}");

    // Accepted within its week.
    let invitation = store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    assert!(store.mark_invitation_sent(invitation.guid, t0() + SECOND).await.unwrap());
    let accepted =
        store.accept_invitation(invitation.guid, carol, &acceptance("carol"), t0() + WEEK - SECOND).await.unwrap();
    assert_eq!((accepted.state, accepted.user_id), (ContactState::Active, Some(carol)));
    assert_eq!((accepted.accepted_at, accepted.invitation_sent_at), (Some(t0() + WEEK - SECOND), Some(t0() + SECOND)));
    assert_eq!((accepted.terms_version.as_deref(), accepted.nickname.as_deref()), (Some("2027-01"), Some("carol")));
    assert_eq!(accepted.alert_prefs, Some(serde_json::json!({"email": true, "webhook": null})));
    // The sweep leaves an accepted invitation alone; accepting twice is refused.
    assert_eq!(store.expire_invitations(t0() + WEEK * 2).await.unwrap(), 0);
    let err = store.accept_invitation(invitation.guid, carol, &acceptance("c"), t0() + DAY).await.unwrap_err();
    assert!(matches!(err, AccountError::InvitationClosed("active")), "{err}");
    // A second invitation of the same subscriber for an active contact is refused on acceptance.
    let again = store.invite_contact(sub, "carol@example.org", t0() + DAY, WEEK).await.unwrap();
    let err = store.accept_invitation(again.guid, carol, &acceptance("c"), t0() + DAY).await.unwrap_err();
    assert!(matches!(err, AccountError::AlreadyContact), "{err}");
}

pub async fn contacts_see_machines_while_active_then_are_inactive_then_plain_users(store: &Store) {
    let (ann, sub) = subscriber(store, "ann", 5, 5).await;
    let (bob, bob_sub) = subscriber(store, "bob", 5, 5).await;
    let (machine, bobs) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(store.enroll_machine(sub, machine, Some("reception"), t0()).await.unwrap());
    assert!(!store.enroll_machine(sub, machine, None, t0()).await.unwrap(), "enrolled already");
    assert!(store.enroll_machine(bob_sub, bobs, None, t0()).await.unwrap());
    let err = store.enroll_machine(bob_sub, machine, None, t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::MachineTaken(u) if u == machine), "{err}");
    assert_eq!(store.machines_of(sub).await.unwrap()[0].nickname.as_deref(), Some("reception"));

    // Owners see their own machines only; the operator sees all.
    assert!(sees(store, ann, machine).await && !sees(store, ann, bobs).await);
    assert!(sees(store, bob, bobs).await && !sees(store, bob, machine).await);
    let operator = store.user_by_name("operator").await.unwrap().unwrap();
    assert_eq!(operator.role, Role::Operator);
    assert!(sees(store, operator.id, machine).await && sees(store, operator.id, bobs).await);

    let carol = user(store, "carol").await;
    assert!(!sees(store, carol, machine).await);
    let invitation = store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    assert!(!sees(store, carol, machine).await, "an invitation alone grants nothing");
    store.mark_invitation_sent(invitation.guid, t0()).await.unwrap();
    store.accept_invitation(invitation.guid, carol, &acceptance("carol"), t0() + DAY).await.unwrap();
    assert!(sees(store, carol, machine).await && !sees(store, carol, bobs).await);
    assert_eq!(may(store, carol, Action::AttachRelay, machine).await, Ok(()));
    assert_eq!(may(store, carol, Action::AttachRelay, bobs).await, Err(Denied::NotRelated));

    // Removed by the subscriber: no access, inactive from then.
    let removal = store.remove_contact(sub, invitation.contact_id, t0() + DAY * 2).await.unwrap();
    assert_eq!(
        (removal.was, removal.mail_due, removal.mail_to.as_str()),
        (ContactState::Active, true, "carol@example.org")
    );
    assert!(!sees(store, carol, machine).await);
    let record = store.contact(invitation.contact_id).await.unwrap().unwrap();
    assert_eq!((record.state, record.ended_at), (ContactState::Removed, Some(t0() + DAY * 2)));
    assert_eq!(store.user(carol).await.unwrap().unwrap().inactive_since, Some(t0() + DAY * 2));
    let err = store.remove_contact(sub, invitation.contact_id, t0() + DAY * 3).await.unwrap_err();
    assert!(matches!(err, AccountError::ContactEnded("removed")), "{err}");
    let err = store.remove_contact(bob_sub, invitation.contact_id, t0() + DAY * 3).await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchContact(_)), "{err}: another subscriber's contact");

    // Three months later, a plain user again; owners never become inactive.
    let removed_at = t0() + DAY * 2;
    assert_eq!(store.sweep_inactive(removed_at + THREE_MONTHS - SECOND, THREE_MONTHS).await.unwrap(), 0);
    assert_eq!(store.sweep_inactive(removed_at + THREE_MONTHS, THREE_MONTHS).await.unwrap(), 1);
    assert_eq!(store.user(carol).await.unwrap().unwrap().inactive_since, None);
    assert_eq!(store.user(ann).await.unwrap().unwrap().inactive_since, None);

    // Bob's contact, then she leaves.
    let later = removed_at + THREE_MONTHS + DAY;
    let invitation = store.invite_contact(bob_sub, "carol@example.org", later, WEEK).await.unwrap();
    store.accept_invitation(invitation.guid, carol, &acceptance("carol"), later).await.unwrap();
    assert!(sees(store, carol, bobs).await);
    let left = store.leave_subscriber(carol, bob_sub, later + DAY).await.unwrap();
    assert_eq!(left.was, ContactState::Active);
    assert_eq!(store.contact(invitation.contact_id).await.unwrap().unwrap().state, ContactState::Left);
    assert!(!sees(store, carol, bobs).await);
    assert_eq!(store.user(carol).await.unwrap().unwrap().inactive_since, Some(later + DAY));
    let err = store.leave_subscriber(carol, bob_sub, later + DAY).await.unwrap_err();
    assert!(matches!(err, AccountError::NotAContact(_)), "{err}");
}

pub async fn removing_an_invitation_never_sent_is_due_no_mail(store: &Store) {
    let (_, sub) = subscriber(store, "ann", 5, 5).await;
    let quiet = store.invite_contact(sub, "dave@example.org", t0(), WEEK).await.unwrap();
    let removal = store.remove_contact(sub, quiet.contact_id, t0() + SECOND).await.unwrap();
    assert_eq!((removal.was, removal.mail_due, removal.user_id), (ContactState::Invited, false, None));
    let sent = store.invite_contact(sub, "erin@example.org", t0(), WEEK).await.unwrap();
    store.mark_invitation_sent(sent.guid, t0()).await.unwrap();
    let removal = store.remove_contact(sub, sent.contact_id, t0() + SECOND).await.unwrap();
    assert_eq!(
        (removal.was, removal.mail_due, removal.mail_to.as_str()),
        (ContactState::Invited, true, "erin@example.org")
    );
    // The removed invitation's link no longer works.
    let erin = user(store, "erin").await;
    let err = store.accept_invitation(sent.guid, erin, &acceptance("erin"), t0() + DAY).await.unwrap_err();
    assert!(matches!(err, AccountError::InvitationClosed("removed")), "{err}");
}

pub async fn terminating_a_subscription_ends_every_contact_and_cuts_access_at_once(store: &Store) {
    let (ann, sub) = subscriber(store, "ann", 5, 5).await;
    let machine = Uuid::new_v4();
    store.enroll_machine(sub, machine, None, t0()).await.unwrap();
    let carol = user(store, "carol").await;
    let active = store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    store.accept_invitation(active.guid, carol, &acceptance("carol"), t0()).await.unwrap();
    let sent = store.invite_contact(sub, "dave@example.org", t0(), WEEK).await.unwrap();
    store.mark_invitation_sent(sent.guid, t0()).await.unwrap();
    let unsent = store.invite_contact(sub, "erin@example.org", t0(), WEEK).await.unwrap();
    assert_eq!(may(store, carol, Action::AttachRelay, machine).await, Ok(()));

    let at = t0() + DAY;
    let ended = store.terminate_subscription(sub, "unpaid since March", at).await.unwrap();
    let told: Vec<(i64, ContactState, bool)> = ended.iter().map(|e| (e.contact_id, e.was, e.mail_due)).collect();
    assert_eq!(
        told,
        [
            (active.contact_id, ContactState::Active, true),
            (sent.contact_id, ContactState::Invited, true),
            (unsent.contact_id, ContactState::Invited, false)
        ]
    );
    for contact in store.contacts_of(sub).await.unwrap() {
        assert_eq!((contact.state, contact.ended_at), (ContactState::Ended, Some(at)));
    }
    let record = store.subscriber(sub).await.unwrap().unwrap();
    assert_eq!((record.status, record.terminated_at), (SubscriptionStatus::Terminated, Some(at)));
    assert_eq!(store.termination_reason(sub).await.unwrap().as_deref(), Some("unpaid since March"));
    assert!(!sees(store, carol, machine).await);
    assert_eq!(store.user(carol).await.unwrap().unwrap().inactive_since, Some(at));
    // The owner still sees its own records, but neither attaches nor changes anything.
    assert!(sees(store, ann, machine).await);
    assert_eq!(may(store, ann, Action::AttachRelay, machine).await, Err(Denied::SubscriptionTerminated));
    let err = store.invite_contact(sub, "frank@example.org", at, WEEK).await.unwrap_err();
    assert!(matches!(err, AccountError::SubscriptionTerminated(_)), "{err}");
    let err = store.enroll_machine(sub, Uuid::new_v4(), None, at).await.unwrap_err();
    assert!(matches!(err, AccountError::SubscriptionTerminated(_)), "{err}");
    let err = store.terminate_subscription(sub, "again", at).await.unwrap_err();
    assert!(matches!(err, AccountError::SubscriptionTerminated(_)), "{err}");
    let dave = user(store, "dave").await;
    let err = store.accept_invitation(sent.guid, dave, &acceptance("dave"), at).await.unwrap_err();
    assert!(matches!(err, AccountError::InvitationClosed("ended")), "{err}");
}

pub async fn a_suspended_user_is_denied_everything(store: &Store) {
    let (_, sub) = subscriber(store, "ann", 5, 5).await;
    let machine = Uuid::new_v4();
    store.enroll_machine(sub, machine, None, t0()).await.unwrap();
    let carol = user(store, "carol").await;
    let invitation = store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    store.accept_invitation(invitation.guid, carol, &acceptance("carol"), t0()).await.unwrap();
    assert!(store.suspend_user(carol, t0() + DAY).await.unwrap());
    assert!(!store.suspend_user(carol, t0() + DAY * 2).await.unwrap(), "suspended already");
    assert_eq!(store.user(carol).await.unwrap().unwrap().suspended_at, Some(t0() + DAY));
    assert_eq!(may(store, carol, Action::ViewMachine, machine).await, Err(Denied::Suspended));
    assert_eq!(may(store, carol, Action::AttachRelay, machine).await, Err(Denied::Suspended));
    let another = store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    let err = store.accept_invitation(another.guid, carol, &acceptance("c"), t0() + DAY).await.unwrap_err();
    assert!(matches!(err, AccountError::Suspended), "{err}");
    assert!(store.unsuspend_user(carol).await.unwrap());
    assert!(sees(store, carol, machine).await);
    let operator = store.user_by_name("operator").await.unwrap().unwrap();
    let err = store.suspend_user(operator.id, t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::OperatorNotSuspendable), "{err}");
    let err = store.suspend_user(i64::MAX, t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchUser(_)), "{err}");
}

pub async fn machines_and_contacts_are_limited_by_the_subscription(store: &Store) {
    let (_, sub) = subscriber(store, "ann", 1, 1).await;
    store.enroll_machine(sub, Uuid::new_v4(), None, t0()).await.unwrap();
    let err = store.enroll_machine(sub, Uuid::new_v4(), None, t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::MachineLimit { max: 1, .. }), "{err}");
    store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    let err = store.invite_contact(sub, "dave@example.org", t0(), WEEK).await.unwrap_err();
    assert!(matches!(err, AccountError::ContactLimit { max: 1, .. }), "{err}");
    // An invitation past its expiry holds no place, swept or not.
    store.invite_contact(sub, "dave@example.org", t0() + WEEK, WEEK).await.unwrap();
    let err = store.invite_contact(sub, "dave@example.org", t0() + WEEK, WEEK).await.unwrap_err();
    assert_eq!(err.code(), "contact_limit");
    let err = store.invite_contact(i64::MAX, "x@example.org", t0(), WEEK).await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchSubscriber(_)), "{err}");
}

pub async fn an_email_change_takes_effect_only_once_confirmed(store: &Store) {
    let (_, sub) = subscriber(store, "ann", 5, 5).await;
    let carol = user(store, "carol").await;
    let secret = store.request_email_change(carol, None, "carol@new.example.org", t0(), DAY).await.unwrap();
    assert_eq!(store.user(carol).await.unwrap().unwrap().email.as_deref(), Some("carol@example.org"));
    let err = store.confirm_email_change("not-the-secret", t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchEmailChange), "{err}");
    let err = store.confirm_email_change(&secret, t0() + DAY).await.unwrap_err();
    assert!(matches!(err, AccountError::EmailChangeExpired), "{err}");
    let err = store.confirm_email_change(&secret, t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchEmailChange), "{err}: an expired link is forgotten");
    assert_eq!(store.user(carol).await.unwrap().unwrap().email.as_deref(), Some("carol@example.org"));

    // A newer request replaces an older one; the change happens once.
    let older = store.request_email_change(carol, None, "c1@example.org", t0(), DAY).await.unwrap();
    let newer = store.request_email_change(carol, None, "c2@example.org", t0(), DAY).await.unwrap();
    assert!(matches!(store.confirm_email_change(&older, t0()).await, Err(AccountError::NoSuchEmailChange)));
    let changed = store.confirm_email_change(&newer, t0() + SECOND).await.unwrap();
    assert_eq!((changed.user_id, changed.contact_id, changed.new_email.as_str()), (carol, None, "c2@example.org"));
    assert_eq!(store.user(carol).await.unwrap().unwrap().email.as_deref(), Some("c2@example.org"));
    assert!(matches!(store.confirm_email_change(&newer, t0()).await, Err(AccountError::NoSuchEmailChange)));

    // A relation's contact email, likewise; only the contact's own relation.
    let invitation = store.invite_contact(sub, "carol@example.org", t0(), WEEK).await.unwrap();
    store.accept_invitation(invitation.guid, carol, &acceptance("carol"), t0()).await.unwrap();
    let dave = user(store, "dave").await;
    let err = store.request_email_change(dave, Some(invitation.contact_id), "d@example.org", t0(), DAY).await;
    assert!(matches!(err, Err(AccountError::NoSuchContact(_))), "{err:?}");
    let secret = store
        .request_email_change(carol, Some(invitation.contact_id), "alerts@carol.example.org", t0(), DAY)
        .await
        .unwrap();
    assert_eq!(store.contact(invitation.contact_id).await.unwrap().unwrap().mail_address(), "carol@example.org");
    store.confirm_email_change(&secret, t0()).await.unwrap();
    let contact = store.contact(invitation.contact_id).await.unwrap().unwrap();
    assert_eq!(contact.mail_address(), "alerts@carol.example.org");
    assert_eq!(store.user(carol).await.unwrap().unwrap().email.as_deref(), Some("c2@example.org"));
}

pub async fn the_audit_log_is_read_by_machine_and_by_user_newest_first(store: &Store) {
    let (ann, sub) = subscriber(store, "ann", 5, 5).await;
    let (machine, other) = (Uuid::new_v4(), Uuid::new_v4());
    let row = |i: i32, actor: Option<i64>, action, uuid: Option<Uuid>| NewAudit {
        at: t0() + SECOND * i,
        actor_user_id: actor,
        action,
        machine_uuid: uuid,
        subscriber_id: Some(sub),
        detail: format!("step {i}"),
    };
    let rows = [
        row(0, Some(ann), AuditAction::MachineEnrolled, Some(machine)),
        row(1, Some(ann), AuditAction::RelayAttached, Some(machine)),
        row(2, None, AuditAction::ContactRemoved, None),
        row(3, Some(ann), AuditAction::ConsoleSession, Some(other)),
        row(4, Some(ann), AuditAction::IderSession, Some(machine)),
    ];
    let mut ids = Vec::new();
    for row in &rows {
        ids.push(store.append_audit(row).await.unwrap());
    }
    let by_machine = store.audit_for_machine(machine, None, 10).await.unwrap();
    let actions: Vec<&str> = by_machine.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["ider.session", "relay.attached", "machine.enrolled"]);
    assert_eq!((by_machine[0].at, by_machine[0].detail.as_str()), (t0() + SECOND * 4, "step 4"));
    assert_eq!(by_machine[0].machine_uuid, Some(machine));
    let page = store.audit_for_machine(machine, Some(by_machine[0].id), 1).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[1]]);
    let by_user = store.audit_by_user(ann, None, 10).await.unwrap();
    assert_eq!(by_user.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[4], ids[3], ids[1], ids[0]]);
    assert!(store.audit_by_user(i64::MAX, None, 10).await.unwrap().is_empty());
}

pub async fn users_and_tokens_belong_together(store: &Store) {
    let operator = store.user_by_name("operator").await.unwrap().unwrap();
    assert!(!operator.has_password && operator.role == Role::Operator);
    let id = store.create_token("cli", "hash-cli", TokenScope::Attach, None).await.unwrap();
    let token = store.token_by_hash("hash-cli").await.unwrap().unwrap();
    assert_eq!((token.id, token.user_id), (id, operator.id));
    let principal = store.token_principal(&token).await.unwrap().unwrap();
    assert_eq!((principal.role, principal.scope, principal.suspended), (Role::Operator, TokenScope::Attach, false));

    let carol = store.create_user("carol", None, Some("correct horse"), Role::User, t0()).await.unwrap();
    let hash = store.user_password_hash("carol").await.unwrap().unwrap();
    assert!(hash.starts_with("$argon2id$") && verify_password(&hash, b"correct horse"));
    assert_eq!(store.user_password_hash("operator").await.unwrap(), None);
    let err = store.create_user("carol", None, None, Role::User, t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::UsernameTaken(_)), "{err}");
    store.create_user_token(Some(carol), "carol-read", "hash-carol", TokenScope::Read, None).await.unwrap();
    let token = store.token_by_hash("hash-carol").await.unwrap().unwrap();
    let principal = store.token_principal(&token).await.unwrap().unwrap();
    assert_eq!((principal.user_id, principal.role, principal.scope), (carol, Role::User, TokenScope::Read));

    // A subscriber's registration is one transaction: a taken username leaves nothing behind.
    let (ann, sub) = subscriber(store, "ann", 2, 3).await;
    let record = store.subscriber(sub).await.unwrap().unwrap();
    assert_eq!((record.owner_user_id, record.status), (ann, SubscriptionStatus::Active));
    assert_eq!((record.max_machines, record.max_contacts, record.started_at), (2, 3, t0()));
    assert_eq!(store.subscriber_of_owner(ann).await.unwrap().map(|s| s.id), Some(sub));
    let pii = store.subscriber_pii(sub).await.unwrap().unwrap();
    assert_eq!((pii.name.as_str(), pii.email.as_str()), ("ann Ltd", "ann@example.org"));
    let new =
        NewSubscriber { username: "carol".into(), password: None, pii: pii.clone(), max_machines: 1, max_contacts: 1 };
    let err = store.register_subscriber(&new, t0()).await.unwrap_err();
    assert!(matches!(err, AccountError::UsernameTaken(_)), "{err}");
    assert_eq!(store.subscriber_of_owner(carol).await.unwrap(), None);
}

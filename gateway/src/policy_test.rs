//! The authorization matrix: every relation a principal can have to subscriber 1 × every
//! action, with a token of scope `attach` and of scope `read`. The tables are `match`es on
//! [`Action`], so a new action does not compile until its row is written.

use super::*;

/// Allowed, or denied with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum E {
    A,
    /// Suspended.
    S,
    /// Scope.
    P,
    /// Operator only.
    O,
    /// Not related.
    N,
    /// Subscription terminated.
    T,
}

use E::{A, N, O, P, S, T};

impl E {
    fn of(result: Result<(), Denied>) -> E {
        match result {
            Ok(()) => A,
            Err(Denied::Suspended) => S,
            Err(Denied::Scope) => P,
            Err(Denied::OperatorOnly) => O,
            Err(Denied::NotRelated) => N,
            Err(Denied::SubscriptionTerminated) => T,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

/// The columns of the tables, in order.
const COLUMNS: [&str; 7] =
    ["operator", "owner", "owner, terminated", "contact", "contact, terminated", "stranger", "suspended owner"];

fn relation(subscriber_id: i64, subscription_active: bool) -> SubscriberRelation {
    SubscriberRelation { subscriber_id, subscription_active }
}

/// The principal and relations of each column, with a token of `scope`.
fn column(i: usize, scope: TokenScope) -> (Principal, Relations) {
    let user = |role| Principal { user_id: 7, role, scope, suspended: false };
    let owns = |active| Relations { owns: vec![relation(1, active)], contact_of: Vec::new() };
    let contact = |active| Relations { owns: Vec::new(), contact_of: vec![relation(1, active)] };
    match i {
        0 => (user(Role::Operator), Relations::default()),
        1 => (user(Role::User), owns(true)),
        2 => (user(Role::User), owns(false)),
        3 => (user(Role::User), contact(true)),
        4 => (user(Role::User), contact(false)),
        // Related to other subscribers only.
        5 => (user(Role::User), Relations { owns: vec![relation(2, true)], contact_of: vec![relation(3, true)] }),
        _ => (Principal { suspended: true, ..user(Role::User) }, owns(true)),
    }
}

/// The resource each action is checked on: subscriber 1, one of its machines, the gateway, or
/// another user.
fn resource(action: Action) -> Resource {
    let machine = Resource::Machine { uuid: Uuid::from_u128(1), subscriber_id: Some(1) };
    match action {
        Action::ViewMachine | Action::AttachRelay | Action::ViewAudit | Action::RevokeAgent | Action::SendSupport => {
            machine
        }
        Action::ListMachines
        | Action::ViewSubscriberPii
        | Action::ManageContacts
        | Action::LeaveSubscriber
        | Action::EnrollMachine
        | Action::TerminateSubscription
        | Action::IssueMpsAccount
        | Action::Broadcast => Resource::Subscriber(1),
        Action::RegisterSubscriber
        | Action::ManageUsers
        | Action::ViewLan
        | Action::UseLan
        | Action::ViewSilos
        | Action::ViewContent => Resource::Gateway,
        Action::SuspendUser | Action::ManageTokens => Resource::User(99),
    }
}

/// With a token of scope `attach` (or a portal session).
#[rustfmt::skip]
fn attach_scope(action: Action) -> [E; 7] {
    // columns: operator, owner, owner (terminated), contact, contact (terminated), stranger, suspended
    match action {
        Action::ListMachines          => [A, A, A, A, T, N, S],
        Action::ViewMachine           => [A, A, A, A, T, N, S],
        Action::AttachRelay           => [A, A, T, A, T, N, S],
        Action::ViewAudit             => [A, A, A, A, T, N, S],
        Action::ViewSubscriberPii     => [A, A, A, N, N, N, S],
        Action::ManageContacts        => [A, A, T, N, N, N, S],
        Action::LeaveSubscriber       => [A, N, N, A, A, N, S],
        Action::EnrollMachine         => [A, A, T, N, N, N, S],
        Action::RegisterSubscriber    => [A, O, O, O, O, O, S],
        Action::TerminateSubscription => [A, O, O, O, O, O, S],
        Action::IssueMpsAccount       => [A, O, O, O, O, O, S],
        Action::SuspendUser           => [A, O, O, O, O, O, S],
        Action::ManageTokens          => [A, O, O, O, O, O, S],
        Action::ManageUsers           => [A, O, O, O, O, O, S],
        Action::ViewLan               => [A, O, O, O, O, O, S],
        Action::UseLan                => [A, O, O, O, O, O, S],
        Action::RevokeAgent           => [A, O, O, O, O, O, S],
        Action::SendSupport           => [A, A, T, A, T, N, S],
        Action::Broadcast             => [A, A, T, N, N, N, S],
        Action::ViewSilos             => [A, O, O, O, O, O, S],
        Action::ViewContent           => [A, A, A, A, A, A, S],
    }
}

/// With a token of scope `read`: reading as above, nothing else.
#[rustfmt::skip]
fn read_scope(action: Action) -> [E; 7] {
    // columns: operator, owner, owner (terminated), contact, contact (terminated), stranger, suspended
    match action {
        Action::ListMachines          => [A, A, A, A, T, N, S],
        Action::ViewMachine           => [A, A, A, A, T, N, S],
        Action::AttachRelay           => [P, P, P, P, P, P, S],
        Action::ViewAudit             => [A, A, A, A, T, N, S],
        Action::ViewSubscriberPii     => [A, A, A, N, N, N, S],
        Action::ManageContacts        => [P, P, P, P, P, P, S],
        Action::LeaveSubscriber       => [P, P, P, P, P, P, S],
        Action::EnrollMachine         => [P, P, P, P, P, P, S],
        Action::RegisterSubscriber    => [P, P, P, P, P, P, S],
        Action::TerminateSubscription => [P, P, P, P, P, P, S],
        Action::IssueMpsAccount       => [P, P, P, P, P, P, S],
        Action::SuspendUser           => [P, P, P, P, P, P, S],
        Action::ManageTokens          => [P, P, P, P, P, P, S],
        Action::ManageUsers           => [P, P, P, P, P, P, S],
        Action::ViewLan               => [A, O, O, O, O, O, S],
        Action::UseLan                => [P, P, P, P, P, P, S],
        Action::RevokeAgent           => [P, P, P, P, P, P, S],
        Action::SendSupport           => [P, P, P, P, P, P, S],
        Action::Broadcast             => [P, P, P, P, P, P, S],
        Action::ViewSilos             => [A, O, O, O, O, O, S],
        Action::ViewContent           => [A, A, A, A, A, A, S],
    }
}

#[test]
fn the_authorization_matrix() {
    let mut failures = Vec::new();
    for (scope, table) in [(TokenScope::Attach, attach_scope as fn(Action) -> [E; 7]), (TokenScope::Read, read_scope)] {
        for action in Action::ALL {
            for (i, expected) in table(action).into_iter().enumerate() {
                let (principal, relations) = column(i, scope);
                let got = E::of(authorize(&principal, &relations, action, resource(action)));
                if got != expected {
                    failures.push(format!("{action:?} by {} ({scope:?}): {got:?}, not {expected:?}", COLUMNS[i]));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn unassigned_machines_are_the_operators_and_the_gateway_list_is_everyones() {
    let unassigned = Resource::Machine { uuid: Uuid::from_u128(2), subscriber_id: None };
    // Every column but the last (suspended).
    for (i, name) in COLUMNS.iter().enumerate().take(6) {
        let (principal, relations) = column(i, TokenScope::Attach);
        let expected = if i == 0 { Ok(()) } else { Err(Denied::UnassignedMachine) };
        for action in [Action::ViewMachine, Action::AttachRelay, Action::ViewAudit] {
            assert_eq!(authorize(&principal, &relations, action, unassigned), expected, "{action:?} {name}");
        }
        // The list itself is filtered (`visible_subscribers`).
        assert_eq!(authorize(&principal, &relations, Action::ListMachines, Resource::Gateway), Ok(()));
    }
    let (suspended, relations) = column(6, TokenScope::Attach);
    assert_eq!(authorize(&suspended, &relations, Action::ListMachines, Resource::Gateway), Err(Denied::Suspended));
}

#[test]
fn a_user_manages_its_own_tokens_and_reads_its_own_audit_only() {
    let (principal, relations) = column(3, TokenScope::Attach);
    let me = Resource::User(principal.user_id);
    assert_eq!(authorize(&principal, &relations, Action::ManageTokens, me), Ok(()));
    assert_eq!(authorize(&principal, &relations, Action::ViewAudit, me), Ok(()));
    assert_eq!(authorize(&principal, &relations, Action::ViewAudit, Resource::User(99)), Err(Denied::OperatorOnly));
    assert_eq!(authorize(&principal, &relations, Action::SuspendUser, me), Err(Denied::OperatorOnly));
}

#[test]
fn an_action_on_the_wrong_kind_of_resource_is_denied_even_to_operators() {
    let (operator, relations) = column(0, TokenScope::Attach);
    let machine = Resource::Machine { uuid: Uuid::from_u128(1), subscriber_id: Some(1) };
    for (action, resource) in [
        (Action::AttachRelay, Resource::Subscriber(1)),
        (Action::ManageContacts, machine),
        (Action::RegisterSubscriber, Resource::Subscriber(1)),
        (Action::SuspendUser, Resource::Gateway),
    ] {
        assert_eq!(authorize(&operator, &relations, action, resource), Err(Denied::WrongResource), "{action:?}");
    }
}

#[test]
fn visible_subscribers_follow_the_view_rule() {
    for scope in [TokenScope::Attach, TokenScope::Read] {
        for (i, name) in COLUMNS.iter().enumerate() {
            let (principal, relations) = column(i, scope);
            let visible = visible_subscribers(&principal, &relations);
            for subscriber in 1..=3 {
                let machine = Resource::Machine { uuid: Uuid::nil(), subscriber_id: Some(subscriber) };
                let allowed = authorize(&principal, &relations, Action::ViewMachine, machine).is_ok();
                let listed = match &visible {
                    Visibility::All => true,
                    Visibility::Subscribers(ids) => ids.contains(&subscriber),
                };
                assert_eq!(listed, allowed, "subscriber {subscriber}, {name}");
            }
        }
    }
}

#[test]
fn denial_codes_are_distinct() {
    let all = [
        Denied::Suspended,
        Denied::Scope,
        Denied::OperatorOnly,
        Denied::NotRelated,
        Denied::SubscriptionTerminated,
        Denied::UnassignedMachine,
        Denied::WrongResource,
    ];
    let codes: std::collections::HashSet<&str> = all.iter().map(|d| d.code()).collect();
    assert_eq!(codes.len(), all.len());
}

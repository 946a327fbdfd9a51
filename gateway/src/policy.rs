//! Who may see and do what: the one place that decides, for every API endpoint, portal page,
//! relay and CLI token alike. [`authorize`] is a pure function of the [`Principal`] (who asks,
//! with which token scope), the [`Relations`] the store computed for it (the subscribers it owns
//! and those it is an active contact of, with their subscriptions' status), the [`Action`] and
//! the [`Resource`]. `docs/accounts.md` has the rules as a matrix; the test below is that matrix.
//!
//! The rules: default deny; a suspended principal is denied everything; operators may do
//! everything; a subscriber's owner sees only its own machines, and changes anything only while
//! its subscription is active; a contact sees only the machines of subscribers whose *active*
//! contact it is and whose subscription is active; whatever changes something (attaching a
//! relay above all) also needs a token of scope `attach`.
//!
//! What it does not do: read the store (`store::access` computes [`Relations`] and the machines
//! visible to a principal with [`visible_subscribers`]), or answer HTTP.

use serde::Serialize;
use uuid::Uuid;

use crate::store::TokenScope;

/// A user's role. Subscriber owner and support contact are relations, not roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::User => "user",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "operator" => Some(Role::Operator),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// Who asks: a user, through a token (or a portal session, which has scope `attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    pub role: Role,
    pub scope: TokenScope,
    pub suspended: bool,
}

/// A subscriber the principal is related to, and whether its subscription is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberRelation {
    pub subscriber_id: i64,
    pub subscription_active: bool,
}

/// What the store knows of a principal's relations (`Store::relations`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relations {
    /// The subscribers whose own account the principal is.
    pub owns: Vec<SubscriberRelation>,
    /// The subscribers the principal is an *active* contact of.
    pub contact_of: Vec<SubscriberRelation>,
}

/// How a principal stands to one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Owner { active: bool },
    Contact { active: bool },
    Stranger,
}

impl Relations {
    fn standing(&self, subscriber_id: i64) -> Standing {
        let find = |list: &[SubscriberRelation]| list.iter().find(|r| r.subscriber_id == subscriber_id).copied();
        if let Some(r) = find(&self.owns) {
            return Standing::Owner { active: r.subscription_active };
        }
        match find(&self.contact_of) {
            Some(r) => Standing::Contact { active: r.subscription_active },
            None => Standing::Stranger,
        }
    }
}

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The machine list (of the gateway: filtered to what the principal sees; of a subscriber).
    ListMachines,
    ViewMachine,
    /// Open a relay (WebSocket, console, IDE-R, WS-MAN actions) to a machine.
    AttachRelay,
    /// The audit of a machine, or of what a user did.
    ViewAudit,
    /// A subscriber's personal data (name, email, phone, billing note).
    ViewSubscriberPii,
    /// Invite and remove a subscriber's contacts.
    ManageContacts,
    /// Stop being a subscriber's contact.
    LeaveSubscriber,
    EnrollMachine,
    RegisterSubscriber,
    TerminateSubscription,
    /// `tether subscriber mps-account SUBSCRIBER`.
    IssueMpsAccount,
    SuspendUser,
    /// Create and revoke a user's tokens.
    ManageTokens,
    /// Create users and list them (operators).
    ManageUsers,
    /// The appliance's LAN tools, reading: scans, hosts found, PCs adopted.
    ViewLan,
    /// The appliance's LAN tools, acting: scan, wake a MAC, adopt and forget PCs.
    UseLan,
    /// Revoke a machine's agent certificate (operators): the agent is refused until enrolled again.
    RevokeAgent,
    /// Send a machine a signed support action, or a message for its PC's user.
    SendSupport,
    /// A message to every machine of a subscriber (its owner), or of the gateway (operators).
    Broadcast,
    /// A root's maintenance silos and their aggregates (operators).
    ViewSilos,
    /// The root's signed content (signatures, scripts, rescue images): any user who is not
    /// suspended. It is published for the whole service and signed, not anyone's data.
    ViewContent,
}

impl Action {
    pub const ALL: [Action; 21] = [
        Action::ListMachines,
        Action::ViewMachine,
        Action::AttachRelay,
        Action::ViewAudit,
        Action::ViewSubscriberPii,
        Action::ManageContacts,
        Action::LeaveSubscriber,
        Action::EnrollMachine,
        Action::RegisterSubscriber,
        Action::TerminateSubscription,
        Action::IssueMpsAccount,
        Action::SuspendUser,
        Action::ManageTokens,
        Action::ManageUsers,
        Action::ViewLan,
        Action::UseLan,
        Action::RevokeAgent,
        Action::SendSupport,
        Action::Broadcast,
        Action::ViewSilos,
        Action::ViewContent,
    ];

    /// Whether a token of scope `read` is enough: reading only.
    pub fn read_only(self) -> bool {
        match self {
            Action::ListMachines
            | Action::ViewMachine
            | Action::ViewAudit
            | Action::ViewSubscriberPii
            | Action::ViewLan
            | Action::ViewSilos
            | Action::ViewContent => true,
            Action::AttachRelay
            | Action::ManageContacts
            | Action::LeaveSubscriber
            | Action::EnrollMachine
            | Action::RegisterSubscriber
            | Action::TerminateSubscription
            | Action::IssueMpsAccount
            | Action::SuspendUser
            | Action::ManageTokens
            | Action::ManageUsers
            | Action::UseLan
            | Action::RevokeAgent
            | Action::SendSupport
            | Action::Broadcast => false,
        }
    }

    /// Whether `resource` is the kind of thing this action is about.
    fn fits(self, resource: Resource) -> bool {
        use Resource as R;
        match self {
            Action::ListMachines => matches!(resource, R::Gateway | R::Subscriber(_)),
            Action::ViewMachine | Action::AttachRelay | Action::RevokeAgent | Action::SendSupport => {
                matches!(resource, R::Machine { .. })
            }
            Action::Broadcast => matches!(resource, R::Gateway | R::Subscriber(_)),
            Action::ViewAudit => matches!(resource, R::Machine { .. } | R::User(_)),
            Action::ViewSubscriberPii
            | Action::ManageContacts
            | Action::LeaveSubscriber
            | Action::EnrollMachine
            | Action::TerminateSubscription
            | Action::IssueMpsAccount => matches!(resource, R::Subscriber(_)),
            Action::RegisterSubscriber
            | Action::ManageUsers
            | Action::ViewLan
            | Action::UseLan
            | Action::ViewSilos
            | Action::ViewContent => matches!(resource, R::Gateway),
            Action::SuspendUser | Action::ManageTokens => matches!(resource, R::User(_)),
        }
    }
}

/// What an action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// The gateway as a whole (the machine list, registering a subscriber).
    Gateway,
    /// A machine, and the subscriber it belongs to (`None`: not enrolled by any).
    Machine {
        uuid: Uuid,
        subscriber_id: Option<i64>,
    },
    Subscriber(i64),
    User(i64),
}

/// Why an action was refused: [`Denied::code`] is stable (API bodies, metrics, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the account is suspended")]
    Suspended,
    #[error("this needs a token of scope attach")]
    Scope,
    #[error("only an operator may do this")]
    OperatorOnly,
    #[error("not yours: neither your subscriber's nor one whose active contact you are")]
    NotRelated,
    #[error("the subscription is terminated")]
    SubscriptionTerminated,
    #[error("the machine is not enrolled for any subscriber; only an operator may reach it")]
    UnassignedMachine,
    #[error("this action is not about that kind of thing")]
    WrongResource,
}

impl Denied {
    pub fn code(self) -> &'static str {
        match self {
            Denied::Suspended => "suspended",
            Denied::Scope => "scope",
            Denied::OperatorOnly => "operator_only",
            Denied::NotRelated => "not_related",
            Denied::SubscriptionTerminated => "subscription_terminated",
            Denied::UnassignedMachine => "unassigned_machine",
            Denied::WrongResource => "wrong_resource",
        }
    }
}

/// Whether `principal` may do `action` to `resource` (see the module doc for the rules).
pub fn authorize(
    principal: &Principal,
    relations: &Relations,
    action: Action,
    resource: Resource,
) -> Result<(), Denied> {
    if principal.suspended {
        return Err(Denied::Suspended);
    }
    if !action.fits(resource) {
        return Err(Denied::WrongResource);
    }
    if !action.read_only() && !principal.scope.allows(TokenScope::Attach) {
        return Err(Denied::Scope);
    }
    if principal.role == Role::Operator {
        return Ok(());
    }
    let subscriber = match resource {
        Resource::Gateway => {
            // The gateway's machine list is filtered to what the principal sees
            // (`visible_subscribers`); anything else about the whole gateway is an operator's.
            // The root's content is the whole service's.
            return if matches!(action, Action::ListMachines | Action::ViewContent) {
                Ok(())
            } else {
                Err(Denied::OperatorOnly)
            };
        }
        Resource::User(id) => {
            return match action {
                Action::ViewAudit | Action::ManageTokens if id == principal.user_id => Ok(()),
                _ => Err(Denied::OperatorOnly),
            };
        }
        Resource::Machine { subscriber_id: None, .. } => return Err(Denied::UnassignedMachine),
        Resource::Machine { subscriber_id: Some(id), .. } | Resource::Subscriber(id) => id,
    };
    let standing = relations.standing(subscriber);
    match action {
        // Seeing: an owner its own (also after termination: its own records), a contact while
        // the subscription is active.
        Action::ListMachines | Action::ViewMachine | Action::ViewAudit => match standing {
            Standing::Owner { .. } | Standing::Contact { active: true } => Ok(()),
            Standing::Contact { active: false } => Err(Denied::SubscriptionTerminated),
            Standing::Stranger => Err(Denied::NotRelated),
        },
        Action::AttachRelay | Action::SendSupport => match standing {
            Standing::Owner { active: true } | Standing::Contact { active: true } => Ok(()),
            Standing::Owner { active: false } | Standing::Contact { active: false } => {
                Err(Denied::SubscriptionTerminated)
            }
            Standing::Stranger => Err(Denied::NotRelated),
        },
        Action::ViewSubscriberPii => match standing {
            Standing::Owner { .. } => Ok(()),
            Standing::Contact { .. } | Standing::Stranger => Err(Denied::NotRelated),
        },
        Action::ManageContacts | Action::EnrollMachine | Action::Broadcast => match standing {
            Standing::Owner { active: true } => Ok(()),
            Standing::Owner { active: false } => Err(Denied::SubscriptionTerminated),
            Standing::Contact { .. } | Standing::Stranger => Err(Denied::NotRelated),
        },
        // Leaving is always possible for an active contact.
        Action::LeaveSubscriber => match standing {
            Standing::Contact { .. } => Ok(()),
            Standing::Owner { .. } | Standing::Stranger => Err(Denied::NotRelated),
        },
        Action::RegisterSubscriber
        | Action::TerminateSubscription
        | Action::IssueMpsAccount
        | Action::SuspendUser
        | Action::ManageTokens
        | Action::ManageUsers
        | Action::ViewLan
        | Action::UseLan
        | Action::RevokeAgent
        | Action::ViewSilos
        | Action::ViewContent => Err(Denied::OperatorOnly),
    }
}

/// Whose machines a principal sees: every subscriber's (and unassigned machines), or those of
/// the listed subscribers. The same rules as [`authorize`] with [`Action::ViewMachine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    All,
    Subscribers(Vec<i64>),
}

pub fn visible_subscribers(principal: &Principal, relations: &Relations) -> Visibility {
    if principal.suspended {
        return Visibility::Subscribers(Vec::new());
    }
    if principal.role == Role::Operator {
        return Visibility::All;
    }
    let mut ids: Vec<i64> = relations
        .owns
        .iter()
        .chain(&relations.contact_of)
        .map(|r| r.subscriber_id)
        .filter(|&id| {
            let machine = Resource::Machine { uuid: Uuid::nil(), subscriber_id: Some(id) };
            authorize(principal, relations, Action::ViewMachine, machine).is_ok()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Visibility::Subscribers(ids)
}

#[cfg(test)]
#[path = "policy_test.rs"]
mod tests;

//! The account endpoints: users, subscribers, their machines and contacts, invitations, email
//! changes, audit. Each is a thin wrapper over one flow of `crate::flows` (which asks the
//! policy, changes the store, appends the audit row and queues the mail); this module only
//! turns requests into flow calls and flow errors into JSON bodies with a stable `code`.
//!
//! | endpoint | flow / action |
//! | --- | --- |
//! | `GET /api/v1/me` | the caller, its role and relations |
//! | `POST /api/v1/me/email` | `request_email_change` (a link to the new address) |
//! | `POST /api/v1/email-changes/confirm` | `confirm_email_change` (the link's secret) |
//! | `GET`, `POST /api/v1/users` | `ManageUsers` (operators) |
//! | `POST /api/v1/users/{id}/suspend`, `…/unsuspend` | `SuspendUser` (operators) |
//! | `GET /api/v1/users/{id}/audit` | `ViewAudit` on the user (itself, or operators) |
//! | `GET`, `POST /api/v1/subscribers` | the subscribers whose personal data the caller sees; `RegisterSubscriber` |
//! | `GET /api/v1/subscribers/{id}` | `ViewSubscriberPii` |
//! | `POST /api/v1/subscribers/{id}/terminate` | `TerminateSubscription` |
//! | `GET`, `POST /api/v1/subscribers/{id}/machines` | `ListMachines`; `EnrollMachine` |
//! | `GET`, `POST /api/v1/subscribers/{id}/contacts` | `ViewSubscriberPii`; `ManageContacts` (invite) |
//! | `DELETE /api/v1/subscribers/{id}/contacts/{contact}` | `ManageContacts` (remove) |
//! | `POST /api/v1/subscribers/{id}/leave` | `LeaveSubscriber` |
//! | `POST /api/v1/subscribers/{id}/mps-account` | `IssueMpsAccount` (operators; the password once) |
//! | `GET /api/v1/invitations/{guid}` | anyone holding the GUID: who invites, open or not |
//! | `POST /api/v1/invitations/{guid}/accept` | the caller accepts |
//! | `GET /api/v1/devices/{uuid}/audit` | `ViewAudit` on the machine |
//!
//! What it does not do: decide (`policy`), or know the transitions (`flows`, `store`).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::admission::Caller;
use super::schemas::{AuditRow, Contact, ContactStatus, Invitation, InvitationShown, Machine, Pii, Scope, Subscriber};
use super::schemas::{Email, ShortText, SubscriberEntry, User, Username};
use super::{bad_query, error, store_unavailable, Api, ApiPath};
use super::{ErrorBody, Refusals};
use crate::flows::{Actor, FlowError, Flows, NewUser, Registration};
use crate::policy::{Action, Resource, Role};
use crate::store::{Acceptance, SubscriberPii, MAX_AUDIT};

impl Api {
    /// The flows, with this request's time.
    pub(super) fn flows(&self) -> Flows<'_> {
        Flows {
            store: &self.shared.store,
            accounts: &self.shared.config.accounts,
            public_url: self.public_url.as_str(),
            now: self.clock.now(),
        }
    }
}

impl Caller {
    fn actor(&self) -> Actor {
        Actor { principal: self.principal, relations: Arc::clone(&self.relations) }
    }
}

/// A flow's refusal as the API says it: the policy's 403 (counted, with advice), or the
/// flow's status with `{"error", "code"}`.
fn refused(api: &Api, caller: &Caller, err: FlowError, what: &str) -> Response {
    match err {
        FlowError::Denied(denied) => caller.refusal(api, denied, what),
        FlowError::Store(err) => store_unavailable(err),
        FlowError::Account(crate::store::AccountError::Store(err)) => store_unavailable(err),
        err => {
            let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
            error(status, err.code(), err)
        }
    }
}

macro_rules! flow {
    ($api:expr, $caller:expr, $what:expr, $call:expr) => {
        match $call {
            Ok(value) => value,
            Err(err) => return refused(&$api, &$caller, err, $what),
        }
    };
}

/// The token a request came with.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenShown {
    name: String,
    scope: Scope,
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Me {
    user: User,
    token: TokenShown,
    /// The subscribers whose own account this is.
    owns: Vec<i64>,
    /// The subscribers this user is an active support contact of.
    contact_of: Vec<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "accounts",
    summary = "The caller: user, token scope, subscribers owned and contact of",
    responses(
        (status = 200, description = "the caller", body = Me),
        (status = 404, description = "the token's user no longer exists (`no_such_user`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn me(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    let user = match api.shared.store.user(caller.principal.user_id).await {
        Ok(Some(user)) => user,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no_such_user", "the token's user no longer exists"),
        Err(err) => return store_unavailable(err),
    };
    let ids = |list: &[crate::policy::SubscriberRelation]| list.iter().map(|r| r.subscriber_id).collect::<Vec<_>>();
    Json(Me {
        user: user.into(),
        token: TokenShown { name: caller.name.clone(), scope: caller.scope.into() },
        owns: ids(&caller.relations.owns),
        contact_of: ids(&caller.relations.contact_of),
    })
    .into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmailBody {
    #[schema(value_type = Email, example = "olga@example.com")]
    #[serde(deserialize_with = "super::input::text::<254, _>")]
    email: String,
    /// Change the contact email of this relation of the caller instead of the account's.
    #[serde(default, deserialize_with = "super::input::opt_integer")]
    contact_id: Option<i64>,
}

/// An answer that is only a message.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Said {
    message: &'static str,
}

#[utoipa::path(
    post,
    path = "/api/v1/me/email",
    tag = "accounts",
    summary = "Ask to change the email: a link goes to the new address",
    request_body = EmailBody,
    responses(
        (status = 202, description = "the link is on its way", body = Said),
        (status = 400, description = "the body is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "no such contact of the caller (`no_such_contact`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn change_email(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<EmailBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let flows = api.flows();
    flow!(
        api,
        caller,
        "changing the email",
        flows.request_email_change(&caller.actor(), body.contact_id, &body.email).await
    );
    let message = "a confirmation link went to the new address; the change takes effect when it is followed";
    (StatusCode::ACCEPTED, Json(Said { message })).into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfirmBody {
    /// The secret of the mailed link.
    #[schema(min_length = 1, max_length = 256)]
    #[serde(deserialize_with = "super::input::text::<256, _>")]
    secret: String,
}

/// An email changed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EmailChanged {
    user_id: i64,
    /// The contact relation whose email changed; null: the account's.
    contact_id: Option<i64>,
    email: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/email-changes/confirm",
    tag = "accounts",
    summary = "Follow an email change link",
    request_body = ConfirmBody,
    responses(
        (status = 200, description = "the email changed", body = EmailChanged),
        (status = 400, description = "the body is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "no such change (`no_such_email_change`)", body = ErrorBody),
        (status = 410, description = "expired (`code` says which)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn confirm_email(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<ConfirmBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let changed = flow!(api, caller, "confirming the email", api.flows().confirm_email_change(&body.secret).await);
    Json(EmailChanged { user_id: changed.user_id, contact_id: changed.contact_id, email: changed.new_email })
        .into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "accounts",
    summary = "The users (operators)",
    responses(
        (status = 200, description = "the users", body = Vec<User>),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list_users(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refusal) = caller.authorize(&api, Action::ManageUsers, Resource::Gateway, "listing users") {
        return refusal;
    }
    match api.shared.store.list_users().await {
        Ok(users) => Json(users.into_iter().map(User::from).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUserBody {
    #[schema(value_type = Username, example = "carl")]
    username: String,
    #[schema(value_type = Option<Email>)]
    #[serde(default, deserialize_with = "super::input::opt_text::<254, _>")]
    email: Option<String>,
    /// 8 to 1024 bytes.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    #[serde(default)]
    operator: bool,
}

/// A user created.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct UserCreated {
    id: i64,
    username: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "accounts",
    summary = "Create a user (operators)",
    request_body = NewUserBody,
    responses(
        (status = 201, description = "created", body = UserCreated),
        (status = 400, description = "the body is not what this endpoint takes", body = ErrorBody),
        (status = 409, description = "the username is taken (`username_taken`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn create_user(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewUserBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let new = NewUser {
        username: &body.username,
        email: body.email.as_deref(),
        password: &body.password,
        role: if body.operator { Role::Operator } else { Role::User },
    };
    let id = flow!(api, caller, "creating a user", api.flows().create_user(&caller.actor(), &new).await);
    (StatusCode::CREATED, Json(UserCreated { id, username: body.username })).into_response()
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/suspend",
    tag = "accounts",
    summary = "Suspend a user: all access ends at once (operators)",
    params(("id" = i64, Path, description = "the user's id")),
    responses(
        (status = 200, description = "suspended", body = Suspension),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such user (`no_such_user`)", body = ErrorBody),
        (status = 409, description = "the built-in operator is not suspendable (`operator_not_suspendable`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn suspend_user(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let done = flow!(api, caller, "suspending a user", api.flows().suspend(&caller.actor(), id).await);
    Json(Suspension { id, suspended: true, changed: done }).into_response()
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/unsuspend",
    tag = "accounts",
    summary = "Lift a suspension (operators)",
    params(("id" = i64, Path, description = "the user's id")),
    responses(
        (status = 200, description = "no longer suspended", body = Suspension),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such user (`no_such_user`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn unsuspend_user(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let done = flow!(api, caller, "lifting a suspension", api.flows().unsuspend(&caller.actor(), id).await);
    Json(Suspension { id, suspended: false, changed: done }).into_response()
}

/// A suspension set or lifted.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Suspension {
    id: i64,
    suspended: bool,
    /// False: it already was.
    changed: bool,
}

/// `?before=ID&limit=N`: a page of audit rows, newest first.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// Rows older than this id (the last id of the page before).
    before: Option<i64>,
    /// Rows on the page (default and most: 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl AuditQuery {
    /// The page's size, or what the query takes instead.
    fn limit(&self) -> Result<u32, String> {
        match self.limit.unwrap_or(MAX_AUDIT) {
            limit @ 1..=MAX_AUDIT => Ok(limit),
            other => Err(format!("limit=1..{MAX_AUDIT}, not {other}")),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{id}/audit",
    tag = "accounts",
    summary = "What a user did, newest first",
    params(("id" = i64, Path, description = "the user's id"), AuditQuery),
    responses(
        (status = 200, description = "the rows, newest first", body = Vec<AuditRow>),
        (status = 400, description = "the id or the query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn user_audit(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    if let Some(refusal) = caller.authorize(&api, Action::ViewAudit, Resource::User(id), "reading a user's audit") {
        return refusal;
    }
    let Ok(Query(query)) = query else {
        return bad_query(format!("before=ID and limit=1..{MAX_AUDIT}"));
    };
    let limit = match query.limit() {
        Ok(limit) => limit,
        Err(takes) => return bad_query(takes),
    };
    match api.shared.store.audit_by_user(id, query.before, limit).await {
        Ok(rows) => Json(rows.into_iter().map(AuditRow::from).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/audit",
    tag = "accounts",
    summary = "The audit of a machine, newest first",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID"), AuditQuery),
    responses(
        (status = 200, description = "the rows, newest first", body = Vec<AuditRow>),
        (status = 400, description = "the UUID or the query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn machine_audit(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<Uuid>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    if let Some(refusal) = caller.authorize_machine(&api, Action::ViewAudit, uuid, "reading a machine's audit").await {
        return refusal;
    }
    let Ok(Query(query)) = query else {
        return bad_query(format!("before=ID and limit=1..{MAX_AUDIT}"));
    };
    let limit = match query.limit() {
        Ok(limit) => limit,
        Err(takes) => return bad_query(takes),
    };
    match api.shared.store.audit_for_machine(uuid, query.before, limit).await {
        Ok(rows) => Json(rows.into_iter().map(AuditRow::from).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/subscribers",
    tag = "accounts",
    summary = "The subscribers whose personal data the caller sees",
    responses(
        (status = 200, description = "the subscribers", body = Vec<SubscriberEntry>),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list_subscribers(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    let all = match api.shared.store.list_subscribers().await {
        Ok(all) => all,
        Err(err) => return store_unavailable(err),
    };
    let seen: Vec<SubscriberEntry> = all
        .into_iter()
        .filter(|s| {
            let resource = Resource::Subscriber(s.subscriber.id);
            crate::policy::authorize(&caller.principal, &caller.relations, Action::ViewSubscriberPii, resource).is_ok()
        })
        .map(SubscriberEntry::from)
        .collect();
    Json(seen).into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterBody {
    /// The username of the subscriber's own account (created first).
    #[schema(value_type = Username)]
    owner: String,
    #[schema(value_type = ShortText)]
    #[serde(deserialize_with = "super::input::text::<254, _>")]
    name: String,
    #[schema(value_type = Email)]
    #[serde(deserialize_with = "super::input::text::<254, _>")]
    email: String,
    #[schema(value_type = Option<ShortText>)]
    #[serde(default, deserialize_with = "super::input::opt_text::<254, _>")]
    phone: Option<String>,
    #[schema(value_type = Option<ShortText>)]
    #[serde(default, deserialize_with = "super::input::opt_text::<254, _>")]
    billing_note: Option<String>,
    /// Default 5.
    #[serde(default, deserialize_with = "super::input::opt_integer")]
    max_machines: Option<u32>,
    /// Default 5.
    #[serde(default, deserialize_with = "super::input::opt_integer")]
    max_contacts: Option<u32>,
}

/// Something created, by its id.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Created {
    id: i64,
}

#[utoipa::path(
    post,
    path = "/api/v1/subscribers",
    tag = "accounts",
    summary = "Register a subscriber owned by an existing user (operators)",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "registered", body = Created),
        (status = 400, description = "the body is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "no such owner (`no_such_user`)", body = ErrorBody),
        (status = 409, description = "the owner owns a subscriber already (`owns_subscriber`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn register_subscriber(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<RegisterBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let registration = Registration {
        owner: &body.owner,
        pii: SubscriberPii {
            name: body.name.clone(),
            email: body.email.clone(),
            phone: body.phone.clone(),
            billing_note: body.billing_note.clone(),
        },
        max_machines: body.max_machines.unwrap_or(5),
        max_contacts: body.max_contacts.unwrap_or(5),
    };
    let flows = api.flows();
    let id =
        flow!(api, caller, "registering a subscriber", flows.register_subscriber(&caller.actor(), registration).await);
    (StatusCode::CREATED, Json(Created { id })).into_response()
}

/// A subscriber and its personal data.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SubscriberShown {
    subscriber: Subscriber,
    pii: Option<Pii>,
    /// Why its subscription was terminated (shown to operators only: absent for others).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true)]
    terminate_reason: Option<Option<String>>,
}

#[utoipa::path(
    get,
    path = "/api/v1/subscribers/{id}",
    tag = "accounts",
    summary = "A subscriber and its personal data",
    params(("id" = i64, Path, description = "the subscriber's id")),
    responses(
        (status = 200, description = "the subscriber", body = SubscriberShown),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such subscriber (`no_such_subscriber`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_subscriber(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let what = "reading a subscriber";
    if let Some(refusal) = caller.authorize(&api, Action::ViewSubscriberPii, Resource::Subscriber(id), what) {
        return refusal;
    }
    let store = &api.shared.store;
    let (record, pii) = match (store.subscriber(id).await, store.subscriber_pii(id).await) {
        (Ok(Some(record)), Ok(pii)) => (record, pii),
        (Ok(None), _) => {
            return error(StatusCode::NOT_FOUND, "no_such_subscriber", format!("no subscriber with id {id}"))
        }
        (Err(err), _) | (_, Err(err)) => return store_unavailable(err),
    };
    let terminate_reason = if caller.is_operator() {
        match store.termination_reason(id).await {
            Ok(reason) => Some(reason),
            Err(err) => return store_unavailable(err),
        }
    } else {
        None
    };
    Json(SubscriberShown { subscriber: record.into(), pii: pii.map(Pii::from), terminate_reason }).into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TerminateBody {
    #[schema(value_type = ShortText)]
    #[serde(deserialize_with = "super::input::text::<254, _>")]
    reason: String,
}

/// A subscription terminated.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Terminated {
    id: i64,
    #[schema(example = "terminated")]
    status: &'static str,
    /// Contact relations ended by it.
    contacts_ended: u64,
}

#[utoipa::path(
    post,
    path = "/api/v1/subscribers/{id}/terminate",
    tag = "accounts",
    summary = "Terminate a subscription: contacts are told and lose access (operators)",
    params(("id" = i64, Path, description = "the subscriber's id")),
    request_body = TerminateBody,
    responses(
        (status = 200, description = "terminated", body = Terminated),
        (status = 400, description = "the id or the body is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "no such subscriber (`no_such_subscriber`)", body = ErrorBody),
        (status = 409, description = "terminated already (`subscription_terminated`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn terminate(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    body: Result<Json<TerminateBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let flows = api.flows();
    let ended =
        flow!(api, caller, "terminating a subscription", flows.terminate(&caller.actor(), id, &body.reason).await);
    let contacts_ended = u64::try_from(ended).unwrap_or(u64::MAX);
    Json(Terminated { id, status: "terminated", contacts_ended }).into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/subscribers/{id}/machines",
    tag = "accounts",
    summary = "A subscriber's machines",
    params(("id" = i64, Path, description = "the subscriber's id")),
    responses(
        (status = 200, description = "the machines", body = Vec<Machine>),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn subscriber_machines(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let what = "listing a subscriber's machines";
    if let Some(refusal) = caller.authorize(&api, Action::ListMachines, Resource::Subscriber(id), what) {
        return refusal;
    }
    match api.shared.store.machines_of(id).await {
        Ok(machines) => Json(machines.into_iter().map(Machine::from).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EnrollBody {
    /// The machine's UUID (an AMT PC's, which is also its SMBIOS UUID): bound to the subscriber
    /// now, and the only UUID the token enrolls. Leave it out to let the agent tell its UUID.
    uuid: Option<Uuid>,
    #[schema(value_type = Option<ShortText>)]
    #[serde(default, deserialize_with = "super::input::opt_text::<254, _>")]
    nickname: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/subscribers/{id}/machines",
    tag = "accounts",
    summary = "Enroll a machine for the subscriber",
    params(("id" = i64, Path, description = "the subscriber's id")),
    request_body = EnrollBody,
    responses(
        (status = 201, description = "enrolled: the UUID bound now (if given), and a one-time token for `tether-agent enroll`", body = crate::flows::Enrollment),
        (status = 200, description = "the UUID was enrolled for this subscriber already; a new token", body = crate::flows::Enrollment),
        (status = 400, description = "the id or the body is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "no such subscriber (`no_such_subscriber`)", body = ErrorBody),
        (status = 409, description = "the subscription is terminated, full, or the machine is another's (`code` says which)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn enroll(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    body: Result<Json<EnrollBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let flows = api.flows();
    let call = flows.enroll_machine(&caller.actor(), id, body.uuid, body.nickname.as_deref()).await;
    let enrollment = flow!(api, caller, "enrolling a machine", call);
    let status = if enrollment.new_machine || body.uuid.is_none() { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(enrollment)).into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/subscribers/{id}/contacts",
    tag = "accounts",
    summary = "A subscriber's contacts, in every state",
    params(("id" = i64, Path, description = "the subscriber's id")),
    responses(
        (status = 200, description = "the contacts", body = Vec<Contact>),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such subscriber (`no_such_subscriber`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn contacts(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let list = flow!(api, caller, "listing contacts", api.flows().contacts(&caller.actor(), id).await);
    Json(list.into_iter().map(Contact::from).collect::<Vec<_>>()).into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct InviteBody {
    #[schema(value_type = Email, example = "carl@example.com")]
    #[serde(deserialize_with = "super::input::text::<254, _>")]
    email: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/subscribers/{id}/contacts",
    tag = "accounts",
    summary = "Invite a support contact: the accept link goes by mail",
    params(("id" = i64, Path, description = "the subscriber's id")),
    request_body = InviteBody,
    responses(
        (status = 201, description = "invited", body = Invitation),
        (status = 400, description = "the id or the body is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "no such subscriber (`no_such_subscriber`)", body = ErrorBody),
        (status = 409, description = "the subscription is terminated or has its contacts (`code` says which)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn invite(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    body: Result<Json<InviteBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let flows = api.flows();
    let invited = flow!(api, caller, "inviting a contact", flows.invite(&caller.actor(), id, &body.email).await);
    (StatusCode::CREATED, Json(Invitation::from(invited))).into_response()
}

/// A contact removed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ContactRemoved {
    contact_id: i64,
    /// The state it was in.
    was: ContactStatus,
    /// Whether the contact is told by mail.
    told: bool,
}

#[utoipa::path(
    delete,
    path = "/api/v1/subscribers/{id}/contacts/{contact}",
    tag = "accounts",
    summary = "Remove a contact, invited or active: access ends at once",
    params(("id" = i64, Path, description = "the subscriber's id"), ("contact" = i64, Path, description = "the contact's id")),
    responses(
        (status = 200, description = "removed", body = ContactRemoved),
        (status = 400, description = "an id is not a number", body = ErrorBody),
        (status = 404, description = "no such subscriber or contact (`code` says which)", body = ErrorBody),
        (status = 409, description = "the contact has ended already (`contact_ended`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn remove_contact(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath((id, contact)): ApiPath<(i64, i64)>,
) -> Response {
    let flows = api.flows();
    let removed = flow!(api, caller, "removing a contact", flows.remove_contact(&caller.actor(), id, contact).await);
    Json(ContactRemoved { contact_id: contact, was: removed.was.into(), told: removed.mail_due }).into_response()
}

/// The caller's contact relation, ended.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Left {
    contact_id: i64,
    #[schema(example = "left")]
    state: &'static str,
}

#[utoipa::path(
    post,
    path = "/api/v1/subscribers/{id}/leave",
    tag = "accounts",
    summary = "Stop being the subscriber's contact",
    params(("id" = i64, Path, description = "the subscriber's id")),
    responses(
        (status = 200, description = "left", body = Left),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "not an active contact of the subscriber (`not_a_contact`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn leave(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let left = flow!(api, caller, "leaving a subscriber", api.flows().leave(&caller.actor(), id).await);
    Json(Left { contact_id: left.contact_id, state: "left" }).into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/invitations/{guid}",
    tag = "accounts",
    summary = "Who invites, and whether the invitation is open",
    params(("guid" = Uuid, Path, description = "the invitation's GUID, from the mailed link")),
    responses(
        (status = 200, description = "the invitation", body = InvitationShown),
        (status = 400, description = "the GUID is not a UUID", body = ErrorBody),
        (status = 404, description = "no such invitation (`no_such_invitation`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_invitation(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(guid): ApiPath<Uuid>,
) -> Response {
    let view = flow!(api, caller, "reading an invitation", api.flows().invitation(guid).await);
    Json(InvitationShown::from(view)).into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AcceptBody {
    #[schema(value_type = ShortText, example = "2026-01")]
    #[serde(deserialize_with = "super::input::text::<254, _>")]
    terms_version: String,
    #[schema(value_type = ShortText)]
    #[serde(deserialize_with = "super::input::text::<254, _>")]
    nickname: String,
    #[schema(value_type = Option<Email>)]
    #[serde(default, deserialize_with = "super::input::opt_text::<254, _>")]
    contact_email: Option<String>,
    /// When to be alerted and how (`docs/health.md`).
    #[serde(default)]
    alert_prefs: Option<AlertPrefs>,
}

/// A contact's alert preferences: which health colours alert, by mail and to which webhook
/// (`docs/health.md`). Each may be left out, none may be `null`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertPrefs {
    #[serde(default, deserialize_with = "super::input::present", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    red: Option<bool>,
    #[serde(default, deserialize_with = "super::input::present", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    yellow: Option<bool>,
    #[serde(default, deserialize_with = "super::input::present", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    green: Option<bool>,
    #[serde(default, deserialize_with = "super::input::present", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    email: Option<bool>,
    /// An https URL (at most 450 bytes here: the preferences are at most 1 KiB as JSON), or
    /// empty for none.
    #[serde(default, deserialize_with = "webhook", skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        max_length = 450,
        pattern = r"^$|^https://[^/\s\x00-\x1f\x7f-\x9f][^\s\x00-\x1f\x7f-\x9f]*$"
    )]
    webhook: Option<String>,
}

/// A webhook URL: a string of at most 450 bytes, not `null`.
fn webhook<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    super::input::text::<450, D>(deserializer).map(Some)
}

#[utoipa::path(
    post,
    path = "/api/v1/invitations/{guid}/accept",
    tag = "accounts",
    summary = "Accept an invitation as the caller",
    params(("guid" = Uuid, Path, description = "the invitation's GUID")),
    request_body = AcceptBody,
    responses(
        (status = 200, description = "the caller is an active contact", body = Contact),
        (status = 400, description = "the GUID or the body is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "no such invitation (`no_such_invitation`)", body = ErrorBody),
        (status = 409, description = "the invitation is closed, the caller's own, or a contact already (`code` says which)", body = ErrorBody),
        (status = 410, description = "the invitation has expired (`invitation_expired`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn accept(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(guid): ApiPath<Uuid>,
    body: Result<Json<AcceptBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let acceptance = Acceptance {
        terms_version: body.terms_version,
        nickname: body.nickname,
        contact_email: body.contact_email,
        alert_prefs: match body.alert_prefs {
            Some(prefs) => serde_json::to_value(prefs).unwrap_or_else(|_| json!({})),
            None => json!({}),
        },
    };
    let flows = api.flows();
    let contact = flow!(api, caller, "accepting an invitation", flows.accept(&caller.actor(), guid, acceptance).await);
    Json(Contact::from(contact)).into_response()
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MpsAccountBody {
    /// 1 to 32 letters and digits (AMT's rule); default `subID`.
    #[schema(pattern = r"^[A-Za-z0-9]{1,32}$")]
    username: Option<String>,
}

/// An MPS account issued: the password is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MpsAccount {
    subscriber_id: i64,
    username: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/subscribers/{id}/mps-account",
    tag = "accounts",
    summary = "Issue the subscriber's MPS account for its AMT devices (operators; the password once)",
    params(("id" = i64, Path, description = "the subscriber's id")),
    request_body = MpsAccountBody,
    responses(
        (status = 201, description = "issued: username and password", body = MpsAccount),
        (status = 400, description = "the id or the body is not what this endpoint takes, or the name is taken (`bad_input`)", body = ErrorBody),
        (status = 404, description = "no such subscriber (`no_such_subscriber`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn mps_account(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    body: Result<Json<MpsAccountBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let flows = api.flows();
    let call = flows.issue_mps_account(&caller.actor(), id, body.username.as_deref()).await;
    let (username, password) = flow!(api, caller, "issuing an MPS account", call);
    (StatusCode::CREATED, Json(MpsAccount { subscriber_id: id, username, password })).into_response()
}

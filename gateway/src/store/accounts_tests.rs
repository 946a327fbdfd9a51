//! The accounts on SQLite: the scenarios of `accounts_scenarios.rs` (which `tests/tests/store.rs`
//! also runs on PostgreSQL), the audit log refusing changes, and a store from before accounts
//! upgrading with its tokens given to the built-in operator.

use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::auth::verify_password;
use crate::policy::{authorize, Action, Denied, Resource, Role};

#[path = "accounts_scenarios.rs"]
mod scenarios;

use super::tests::sqlite;

macro_rules! on_sqlite {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_dir, store) = sqlite().await;
                scenarios::$name(&store).await;
            }
        )*
    };
}

on_sqlite!(
    invitations_expire_after_their_validity,
    contacts_see_machines_while_active_then_are_inactive_then_plain_users,
    removing_an_invitation_never_sent_is_due_no_mail,
    terminating_a_subscription_ends_every_contact_and_cuts_access_at_once,
    a_suspended_user_is_denied_everything,
    machines_and_contacts_are_limited_by_the_subscription,
    an_email_change_takes_effect_only_once_confirmed,
    the_audit_log_is_read_by_machine_and_by_user_newest_first,
    users_and_tokens_belong_together,
);

#[tokio::test]
async fn the_audit_log_refuses_changes() {
    let (_dir, store) = sqlite().await;
    let row = NewAudit {
        at: OffsetDateTime::now_utc(),
        actor_user_id: None,
        action: AuditAction::UserSuspended,
        machine_uuid: Some(Uuid::new_v4()),
        subscriber_id: None,
        detail: String::new(),
    };
    store.append_audit(&row).await.unwrap();
    let err = store.execute(Stmt::new("UPDATE audit_log SET detail = 'x'")).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = store.execute(Stmt::new("DELETE FROM audit_log")).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

/// A data dir from before accounts (schema 7) with tokens, one of them revoked: the tokens are
/// the built-in operator's, and no new token gets the revoked one's id.
#[tokio::test]
async fn a_version_7_stores_tokens_are_given_to_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.db");
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
        for migration in &migrations::SQLITE[..7] {
            sqlx::raw_sql(*migration).execute(&pool).await.unwrap();
        }
        sqlx::raw_sql(
            "INSERT INTO tokens (name, hash, created_at, scope) VALUES ('alice', 'ha', 1, 'read'), ('bob', 'hb', 2, 'attach');
             DELETE FROM tokens WHERE name = 'bob';
             PRAGMA user_version = 7;",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = Store::open(&Location::Sqlite(path), Migrate::Yes, PoolOptions::default()).await.unwrap();
    let operator = store.user_by_name(OPERATOR).await.unwrap().unwrap();
    assert_eq!((operator.role, operator.has_password), (Role::Operator, false));
    let alice = store.token_by_hash("ha").await.unwrap().unwrap();
    assert_eq!((alice.id, alice.user_id, alice.scope), (1, operator.id, TokenScope::Read));
    let principal = store.token_principal(&alice).await.unwrap().unwrap();
    assert_eq!(principal.role, Role::Operator);
    let next = store.create_token("carol", "hc", TokenScope::Attach, None).await.unwrap();
    assert!(next > 2, "a new token reused the revoked token's id {next}");
    assert_eq!(store.token_by_hash("hc").await.unwrap().unwrap().user_id, operator.id);
    assert_eq!(store.check().await.unwrap().integrity, "ok");
}

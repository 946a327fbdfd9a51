//! The outbox on SQLite: the scenarios of `outbox_scenarios.rs` (which `tests/tests/store.rs`
//! also runs on PostgreSQL).

use time::OffsetDateTime;
use uuid::Uuid;

use super::tests::sqlite;
use super::*;

#[path = "outbox_scenarios.rs"]
mod scenarios;

#[tokio::test]
async fn outbox_a_mail_waits_until_sent_and_a_failed_one_is_retried_when_due() {
    let (_dir, store) = sqlite().await;
    scenarios::a_mail_waits_until_sent_and_a_failed_one_is_retried_when_due(&store).await;
}

#[tokio::test]
async fn outbox_concurrent_claims_never_take_the_same_mail() {
    let (_dir, store) = sqlite().await;
    scenarios::concurrent_claims_never_take_the_same_mail(&store).await;
}

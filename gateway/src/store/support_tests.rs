//! Support actions and messages on SQLite: the scenarios of `support_scenarios.rs` (which
//! `tests/tests/store.rs` also runs on PostgreSQL).

use time::OffsetDateTime;
use uuid::Uuid;

use super::tests::sqlite;
use super::*;

#[path = "support_scenarios.rs"]
mod scenarios;

#[tokio::test]
async fn support_an_action_is_sent_until_answered_and_keeps_its_first_result() {
    let (_dir, store) = sqlite().await;
    scenarios::an_action_is_sent_until_answered_and_keeps_its_first_result(&store).await;
}

#[tokio::test]
async fn support_a_broadcast_is_counted_as_each_machine_receives_and_reads_it() {
    let (_dir, store) = sqlite().await;
    scenarios::a_broadcast_is_counted_as_each_machine_receives_and_reads_it(&store).await;
}

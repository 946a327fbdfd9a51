//! The silos' tables on SQLite: the scenarios of `silos_scenarios.rs` (which `tests/tests/store.rs`
//! also runs on PostgreSQL).

use time::OffsetDateTime;
use uuid::Uuid;

use super::tests::sqlite;
use super::*;
use crate::policy::{authorize, Action, Denied, Resource, Role};

#[path = "silos_scenarios.rs"]
mod scenarios;

#[tokio::test]
async fn a_root_gives_machines_to_silos_and_a_silo_records_its_clients() {
    let (_dir, store) = sqlite().await;
    scenarios::a_root_gives_machines_to_silos_and_a_silo_records_its_clients(&store).await;
}

#[tokio::test]
async fn a_root_moves_a_machine_and_the_silos_hand_its_history_over() {
    let (_dir, store) = sqlite().await;
    scenarios::a_root_moves_a_machine_and_the_silos_hand_its_history_over(&store).await;
}

#[tokio::test]
async fn a_person_the_root_sent_sees_the_clients_of_the_subscribers_it_was_granted() {
    let (_dir, store) = sqlite().await;
    scenarios::a_person_the_root_sent_sees_the_clients_of_the_subscribers_it_was_granted(&store).await;
}

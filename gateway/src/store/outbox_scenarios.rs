//! The mail outbox's life cycle, one scenario per function, written once against the store's
//! public API with an explicit clock: run on SQLite by the gateway's unit tests (`outbox.rs`'s
//! tests in `outbox_tests.rs`) and on SQLite and a real PostgreSQL by `tests/tests/store.rs`,
//! which include this file. The including module provides the names imported below.

use super::{MailState, NewMail, OffsetDateTime, Store, Uuid};

const SECOND: time::Duration = time::Duration::SECOND;

/// The scenarios' epoch (2027-01-15).
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time")
}

fn mail(to: &str, invitation: Option<Uuid>) -> NewMail {
    NewMail {
        kind: if invitation.is_some() { "invitation" } else { "test" }.to_string(),
        recipient: to.to_string(),
        subject: format!("Hello {to}"),
        body: "a body\nof two lines\n".to_string(),
        invitation_guid: invitation,
    }
}

/// Queued mail is claimed once while its lease runs, retried when due again, and ends sent or
/// given up with its last error; the listing shows it newest first.
pub async fn a_mail_waits_until_sent_and_a_failed_one_is_retried_when_due(store: &Store) {
    let guid = Uuid::new_v4();
    let first = store.enqueue_mail(&mail("ann@example.org", Some(guid)), t0()).await.unwrap();
    let second = store.enqueue_mail(&mail("bob@example.org", None), t0() + SECOND).await.unwrap();
    assert!(second > first);
    assert_eq!(store.outbox_pending().await.unwrap(), 2);
    // Nothing is due before it was queued.
    assert!(store.claim_mail(t0() - SECOND, t0() + 300 * SECOND, 10).await.unwrap().is_empty());

    let now = t0() + 2 * SECOND;
    let lease = now + 300 * SECOND;
    let claimed = store.claim_mail(now, lease, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![first, second]);
    let ann = &claimed[0];
    assert_eq!((ann.recipient.as_str(), ann.attempts, ann.invitation_guid), ("ann@example.org", 1, Some(guid)));
    assert_eq!((ann.kind.as_str(), ann.body.as_str()), ("invitation", "a body\nof two lines\n"));
    assert_eq!(ann.created_at, t0());
    // Claimed: not due again while the lease runs.
    assert!(store.claim_mail(now + 10 * SECOND, lease, 10).await.unwrap().is_empty());

    assert!(store.mail_sent(first, now).await.unwrap());
    assert!(!store.mail_sent(first, now).await.unwrap(), "sent twice");
    assert!(store.mail_failed(second, "connection refused", now + 30 * SECOND).await.unwrap());
    assert_eq!(store.outbox_pending().await.unwrap(), 1);
    assert!(store.claim_mail(now + 29 * SECOND, lease, 10).await.unwrap().is_empty(), "retried before it was due");
    let retried = store.claim_mail(now + 30 * SECOND, lease, 10).await.unwrap();
    assert_eq!(retried.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(), vec![(second, 2)]);
    let long = "x".repeat(5000);
    assert!(store.mail_gave_up(second, &long, now + 31 * SECOND).await.unwrap());
    assert!(!store.mail_failed(second, "late", now).await.unwrap(), "a mail given up came back");
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    assert!(store.claim_mail(now + 3600 * SECOND, now + 7200 * SECOND, 10).await.unwrap().is_empty());

    let listed = store.list_outbox(10).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| (r.id, r.state)).collect::<Vec<_>>(),
        [(second, MailState::GaveUp), (first, MailState::Sent)]
    );
    assert_eq!(listed[0].attempts, 2);
    assert_eq!(listed[0].last_error.as_deref().map(str::len), Some(1000), "the error is kept, bounded");
    assert_eq!((listed[1].sent_at, listed[1].last_error.as_deref()), (Some(now), None));
    assert_eq!(listed[1].invitation_guid, Some(guid));
    assert_eq!(store.list_outbox(1).await.unwrap().len(), 1);
    assert_eq!(store.outbox_mail(first).await.unwrap().map(|r| r.state), Some(MailState::Sent));
    let json = serde_json::to_value(&listed[1]).unwrap();
    assert_eq!((json["state"].as_str(), json.get("body")), (Some("sent"), None), "{json}");
}

/// Workers claiming at the same moment (gateways of a fleet on PostgreSQL) each get their own
/// mails: none is claimed twice, none is left out.
pub async fn concurrent_claims_never_take_the_same_mail(store: &Store) {
    let mut queued = Vec::new();
    for i in 0..60 {
        queued.push(store.enqueue_mail(&mail(&format!("m{i}@example.org"), None), t0()).await.unwrap());
    }
    let now = t0() + SECOND;
    let lease = now + 300 * SECOND;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..10 {
                    mine.extend(store.claim_mail(now, lease, 7).await.unwrap().into_iter().map(|m| m.id));
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for worker in workers {
        claimed.extend(worker.await.unwrap());
    }
    claimed.sort_unstable();
    let total = claimed.len();
    claimed.dedup();
    assert_eq!(claimed.len(), total, "a mail was claimed twice");
    assert_eq!(claimed, queued, "every due mail is claimed");
}

use bytes::BytesMut;
use protocols::tap::Message;

use super::*;
use crate::signature::testing;

const NOW: i64 = 1_800_000_000;

struct Pc {
    _dir: tempfile::TempDir,
    state: StateDir,
    key: aws_lc_rs::signature::Ed25519KeyPair,
    me: Uuid,
    actions: Actions,
}

fn pc(policy: LocalPolicy) -> Pc {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let key = testing::key();
    let me = Uuid::new_v4();
    let actions = Actions::open(&state, testing::public(&key), me, policy, NOW).unwrap();
    Pc { _dir: dir, state, key, me, actions }
}

fn body(target: Uuid, kind: ActionKind, script: &str) -> ActionBody {
    ActionBody {
        id: Uuid::new_v4(),
        target,
        kind,
        issued_at: NOW - 10,
        expires_at: NOW + 600,
        timeout_secs: 30,
        issued_by: "alice@example.net".into(),
        body: script.into(),
    }
}

fn sign(key: &aws_lc_rs::signature::Ed25519KeyPair, body: &ActionBody) -> Signed {
    let mut payload = BytesMut::new();
    body.encode(&mut payload);
    testing::sign(key, SignDomain::Action, payload.to_vec())
}

fn refused(admission: Admission) -> Refusal {
    match admission {
        Admission::Refuse(refusal) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_valid_action_is_admitted() {
    let pc = pc(LocalPolicy::default());
    let action = body(pc.me, ActionKind::Script, "true");
    assert_eq!(pc.actions.admit(&sign(&pc.key, &action), true, NOW), Admission::Run(action));
}

#[test]
fn a_tampered_payload_or_another_key_is_a_bad_signature() {
    let pc = pc(LocalPolicy::default());
    let action = body(pc.me, ActionKind::Script, "echo hello");
    let mut signed = sign(&pc.key, &action);
    let mut payload = signed.payload.to_vec();
    *payload.last_mut().unwrap() = b'X';
    signed.payload = payload.into();
    let refusal = refused(pc.actions.admit(&signed, true, NOW));
    assert_eq!(refusal.status, ActionStatus::BadSignature);
    assert_eq!(refusal.id, action.id, "the id comes from the unverified payload");
    // Signed by another key.
    let refusal = refused(pc.actions.admit(&sign(&testing::key(), &action), true, NOW));
    assert_eq!(refusal.status, ActionStatus::BadSignature);
    // Garbage: no id to name.
    let garbage = Signed { payload: Bytes::from_static(b"junk"), signature: [0; 64] };
    let refusal = refused(pc.actions.admit(&garbage, true, NOW));
    assert_eq!((refusal.status, refusal.id), (ActionStatus::BadSignature, Uuid::nil()));
    assert_eq!(refusal.result().exit_code, -1);
}

#[test]
fn a_signed_payload_that_does_not_decode_is_malformed() {
    let pc = pc(LocalPolicy::default());
    let signed = testing::sign(&pc.key, SignDomain::Action, b"not an action".to_vec());
    let refusal = refused(pc.actions.admit(&signed, true, NOW));
    assert_eq!((refusal.status, refusal.id), (ActionStatus::Malformed, Uuid::nil()));
}

#[test]
fn another_machines_action_is_refused() {
    let pc = pc(LocalPolicy::default());
    let action = body(Uuid::new_v4(), ActionKind::Script, "true");
    let refusal = refused(pc.actions.admit(&sign(&pc.key, &action), true, NOW));
    assert_eq!((refusal.status, refusal.id), (ActionStatus::WrongTarget, action.id));
}

#[test]
fn an_expired_action_is_refused() {
    let pc = pc(LocalPolicy::default());
    let action = body(pc.me, ActionKind::Script, "true");
    let refusal = refused(pc.actions.admit(&sign(&pc.key, &action), true, action.expires_at + 1));
    assert_eq!(refusal.status, ActionStatus::Expired);
    assert!(refusal.text.contains("expired"));
}

#[test]
fn remote_help_off_refuses_with_the_users_reason() {
    let pc = pc(LocalPolicy::default());
    let action = body(pc.me, ActionKind::Instructions, "Click Start");
    let refusal = refused(pc.actions.admit(&sign(&pc.key, &action), false, NOW));
    assert_eq!(refusal.status, ActionStatus::RemoteHelpDisabled);
    assert_eq!(refusal.text, "the PC user has turned remote help off");
    assert_eq!(refusal.issued_by, "alice@example.net");
}

#[test]
fn scripts_off_in_the_local_policy_are_refused() {
    let policy = LocalPolicy::parse("[actions]\nscripts = false\n").unwrap();
    let pc = pc(policy);
    let action = body(pc.me, ActionKind::Script, "true");
    let refusal = refused(pc.actions.admit(&sign(&pc.key, &action), true, NOW));
    assert_eq!(refusal.status, ActionStatus::NotAllowed);
    assert!(refusal.text.contains("policy.toml"), "{}", refusal.text);
    // Instructions are still shown.
    let instructions = body(pc.me, ActionKind::Instructions, "Click Start");
    assert!(matches!(pc.actions.admit(&sign(&pc.key, &instructions), true, NOW), Admission::Run(_)));
}

#[tokio::test]
async fn an_action_runs_once_and_a_copy_is_refused_as_replayed() {
    let pc = pc(LocalPolicy::default());
    let inbox = Inbox::open(&pc.state).unwrap();
    let action = body(pc.me, ActionKind::Script, "echo ran");
    let signed = sign(&pc.key, &action);
    let Admission::Run(admitted) = pc.actions.admit(&signed, true, NOW) else { panic!("not admitted") };
    pc.actions.queued(admitted.id);
    // While queued or running, a copy is neither run nor refused.
    assert_eq!(pc.actions.admit(&signed, true, NOW), Admission::InFlight(action.id));
    let result = pc.actions.perform(&admitted, &inbox, NOW).await;
    assert_eq!((result.status, result.exit_code), (ActionStatus::Completed, 0));
    assert_eq!(result.output, Bytes::from_static(b"ran\n"));

    // The result waits for its receipt: a copy gets it again, not a refusal.
    let Admission::Resend(frame) = pc.actions.admit(&signed, true, NOW) else { panic!("not resent") };
    let (message, _) = tap::decode(&frame, &tap::Limits::default()).unwrap().unwrap();
    assert_eq!(message, Message::ActionResult(result));

    // Once the gateway has it, a copy is a replay, across a restart too.
    assert!(pc.actions.results().receipt(action.id).unwrap());
    assert_eq!(refused(pc.actions.admit(&signed, true, NOW)).status, ActionStatus::Replayed);
    let again = Actions::open(&pc.state, testing::public(&pc.key), pc.me, LocalPolicy::default(), NOW).unwrap();
    assert_eq!(refused(again.admit(&signed, true, NOW)).status, ActionStatus::Replayed);
}

#[tokio::test]
async fn instructions_go_to_the_inbox_and_are_shown() {
    let pc = pc(LocalPolicy::default());
    let inbox = Inbox::open(&pc.state).unwrap();
    let action = body(pc.me, ActionKind::Instructions, "Please close all programs.");
    let result = pc.actions.perform(&action, &inbox, NOW).await;
    assert_eq!(result.status, ActionStatus::Shown);
    let listed = inbox::list(&pc.state).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.kind, EntryKind::Instructions);
    assert_eq!(listed[0].0.from, "alice@example.net");
    assert_eq!(listed[0].0.text, "Please close all programs.");
}

#[test]
fn an_action_left_running_is_reported_interrupted_and_not_run_again() {
    let pc = pc(LocalPolicy::default());
    let action = body(pc.me, ActionKind::Script, "true");
    pc.actions.ledger().record(action.id, action.expires_at, LedgerState::Running, NOW).unwrap();
    drop(pc.actions);
    // What its script left behind (the agent was killed mid-run).
    std::fs::create_dir_all(pc.state.path("run").join(format!("{}.home", action.id))).unwrap();
    std::fs::write(pc.state.path("run").join(format!("{}.sh", action.id)), "true").unwrap();
    let actions = Actions::open(&pc.state, testing::public(&pc.key), pc.me, LocalPolicy::default(), NOW).unwrap();
    let frame = actions.results().frame(action.id).expect("a result for the interrupted action");
    let Some((Message::ActionResult(result), _)) = tap::decode(&frame, &tap::Limits::default()).unwrap() else {
        panic!("not a result")
    };
    assert_eq!(result.status, ActionStatus::Failed);
    assert!(result.text.contains("not run again"));
    assert!(!pc.state.path("run").exists(), "the interrupted script's files are gone");
    // A copy gets that result again; once receipted, a copy is a replay.
    assert!(matches!(actions.admit(&sign(&pc.key, &action), true, NOW), Admission::Resend(_)));
    actions.results().receipt(action.id).unwrap();
    assert_eq!(refused(actions.admit(&sign(&pc.key, &action), true, NOW)).status, ActionStatus::Replayed);
}

#[test]
fn a_refusal_never_replaces_a_waiting_result() {
    let pc = pc(LocalPolicy::default());
    let action = body(pc.me, ActionKind::Script, "true");
    let done = Refusal {
        id: action.id,
        status: ActionStatus::Expired,
        text: "first".into(),
        kind: None,
        issued_by: String::new(),
    };
    pc.actions.keep_refusal(&done).unwrap();
    let later = Refusal { status: ActionStatus::BadSignature, text: "second".into(), ..done };
    pc.actions.keep_refusal(&later).unwrap();
    let frame = pc.actions.results().frame(action.id).unwrap();
    let Some((Message::ActionResult(result), _)) = tap::decode(&frame, &tap::Limits::default()).unwrap() else {
        panic!("not a result")
    };
    assert_eq!(result.text, "first");
}

#[test]
fn result_texts_fit_the_decoders_limit() {
    let long = "é".repeat(1000);
    let cut = bounded(&long);
    assert!(cut.len() <= tap::DEFAULT_MAX_TEXT && cut.ends_with("..."));
    assert_eq!(bounded("short"), "short");
}

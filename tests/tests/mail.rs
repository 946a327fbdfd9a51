//! Mail end to end with the real `tether` binary and a real SMTP server (PyPI `aiosmtpd`, from
//! scripts/install-test-deps.sh) on a loopback port: an operator's test mail and a support
//! contact's invitation arrive with their recipient, subject and accept link; mail queued while
//! the SMTP server is down waits in the outbox, attempts counted, and arrives once it is up.
//!
//! The server is `e2e::smtp::Smtp` (an aiosmtpd handler saving each message as JSON).

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::process::{free_local_port, last_line};
use e2e::smtp::{gateway_mailing_to, Smtp, ARRIVAL};
use e2e::{bin, wait_for, Gateway};

/// `tether mail list --json`.
fn outbox(gateway: &Gateway) -> Vec<serde_json::Value> {
    let out = gateway.operator(&["mail", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("mail list --json prints JSON");
    list.as_array().cloned().unwrap_or_default()
}

fn mail_by_id(gateway: &Gateway, id: &str) -> serde_json::Value {
    let number: i64 = id.parse().unwrap_or_else(|_| panic!("{id:?} is not a mail id"));
    outbox(gateway)
        .into_iter()
        .find(|m| m["id"].as_i64() == Some(number))
        .unwrap_or_else(|| panic!("mail {id} is not in the outbox"))
}

/// The outbox id in `test mail N to ADDRESS queued`.
fn queued_id(out: &str) -> String {
    out.split_whitespace().nth(2).unwrap_or_else(|| panic!("no mail id in {out:?}")).to_string()
}

/// `tether user add NAME --password-stdin`.
fn add_user(gateway: &Gateway, name: &str) {
    use std::io::Write;
    let mut child = Command::new(bin("tether"))
        .arg("--data-dir")
        .arg(gateway.data_dir())
        .args(["user", "add", name, "--email", &format!("{name}@example.com"), "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tether user add");
    child.stdin.take().expect("stdin").write_all(b"pw-secret\n").expect("writing the password");
    let out = child.wait_with_output().expect("tether user add ran");
    assert!(out.status.success(), "tether user add failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_operator_invites_a_contact_and_the_invitation_mail_arrives_with_its_accept_link() {
    let port = free_local_port();
    let smtp = Smtp::start(port);
    let gateway = gateway_mailing_to(port);

    let out = gateway.operator(&["mail", "test", "ops@example.com"]);
    let test_id = queued_id(&out);
    let test = smtp.wait_for_message_to("ops@example.com", ARRIVAL);
    assert_eq!(test["subject"], "Tether test mail", "{test}");
    assert_eq!(
        (test["from"].as_str(), test["mail_from"].as_str()),
        (Some("Tether <tether@gw.example>"), Some("tether@gw.example"))
    );
    assert_eq!(test["content_type"], "text/plain", "{test}");

    add_user(&gateway, "olga");
    let out = gateway.operator(&[
        "subscriber",
        "register",
        "--owner",
        "olga",
        "--name",
        "Olga's Bakery",
        "--email",
        "olga@example.com",
    ]);
    let subscriber = out.split_whitespace().nth(1).unwrap_or_else(|| panic!("no subscriber id in {out:?}")).to_string();
    let invited = gateway.operator(&["contact", "invite", &subscriber, "carl@example.com"]);
    let guid = last_line(&invited).unwrap_or_else(|| panic!("no GUID in {invited:?}")).to_string();

    let invitation = smtp.wait_for_message_to("carl@example.com", ARRIVAL);
    assert_eq!(invitation["to"], "carl@example.com", "{invitation}");
    assert_eq!(invitation["subject"], "Olga's Bakery invites you to be a support contact on Tether", "{invitation}");
    let body = invitation["body"].as_str().unwrap_or_default();
    assert!(body.contains(&format!("https://gw.example:8443/portal/invitations/{guid}")), "{body}");
    assert!(body.contains("expires by itself") && body.contains("before 20"), "{body}");

    // The outbox says both went out, and the invitation is marked sent.
    let listed = outbox(&gateway);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!((listed[0]["kind"].as_str(), listed[0]["state"].as_str()), (Some("invitation"), Some("sent")));
    assert_eq!(listed[0]["invitation_guid"].as_str(), Some(guid.as_str()));
    assert_eq!(mail_by_id(&gateway, &test_id)["state"], "sent");
    wait_for("the invitation to be marked sent", Duration::from_secs(5), || {
        let contacts = gateway.operator(&["contact", "list", &subscriber, "--json"]);
        let contacts: serde_json::Value = serde_json::from_str(&contacts).expect("contact list --json prints JSON");
        contacts[0]["invitation_sent_at"].is_string()
    });
    let table = gateway.operator(&["mail", "list"]);
    assert!(table.contains("invitation") && table.contains("carl@example.com") && table.contains("sent"), "{table}");
    gateway.wait_for_metric("tether_mail_sent_total", 2.0, Duration::from_secs(5));
    gateway.wait_for_metric("tether_mail_outbox_pending", 0.0, Duration::from_secs(5));
}

#[test]
fn mail_queued_while_the_smtp_server_is_down_arrives_once_it_is_up() {
    let port = free_local_port();
    let gateway = gateway_mailing_to(port);

    let id = queued_id(&gateway.operator(&["mail", "test", "ops@example.com"]));
    // Refused, retried after 1 s, then 2 s: the attempts count up and the error is kept.
    wait_for("two failed attempts", Duration::from_secs(30), || {
        mail_by_id(&gateway, &id)["attempts"].as_u64().unwrap_or(0) >= 2
    });
    let waiting = mail_by_id(&gateway, &id);
    assert_eq!(waiting["state"], "queued", "{waiting}");
    let error = waiting["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{waiting}");
    assert!(gateway.metrics().get("tether_mail_failed_total").unwrap_or(0.0) >= 2.0);
    assert_eq!(gateway.metrics().get("tether_mail_outbox_pending"), Some(1.0));

    let smtp = Smtp::start(port);
    let arrived = smtp.wait_for_message_to("ops@example.com", ARRIVAL);
    assert_eq!(arrived["subject"], "Tether test mail", "{arrived}");
    wait_for("the mail to be marked sent", Duration::from_secs(5), || mail_by_id(&gateway, &id)["state"] == "sent");
    let sent = mail_by_id(&gateway, &id);
    assert!(sent["last_error"].is_null() && sent["attempts"].as_u64().unwrap_or(0) >= 3, "{sent}");
    assert_eq!(smtp.messages().len(), 1, "the mail arrived more than once");
    gateway.wait_for_metric("tether_mail_sent_total", 1.0, Duration::from_secs(5));
}

#[test]
fn mail_waits_in_the_outbox_of_a_gateway_without_an_smtp_server() {
    let gateway = Gateway::start(&[]);
    let out = gateway.operator(&["mail", "test", "ops@example.com"]);
    assert!(out.contains("mail.smtp_host is unset"), "{out}");
    let id = queued_id(&out);
    gateway.wait_for_metric("tether_mail_outbox_pending", 1.0, Duration::from_secs(15));
    let waiting = mail_by_id(&gateway, &id);
    assert_eq!((waiting["state"].as_str(), waiting["attempts"].as_u64()), (Some("queued"), Some(0)), "{waiting}");
    assert_eq!(gateway.metrics().get("tether_mail_gave_up_total"), Some(0.0));
}

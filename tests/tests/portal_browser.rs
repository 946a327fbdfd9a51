//! The portal in a real browser: headless Debian Chromium driven by npm `playwright-core`
//! (`tests/browser/invite_flow.mjs`; scripts/install-test-deps.sh installs both), against the
//! real `tether` with `[mail]` sending to a real SMTP server (aiosmtpd) and a connected `amt-sim`
//! as the subscriber's machine. A subscriber signs in, invites a contact on the contacts page and
//! signs out; the invitation arrives by mail; the contact follows the mailed link, creates an
//! account on the invitation page, accepts the terms and sees the subscriber's machine.
//!
//! Screenshots of every page go to `target/portal-screens/` (not committed).

use std::time::Duration;

use e2e::browser::{browser_step, screens_dir};
use e2e::process::free_local_port;
use e2e::smtp::{mail_config, Smtp, ARRIVAL};
use e2e::{wait_for, Gateway, Sim};
use uuid::Uuid;

const OWNER_PASSWORD: &str = "pw-olga-long-enough";
const CONTACT_PASSWORD: &str = "pw-carl-long-enough";
const MACHINE: &str = "Bakery till";
const PUBLIC_URL: &str = "https://portal.example:8443";

/// The first `https://…` link in `body` with `/portal/invitations/` in it.
fn accept_link(body: &str) -> String {
    body.split_whitespace()
        .find(|word| word.starts_with("https://") && word.contains("/portal/invitations/"))
        .unwrap_or_else(|| panic!("no accept link in the mail:\n{body}"))
        .trim_end_matches(['.', ',', ')', '>'])
        .to_string()
}

#[test]
fn a_subscriber_invites_a_contact_in_the_browser_who_accepts_from_the_mail_and_sees_the_machine() {
    let port = free_local_port();
    let smtp = Smtp::start(port);
    // The API's port is chosen at start, after the configuration is written: links in mail point
    // at PUBLIC_URL, and the browser goes to the same path on the gateway's test address.
    let gateway = Gateway::start_with_config(&mail_config(port, Some(PUBLIC_URL)), &[]);
    let machine = Uuid::new_v4();
    let _sim = Sim::start(&gateway, &["--uuid", &machine.to_string()]);
    wait_for("the machine to connect", Duration::from_secs(30), || gateway.is_connected(machine));

    gateway.operator_with_stdin(
        &["user", "add", "olga", "--email", "olga@example.com", "--password-stdin"],
        &format!("{OWNER_PASSWORD}\n"),
    );
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
    gateway.operator(&["machine", "enroll", &subscriber, &machine.to_string(), "--nickname", MACHINE]);

    let screens = screens_dir();
    let url = gateway.api_url();
    let owner = browser_step(
        "invite_flow.mjs",
        serde_json::json!({
            "step": "owner",
            "url": url,
            "username": "olga",
            "password": OWNER_PASSWORD,
            "invite": "carl@example.com",
            "screens": screens,
        }),
    );
    assert!(owner.contains("ok: invited carl@example.com") && owner.contains("ok: signed out"), "{owner}");

    let mail = smtp.wait_for_message_to("carl@example.com", ARRIVAL);
    assert_eq!(mail["subject"], "Olga's Bakery invites you to be a support contact on Tether", "{mail}");
    let link = accept_link(mail["body"].as_str().unwrap_or_default());
    let path = link.strip_prefix(PUBLIC_URL).unwrap_or_else(|| panic!("{link} is not under {PUBLIC_URL}"));
    assert!(path.starts_with("/portal/invitations/"), "{link}");
    let link = format!("{url}{path}");

    let contact = browser_step(
        "invite_flow.mjs",
        serde_json::json!({
            "step": "contact",
            "link": link,
            "username": "carl",
            "password": CONTACT_PASSWORD,
            "nickname": "Carl from IT",
            "machine": MACHINE,
            "screens": screens,
        }),
    );
    assert!(contact.contains("ok: created the account carl"), "{contact}");
    assert!(contact.contains(&format!("ok: accepted, and sees the machine {MACHINE}")), "{contact}");

    // The store agrees: carl is an active contact, under the nickname given in the browser.
    let contacts = gateway.operator(&["contact", "list", &subscriber, "--json"]);
    let contacts: serde_json::Value = serde_json::from_str(&contacts).expect("contact list --json prints JSON");
    assert_eq!(contacts[0]["state"], "active", "{contacts}");
    assert_eq!(contacts[0]["nickname"], "Carl from IT", "{contacts}");
    assert_eq!(contacts[0]["terms_version"], "2026-1", "{contacts}");
}

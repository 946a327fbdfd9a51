//! The letters' words: plain text, one function per letter, each saying what happened and what
//! the reader can do. Values from people (a subscriber's name, an address) are put on one line:
//! control characters become spaces, so that nothing written into a subject can start a header.
//!
//! What it does not do: build the MIME message (`sender`, with lettre's builders).

use time::{OffsetDateTime, UtcOffset};

use super::Letter;

/// A letter ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, no CR or LF.
    pub subject: String,
    /// Plain text, lines ending in `\n`.
    pub body: String,
}

/// Longest value from people put into a letter (a name, an address), in characters.
const MAX_VALUE: usize = 200;

/// `text` on one line: control characters (CR, LF, tabs, …) become spaces; at most
/// [`MAX_VALUE`] characters.
fn line(text: &str) -> String {
    let mut out: String = text.trim().chars().take(MAX_VALUE).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.trim().chars().count() > MAX_VALUE {
        out.push('…');
    }
    out
}

/// `2027-01-22 08:00 UTC`.
fn when(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute())
}

fn signed(product: &str, text: String) -> String {
    format!("{text}\n-- \n{product}\nThis mail was sent automatically; replies are not read.\n")
}

pub(super) fn render(letter: &Letter, product: &str) -> Rendered {
    let product = line(product);
    match letter {
        Letter::Invitation { subscriber, accept_url, expires_at, guid, .. } => {
            let subscriber = line(subscriber);
            Rendered {
                subject: format!("{subscriber} invites you to be a support contact on {product}"),
                body: signed(
                    &product,
                    format!(
                        "Hello,\n\n\
                         {subscriber} invites you to become one of their support contacts on {product}.\n\
                         As a support contact you see the health of their machines, receive the alerts\n\
                         you choose, and can help them remotely.\n\n\
                         To accept, open this link before {until}:\n\n    {url}\n\n\
                         There you accept the terms, and choose your nickname and which alerts you want.\n\
                         If you do not want to, ignore this mail: the invitation expires by itself.\n\n\
                         Invitation {guid}\n",
                        until = when(*expires_at),
                        url = line(accept_url),
                    ),
                ),
            }
        }
        Letter::ContactRemoved { subscriber, .. } => {
            let subscriber = line(subscriber);
            Rendered {
                subject: format!("You are no longer a support contact of {subscriber}"),
                body: signed(
                    &product,
                    format!(
                        "Hello,\n\n\
                         {subscriber} removed you from their support contacts on {product}.\n\
                         You no longer see their machines or receive their alerts, and your open\n\
                         sessions with their machines have ended.\n\n\
                         If you think this is a mistake, ask {subscriber} to invite you again.\n"
                    ),
                ),
            }
        }
        Letter::ContactLeft { contact, .. } => {
            let contact = line(contact);
            Rendered {
                subject: format!("{contact} is no longer your support contact"),
                body: signed(
                    &product,
                    format!(
                        "Hello,\n\n\
                         {contact} left your support contacts on {product}.\n\
                         They no longer see your machines or receive your alerts.\n\n\
                         You can invite another support contact whenever you want.\n"
                    ),
                ),
            }
        }
        Letter::SubscriptionTerminated { subscriber, .. } => {
            let subscriber = line(subscriber);
            Rendered {
                subject: format!("Your support access to {subscriber} has ended"),
                body: signed(
                    &product,
                    format!(
                        "Hello,\n\n\
                         The {product} subscription of {subscriber} has ended, and with it your access\n\
                         as their support contact: you no longer see their machines or receive their\n\
                         alerts, and your open sessions with their machines have ended.\n\n\
                         There is nothing you need to do. If you have questions, ask {subscriber}.\n"
                    ),
                ),
            }
        }
        Letter::EmailChange { confirm_url, expires_at, .. } => Rendered {
            subject: format!("Confirm your new email address for {product}"),
            body: signed(
                &product,
                format!(
                    "Hello,\n\n\
                     Someone, hopefully you, asked to use this address for a {product} account.\n\
                     To confirm it, open this link before {until}:\n\n    {url}\n\n\
                     Until you do, mail keeps going to the old address. If it was not you, ignore\n\
                     this mail: nothing changes.\n",
                    until = when(*expires_at),
                    url = line(confirm_url),
                ),
            ),
        },
    }
}

/// The letter of `tether mail test`.
pub(super) fn test_letter(product: &str, now: OffsetDateTime) -> Rendered {
    let product = line(product);
    Rendered {
        subject: format!("{product} test mail"),
        body: signed(
            &product,
            format!(
                "Hello,\n\n\
                 This is a test mail queued by an operator at {at} with `tether mail test`.\n\
                 It came through the gateway's outbox and its SMTP server: mail works.\n",
                at = when(now)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn every_letter() -> Vec<Letter> {
        vec![
            Letter::Invitation {
                to: "carl@example.org".into(),
                subscriber: "Olga's Bakery".into(),
                accept_url: "https://gw.example:8443/invitations/0b6c".into(),
                expires_at: t0(),
                guid: Uuid::nil(),
            },
            Letter::ContactRemoved { to: "carl@example.org".into(), subscriber: "Olga's Bakery".into() },
            Letter::ContactLeft { to: "olga@example.org".into(), contact: "Carl".into() },
            Letter::SubscriptionTerminated { to: "carl@example.org".into(), subscriber: "Olga's Bakery".into() },
            Letter::EmailChange {
                to: "new@example.org".into(),
                confirm_url: "https://gw.example:8443/email/confirm/s3cr3t".into(),
                expires_at: t0(),
            },
        ]
    }

    #[test]
    fn mail_letters_say_what_happened_and_what_to_do() {
        let invitation = every_letter()[0].render("Tether");
        assert_eq!(invitation.subject, "Olga's Bakery invites you to be a support contact on Tether");
        assert!(invitation.body.contains("https://gw.example:8443/invitations/0b6c"), "{}", invitation.body);
        assert!(invitation.body.contains("before 2027-01-15 08:00 UTC"), "{}", invitation.body);
        assert!(invitation.body.contains(&Uuid::nil().to_string()), "{}", invitation.body);
        let terminated = every_letter()[3].render("Tether");
        assert!(terminated.subject.contains("has ended") && terminated.body.contains("nothing you need to do"));
        let change = every_letter()[4].render("Tether");
        assert!(change.body.contains("/email/confirm/s3cr3t") && change.body.contains("ignore"));
        for letter in every_letter() {
            let r = letter.render("Tether");
            assert!(!r.subject.contains(['\r', '\n']), "{r:?}");
            assert!(r.body.ends_with('\n') && !r.body.contains('\r'), "{r:?}");
            assert!(r.body.lines().all(|l| l.chars().count() <= 90), "{r:?}");
        }
    }

    #[test]
    fn mail_values_from_people_cannot_break_the_subject_or_run_long() {
        let letter = Letter::ContactRemoved {
            to: "carl@example.org".into(),
            subscriber: "Evil\r\nBcc: victim@example.org".into(),
        };
        let r = letter.render("Tether");
        assert_eq!(r.subject, "You are no longer a support contact of Evil  Bcc: victim@example.org");
        assert!(!r.body.contains("\r\nBcc"));
        let long = Letter::ContactLeft { to: "o@example.org".into(), contact: "x".repeat(10_000) };
        assert!(long.render("Tether").subject.len() < 300);
    }
}

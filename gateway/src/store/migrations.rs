//! The schema, one list of migrations per database: migration `i` takes the schema from version
//! `i` to `i + 1`. Append new migrations to both lists; never edit a released one.
//!
//! SQLite keeps its version in `PRAGMA user_version` (as every Tether before PostgreSQL did, so
//! that existing data dirs upgrade in place); PostgreSQL in the one-row table `tether_schema`,
//! changed under an advisory lock so that gateways starting together migrate once.
//!
//! Both databases hold the same tables and columns. PostgreSQL's flags are BOOLEAN, its ids
//! BIGSERIAL, its UUID columns `COLLATE "C"` (so that pages follow the same order as on SQLite).

use sqlx::{PgPool, SqlitePool};

pub(super) const SQLITE: &[&str] = &[
    "
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (
    uuid TEXT PRIMARY KEY,
    registered INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT,
    first_seen INTEGER,
    last_hello INTEGER,
    last_keepalive INTEGER,
    connected_since INTEGER,
    remote_addr TEXT,
    ports TEXT NOT NULL DEFAULT '',
    last_disconnect INTEGER,
    last_disconnect_reason TEXT,
    duplicate_count INTEGER NOT NULL DEFAULT 0,
    last_duplicate_at INTEGER,
    duplicate_note TEXT
);
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
",
    "
CREATE TABLE mps_accounts (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO mps_accounts (username, password_hash, created_at)
    SELECT u.value, h.value, CAST(strftime('%s', 'now') AS INTEGER) * 1000
    FROM settings u, settings h WHERE u.key = 'mps_username' AND h.key = 'mps_password_hash';
DELETE FROM settings WHERE key IN ('mps_username', 'mps_password_hash');
ALTER TABLE devices ADD COLUMN pinned_credential TEXT;
ALTER TABLE devices ADD COLUMN conflict_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN last_conflict_at INTEGER;
ALTER TABLE devices ADD COLUMN conflict_note TEXT;
-- AUTOINCREMENT: a token created after a revoked one never gets its id, which the daemon uses
-- to end the revoked token's relays.
CREATE TABLE tokens_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    scope TEXT NOT NULL DEFAULT 'attach',
    expires_at INTEGER
);
INSERT INTO tokens_v2 (id, name, hash, created_at) SELECT id, name, hash, created_at FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_v2 RENAME TO tokens;
",
    "
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    api_addr TEXT,
    internal_addr TEXT,
    version TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    stopped_at INTEGER,
    run_id TEXT NOT NULL DEFAULT ''
);
ALTER TABLE devices ADD COLUMN instance_id TEXT;
CREATE INDEX devices_instance ON devices (instance_id) WHERE instance_id IS NOT NULL;
",
    // v4: AMT redirection sessions seen by the relay tap (`redirections.rs`).
    "
CREATE TABLE redirections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    technician TEXT NOT NULL,
    device_user TEXT,
    port INTEGER NOT NULL,
    instance TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    outcome TEXT NOT NULL,
    bytes_to_device INTEGER NOT NULL DEFAULT 0,
    bytes_from_device INTEGER NOT NULL DEFAULT 0,
    transcript TEXT
);
CREATE INDEX redirections_device ON redirections (uuid, started_at);
CREATE INDEX redirections_open ON redirections (instance) WHERE ended_at IS NULL;
",
    // v5: WS-MAN actions audited, AMT access per device, remote-fix sessions (`remote.rs`).
    "
CREATE TABLE device_actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    at INTEGER NOT NULL,
    token_id INTEGER,
    technician TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    message TEXT,
    instance TEXT NOT NULL
);
CREATE INDEX device_actions_device ON device_actions (uuid, at);
CREATE TABLE amt_access (
    uuid TEXT PRIMARY KEY,
    amt_user TEXT,
    sealed_password TEXT,
    tls_pin TEXT,
    updated_at INTEGER NOT NULL
);
CREATE TABLE remote_sessions (
    uuid TEXT PRIMARY KEY,
    rescue_found TEXT,
    rescue_by TEXT,
    rescue_at INTEGER,
    closed_at INTEGER,
    closed_by TEXT,
    close_message TEXT
);
",
    // v6: the appliance's LAN: hosts its scans found, and the AMT PCs adopted as devices (`lan.rs`).
    "
CREATE TABLE lan_hosts (
    instance TEXT NOT NULL,
    mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    interface TEXT NOT NULL,
    amt INTEGER NOT NULL DEFAULT 0,
    amt_version TEXT,
    provisioning TEXT,
    amt_ports TEXT NOT NULL DEFAULT '',
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (instance, mac)
);
CREATE TABLE lan_devices (
    uuid TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    ip TEXT NOT NULL,
    mac TEXT,
    tls_pin TEXT,
    plain_ports INTEGER NOT NULL DEFAULT 0,
    adopted_at INTEGER NOT NULL,
    adopted_by TEXT NOT NULL,
    UNIQUE (instance, ip)
);
",
    // v7: how many tunnels each busy source address held (`sources.rs`), so that a big NAT may
    // bring them all back at once after a restart.
    "
CREATE TABLE source_tunnels (
    instance TEXT NOT NULL,
    source TEXT NOT NULL,
    tunnels INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (instance, source)
);
",
    // v8: accounts (`accounts.rs`, `contacts.rs`, `audit.rs`): users, with a built-in operator
    // that owns every token made before; subscribers, their personal data apart, subscriptions,
    // machines, MPS accounts issued per subscriber; support contacts' life cycle; email changes
    // waiting for confirmation; the append-only audit log.
    "
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    email TEXT,
    password_hash TEXT,
    role TEXT NOT NULL DEFAULT 'user',
    created_at INTEGER NOT NULL,
    suspended_at INTEGER,
    inactive_since INTEGER,
    totp_secret TEXT
);
INSERT INTO users (username, role, created_at)
    VALUES ('operator', 'operator', CAST(strftime('%s', 'now') AS INTEGER) * 1000);
-- Tokens belong to users: rebuilt, since SQLite adds no NOT NULL column with a reference. The
-- id sequence carries over, so that no new token ever gets a revoked token's id.
CREATE TABLE tokens_v3 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    scope TEXT NOT NULL DEFAULT 'attach',
    expires_at INTEGER,
    user_id INTEGER NOT NULL REFERENCES users (id)
);
INSERT INTO tokens_v3 (id, name, hash, created_at, scope, expires_at, user_id)
    SELECT id, name, hash, created_at, scope, expires_at, (SELECT id FROM users WHERE username = 'operator')
    FROM tokens;
DELETE FROM sqlite_sequence WHERE name = 'tokens_v3';
INSERT INTO sqlite_sequence (name, seq) SELECT 'tokens_v3', seq FROM sqlite_sequence WHERE name = 'tokens';
DROP TABLE tokens;
ALTER TABLE tokens_v3 RENAME TO tokens;
CREATE INDEX tokens_user ON tokens (user_id);
CREATE TABLE subscribers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_user_id INTEGER NOT NULL UNIQUE REFERENCES users (id),
    created_at INTEGER NOT NULL
);
CREATE TABLE subscriber_pii (
    subscriber_id INTEGER PRIMARY KEY REFERENCES subscribers (id),
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    phone TEXT,
    billing_note TEXT
);
CREATE TABLE subscriptions (
    subscriber_id INTEGER PRIMARY KEY REFERENCES subscribers (id),
    status TEXT NOT NULL DEFAULT 'active',
    max_machines INTEGER NOT NULL,
    max_contacts INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    terminated_at INTEGER,
    terminate_reason TEXT
);
CREATE TABLE machines (
    uuid TEXT PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
    nickname TEXT,
    enrolled_at INTEGER NOT NULL
);
CREATE INDEX machines_subscriber ON machines (subscriber_id);
ALTER TABLE mps_accounts ADD COLUMN subscriber_id INTEGER REFERENCES subscribers (id);
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
    user_id INTEGER REFERENCES users (id),
    invitation_guid TEXT NOT NULL UNIQUE,
    invited_email TEXT NOT NULL,
    invited_at INTEGER NOT NULL,
    invitation_sent_at INTEGER,
    expires_at INTEGER NOT NULL,
    accepted_at INTEGER,
    terms_version TEXT,
    nickname TEXT,
    contact_email TEXT,
    alert_prefs TEXT,
    ended_at INTEGER,
    state TEXT NOT NULL DEFAULT 'invited'
);
CREATE INDEX contacts_subscriber ON contacts (subscriber_id, state);
CREATE INDEX contacts_user ON contacts (user_id, state) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX contacts_active ON contacts (subscriber_id, user_id) WHERE state = 'active';
CREATE TABLE email_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id),
    contact_id INTEGER REFERENCES contacts (id),
    new_email TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor_user_id INTEGER REFERENCES users (id),
    action TEXT NOT NULL,
    machine_uuid TEXT,
    subscriber_id INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_machine ON audit_log (machine_uuid, id) WHERE machine_uuid IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor_user_id, id) WHERE actor_user_id IS NOT NULL;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
",
    // v9: the mail outbox (`outbox.rs`): every mail waits here until an SMTP server took it or
    // the worker gave up on it.
    "
CREATE TABLE mail_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    invitation_guid TEXT,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    sent_at INTEGER,
    gave_up_at INTEGER,
    last_error TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE sent_at IS NULL AND gave_up_at IS NULL;
",
    // v10: the portal's sessions (`sessions.rs`): the SHA-256 of each random session id (never
    // the id), its user, times, whether the second factor was passed, its CSRF secret and a TOTP
    // secret being enrolled; and the last TOTP time step each user spent (no code twice).
    "
CREATE TABLE portal_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    id_hash TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    second_factor INTEGER NOT NULL DEFAULT 0,
    csrf_secret TEXT NOT NULL,
    totp_pending TEXT
);
CREATE INDEX portal_sessions_user ON portal_sessions (user_id, created_at);
CREATE INDEX portal_sessions_expiry ON portal_sessions (expires_at);
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;
",
    // v11: agents (docs/agents.md): one-time enrollment tokens (stored as their SHA-256), the
    // agents' certificates (revocable), what each agent said in its hello, and its telemetry
    // reports keyed by (UUID, the agent's sequence number), so that a report sent twice is kept once.
    "
CREATE TABLE enrollment_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
    uuid TEXT,
    nickname TEXT,
    created_by INTEGER REFERENCES users (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
);
CREATE INDEX enrollment_tokens_subscriber ON enrollment_tokens (subscriber_id);
CREATE TABLE agent_certs (
    serial TEXT PRIMARY KEY,
    uuid TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_reason TEXT
);
CREATE INDEX agent_certs_uuid ON agent_certs (uuid);
CREATE TABLE agents (
    uuid TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    capabilities INTEGER NOT NULL,
    remote_help INTEGER NOT NULL DEFAULT 0,
    enrolled_at INTEGER NOT NULL,
    last_hello INTEGER,
    last_report INTEGER,
    remote_addr TEXT,
    instance_id TEXT,
    connected_since INTEGER
);
CREATE TABLE telemetry (
    uuid TEXT NOT NULL,
    seq INTEGER NOT NULL,
    taken_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (uuid, seq)
);
CREATE INDEX telemetry_received ON telemetry (uuid, received_at);
",
    // v12: the health meter (docs/health.md): each machine's meter now, every change of it,
    // what each contact was last alerted of per machine, and every alert delivery (the outbox,
    // which now carries webhooks too: `channel`).
    "
CREATE TABLE health (
    uuid TEXT PRIMARY KEY,
    health TEXT NOT NULL,
    reasons TEXT NOT NULL,
    since INTEGER NOT NULL,
    evaluated_at INTEGER NOT NULL
);
CREATE TABLE health_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    at INTEGER NOT NULL,
    health TEXT NOT NULL,
    previous TEXT,
    reasons TEXT NOT NULL
);
CREATE INDEX health_changes_uuid ON health_changes (uuid, at);
CREATE TABLE alert_state (
    contact_id INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    last_alerted TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (contact_id, uuid)
);
CREATE TABLE alert_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    change_id INTEGER,
    uuid TEXT,
    contact_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    health TEXT NOT NULL,
    outbox_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX alert_deliveries_uuid ON alert_deliveries (uuid, created_at);
ALTER TABLE mail_outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'email';
",
    // v13: support actions (signed, sent to agents, their results) and messages to PC users, with
    // each machine's delivery (docs/actions.md).
    "
CREATE TABLE support_actions (
    id TEXT PRIMARY KEY,
    uuid TEXT NOT NULL,
    subscriber_id INTEGER,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    timeout_secs INTEGER NOT NULL,
    issued_by_user_id INTEGER NOT NULL,
    issued_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL,
    state TEXT NOT NULL,
    sent_at INTEGER,
    result_at INTEGER,
    exit_code INTEGER,
    duration_ms INTEGER,
    output TEXT,
    output_truncated INTEGER NOT NULL DEFAULT 0,
    result_text TEXT,
    report_seq INTEGER
);
CREATE INDEX support_actions_uuid ON support_actions (uuid, created_at);
CREATE TABLE support_messages (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    subscriber_id INTEGER,
    uuid TEXT,
    from_user_id INTEGER NOT NULL,
    from_name TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX support_messages_from ON support_messages (from_user_id, created_at);
CREATE TABLE message_deliveries (
    message_id TEXT NOT NULL,
    uuid TEXT NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL,
    sent_at INTEGER,
    received_at INTEGER,
    read_at INTEGER,
    PRIMARY KEY (message_id, uuid)
);
CREATE INDEX message_deliveries_machine ON message_deliveries (uuid, received_at);
",
    // v14: silos (docs/silos.md). A root keeps its maintenance silos, which silo each machine
    // was given to, and each subscriber's entitlement under an opaque id (the only name of the
    // subscriber a maintenance silo ever sees); a maintenance silo keeps the clients its
    // certificates admitted, with that opaque id and no personal data.
    "
CREATE TABLE silos (
    name TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    region TEXT,
    oem TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE silo_assignments (
    uuid TEXT PRIMARY KEY,
    silo TEXT NOT NULL REFERENCES silos (name),
    assigned_at INTEGER NOT NULL
);
CREATE INDEX silo_assignments_silo ON silo_assignments (silo);
CREATE TABLE entitlements (
    subscriber_id INTEGER PRIMARY KEY REFERENCES subscribers (id),
    opaque_id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    tier TEXT NOT NULL,
    valid_until INTEGER,
    region TEXT,
    oem TEXT
);
CREATE TABLE silo_clients (
    uuid TEXT PRIMARY KEY,
    subscriber TEXT NOT NULL,
    service TEXT NOT NULL,
    tier TEXT NOT NULL,
    serial TEXT NOT NULL,
    entitled_until INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE INDEX silo_clients_subscriber ON silo_clients (subscriber);
",
    // v15: moving clients between silos, and their aggregates (docs/silos.md). A root keeps each
    // certificate's public key (it reissues for it), each silo's signing key (it checks the
    // silo's reports), the moves it ordered, and each silo's last aggregates; a maintenance silo
    // notes which clients came from another silo and whether it has told the root.
    "
ALTER TABLE agent_certs ADD COLUMN spki TEXT;
ALTER TABLE silos ADD COLUMN signing_key TEXT;
CREATE TABLE silo_moves (
    id TEXT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    from_silo TEXT NOT NULL,
    to_silo TEXT NOT NULL REFERENCES silos (name),
    old_serial TEXT,
    serial TEXT NOT NULL,
    certificate TEXT NOT NULL,
    order_payload TEXT NOT NULL,
    order_signature TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    confirmed_at INTEGER
);
CREATE INDEX silo_moves_from ON silo_moves (from_silo, confirmed_at);
ALTER TABLE silo_clients ADD COLUMN moved_from TEXT;
ALTER TABLE silo_clients ADD COLUMN move_id TEXT;
ALTER TABLE silo_clients ADD COLUMN move_reported_at INTEGER;
CREATE TABLE silo_aggregates (
    silo TEXT PRIMARY KEY REFERENCES silos (name),
    issued_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    payload TEXT NOT NULL
);
", // v16: the portal through the root (`silo::signin`, `sessions.rs`, `silos.rs`). A root keeps
    // each silo's portal URL and each user's opaque id (made when first sent to a silo); a
    // maintenance silo gives each subscriber's opaque id a number of its own, keeps what the
    // root's assertion granted each person (a user row under the opaque id, no name or email),
    // which sessions came through the root, and the assertions' nonces spent.
    "
ALTER TABLE silos ADD COLUMN portal_url TEXT;
ALTER TABLE users ADD COLUMN opaque_id TEXT;
CREATE UNIQUE INDEX users_opaque_id ON users (opaque_id);
ALTER TABLE portal_sessions ADD COLUMN via_root INTEGER NOT NULL DEFAULT 0;
CREATE TABLE silo_subscribers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    opaque TEXT NOT NULL UNIQUE
);
INSERT INTO silo_subscribers (opaque) SELECT DISTINCT subscriber FROM silo_clients ORDER BY subscriber;
CREATE TABLE silo_grants (
    user_id INTEGER NOT NULL REFERENCES users (id),
    subscriber_id INTEGER NOT NULL REFERENCES silo_subscribers (id),
    owner INTEGER NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (user_id, subscriber_id)
);
CREATE TABLE silo_signin_nonces (
    nonce TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
",
];

pub(super) const POSTGRES: &[&str] = &[
    "
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE mps_accounts (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE devices (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    registered BOOLEAN NOT NULL DEFAULT FALSE,
    password_hash TEXT,
    first_seen BIGINT,
    last_hello BIGINT,
    last_keepalive BIGINT,
    connected_since BIGINT,
    remote_addr TEXT,
    ports TEXT NOT NULL DEFAULT '',
    last_disconnect BIGINT,
    last_disconnect_reason TEXT,
    duplicate_count BIGINT NOT NULL DEFAULT 0,
    last_duplicate_at BIGINT,
    duplicate_note TEXT,
    pinned_credential TEXT,
    conflict_count BIGINT NOT NULL DEFAULT 0,
    last_conflict_at BIGINT,
    conflict_note TEXT,
    instance_id TEXT
);
CREATE INDEX devices_instance ON devices (instance_id) WHERE instance_id IS NOT NULL;
-- BIGSERIAL: a sequence never hands out an id twice, which the gateways use to end a revoked
-- token's relays.
CREATE TABLE tokens (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    scope TEXT NOT NULL DEFAULT 'attach',
    expires_at BIGINT
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    api_addr TEXT,
    internal_addr TEXT,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT,
    run_id TEXT NOT NULL DEFAULT ''
);
",
    // v2: AMT redirection sessions seen by the relay tap (`redirections.rs`).
    "
CREATE TABLE redirections (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL,
    kind TEXT NOT NULL,
    technician TEXT NOT NULL,
    device_user TEXT,
    port BIGINT NOT NULL,
    instance TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    outcome TEXT NOT NULL,
    bytes_to_device BIGINT NOT NULL DEFAULT 0,
    bytes_from_device BIGINT NOT NULL DEFAULT 0,
    transcript TEXT
);
CREATE INDEX redirections_device ON redirections (uuid, started_at);
CREATE INDEX redirections_open ON redirections (instance) WHERE ended_at IS NULL;
",
    // v3: WS-MAN actions audited, AMT access per device, remote-fix sessions (`remote.rs`).
    "
CREATE TABLE device_actions (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL,
    at BIGINT NOT NULL,
    token_id BIGINT,
    technician TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    message TEXT,
    instance TEXT NOT NULL
);
CREATE INDEX device_actions_device ON device_actions (uuid, at);
CREATE TABLE amt_access (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    amt_user TEXT,
    sealed_password TEXT,
    tls_pin TEXT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE remote_sessions (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    rescue_found TEXT,
    rescue_by TEXT,
    rescue_at BIGINT,
    closed_at BIGINT,
    closed_by TEXT,
    close_message TEXT
);
",
    // v4: the appliance's LAN: hosts its scans found, and the AMT PCs adopted as devices (`lan.rs`).
    "
CREATE TABLE lan_hosts (
    instance TEXT NOT NULL,
    mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    interface TEXT NOT NULL,
    amt BOOLEAN NOT NULL DEFAULT FALSE,
    amt_version TEXT,
    provisioning TEXT,
    amt_ports TEXT NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (instance, mac)
);
CREATE TABLE lan_devices (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    instance TEXT NOT NULL,
    ip TEXT NOT NULL,
    mac TEXT,
    tls_pin TEXT,
    plain_ports BOOLEAN NOT NULL DEFAULT FALSE,
    adopted_at BIGINT NOT NULL,
    adopted_by TEXT NOT NULL,
    UNIQUE (instance, ip)
);
",
    // v5: how many tunnels each busy source address held (`sources.rs`), so that a big NAT may
    // bring them all back at once after a restart.
    "
CREATE TABLE source_tunnels (
    instance TEXT NOT NULL,
    source TEXT NOT NULL,
    tunnels BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (instance, source)
);
",
    // v6: accounts (`accounts.rs`, `contacts.rs`, `audit.rs`), as SQLite's v8.
    "
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT,
    password_hash TEXT,
    role TEXT NOT NULL DEFAULT 'user',
    created_at BIGINT NOT NULL,
    suspended_at BIGINT,
    inactive_since BIGINT,
    totp_secret TEXT
);
INSERT INTO users (username, role, created_at)
    VALUES ('operator', 'operator', (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT);
ALTER TABLE tokens ADD COLUMN user_id BIGINT REFERENCES users (id);
UPDATE tokens SET user_id = (SELECT id FROM users WHERE username = 'operator');
ALTER TABLE tokens ALTER COLUMN user_id SET NOT NULL;
CREATE INDEX tokens_user ON tokens (user_id);
CREATE TABLE subscribers (
    id BIGSERIAL PRIMARY KEY,
    owner_user_id BIGINT NOT NULL UNIQUE REFERENCES users (id),
    created_at BIGINT NOT NULL
);
CREATE TABLE subscriber_pii (
    subscriber_id BIGINT PRIMARY KEY REFERENCES subscribers (id),
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    phone TEXT,
    billing_note TEXT
);
CREATE TABLE subscriptions (
    subscriber_id BIGINT PRIMARY KEY REFERENCES subscribers (id),
    status TEXT NOT NULL DEFAULT 'active',
    max_machines BIGINT NOT NULL,
    max_contacts BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    terminated_at BIGINT,
    terminate_reason TEXT
);
CREATE TABLE machines (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
    nickname TEXT,
    enrolled_at BIGINT NOT NULL
);
CREATE INDEX machines_subscriber ON machines (subscriber_id);
ALTER TABLE mps_accounts ADD COLUMN subscriber_id BIGINT REFERENCES subscribers (id);
CREATE TABLE contacts (
    id BIGSERIAL PRIMARY KEY,
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
    user_id BIGINT REFERENCES users (id),
    invitation_guid TEXT COLLATE \"C\" NOT NULL UNIQUE,
    invited_email TEXT NOT NULL,
    invited_at BIGINT NOT NULL,
    invitation_sent_at BIGINT,
    expires_at BIGINT NOT NULL,
    accepted_at BIGINT,
    terms_version TEXT,
    nickname TEXT,
    contact_email TEXT,
    alert_prefs TEXT,
    ended_at BIGINT,
    state TEXT NOT NULL DEFAULT 'invited'
);
CREATE INDEX contacts_subscriber ON contacts (subscriber_id, state);
CREATE INDEX contacts_user ON contacts (user_id, state) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX contacts_active ON contacts (subscriber_id, user_id) WHERE state = 'active';
CREATE TABLE email_changes (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    contact_id BIGINT REFERENCES contacts (id),
    new_email TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor_user_id BIGINT REFERENCES users (id),
    action TEXT NOT NULL,
    machine_uuid TEXT COLLATE \"C\",
    subscriber_id BIGINT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_machine ON audit_log (machine_uuid, id) WHERE machine_uuid IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor_user_id, id) WHERE actor_user_id IS NOT NULL;
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $body$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $body$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
",
    // v7: the mail outbox (`outbox.rs`), as SQLite's v9.
    "
CREATE TABLE mail_outbox (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    invitation_guid TEXT COLLATE \"C\",
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    sent_at BIGINT,
    gave_up_at BIGINT,
    last_error TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE sent_at IS NULL AND gave_up_at IS NULL;
",
    // v8: the portal's sessions, as SQLite's v10.
    "
CREATE TABLE portal_sessions (
    id BIGSERIAL PRIMARY KEY,
    id_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    second_factor BOOLEAN NOT NULL DEFAULT FALSE,
    csrf_secret TEXT NOT NULL,
    totp_pending TEXT
);
CREATE INDEX portal_sessions_user ON portal_sessions (user_id, created_at);
CREATE INDEX portal_sessions_expiry ON portal_sessions (expires_at);
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;
",
    // v9: agents, as SQLite's v11.
    "
CREATE TABLE enrollment_tokens (
    id BIGSERIAL PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
    uuid TEXT COLLATE \"C\",
    nickname TEXT,
    created_by BIGINT REFERENCES users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by TEXT COLLATE \"C\"
);
CREATE INDEX enrollment_tokens_subscriber ON enrollment_tokens (subscriber_id);
CREATE TABLE agent_certs (
    serial TEXT COLLATE \"C\" PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL,
    fingerprint TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_reason TEXT
);
CREATE INDEX agent_certs_uuid ON agent_certs (uuid);
CREATE TABLE agents (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    capabilities BIGINT NOT NULL,
    remote_help BOOLEAN NOT NULL DEFAULT FALSE,
    enrolled_at BIGINT NOT NULL,
    last_hello BIGINT,
    last_report BIGINT,
    remote_addr TEXT,
    instance_id TEXT,
    connected_since BIGINT
);
CREATE TABLE telemetry (
    uuid TEXT COLLATE \"C\" NOT NULL,
    seq BIGINT NOT NULL,
    taken_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (uuid, seq)
);
CREATE INDEX telemetry_received ON telemetry (uuid, received_at);
",
    // v10: the health meter, as SQLite's v12.
    "
CREATE TABLE health (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    health TEXT NOT NULL,
    reasons TEXT NOT NULL,
    since BIGINT NOT NULL,
    evaluated_at BIGINT NOT NULL
);
CREATE TABLE health_changes (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL,
    at BIGINT NOT NULL,
    health TEXT NOT NULL,
    previous TEXT,
    reasons TEXT NOT NULL
);
CREATE INDEX health_changes_uuid ON health_changes (uuid, at);
CREATE TABLE alert_state (
    contact_id BIGINT NOT NULL,
    uuid TEXT COLLATE \"C\" NOT NULL,
    last_alerted TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (contact_id, uuid)
);
CREATE TABLE alert_deliveries (
    id BIGSERIAL PRIMARY KEY,
    change_id BIGINT,
    uuid TEXT COLLATE \"C\",
    contact_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    health TEXT NOT NULL,
    outbox_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX alert_deliveries_uuid ON alert_deliveries (uuid, created_at);
ALTER TABLE mail_outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'email';
",
    // v11: support actions and messages, as SQLite's v13.
    "
CREATE TABLE support_actions (
    id TEXT COLLATE \"C\" PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL,
    subscriber_id BIGINT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    issued_by_user_id BIGINT NOT NULL,
    issued_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL,
    state TEXT NOT NULL,
    sent_at BIGINT,
    result_at BIGINT,
    exit_code BIGINT,
    duration_ms BIGINT,
    output TEXT,
    output_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    result_text TEXT,
    report_seq BIGINT
);
CREATE INDEX support_actions_uuid ON support_actions (uuid, created_at);
CREATE TABLE support_messages (
    id TEXT COLLATE \"C\" PRIMARY KEY,
    scope TEXT NOT NULL,
    subscriber_id BIGINT,
    uuid TEXT COLLATE \"C\",
    from_user_id BIGINT NOT NULL,
    from_name TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX support_messages_from ON support_messages (from_user_id, created_at);
CREATE TABLE message_deliveries (
    message_id TEXT COLLATE \"C\" NOT NULL,
    uuid TEXT COLLATE \"C\" NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL,
    sent_at BIGINT,
    received_at BIGINT,
    read_at BIGINT,
    PRIMARY KEY (message_id, uuid)
);
CREATE INDEX message_deliveries_machine ON message_deliveries (uuid, received_at);
",
    // v12: silos, as SQLite's v14.
    "
CREATE TABLE silos (
    name TEXT COLLATE \"C\" PRIMARY KEY,
    location TEXT NOT NULL,
    capacity BIGINT NOT NULL,
    region TEXT,
    oem TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE silo_assignments (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    silo TEXT COLLATE \"C\" NOT NULL REFERENCES silos (name),
    assigned_at BIGINT NOT NULL
);
CREATE INDEX silo_assignments_silo ON silo_assignments (silo);
CREATE TABLE entitlements (
    subscriber_id BIGINT PRIMARY KEY REFERENCES subscribers (id),
    opaque_id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    tier TEXT NOT NULL,
    valid_until BIGINT,
    region TEXT,
    oem TEXT
);
CREATE TABLE silo_clients (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    subscriber TEXT NOT NULL,
    service TEXT NOT NULL,
    tier TEXT NOT NULL,
    serial TEXT NOT NULL,
    entitled_until BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE INDEX silo_clients_subscriber ON silo_clients (subscriber);
",
    // v13: moving clients between silos, as SQLite's v15.
    "
ALTER TABLE agent_certs ADD COLUMN spki TEXT;
ALTER TABLE silos ADD COLUMN signing_key TEXT;
CREATE TABLE silo_moves (
    id TEXT COLLATE \"C\" PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL UNIQUE,
    from_silo TEXT COLLATE \"C\" NOT NULL,
    to_silo TEXT COLLATE \"C\" NOT NULL REFERENCES silos (name),
    old_serial TEXT,
    serial TEXT NOT NULL,
    certificate TEXT NOT NULL,
    order_payload TEXT NOT NULL,
    order_signature TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    confirmed_at BIGINT
);
CREATE INDEX silo_moves_from ON silo_moves (from_silo, confirmed_at);
ALTER TABLE silo_clients ADD COLUMN moved_from TEXT;
ALTER TABLE silo_clients ADD COLUMN move_id TEXT;
ALTER TABLE silo_clients ADD COLUMN move_reported_at BIGINT;
CREATE TABLE silo_aggregates (
    silo TEXT COLLATE \"C\" PRIMARY KEY REFERENCES silos (name),
    issued_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    payload TEXT NOT NULL
);
", // v14: the portal through the root, as SQLite's v16.
    "
ALTER TABLE silos ADD COLUMN portal_url TEXT;
ALTER TABLE users ADD COLUMN opaque_id TEXT COLLATE \"C\";
CREATE UNIQUE INDEX users_opaque_id ON users (opaque_id);
ALTER TABLE portal_sessions ADD COLUMN via_root BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE silo_subscribers (
    id BIGSERIAL PRIMARY KEY,
    opaque TEXT COLLATE \"C\" NOT NULL UNIQUE
);
INSERT INTO silo_subscribers (opaque) SELECT DISTINCT subscriber FROM silo_clients ORDER BY subscriber;
CREATE TABLE silo_grants (
    user_id BIGINT NOT NULL REFERENCES users (id),
    subscriber_id BIGINT NOT NULL REFERENCES silo_subscribers (id),
    owner BOOLEAN NOT NULL,
    active BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, subscriber_id)
);
CREATE TABLE silo_signin_nonces (
    nonce TEXT COLLATE \"C\" PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
",
];

/// An arbitrary constant naming Tether's migration lock among the database's advisory locks.
const PG_LOCK: i64 = 0x7465_7468_6572;

pub(super) async fn version_sqlite(pool: &SqlitePool) -> sqlx::Result<i64> {
    sqlx::query_scalar("PRAGMA user_version").fetch_one(pool).await
}

pub(super) async fn version_postgres(pool: &PgPool) -> sqlx::Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tether_schema') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT version FROM tether_schema").fetch_optional(pool).await.map(|v| v.unwrap_or(0))
}

pub(super) async fn migrate_sqlite(pool: &SqlitePool) -> sqlx::Result<usize> {
    let mut applied = 0;
    loop {
        // IMMEDIATE: the write lock first, so that a CLI command and the gateway migrating at
        // once queue (busy_timeout) instead of failing on a lock upgrade.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await?;
        let Some(migration) = SQLITE.get(usize::try_from(version).unwrap_or(usize::MAX)) else {
            return Ok(applied);
        };
        sqlx::raw_sql(*migration).execute(&mut *tx).await?;
        // PRAGMA takes no parameters; the value is our own integer.
        let set = format!("PRAGMA user_version = {}", version + 1);
        sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut *tx).await?;
        tx.commit().await?;
        applied += 1;
        tracing::info!(version = version + 1, "migrated the SQLite store");
    }
}

pub(super) async fn migrate_postgres(pool: &PgPool) -> sqlx::Result<usize> {
    let mut applied = 0;
    loop {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_LOCK).execute(&mut *tx).await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS tether_schema (version BIGINT NOT NULL)").execute(&mut *tx).await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM tether_schema").fetch_optional(&mut *tx).await?;
        let version = version.unwrap_or(0);
        let Some(migration) = POSTGRES.get(usize::try_from(version).unwrap_or(usize::MAX)) else {
            tx.commit().await?;
            return Ok(applied);
        };
        sqlx::raw_sql(*migration).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM tether_schema").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO tether_schema (version) VALUES ($1)").bind(version + 1).execute(&mut *tx).await?;
        tx.commit().await?;
        applied += 1;
        tracing::info!(version = version + 1, "migrated the PostgreSQL store");
    }
}

//! The Tether gateway: the appliance daemon (`tether gateway`) and the operator and technician
//! commands of the `tether` binary. One module per role of the daemon:
//!
//! - `cira`: the CIRA listener, the pool of unauthenticated connections, and (`cira::driver`)
//!   the per-tunnel driver of the APF session;
//! - `agents`: the agents' QUIC listener, their enrollment (the agent CA, the signing key) and
//!   the driver of each agent's control stream (hello, signed configuration, reports and acks,
//!   delivering support actions and messages, relayed sessions over QUIC streams);
//! - `support`: support actions and messages to PC users, made and signed (`docs/actions.md`);
//! - `silo`: the root and maintenance silos (`docs/silos.md`); `content`: the root's signed
//!   content, published on a root and cached by maintenance silos; `content_ider`: the gateway
//!   serving a rescue image of that content to a device over IDE-R;
//! - `identity`: who may claim which UUID (credentials, device policy, liveness checks);
//! - `registry`: live tunnels by device and kind, and the handle to use one;
//! - `stream`: a stream to a device port through any tunnel (`AsyncRead + AsyncWrite`), and
//!   `bridge` one over a plain connection (the fleet link, a LAN device);
//! - `relay`: a technician WebSocket piped to a device stream; `redir_tap`: what the relays to
//!   AMT's redirection ports carry (SOL/IDE-R sessions: metrics, records, SOL transcripts), and
//!   `redir_log` the writers of those records and transcripts;
//! - `api`: the HTTPS API and the metrics endpoint; `portal`: the web portal on the API's port;
//! - `wsman`: the WS-Management client (AMT power, boot, redirection, consent) over a device
//!   stream, which the API's remote-fix endpoints drive; `sealing`: AMT passwords sealed at rest;
//! - `store` and `journal`: the store (SQLite or PostgreSQL) and the non-blocking writer of
//!   device records; `fleet`: gateways sharing a PostgreSQL store (heartbeats, the link between
//!   them);
//! - `auth`, `certs`, `tickets`, `limits`, `files`, `metrics`, `config`: credentials and password
//!   checking, TLS material and session tickets that survive a restart, rate limits (and
//!   `busy_sources`: what each source held, so a big NAT comes back at once after a restart), the
//!   open-files budget, Prometheus metrics and configuration;
//! - `lan`: the appliance's LAN (discovery with pnet, Wake-on-LAN, AMT PCs adopted as devices
//!   of kind `lan`, reached through the same tunnel interface);
//! - `proxy_header`: the PROXY v2 header from a load balancer in TCP mode (trusted proxies,
//!   reading the header before TLS);
//! - `health`: the health meter's rules and alert decisions (pure); `meter`: the meter at work
//!   (rating machines on reports and once a minute, storing changes, alerting contacts through the
//!   outbox, posting webhooks);
//! - `policy`: who may see and do what (principals, their relations to subscribers, actions);
//! - `mail`: letters to people, queued in the store's outbox and sent over SMTP by a worker
//!   (`mail_commands`: `tether mail`);
//! - `state`: what the roles share; `daemon`: wiring it all together; `client` and `forward`:
//!   the technician's side (`lan_commands`: `tether lan`); `operator`: the CLI's commands behind its argument parsing.

pub mod account_commands;
pub mod agents;
pub mod api;
pub mod auth;
pub mod backup;
pub mod bridge;
pub mod busy_sources;
pub mod certs;
pub mod cira;
pub mod client;
pub mod config;
pub mod content;
pub mod content_commands;
pub mod content_ider;
pub mod daemon;
pub mod exit;
pub mod files;
pub mod fleet;
pub mod flows;
pub mod forward;
pub mod health;
pub mod identity;
pub mod journal;
pub mod lan;
pub mod lan_commands;
pub mod limits;
pub mod logging;
pub mod mail;
pub mod mail_commands;
pub mod meter;
pub mod metrics;
pub mod operator;
pub mod paths;
pub mod policy;
pub mod portal;
pub mod proxy_header;
pub mod redir_log;
pub mod redir_tap;
pub mod redirect;
pub mod registry;
pub mod relay;
pub mod sealing;
pub mod silo;
pub mod silo_commands;
pub mod state;
pub mod store;
pub mod stream;
pub mod support;
pub mod support_commands;
pub mod tickets;
pub mod view;
pub mod wsman;

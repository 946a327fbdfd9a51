//! The agents' listener: QUIC (quinn) on UDP 4433 with ALPN `tether/1`, and one task per agent
//! connection driving its control stream ([`session`]).
//!
//! Admission is bounded before any expensive work: a connection attempt must pass the source's
//! connection rate and find room among the connections still in their handshake
//! (`agents.max_pending`), then finish the QUIC handshake and send its first message within
//! `agents.hello_timeout_secs`. An agent proves who it is with the client certificate it got at
//! enrollment ([`keys`]); a connection without one may only enroll. `agents.max_agents`
//! connections are held at most.
//!
//! The TCP/TLS fallback for networks that block UDP: on the CIRA listener's port (4433), a
//! client whose TLS hello offers ALPN `tether/1` is an agent (AMT offers none), and `cira::serve`
//! hands it, after the handshake with this module's TLS configuration ([`Agents::tls`]), to the
//! same session ([`session::run_tls`]), under the same limits ([`Agents`]).
//!
//! Support actions, messages and relayed sessions to the agent's PC go over the same session
//! ([`deliver`]). What it does not do: sign actions and messages (`support`), or rate the
//! support parameters (the health meter).

mod deliver;
pub mod keys;
pub mod session;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

use crate::certs::TlsMaterial;
use crate::metrics::RejectReason;
use crate::state::Shared;
use keys::AgentKeys;

/// What both listeners share about agents: the keys, the TLS configuration, and the limits on
/// connections in their handshake (`agents.max_pending`) and held (`agents.max_agents`), whichever
/// transport they came by.
#[derive(Debug)]
pub struct Agents {
    pub keys: Arc<AgentKeys>,
    /// TLS 1.3, ALPN `tether/1`, a client certificate from the agent CA optional.
    pub tls: Arc<rustls::ServerConfig>,
    pending: Arc<Semaphore>,
    held: Arc<Semaphore>,
}

impl Agents {
    pub fn new(material: &TlsMaterial, keys: Arc<AgentKeys>, config: &crate::config::AgentsConfig) -> Result<Agents> {
        Ok(Agents {
            tls: Arc::new(tls_config(material, &keys)?),
            keys,
            pending: Arc::new(Semaphore::new(config.max_pending)),
            held: Arc::new(Semaphore::new(config.max_agents)),
        })
    }

    /// A place among the connections in their handshake, if there is one.
    pub fn try_pending(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.pending).try_acquire_owned().ok()
    }

    /// Drives an agent's TLS connection (the TCP fallback) to its end.
    pub async fn run_tls(
        self: Arc<Self>,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        remote: SocketAddr,
        shared: Arc<Shared>,
        pending: OwnedSemaphorePermit,
    ) {
        session::run_tls(tls, remote, shared, Arc::clone(&self.keys), pending, Arc::clone(&self.held)).await;
    }
}

/// The agents' TLS configuration: the gateway's server certificate (the one AMT devices trust,
/// or the operator's), client certificates from the agent CA optional (an agent enrolling has
/// none yet), TLS 1.3 only, ALPN `tether/1`.
fn tls_config(material: &TlsMaterial, keys: &AgentKeys) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(keys.ca().clone()).context("the agent CA certificate")?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()
        .context("the agents' client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .context("the server certificate for QUIC")?;
    tls.alpn_protocols = vec![protocols::tap::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// The QUIC server configuration: [`Agents::tls`], and the transport's keepalive, idle timeout
/// and stream limits.
pub fn server_config(agents: &Agents, config: &crate::config::AgentsConfig) -> Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(Arc::clone(&agents.tls)).context("a TLS 1.3 configuration for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(config.idle_timeout_secs.into()))
                .context("agents.idle_timeout_secs")?,
        ))
        .keep_alive_interval(Some(Duration::from_secs(config.keepalive_secs.into())))
        // The control stream, and a few relayed sessions later.
        .max_concurrent_bidi_streams(8u32.into())
        .max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    // Agents behind NAT change address: let them migrate (the connection id proves continuity).
    server.migration(true);
    Ok(server)
}

/// Binds the agents' UDP socket.
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> Result<quinn::Endpoint> {
    quinn::Endpoint::server(config, addr)
        .with_context(|| format!("binding the agents' QUIC listener on UDP {addr} (in use by another process?)"))
}

/// Accepts agent connections until shutdown.
pub async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>, agents: Arc<Agents>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = shutdown.changed() => {
                endpoint.close(quinn::VarInt::from_u32(protocols::tap::CloseCode::Shutdown as u32), b"gateway shutting down");
                return;
            }
        };
        let remote = incoming.remote_address();
        if !shared.limiter.allow_connection(remote.ip()) {
            shared.metrics.connection_rejected(RejectReason::ConnectionRate);
            debug!(%remote, "agent connection refused: over the per-source connection rate");
            incoming.refuse();
            continue;
        }
        let Some(permit) = agents.try_pending() else {
            shared.metrics.connection_rejected(RejectReason::PendingFull);
            incoming.refuse();
            continue;
        };
        let (shared, keys, held) = (Arc::clone(&shared), Arc::clone(&agents.keys), Arc::clone(&agents.held));
        tokio::spawn(async move {
            let timeout = Duration::from_secs(shared.config.agents.hello_timeout_secs.into());
            let connection = match incoming.accept() {
                Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(err)) => {
                        shared.metrics.connection_rejected(RejectReason::TlsHandshake);
                        return info!(%remote, error = %err, "agent handshake failed");
                    }
                    Err(_) => {
                        shared.metrics.connection_rejected(RejectReason::TlsHandshake);
                        return debug!(%remote, "agent handshake timed out");
                    }
                },
                Err(err) => return debug!(%remote, error = %err, "agent connection attempt dropped"),
            };
            session::run(connection, shared, keys, permit, held).await;
        });
    }
}

/// Logs where agents connect.
pub fn log_listening(addr: SocketAddr, advertise: &[String]) {
    if advertise.is_empty() {
        info!(%addr, "agents' QUIC listener up (agents keep the gateway address they enrolled with)");
    } else {
        info!(%addr, gateways = %advertise.join(","), "agents' QUIC listener up");
    }
}

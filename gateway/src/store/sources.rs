//! The busy source addresses: how many tunnels each source that held more than the per-source
//! burst had, per gateway, so that after a restart a big NAT may bring them all back at once
//! (`limits::Limiter::remember`). Each gateway replaces its own rows; a fleet's rows are summed,
//! since the devices behind one NAT may come back through any gateway.
//!
//! What it does not do: count the tunnels (`daemon` does, from the registry) or grant anything.

use serde::Serialize;
use time::OffsetDateTime;

use super::{Cols, Stmt, Store, StoreError};

/// A source address (an IPv4 address, or an IPv6 /64 as `PREFIX::/64`) and the tunnels it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceTunnels {
    pub source: String,
    pub tunnels: u64,
}

fn source_row(r: &dyn Cols) -> sqlx::Result<SourceTunnels> {
    Ok(SourceTunnels { source: r.string(0)?, tunnels: r.count(1)? })
}

impl Store {
    /// Replaces what `instance` recorded before with `sources`, in one transaction.
    pub async fn save_source_tunnels(
        &self,
        instance: &str,
        at: OffsetDateTime,
        sources: &[SourceTunnels],
    ) -> Result<(), StoreError> {
        let mut stmts = vec![Stmt::new("DELETE FROM source_tunnels WHERE instance = $1").str(instance)];
        stmts.extend(sources.iter().map(|s| {
            Stmt::new("INSERT INTO source_tunnels (instance, source, tunnels, updated_at) VALUES ($1, $2, $3, $4)")
                .str(instance)
                .str(&s.source)
                .int(i64::try_from(s.tunnels).unwrap_or(i64::MAX))
                .time(at)
        }));
        self.execute_all(&stmts).await
    }

    /// Per source, the tunnels every gateway recorded at or after `since`, summed: the `limit`
    /// sources with the most first.
    pub async fn source_tunnels(&self, since: OffsetDateTime, limit: u32) -> Result<Vec<SourceTunnels>, StoreError> {
        let stmt = Stmt::new(
            "SELECT source, CAST(SUM(tunnels) AS BIGINT) AS held FROM source_tunnels WHERE updated_at >= $1
             GROUP BY source ORDER BY held DESC, source LIMIT $2",
        )
        .time(since)
        .int(i64::from(limit));
        self.fetch_all(stmt, source_row).await
    }
}

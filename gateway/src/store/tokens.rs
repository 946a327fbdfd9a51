//! API tokens in the store: hashed (SHA-256 of a high-entropy secret), with a name, a scope and
//! an optional expiry. Revoking deletes the row, so a name can be used again.
//!
//! What it does not do: check tokens on requests (`api`) or end relays of revoked tokens (the
//! daemon's token watch does, from [`Store::live_token_ids`]).

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use time::OffsetDateTime;

use super::{from_millis, millis, Store, StoreError};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// List and show devices.
    Read,
    /// Also open relays to device ports.
    Attach,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Attach => "attach",
        }
    }

    /// Parses `read` or `attach`.
    pub fn parse(text: &str) -> Option<TokenScope> {
        match text {
            "read" => Some(TokenScope::Read),
            "attach" => Some(TokenScope::Attach),
            _ => None,
        }
    }

    /// Whether this scope allows what `needed` allows.
    pub fn allows(self, needed: TokenScope) -> bool {
        self == TokenScope::Attach || needed == TokenScope::Read
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub scope: TokenScope,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl TokenRecord {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

const TOKEN_COLUMNS: &str = "id, name, scope, created_at, expires_at";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let scope: String = r.get(2)?;
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        // An unknown scope (written by a newer version) grants the least.
        scope: TokenScope::parse(&scope).unwrap_or(TokenScope::Read),
        created_at: from_millis(r.get(3)?).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        expires_at: from_millis(r.get(4)?),
    })
}

impl Store {
    /// Creates a token; an existing name is an error.
    pub fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        scope: TokenScope,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<i64, StoreError> {
        let result = self.with(|c| {
            c.execute(
                "INSERT INTO tokens (name, hash, created_at, scope, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, token_hash, millis(OffsetDateTime::now_utc()), scope.as_str(), expires_at.map(millis)],
            )?;
            Ok(c.last_insert_rowid())
        });
        match result {
            Err(StoreError::Database { source: rusqlite::Error::SqliteFailure(e, _), .. })
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::TokenExists(name.to_string()))
            }
            other => other,
        }
    }

    /// Creates the token `name` (scope attach, no expiry), or gives it a new hash if it exists
    /// (the gateway's local token).
    pub fn create_or_replace_token(&self, name: &str, token_hash: &str) -> Result<i64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (name, hash, created_at, scope) VALUES (?1, ?2, ?3, 'attach')
                 ON CONFLICT(name) DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at,
                     scope = 'attach', expires_at = NULL",
                params![name, token_hash, millis(OffsetDateTime::now_utc())],
            )?;
            c.query_row("SELECT id FROM tokens WHERE name = ?1", [name], |r| r.get(0))
        })
    }

    /// The token with this hash, expired or not (the caller decides).
    pub fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"))?
                .query_row([token_hash], token_row)
                .optional()
        })
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|c| {
            c.prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id"))?.query_map([], token_row)?.collect()
        })
    }

    /// Revokes (deletes) the token `name`; false if there is none.
    pub fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM tokens WHERE name = ?1", [name]).map(|n| n > 0))
    }

    /// The ids of tokens that exist and have not expired at `now`.
    pub fn live_token_ids(&self, now: OffsetDateTime) -> Result<HashSet<i64>, StoreError> {
        self.with(|c| {
            c.prepare_cached("SELECT id FROM tokens WHERE expires_at IS NULL OR expires_at > ?1")?
                .query_map([millis(now)], |r| r.get(0))?
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_scopes_expiry_and_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("tether.db")).unwrap();
        let now = OffsetDateTime::now_utc();
        let alice = store.create_token("alice", "ha", TokenScope::Attach, None).unwrap();
        let bob = store.create_token("bob", "hb", TokenScope::Read, Some(now + time::Duration::hours(1))).unwrap();
        let old = store.create_token("old", "ho", TokenScope::Read, Some(now - time::Duration::hours(1))).unwrap();
        assert!(matches!(store.create_token("alice", "x", TokenScope::Read, None), Err(StoreError::TokenExists(_))));
        let b = store.token_by_hash("hb").unwrap().unwrap();
        assert_eq!((b.id, b.scope), (bob, TokenScope::Read));
        assert!(!b.is_expired(now) && b.is_expired(now + time::Duration::hours(2)));
        assert!(store.token_by_hash("ho").unwrap().unwrap().is_expired(now));
        assert_eq!(store.live_token_ids(now).unwrap(), [alice, bob].into_iter().collect());
        assert!(store.revoke_token("alice").unwrap());
        assert!(!store.revoke_token("alice").unwrap());
        assert_eq!(store.token_by_hash("ha").unwrap(), None);
        assert!(!store.live_token_ids(now).unwrap().contains(&old));
        // The name is free again, but never the id: the revoked token's relays are found by it.
        let again = store.create_token("alice", "ha2", TokenScope::Attach, None).unwrap();
        assert!(again > old, "a new token reused id {again}");
        store.revoke_token("alice").unwrap();
        let third = store.create_token("alice", "ha3", TokenScope::Attach, None).unwrap();
        assert!(third > again, "a new token reused id {third}");
        assert_eq!(store.list_tokens().unwrap().len(), 3);
        assert!(TokenScope::Attach.allows(TokenScope::Attach) && TokenScope::Attach.allows(TokenScope::Read));
        assert!(TokenScope::Read.allows(TokenScope::Read) && !TokenScope::Read.allows(TokenScope::Attach));
    }
}

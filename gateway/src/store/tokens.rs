//! API tokens in the store: hashed (SHA-256 of a high-entropy secret), with a name, a scope, an
//! optional expiry and the user they belong to (the built-in operator unless said otherwise;
//! tokens made before users existed were migrated to it). Revoking deletes the row, so a name
//! can be used again.
//!
//! What it does not do: check tokens on requests (`api`) or end relays of revoked tokens (the
//! daemon's token watch does, from [`Store::live_token_ids`]).

use std::collections::HashSet;

use serde::Serialize;
use time::OffsetDateTime;

use super::{is_unique_violation, Cols, Stmt, Store, StoreError};

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
    /// The user the token acts for.
    pub user_id: i64,
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

macro_rules! token_select {
    ($tail:literal) => {
        concat!("SELECT id, name, scope, created_at, expires_at, user_id FROM tokens ", $tail)
    };
}

fn token_row(r: &dyn Cols) -> sqlx::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.int(0)?.unwrap_or_default(),
        name: r.string(1)?,
        // An unknown scope (written by a newer version) grants the least.
        scope: TokenScope::parse(&r.string(2)?).unwrap_or(TokenScope::Read),
        created_at: r.time(3)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        expires_at: r.time(4)?,
        user_id: r.int(5)?.unwrap_or_default(),
    })
}

impl Store {
    /// Creates a token of the built-in operator; an existing name is an error.
    pub async fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        scope: TokenScope,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<i64, StoreError> {
        self.create_user_token(None, name, token_hash, scope, expires_at).await
    }

    /// Creates a token of user `user_id` (`None`: the built-in operator); an existing name is an
    /// error, and so is an unknown user (a database error: the reference refuses it).
    pub async fn create_user_token(
        &self,
        user_id: Option<i64>,
        name: &str,
        token_hash: &str,
        scope: TokenScope,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<i64, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO tokens (name, hash, created_at, scope, expires_at, user_id)
             VALUES ($1, $2, $3, $4, $5, COALESCE($6, (SELECT id FROM users WHERE username = 'operator')))
             RETURNING id",
        )
        .str(name)
        .str(token_hash)
        .time(OffsetDateTime::now_utc())
        .str(scope.as_str())
        .int(expires_at.map(super::millis))
        .int(user_id);
        match self.fetch_optional(stmt, |r| r.int(0)).await {
            Ok(id) => Ok(id.flatten().unwrap_or_default()),
            Err(err) if is_unique_violation(&err) => Err(StoreError::TokenExists(name.to_string())),
            Err(other) => Err(other),
        }
    }

    /// Creates the token `name` (scope attach, no expiry, the built-in operator's), or gives it a
    /// new hash if it exists (a gateway's local token).
    pub async fn create_or_replace_token(&self, name: &str, token_hash: &str) -> Result<i64, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO tokens (name, hash, created_at, scope, user_id)
                 VALUES ($1, $2, $3, 'attach', (SELECT id FROM users WHERE username = 'operator'))
             ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at,
                 scope = 'attach', expires_at = NULL, user_id = excluded.user_id
             RETURNING id",
        )
        .str(name)
        .str(token_hash)
        .time(OffsetDateTime::now_utc());
        Ok(self.fetch_optional(stmt, |r| r.int(0)).await?.flatten().unwrap_or_default())
    }

    /// The token with this hash, expired or not (the caller decides).
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.fetch_optional(Stmt::new(token_select!("WHERE hash = $1")).str(token_hash), token_row).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.fetch_all(Stmt::new(token_select!("ORDER BY id")), token_row).await
    }

    /// Revokes (deletes) the token `name`; false if there is none.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.execute(Stmt::new("DELETE FROM tokens WHERE name = $1").str(name)).await? > 0)
    }

    /// The ids of tokens that exist and have not expired at `now`.
    pub async fn live_token_ids(&self, now: OffsetDateTime) -> Result<HashSet<i64>, StoreError> {
        let stmt = Stmt::new("SELECT id FROM tokens WHERE expires_at IS NULL OR expires_at > $1").time(now);
        let ids = self.fetch_all(stmt, |r| r.int(0)).await?;
        Ok(ids.into_iter().flatten().collect())
    }
}

//! Transactions for read-then-write transitions (the accounts' life cycle): [`Tx`], on
//! whichever database the store has.
//!
//! What it does not do: batch writes that read nothing ([`Store::execute_all`] does).

use super::{Cols, Db, Stmt, Store, StoreError};

/// An open transaction (see [`Store::begin`]).
#[derive(Debug)]
enum TxConn {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// A transaction for a read-then-write transition: statements run in it see each other's
/// writes, and nothing is kept unless [`Tx::commit`] is called (dropping it rolls back).
/// SQLite's starts `IMMEDIATE` (the write lock first, so that two transitions queue rather
/// than fail on a lock upgrade); on PostgreSQL, a transition that checks a limit first locks
/// the row it counts against with an `UPDATE` (the SQL both databases accept for it).
#[derive(Debug)]
pub(crate) struct Tx<'s> {
    store: &'s Store,
    conn: TxConn,
}

/// Runs `$body` with `$conn` bound to the transaction's connection.
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match &mut $tx.conn {
            TxConn::Sqlite($conn) => $body,
            TxConn::Postgres($conn) => $body,
        }
    };
}

impl Tx<'_> {
    /// Runs one statement; the number of rows it changed.
    pub(crate) async fn execute(&mut self, stmt: Stmt) -> Result<u64, StoreError> {
        let result = on_tx!(self, conn => stmt.query().execute(&mut **conn).await.map(|r| r.rows_affected()));
        result.map_err(|e| self.store.err(e))
    }

    /// Runs a query; each row through `decode`.
    pub(crate) async fn fetch_all<T>(
        &mut self,
        stmt: Stmt,
        decode: fn(&dyn Cols) -> sqlx::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let result = on_tx!(self, conn => stmt
            .query()
            .fetch_all(&mut **conn)
            .await
            .and_then(|rows| rows.iter().map(|r| decode(r)).collect::<sqlx::Result<Vec<T>>>()));
        result.map_err(|e| self.store.err(e))
    }

    /// Runs a query; its first row (if any) through `decode`.
    pub(crate) async fn fetch_optional<T>(
        &mut self,
        stmt: Stmt,
        decode: fn(&dyn Cols) -> sqlx::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let result = on_tx!(self, conn => stmt
            .query()
            .fetch_optional(&mut **conn)
            .await
            .and_then(|row| row.as_ref().map(|r| decode(r)).transpose()));
        result.map_err(|e| self.store.err(e))
    }

    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        let store = self.store;
        let result = match self.conn {
            TxConn::Sqlite(tx) => tx.commit().await,
            TxConn::Postgres(tx) => tx.commit().await,
        };
        result.map_err(|e| store.err(e))
    }
}

/// Whether `err` is a unique constraint refusing a row.
pub(crate) fn is_unique_violation(err: &StoreError) -> bool {
    matches!(err, StoreError::Database { source: sqlx::Error::Database(e), .. } if e.is_unique_violation())
}

impl Store {
    /// Begins a transaction (see [`Tx`]).
    pub(crate) async fn begin(&self) -> Result<Tx<'_>, StoreError> {
        let conn = match &self.db {
            Db::Sqlite(pool) => pool.begin_with("BEGIN IMMEDIATE").await.map(TxConn::Sqlite),
            Db::Postgres(pool) => pool.begin().await.map(TxConn::Postgres),
        };
        Ok(Tx { store: self, conn: conn.map_err(|e| self.err(e))? })
    }
}

//! Everything PostgreSQL: connections, the catalog, the type mapping, the full-load COPY and
//! the exported snapshot that makes a load consistent across tables.

pub mod catalog;
pub mod connect;
pub mod copy;
pub mod filter;
pub mod lsn;
pub mod replication;
pub mod types;

use tokio_postgres::Client;

/// A REPEATABLE READ transaction that exported its snapshot; it stays open (and the snapshot
/// importable) for as long as this value lives.
pub struct Snapshot {
    client: Client,
    id: String,
}

impl Snapshot {
    /// Starts the transaction and exports its snapshot.
    pub async fn export(client: Client) -> Result<Snapshot, tokio_postgres::Error> {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let row = client.query_one("SELECT pg_export_snapshot()", &[]).await?;
        let id = row.get(0);
        Ok(Snapshot { client, id })
    }

    /// The exported snapshot's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The connection inside the snapshot (catalog reads see the same state as the load).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the exporting transaction.
    pub async fn release(self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("COMMIT").await
    }
}

/// Makes `client` read from the snapshot `id` (a worker of a consistent load).
pub async fn import_snapshot(client: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            postgres_protocol::escape::escape_literal(id)
        ))
        .await
}

//! A replication session (`replication=database`) through the pgwire-replication crate:
//! create a slot with an exported snapshot and keep the session open while the full load
//! imports that snapshot, then stream pgoutput from the slot on the same session. The crate
//! answers keepalives and sends status updates from its own task, also while godwit is
//! back-pressured, so `wal_sender_timeout` never drops the session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwire_replication::client::ReplicationEvent;
use pgwire_replication::config::{SslMode, TlsConfig};
use pgwire_replication::{ReplicationClient, ReplicationConfig};

use crate::pg::connect::{Endpoint, TlsMode};
use crate::pg::lsn::Lsn;

/// What can go wrong on a replication session.
#[derive(Debug, thiserror::Error)]
#[error("replication session on {endpoint}: {message}")]
pub struct SessionError {
    /// `user@host:port/db`, never the password.
    endpoint: String,
    message: String,
}

/// A slot just created, its snapshot still importable while this value lives.
pub struct NewSlot {
    client: ReplicationClient,
    endpoint: Endpoint,
    pub slot: String,
    /// Changes after this point are streamed; everything before is in the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

/// One event of the stream, reduced to what godwit uses.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
    },
    /// A pgoutput message other than Begin/Commit (decode with `pgoutput::decode`).
    Data {
        data: bytes::Bytes,
    },
    Commit {
        lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// The server's WAL end while nothing is pending.
    KeepAlive {
        wal_end: Lsn,
    },
}

/// The CA file the replication session trusts, chosen as for SQL connections (libpq's
/// rules): `sslrootcert=<file>`; `system`, the OS bundle (`SSL_CERT_FILE` or the usual
/// places; the crate's Mozilla roots when none is found); nothing, `~/.postgresql/root.crt`.
fn ca_file(root: Option<&Path>) -> Option<PathBuf> {
    match root {
        Some(p) if p.as_os_str() == "system" => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
            .find(|p| p.is_file()),
        Some(p) => Some(p.to_path_buf()),
        None => Some(
            std::env::home_dir()
                .unwrap_or_default()
                .join(".postgresql/root.crt"),
        ),
    }
}

/// Where distributions keep the OS's CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn config(endpoint: &Endpoint, slot: &str, publications: &[String]) -> ReplicationConfig {
    let ca = ca_file(endpoint.root_cert.as_deref());
    let mut tls = match endpoint.tls {
        TlsMode::Disable => TlsConfig::disabled(),
        TlsMode::Prefer => TlsConfig {
            mode: SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        TlsMode::Require => TlsConfig::require(),
        TlsMode::VerifyCa => TlsConfig::verify_ca(ca),
        TlsMode::VerifyFull => TlsConfig::verify_full(ca),
    };
    // The name to verify is the host as written, an IP address included (checked against
    // the certificate's IP names, as libpq and the SQL connections do).
    if endpoint.tls == TlsMode::VerifyFull {
        tls.sni_hostname = Some(endpoint.host.clone());
    }
    ReplicationConfig::new(
        endpoint.host.clone(),
        endpoint.user.clone(),
        endpoint.password.clone(),
        endpoint.dbname.clone(),
        slot,
        publications.to_vec(),
    )
    .with_port(endpoint.port)
    .with_tls(tls)
    .with_options(endpoint.options.clone())
    .with_application_name("godwit")
    // Status updates are rate-limited to this: short, so a confirmation (and the last one,
    // which closing the session waits for) reaches the server at once, at ten small
    // messages a second at most.
    .with_status_interval(Duration::from_millis(100))
    // While idle, a status update each second (instead of every 10 s): the walsender's
    // `reply_time` then shows within seconds whether it still takes them (the health check
    // of `[metrics]` reads it).
    .with_wakeup_interval(Duration::from_secs(1))
    .with_buffer_size(read_ahead(crate::batch::budget::global().limit()))
}

/// How many stream messages the session reads ahead of the apply loop: they are held outside
/// the budget, so a small budget reads less ahead (a message is assumed to be up to 256 KiB;
/// from 16 to 4096 messages).
fn read_ahead(budget: u64) -> usize {
    (budget / (256 << 10)).clamp(16, 4096) as usize
}

fn err(endpoint: &Endpoint, message: impl std::fmt::Display) -> SessionError {
    SessionError {
        endpoint: format!("{endpoint:?}"),
        message: message.to_string(),
    }
}

impl NewSlot {
    /// Creates logical slot `slot` (pgoutput) with an exported snapshot.
    pub async fn create(
        endpoint: &Endpoint,
        slot: &str,
        publications: &[String],
        temporary: bool,
    ) -> Result<NewSlot, SessionError> {
        let mut client = ReplicationClient::connect_gated(config(endpoint, slot, publications))
            .await
            .map_err(|e| err(endpoint, e))?;
        let temp = if temporary { " TEMPORARY" } else { "" };
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput EXPORT_SNAPSHOT",
                postgres_protocol::escape::escape_identifier(slot)
            ))
            .await
            .map_err(|e| err(endpoint, e))?;
        let row = rows
            .first()
            .ok_or_else(|| err(endpoint, "CREATE_REPLICATION_SLOT returned no row"))?;
        let text = |i: usize| {
            row.get(i)
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| err(endpoint, format!("CREATE_REPLICATION_SLOT: no column {i}")))
        };
        let consistent_point = text(1)?.parse().map_err(|e: String| err(endpoint, e))?;
        let snapshot = text(2)?;
        Ok(NewSlot {
            client,
            endpoint: endpoint.clone(),
            slot: slot.to_string(),
            consistent_point,
            snapshot,
        })
    }

    /// Starts streaming from the slot on the same session (the snapshot is gone from here on).
    pub async fn start(mut self) -> Result<Stream, SessionError> {
        self.client
            .start()
            .await
            .map_err(|e| err(&self.endpoint, e))?;
        self.client
            .wait_started()
            .await
            .map_err(|e| err(&self.endpoint, e))?;
        Ok(Stream {
            client: self.client,
            endpoint: self.endpoint,
        })
    }
}

/// A running stream of changes.
pub struct Stream {
    client: ReplicationClient,
    endpoint: Endpoint,
}

impl Stream {
    /// Opens a stream on an existing slot.
    pub async fn open(
        endpoint: &Endpoint,
        slot: &str,
        publications: &[String],
    ) -> Result<Stream, SessionError> {
        let mut client = ReplicationClient::connect(config(endpoint, slot, publications))
            .await
            .map_err(|e| err(endpoint, e))?;
        client.wait_started().await.map_err(|e| err(endpoint, e))?;
        Ok(Stream {
            client,
            endpoint: endpoint.clone(),
        })
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<StreamEvent>, SessionError> {
        loop {
            let ev = self
                .client
                .recv()
                .await
                .map_err(|e| err(&self.endpoint, e))?;
            let Some(ev) = ev else {
                return Ok(None);
            };
            let lsn = |l: pgwire_replication::Lsn| Lsn(l.as_u64());
            let epoch = 946_684_800_000_000i64;
            return Ok(Some(match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => StreamEvent::Begin {
                    final_lsn: lsn(final_lsn),
                    commit_time: commit_time_micros + epoch,
                },
                ReplicationEvent::XLogData { data, .. } => StreamEvent::Data { data },
                ReplicationEvent::Commit {
                    lsn: l,
                    end_lsn,
                    commit_time_micros,
                } => StreamEvent::Commit {
                    lsn: lsn(l),
                    end_lsn: lsn(end_lsn),
                    commit_time: commit_time_micros + epoch,
                },
                ReplicationEvent::KeepAlive { wal_end, .. } => StreamEvent::KeepAlive {
                    wal_end: lsn(wal_end),
                },
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => continue,
            }));
        }
    }

    /// Confirms to the slot that everything up to `lsn` is durable everywhere.
    pub fn confirm(&self, lsn: Lsn) {
        self.client
            .update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.0));
    }

    /// Ends the session once a status update has carried `confirmed` to the server (the
    /// crate's stop does not send one itself); waits at most 3 s.
    pub async fn close(mut self, confirmed: Lsn) -> Result<(), SessionError> {
        let metrics = self.client.metrics();
        for _ in 0..150 {
            if metrics.last_applied_lsn().as_u64() >= confirmed.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.client
            .shutdown()
            .await
            .map_err(|e| err(&self.endpoint, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_the_same_roots_as_sql_connections() {
        assert_eq!(
            ca_file(Some(Path::new("/tmp/ca.pem"))),
            Some(PathBuf::from("/tmp/ca.pem"))
        );
        let default = ca_file(None).unwrap();
        assert!(default.ends_with(".postgresql/root.crt"), "{default:?}");
        if let Some(system) = ca_file(Some(Path::new("system"))) {
            assert!(system.is_file(), "{system:?}");
        }
    }
}

//! godwit's errors: what failed, where, how to fix it, classified once into a kind that decides
//! what happens next (SPEC §2 exit codes, the `[errors]` policies).
//!
//! Most of the crate still builds `Error::Startup` / `Error::Runtime` from text; the paths
//! whose handling depends on the kind (the full load's tables and segments, CDC's retries,
//! reloads, the cache) carry a [`Failure`]: its kind, the table and segment it concerns, a
//! remedy, and the underlying error kept as its `source()`. [`Failure::from_pg`] and
//! [`Failure::from_io`] are the one place a PostgreSQL or an I/O (S3, local disk) error is
//! classified.

use crate::config::ConfigError;

/// What kind of failure, which decides what godwit does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The pipeline file is wrong (exit 2).
    Config,
    /// Before every endpoint answered once (exit 2); nothing was written.
    Startup,
    /// One value cannot be stored: `[errors] data` decides.
    Data,
    /// One table cannot go on (no SELECT privilege, dropped, a write that keeps failing):
    /// `[errors] table` decides — the table goes to `Table error`, or the task stops.
    Table,
    /// Trying again can cure it (a broken connection, a server restart, an S3 blip): retried
    /// per `[errors] recoverable_retries` with back-off.
    Recoverable,
    /// The run cannot go on (exit 1): a lost lease, a snapshot that is gone, a bug.
    Fatal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Startup => "startup",
            Kind::Data => "data",
            Kind::Table => "table",
            Kind::Recoverable => "recoverable",
            Kind::Fatal => "fatal",
        }
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One classified failure: its kind, what failed (and why, in words a user can act on), the
/// table and segment it concerns, how to fix it, and the underlying error.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    /// What failed and why, without the place (`reading the table: permission denied …`).
    pub what: String,
    /// `schema.table`, when one table is concerned.
    pub table: Option<String>,
    /// The parallel segment (1-based), when one is concerned.
    pub segment: Option<u32>,
    /// How to fix it.
    pub remedy: Option<String>,
    source: Option<Source>,
}

impl Failure {
    pub fn new(kind: Kind, what: impl Into<String>) -> Failure {
        Failure {
            kind,
            what: what.into(),
            table: None,
            segment: None,
            remedy: None,
            source: None,
        }
    }

    pub fn table(mut self, table: impl Into<String>) -> Failure {
        self.table = Some(table.into());
        self
    }

    pub fn segment(mut self, segment: Option<u32>) -> Failure {
        self.segment = segment;
        self
    }

    pub fn remedy(mut self, remedy: impl Into<String>) -> Failure {
        self.remedy = Some(remedy.into());
        self
    }

    /// `doing` failed because of `source`: the message says both (`reading …: <source>`), and
    /// `source` is kept as the underlying error.
    pub fn because(
        kind: Kind,
        doing: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure::new(kind, format!("{doing}: {source}")).source(source)
    }

    /// Keeps `source` as the underlying error (`std::error::Error::source`).
    pub fn source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Failure {
        self.source = Some(Box::new(source));
        self
    }

    /// Another kind, the rest kept (a recoverable failure whose retries are spent becomes a
    /// table failure).
    pub fn with_kind(mut self, kind: Kind) -> Failure {
        self.kind = kind;
        self
    }

    /// Another kind unless this one is fatal (a lost lease stays fatal).
    pub fn with_kind_unless_fatal(self, kind: Kind) -> Failure {
        if self.kind == Kind::Fatal {
            self
        } else {
            self.with_kind(kind)
        }
    }

    /// Prefixes what failed with what godwit was doing (`copying the table: …`).
    pub fn doing(mut self, doing: &str) -> Failure {
        self.what = format!("{doing}: {}", self.what);
        self
    }

    /// Whether the underlying error says the exported snapshot is gone (its exporting
    /// session ended): no worker can join that snapshot any more.
    pub fn is_snapshot_gone(&self) -> bool {
        self.source
            .as_deref()
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.as_db_error())
            .is_some_and(|d| d.code().code() == "22023" && d.message().contains("snapshot"))
    }

    /// What failed, with the segment but not the table (for the table's own record and its
    /// `table.error` event, which name the table already).
    pub fn message_in_table(&self) -> String {
        match self.segment {
            Some(s) => format!("segment {s}: {}", self.what),
            None => self.what.clone(),
        }
    }

    /// Where, then what: `public.t (segment 2): …` — the message without the remedy, as the
    /// state and the `table.error` event keep it next to the remedy.
    pub fn message(&self) -> String {
        let place = match (&self.table, self.segment) {
            (Some(t), Some(s)) => format!("{t} (segment {s}): "),
            (Some(t), None) => format!("{t}: "),
            (None, Some(s)) => format!("segment {s}: "),
            (None, None) => String::new(),
        };
        format!("{place}{}", self.what)
    }

    /// A PostgreSQL error met while working on `table` (or on the run when `None`), described
    /// for a user (`PostgreSQL at host:port/db: …`, never a password) and classified:
    ///
    /// - `42501` insufficient_privilege → table ("grant SELECT on … to <user>");
    /// - `42P01` undefined_table → table (the table was dropped or renamed);
    /// - `22023` "invalid snapshot identifier" → fatal: the exported snapshot is gone, the
    ///   segments of this run can no longer come from one snapshot; the next run resumes;
    /// - connection errors, `08…` connection exceptions, `57P01`–`57P03` (shutdown, crash,
    ///   cannot connect now), `57014` (cancelled), `53…` insufficient resources, `40001`
    ///   and `40P01` → recoverable;
    /// - `28…` authentication → fatal (the password changed under a running pipeline);
    /// - any other server error → table when a table is concerned, fatal otherwise.
    pub fn from_pg(
        e: tokio_postgres::Error,
        source: &str,
        user: &str,
        table: Option<&str>,
    ) -> Failure {
        let described = match e.as_db_error() {
            Some(_) => crate::pg::connect::describe_error(&e, source),
            None => {
                let mut chain = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    chain.push_str(": ");
                    chain.push_str(&c.to_string());
                    cause = c.source();
                }
                format!("PostgreSQL at {source}: {chain}")
            }
        };
        let (kind, remedy) = match e.as_db_error() {
            None => (
                Kind::Recoverable,
                Some("godwit retries per [errors] recoverable_retries; check that the source is up and reachable".to_string()),
            ),
            Some(db) => {
                let code = db.code().code();
                let on = table.unwrap_or("the table");
                match code {
                    "42501" => (
                        Kind::Table,
                        Some(format!(
                            "grant the privilege to godwit's user: GRANT SELECT ON {} TO {}; then `godwit reload PIPELINE --table {on}` and run again",
                            quoted_table(on),
                            postgres_protocol::escape::escape_identifier(user)
                        )),
                    ),
                    "42P01" => (
                        Kind::Table,
                        Some(format!(
                            "{on} no longer exists in the source (dropped or renamed): recreate it, or leave it out of [tables] include"
                        )),
                    ),
                    "22023" if db.message().contains("snapshot") => (
                        Kind::Fatal,
                        Some("the connection that exported the load's snapshot ended, so the remaining tables cannot be read from the same snapshot: run the pipeline again — the tables completed so far are kept, the others load from a new snapshot".to_string()),
                    ),
                    c if c.starts_with("08")
                        || c.starts_with("53")
                        || matches!(c, "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01") =>
                    {
                        (
                            Kind::Recoverable,
                            Some("godwit retries per [errors] recoverable_retries; check the source server's log if it keeps happening".to_string()),
                        )
                    }
                    c if c.starts_with("28") => (
                        Kind::Fatal,
                        Some("check the user and password in source.url".to_string()),
                    ),
                    _ if table.is_some() => (
                        Kind::Table,
                        Some(format!(
                            "fix the cause, then `godwit reload PIPELINE --table {on}` and run again"
                        )),
                    ),
                    _ => (Kind::Fatal, None),
                }
            }
        };
        let mut f = Failure::new(kind, described).source(e);
        f.remedy = remedy;
        if let Some(t) = table {
            f.table = Some(t.to_string());
        }
        f
    }

    /// An I/O error of the target (local disk or S3) met while working on `table`:
    /// a lost lease is fatal; an S3 answer S3 itself calls transient (5xx, SlowDown,
    /// throttling, timeouts, an unreachable endpoint) and broken or refused connections are
    /// recoverable; anything else (access denied, a missing bucket, a full disk) is a table
    /// failure when a table is concerned, fatal otherwise.
    pub fn from_io(e: std::io::Error, what: &str, table: Option<&str>) -> Failure {
        use std::io::ErrorKind as K;
        let inner = e.get_ref();
        let lease_lost = inner.is_some_and(|i| i.is::<crate::state::LeaseLost>());
        let s3_transient = inner
            .and_then(|i| i.downcast_ref::<crate::sink::files::s3_error::S3Failure>())
            .map(|s| s.transient);
        let kind = if lease_lost {
            Kind::Fatal
        } else if let Some(transient) = s3_transient {
            if transient {
                Kind::Recoverable
            } else if table.is_some() {
                Kind::Table
            } else {
                Kind::Fatal
            }
        } else if matches!(
            e.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::TimedOut
                | K::Interrupted
                | K::UnexpectedEof
        ) {
            Kind::Recoverable
        } else if table.is_some() {
            Kind::Table
        } else {
            Kind::Fatal
        };
        let remedy = match kind {
            Kind::Recoverable => Some(
                "godwit retries per [errors] recoverable_retries; check the target if it keeps happening"
                    .to_string(),
            ),
            Kind::Table => Some(match table {
                Some(t) => format!(
                    "fix the target (see the message), then `godwit reload PIPELINE --table {t}` and run again"
                ),
                None => "fix the target (see the message), then run again".to_string(),
            }),
            _ => None,
        };
        let mut f = Failure::new(kind, format!("{what}: {e}")).source(e);
        f.remedy = remedy;
        if let Some(t) = table {
            f.table = Some(t.to_string());
        }
        f
    }
}

/// `"schema"."table"` for a `schema.table` key (as the remedy's SQL needs it).
fn quoted_table(key: &str) -> String {
    match key.split_once('.') {
        Some((s, t)) => format!(
            "{}.{}",
            postgres_protocol::escape::escape_identifier(s),
            postgres_protocol::escape::escape_identifier(t)
        ),
        None => key.to_string(),
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())?;
        if let Some(r) = &self.remedy {
            write!(f, "; {r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file is wrong (exit 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A failure before every endpoint answered once: unreachable host, authentication,
    /// no table matched, lease held (exit 2). Nothing was written.
    #[error("{0}")]
    Startup(String),
    /// A failure after start-up (exit 1).
    #[error("{0}")]
    Runtime(String),
    /// A classified failure (see [`Failure`]): exit 2 for config/start-up kinds, 1 otherwise.
    #[error("{0}")]
    Failed(Box<Failure>),
    /// Standard output was closed by its reader (`godwit status | head -1`): the command
    /// ends quietly, like `ls | head` (exit 0).
    #[error("standard output was closed")]
    OutputClosed,
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        Error::Failed(Box::new(f))
    }
}

impl Error {
    /// A failure after start-up that trying again can cure (a broken connection, a failed
    /// write): retried per `[errors] recoverable_retries`, exit 1 once they are spent.
    pub fn recoverable(what: impl Into<String>) -> Error {
        Failure::new(Kind::Recoverable, what).into()
    }

    /// The kind of this error.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Config(_) => Kind::Config,
            Error::Startup(_) => Kind::Startup,
            Error::Runtime(_) | Error::OutputClosed => Kind::Fatal,
            Error::Failed(f) => f.kind,
        }
    }

    /// Whether trying again can cure it.
    pub fn is_recoverable(&self) -> bool {
        self.kind() == Kind::Recoverable
    }

    /// The same failure, now fatal (a recoverable one whose retries are spent, or met where
    /// it cannot be retried).
    pub fn into_fatal(self) -> Error {
        match self {
            Error::Failed(f) if f.kind == Kind::Recoverable => {
                Error::Failed(Box::new(f.with_kind(Kind::Fatal)))
            }
            e => e,
        }
    }

    /// The process exit code for this error (SPEC §2): 2 config and start-up, 1 any failure
    /// after start-up (3, a run that ended with a table in `Table error`, is not an error).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::OutputClosed => 0,
            e => match e.kind() {
                Kind::Config | Kind::Startup => 2,
                Kind::Data | Kind::Table | Kind::Recoverable | Kind::Fatal => 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_place_and_display_adds_the_remedy() {
        let f = Failure::new(Kind::Table, "copying: permission denied for table t")
            .table("public.t")
            .segment(Some(2))
            .remedy("grant SELECT");
        assert_eq!(
            f.message(),
            "public.t (segment 2): copying: permission denied for table t"
        );
        assert_eq!(
            f.to_string(),
            "public.t (segment 2): copying: permission denied for table t; grant SELECT"
        );
    }

    #[test]
    fn io_errors_are_classified_by_what_they_mean() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            Failure::from_io(refused, "writing", Some("public.t")).kind,
            Kind::Recoverable
        );
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let f = Failure::from_io(denied, "writing", Some("public.t"));
        assert_eq!(f.kind, Kind::Table);
        assert!(std::error::Error::source(&f).is_some(), "the cause is kept");
        let lost = std::io::Error::other(crate::state::LeaseLost {
            lease: "l".into(),
            why: "w".into(),
        });
        assert_eq!(
            Failure::from_io(lost, "writing", Some("public.t")).kind,
            Kind::Fatal
        );
        let slow = std::io::Error::other(crate::sink::files::s3_error::S3Failure {
            message: "SlowDown".into(),
            transient: true,
        });
        assert_eq!(
            Failure::from_io(slow, "writing", None).kind,
            Kind::Recoverable
        );
    }

    #[test]
    fn exit_codes_follow_the_kind() {
        assert_eq!(Error::recoverable("x").exit_code(), 1);
        assert_eq!(Error::from(Failure::new(Kind::Startup, "x")).exit_code(), 2);
        assert_eq!(Error::from(Failure::new(Kind::Table, "x")).exit_code(), 1);
        assert!(Error::recoverable("x").is_recoverable());
        assert!(!Error::recoverable("x").into_fatal().is_recoverable());
    }
}

//! The validated pipeline: what the rest of godwit reads. Every field holds its final value (defaults
//! applied, `${VAR}` replaced), so no other module needs to know the file's syntax.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::error::ConfigError;
use super::pattern::TablePattern;
use super::url::SecretUrl;

/// Declares a string-valued configuration enum: variants, their spelling in the file, `as_str`, `parse`
/// and the list of accepted spellings (for hints).
macro_rules! config_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every spelling accepted in the pipeline file, in documentation order.
            pub const VALUES: &'static [&'static str] = &[$($text),+];

            /// The spelling used in the pipeline file.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses the pipeline-file spelling (exact, case-sensitive).
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

config_enum! {
    /// What a run does (DMS migration type).
    Mode {
        FullLoad = "full-load",
        Cdc = "cdc",
        FullLoadAndCdc = "full-load-and-cdc",
    }
}

impl Mode {
    /// Whether this mode copies existing rows.
    pub fn has_full_load(&self) -> bool {
        matches!(self, Mode::FullLoad | Mode::FullLoadAndCdc)
    }

    /// Whether this mode follows changes through a replication slot.
    pub fn has_cdc(&self) -> bool {
        matches!(self, Mode::Cdc | Mode::FullLoadAndCdc)
    }
}

config_enum! {
    /// Which changes of a table CDC publishes.
    CdcMode {
        /// Inserts, updates, deletes and truncates.
        All = "all",
        /// Inserts only (for tables without a usable replica identity).
        InsertsOnly = "inserts-only",
    }
}

config_enum! {
    /// How `numeric(p,s)` columns are written.
    NumericMode {
        /// Decimal128 where it fits exactly.
        Decimal = "decimal",
        /// Exact text.
        Text = "text",
    }
}

config_enum! {
    /// S3 server-side encryption.
    Sse {
        Aes256 = "aes256",
        Kms = "aws:kms",
        None = "none",
    }
}

config_enum! {
    /// File format of the data lake objects.
    Format {
        Parquet = "parquet",
        Csv = "csv",
    }
}

config_enum! {
    /// Compression codec (Parquet: all; CSV: gzip or none).
    Compression {
        Zstd = "zstd",
        Snappy = "snappy",
        Gzip = "gzip",
        None = "none",
    }
}

config_enum! {
    /// Date folders for CDC files (commit date, UTC).
    DatePartitioning {
        None = "none",
        /// `yyyy/mm/dd`.
        Day = "yyyy/mm/dd",
        /// `yyyy/mm/dd/hh`.
        Hour = "yyyy/mm/dd/hh",
    }
}

config_enum! {
    /// DMS table error behaviour.
    TableErrorPolicy {
        SuspendTable = "suspend-table",
        StopTask = "stop-task",
    }
}

config_enum! {
    /// DMS data error behaviour.
    DataErrorPolicy {
        IgnoreRecord = "ignore-record",
        LogError = "log-error",
        SuspendTable = "suspend-table",
        StopTask = "stop-task",
    }
}

config_enum! {
    /// The Redis data structure a projection writes (SPEC §5).
    ProjectionKind {
        Hash = "hash",
        Json = "json",
        String = "string",
        Zset = "zset",
        Set = "set",
        Geo = "geo",
        Invalidate = "invalidate",
        Stream = "stream",
        Publish = "publish",
    }
}

impl ProjectionKind {
    /// Whether keys hold members (`zset`, `set`, `geo`) rather than one row each.
    pub fn has_members(self) -> bool {
        matches!(
            self,
            ProjectionKind::Zset | ProjectionKind::Set | ProjectionKind::Geo
        )
    }

    /// Whether the full load writes this projection's keys (every kind but the change-only
    /// `invalidate`, `stream` and `publish`).
    pub fn warmed(self) -> bool {
        !matches!(
            self,
            ProjectionKind::Invalidate | ProjectionKind::Stream | ProjectionKind::Publish
        )
    }
}

/// Line numbers of the keys as written in the file, by dotted key path (`target.url`,
/// `tables."public.orders".partitions`, `cache.projections[0].type`, `tables.include[1]`). Section
/// headers are there too (`target`, `tables."public.orders"`). Lets later checks (e.g. "no table
/// matched") point at the line that caused them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    lines: BTreeMap<String, usize>,
}

impl Spans {
    /// The 1-based line of `key`, if the file wrote it.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }

    /// Every recorded key path and its line.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.lines.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub(crate) fn insert(&mut self, key: String, line: usize) {
        self.lines.entry(key).or_insert(line);
    }
}

/// A validated pipeline file (SPEC §3).
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The file as the user named it (for messages).
    pub file: String,
    /// `[a-z0-9_-]{1,56}`; names slot, publication, state and events.
    pub name: String,
    /// Default `full-load`: a pipeline never creates a replication slot unless asked to.
    pub mode: Mode,
    pub source: Source,
    pub tables: Tables,
    pub load: Load,
    pub target: Target,
    pub cache: Option<Cache>,
    pub notify: Notify,
    pub metrics: Metrics,
    pub limits: Limits,
    pub errors: ErrorPolicy,
    pub state: StateConfig,
    /// Where each key was written.
    pub spans: Spans,
}

impl Pipeline {
    /// The settings of the first `[tables."…"]` entry (in file order) whose pattern matches, else the
    /// defaults.
    pub fn table_settings(&self, schema: &str, table: &str) -> TableSettings {
        self.tables
            .settings
            .iter()
            .find(|(p, _)| p.matches(schema, table))
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// The line of `key` in the file, if it was written there.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.spans.line(key)
    }

    /// A configuration error about `key`, located at the line where the file wrote it (for checks made
    /// after parsing, e.g. "tables.include matched no table").
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file.clone(), message)
            .at_line(self.spans.line(key))
            .with_key(key)
    }

    /// The slot name with dashes of `name` turned into underscores: `godwit_<name>`.
    pub fn default_object_name(name: &str) -> String {
        format!("godwit_{}", name.replace('-', "_"))
    }
}

/// `[source]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The PostgreSQL URL (interpolated). Shown redacted.
    pub url: SecretUrl,
    /// Replication slot; default `godwit_<name>` (dashes → underscores).
    pub slot: String,
    /// Publication; default `godwit_<name>`.
    pub publication: String,
}

/// `[tables]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tables {
    /// Default `["public.*"]`.
    pub include: Vec<TablePattern>,
    pub exclude: Vec<TablePattern>,
    /// Per-table settings in file order.
    pub settings: Vec<(TablePattern, TableSettings)>,
}

impl Tables {
    /// The dotted key of the first per-table entry matching a table (e.g. `tables."public.orders"`),
    /// as used in error messages and [`Spans`]; `None` when no entry matches.
    pub fn settings_key(&self, schema: &str, table: &str) -> Option<String> {
        self.settings
            .iter()
            .find(|(p, _)| p.matches(schema, table))
            .map(|(p, _)| super::reader::join("tables", p.as_str()))
    }

    /// Whether a catalog table is selected: matched by an include and by no exclude pattern.
    pub fn selects(&self, schema: &str, table: &str) -> bool {
        self.include.iter().any(|p| p.matches(schema, table))
            && !self.exclude.iter().any(|p| p.matches(schema, table))
    }
}

/// `[tables."schema.table"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSettings {
    /// Full-load filter (and publication row filter in CDC modes), checked to be one
    /// expression when the file is read. Key `where` in the file.
    pub where_clause: Option<crate::pg::filter::Filter>,
    pub exclude_columns: Vec<String>,
    /// Parallel full-load segments, 1..=1024; `None` (not set): chosen from the table's size
    /// and the machine's cores (`task::plan::auto_segments`). 1 forces one stream.
    pub partitions: Option<u32>,
    pub cdc: CdcMode,
    pub numeric: NumericMode,
}

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            where_clause: None,
            exclude_columns: Vec::new(),
            partitions: None,
            cdc: CdcMode::All,
            numeric: NumericMode::Decimal,
        }
    }
}

/// `[load]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Tables/segments loaded at once, 1..=256, default 4.
    pub parallel: usize,
    /// Rows per Arrow batch, 1..=10_000_000, default 65536.
    pub batch_rows: usize,
    /// Bytes per Arrow batch, default 16 MiB.
    pub batch_bytes: u64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            parallel: 4,
            batch_rows: 65_536,
            batch_bytes: 16 << 20,
        }
    }
}

/// Where the data lake files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetUrl {
    /// `s3://bucket/prefix` (prefix without leading/trailing `/`, possibly empty).
    S3 { bucket: String, prefix: String },
    /// `file://dir`: relative paths are relative to the current directory.
    File(PathBuf),
    /// `none`: cache only.
    None,
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            TargetUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            TargetUrl::File(p) => write!(f, "file://{}", p.display()),
            TargetUrl::None => f.write_str("none"),
        }
    }
}

/// `[target]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Default `file://./godwit-out/<name>`.
    pub url: TargetUrl,
    /// S3-compatible endpoint (`http(s)://…`); empty in the file means none.
    pub endpoint: Option<String>,
    /// Default `aes256`.
    pub sse: Sse,
    /// Required with `sse = "aws:kms"`, refused otherwise.
    pub kms_key_id: Option<String>,
    /// 12-digit AWS account id.
    pub expected_bucket_owner: Option<String>,
    /// Default `parquet`.
    pub format: Format,
    /// Default `zstd` for Parquet, `none` for CSV.
    pub compression: Compression,
    /// Default 128 MiB.
    pub row_group_bytes: u64,
    /// Default `,`.
    pub csv_delimiter: char,
    /// Default empty.
    pub csv_null_value: String,
    /// Default false.
    pub csv_header: bool,
    /// Default 512 MiB.
    pub max_file_size: u64,
    /// Default 60 s.
    pub cdc_max_batch_interval: Duration,
    /// Default 32 MB (32 000 000 bytes).
    pub cdc_min_file_size: u64,
    /// Default false.
    pub cdc_inserts_only: bool,
    /// Default none.
    pub date_partitioning: DatePartitioning,
    /// Empty in the file means none.
    pub timestamp_column: Option<String>,
    /// Default false.
    pub include_op_for_full_load: bool,
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// `redis://` or `rediss://` (TLS). Shown redacted.
    pub url: SecretUrl,
    /// Redis Cluster mode.
    pub cluster: bool,
    /// PEM file of a private CA (needs `rediss://`).
    pub tls_ca: Option<PathBuf>,
    /// Put before every key the projections write (default empty).
    pub key_prefix: String,
    /// After each flush, `WAIT` for this many replicas on every primary written to (default 0: no wait).
    pub wait_replicas: u32,
    pub projections: Vec<Projection>,
}

/// `[[cache.projections]]`. Which optional fields are present depends on `kind` (checked).
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// Exactly one table (no wildcards), selected by `[tables]`.
    pub table: TablePattern,
    /// Key `type` in the file.
    pub kind: ProjectionKind,
    /// Key template (`user:{id}`); see [`super::parse_template`].
    pub key: String,
    /// hash, json, stream, publish: the columns written; `None` = all.
    pub fields: Option<Vec<String>>,
    /// hash, json, string: fixed time to live.
    pub ttl: Option<Duration>,
    /// hash, json, string: timestamp column used with EXPIREAT.
    pub ttl_column: Option<String>,
    /// zset, set, geo: member template (`{id}`).
    pub member: Option<String>,
    /// zset: column holding the score.
    pub score: Option<String>,
    /// geo: column holding the longitude.
    pub longitude: Option<String>,
    /// geo: column holding the latitude.
    pub latitude: Option<String>,
    /// string: column holding the value.
    pub value: Option<String>,
    /// stream: approximate cap (`MAXLEN ~ n`).
    pub maxlen: Option<u64>,
    /// publish: channel template.
    pub channel: Option<String>,
}

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// `arn:aws:sns:…`; empty in the file means none.
    pub sns_topic_arn: Option<String>,
    /// Default `<state dir>/events.jsonl` for a local state, else `./godwit-out/<name>/events.jsonl`.
    pub events_file: PathBuf,
    /// Default 5 min.
    pub cdc_lag_threshold: Duration,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Where `godwit run` serves `/metrics` and `/healthz`; `None` (empty in the file): off.
    pub listen: Option<std::net::SocketAddr>,
    /// `/healthz` answers 503 once nothing moved for longer than this. Default 60 s.
    pub health_threshold: Duration,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: None,
            health_threshold: Duration::from_secs(60),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Default 1 GiB, at least 16 MiB.
    pub memory: u64,
    /// Default `${TMPDIR:-/tmp}/godwit`.
    pub spill_dir: PathBuf,
}

/// `[errors]` (DMS ErrorBehavior).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// Default suspend-table.
    pub table: TableErrorPolicy,
    /// Default log-error.
    pub data: DataErrorPolicy,
    /// Default 0 = never escalate.
    pub data_escalation_count: u64,
    /// Default -1 = forever.
    pub recoverable_retries: i64,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            table: TableErrorPolicy::SuspendTable,
            data: DataErrorPolicy::LogError,
            data_escalation_count: 0,
            recoverable_retries: -1,
        }
    }
}

/// Where checkpoints, table states and the lease live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUrl {
    S3 { bucket: String, prefix: String },
    File(PathBuf),
}

impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StateUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StateUrl::File(p) => write!(f, "file://{}", p.display()),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Default `<target url>/_godwit/state`; with target `none`: `./godwit-out/<name>/_godwit/state`.
    pub url: StateUrl,
}

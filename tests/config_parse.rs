//! The pipeline file (SPEC §3) as a user meets it: for every key a file that works and one that does
//! not, and for the one that does not, an error that names the file, the exact line and the key, and
//! says what is wrong. Environment variables come from a fixed map, never from the process.

use std::path::PathBuf;
use std::time::Duration;

use godwit::config::{
    CdcMode, Compression, ConfigError, DataErrorPolicy, DatePartitioning, Format, Mode,
    NumericMode, Pipeline, ProjectionKind, Sse, StateUrl, TableErrorPolicy, TargetUrl, load,
    parse_with_env,
};

const FILE: &str = "pipelines/shop.toml";

/// Lines 1-3 of most test files; the text appended to it starts at line 4.
const HEAD: &str = "name = \"shop\"\n[source]\nurl = \"postgres://app@localhost:5432/shop\"\n";

fn env(name: &str) -> Option<String> {
    match name {
        "DB_URL" => Some("postgres://app:pw@db.internal:5432/shop?sslmode=require".into()),
        "BAD_DB_URL" => Some("postgres://app:Env-S3cret!@db.internal:notaport/shop".into()),
        "BUCKET" => Some("shop-lake".into()),
        "EMPTY" => Some(String::new()),
        "FMT" => Some("csv".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Pipeline, ConfigError> {
    parse_with_env(text, FILE, &env)
}

fn ok(text: &str) -> Pipeline {
    parse(text).unwrap_or_else(|e| panic!("expected a valid file, got:\n{e}\n--- file ---\n{text}"))
}

fn with(extra: &str) -> String {
    format!("{HEAD}{extra}")
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Checks one error; returns a description of what did not hold (so table tests report every case).
fn check(text: &str, line: usize, key: &str, needle: &str) -> Option<String> {
    let e = match parse(text) {
        Ok(_) => return Some(format!("no error for:\n{text}")),
        Err(e) => e,
    };
    let shown = e.to_string();
    let mut problems = Vec::new();
    if e.file != FILE {
        problems.push(format!("file {:?}", e.file));
    }
    if e.line != Some(line) {
        problems.push(format!("line {:?}, expected {line}", e.line));
    }
    if e.key.as_deref() != Some(key) {
        problems.push(format!("key {:?}, expected {key:?}", e.key));
    }
    if !shown.contains(needle) {
        problems.push(format!("message lacks {needle:?}"));
    }
    let prefix = format!("{FILE}:{line}: {key}: ");
    if !shown.starts_with(&prefix) {
        problems.push(format!("display does not start with {prefix:?}"));
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "{}\n  error: {shown}\n  file:\n{text}",
            problems.join("; ")
        ))
    }
}

fn run_cases(cases: &[(String, usize, &str, &str)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(text, line, key, needle)| check(text, *line, key, needle))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Defaults

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let p = ok(HEAD);
    assert_eq!(p.file, FILE);
    assert_eq!(p.name, "shop");
    assert_eq!(p.mode, Mode::FullLoad);
    assert_eq!(p.source.url.expose(), "postgres://app@localhost:5432/shop");
    assert_eq!(p.source.slot, "godwit_shop");
    assert_eq!(p.source.publication, "godwit_shop");

    let inc: Vec<&str> = p.tables.include.iter().map(|t| t.as_str()).collect();
    assert_eq!(inc, ["public.*"]);
    assert!(p.tables.exclude.is_empty());
    assert!(p.tables.settings.is_empty());

    assert_eq!(p.load.parallel, 4);
    assert_eq!(p.load.batch_rows, 65_536);
    assert_eq!(p.load.batch_bytes, 16 * 1024 * 1024);

    let t = &p.target;
    assert_eq!(t.url, TargetUrl::File(PathBuf::from("./godwit-out/shop")));
    assert_eq!(t.endpoint, None);
    assert_eq!(t.sse, Sse::Aes256);
    assert_eq!(t.kms_key_id, None);
    assert_eq!(t.expected_bucket_owner, None);
    assert_eq!(t.format, Format::Parquet);
    assert_eq!(t.compression, Compression::Zstd);
    assert_eq!(t.row_group_bytes, 128 * 1024 * 1024);
    assert_eq!(t.csv_delimiter, ',');
    assert_eq!(t.csv_null_value, "");
    assert!(!t.csv_header);
    assert_eq!(t.max_file_size, 512 * 1024 * 1024);
    assert_eq!(t.cdc_max_batch_interval, Duration::from_secs(60));
    assert_eq!(t.cdc_min_file_size, 32_000_000);
    assert!(!t.cdc_inserts_only);
    assert_eq!(t.date_partitioning, DatePartitioning::None);
    assert_eq!(t.timestamp_column, None);
    assert!(!t.include_op_for_full_load);

    assert!(p.cache.is_none());

    assert_eq!(p.notify.sns_topic_arn, None);
    assert_eq!(
        p.notify.events_file,
        PathBuf::from("./godwit-out/shop/_godwit/state/events.jsonl")
    );
    assert_eq!(p.notify.cdc_lag_threshold, Duration::from_secs(300));

    assert_eq!(p.limits.memory, 1 << 30);
    assert_eq!(p.limits.spill_dir, PathBuf::from("/tmp/godwit"));

    assert_eq!(p.errors.table, TableErrorPolicy::SuspendTable);
    assert_eq!(p.errors.data, DataErrorPolicy::LogError);
    assert_eq!(p.errors.data_escalation_count, 0);
    assert_eq!(p.errors.recoverable_retries, -1);

    assert_eq!(
        p.state.url,
        StateUrl::File(PathBuf::from("./godwit-out/shop/_godwit/state"))
    );

    let s = p.table_settings("public", "orders");
    assert_eq!(s.where_clause, None);
    assert!(s.exclude_columns.is_empty());
    assert_eq!(s.partitions, None);
    assert_eq!(s.cdc, CdcMode::All);
    assert_eq!(s.numeric, NumericMode::Decimal);
}

#[test]
fn spill_dir_default_follows_tmpdir() {
    let env = |n: &str| (n == "TMPDIR").then(|| "/var/tmp".to_string());
    let p = parse_with_env(HEAD, FILE, &env).unwrap();
    assert_eq!(p.limits.spill_dir, PathBuf::from("/var/tmp/godwit"));
}

#[test]
fn dashes_in_name_become_underscores_in_slot_and_publication() {
    let p = ok("name = \"shop-eu-1\"\n[source]\nurl = \"postgres://h/db\"\n");
    assert_eq!(p.source.slot, "godwit_shop_eu_1");
    assert_eq!(p.source.publication, "godwit_shop_eu_1");
    assert_eq!(
        p.target.url,
        TargetUrl::File(PathBuf::from("./godwit-out/shop-eu-1"))
    );
}

#[test]
fn spec_example_file_parses() {
    // SPEC §3's example, with S3 and a cache (both valid schema, even where not built yet).
    let text = r#"
name = "shop"
mode = "full-load-and-cdc"

[source]
url = "${DB_URL}"
slot = "godwit_shop"
publication = "godwit_shop"

[tables]
include = ["public.*"]
exclude = ["public.audit_*"]

[tables."public.orders"]
where = "created_at >= '2024-01-01'"
exclude_columns = ["internal_note"]
partitions = 8
cdc = "all"
numeric = "decimal"

[load]
parallel = 4
batch_rows = 65536
batch_bytes = "16MiB"

[target]
url = "s3://bucket/prefix"
endpoint = "${S3_ENDPOINT:-}"
sse = "aes256"
kms_key_id = ""
expected_bucket_owner = ""
format = "parquet"
compression = "zstd"
row_group_bytes = "128MiB"
csv_delimiter = ","
csv_null_value = ""
csv_header = false
max_file_size = "512MiB"
cdc_max_batch_interval = "60s"
cdc_min_file_size = "32MB"
cdc_inserts_only = false
date_partitioning = "none"
timestamp_column = ""
include_op_for_full_load = false

[cache]
url = "redis://127.0.0.1:6379"
cluster = false
tls_ca = ""
key_prefix = ""
wait_replicas = 0

[[cache.projections]]
table = "public.users"
type = "hash"
key = "user:{id}"
fields = ["email", "name", "score"]
ttl = "1h"

[[cache.projections]]
table = "public.users"
type = "zset"
key = "leaderboard"
member = "{id}"
score = "score"

[[cache.projections]]
table = "public.stores"
type = "geo"
key = "stores:geo"
member = "{id}"
longitude = "lon"
latitude = "lat"

[[cache.projections]]
table = "public.sessions"
type = "string"
key = "session:{user_id}"
value = "data"
ttl_column = "expires_at"

[notify]
sns_topic_arn = "${EVENTS_TOPIC_ARN:-}"
events_file = ""
cdc_lag_threshold = "5m"

[limits]
memory = "1GiB"
spill_dir = "${TMPDIR:-/tmp}/godwit"

[errors]
table = "suspend-table"
data = "log-error"
data_escalation_count = 0
recoverable_retries = -1

[state]
url = ""
"#;
    let p = ok(text);
    assert_eq!(p.mode, Mode::FullLoadAndCdc);
    assert_eq!(
        p.source.url.expose(),
        "postgres://app:pw@db.internal:5432/shop?sslmode=require"
    );
    assert!(p.tables.selects("public", "orders"));
    assert!(!p.tables.selects("public", "audit_log"));
    assert_eq!(p.table_settings("public", "orders").partitions, Some(8));
    assert_eq!(
        p.target.url,
        TargetUrl::S3 {
            bucket: "bucket".into(),
            prefix: "prefix".into()
        }
    );
    assert_eq!(p.target.endpoint, None);
    let cache = p.cache.as_ref().unwrap();
    let kinds: Vec<ProjectionKind> = cache.projections.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            ProjectionKind::Hash,
            ProjectionKind::Zset,
            ProjectionKind::Geo,
            ProjectionKind::String
        ]
    );
    assert_eq!(
        p.state.url,
        StateUrl::S3 {
            bucket: "bucket".into(),
            prefix: "prefix/_godwit/state".into()
        }
    );
    assert_eq!(p.line_of("target.url"), Some(27));
    assert_eq!(p.line_of("tables.\"public.orders\".partitions"), Some(17));
    assert_eq!(p.line_of("cache.projections[1].score"), Some(65));
}

// ---------------------------------------------------------------------------------------------
// Top level, [source]

#[test]
fn top_level_and_source_valid() {
    for (mode, expected) in [
        ("full-load", Mode::FullLoad),
        ("cdc", Mode::Cdc),
        ("full-load-and-cdc", Mode::FullLoadAndCdc),
    ] {
        let p = ok(&format!(
            "name = \"a_b-1\"\nmode = \"{mode}\"\n[source]\nurl = \"postgres://h/db\"\n"
        ));
        assert_eq!(p.mode, expected);
        assert_eq!(p.mode.as_str(), mode);
        assert_eq!(p.name, "a_b-1");
    }
    let long = "a".repeat(56);
    assert_eq!(
        ok(&format!(
            "name = \"{long}\"\n[source]\nurl = \"postgres://h/db\"\n"
        ))
        .name,
        long
    );

    let p = ok(&with("slot = \"my_slot_1\"\npublication = \"my_pub\"\n"));
    assert_eq!(p.source.slot, "my_slot_1");
    assert_eq!(p.source.publication, "my_pub");

    for url in [
        "postgresql://u:p%40ss@db:5432/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        "postgres://u@[::1]:5432/db?application_name=godwit",
        "postgres://h1,h2:5433/db?sslmode=disable",
        "postgres:///db?host=/var/run/postgresql",
    ] {
        let p = ok(&format!("name = \"x\"\n[source]\nurl = \"{url}\"\n"));
        assert_eq!(p.source.url.expose(), url);
    }
}

#[test]
fn top_level_and_source_invalid() {
    let long = "a".repeat(57);
    let src = "[source]\nurl = \"postgres://h/db\"\n";
    run_cases(&[
        (format!("name = \"Shop\"\n{src}"), 1, "name", "lowercase"),
        (
            format!("name = \"{long}\"\n{src}"),
            1,
            "name",
            "longer than 56",
        ),
        (format!("name = \"\"\n{src}"), 1, "name", "empty"),
        (
            format!("name = 5\n{src}"),
            1,
            "name",
            "expected a string, found an integer",
        ),
        (
            format!("name = \"shop\"\nmode = \"full_load\"\n{src}"),
            2,
            "mode",
            "\"full_load\" is not a valid value",
        ),
        (
            format!("name = \"shop\"\nmode = \"CDC\"\n{src}"),
            2,
            "mode",
            "values are lowercase: write \"cdc\"",
        ),
        (
            "name = \"shop\"\n[source]\nslot = \"s\"\n".to_string(),
            2,
            "source.url",
            "[source] needs `url`",
        ),
        (
            "name = \"shop\"\n[source]\nurl = \"mysql://h/db\"\n".to_string(),
            3,
            "source.url",
            "postgres:// or postgresql://",
        ),
        (
            "name = \"shop\"\n[source]\nurl = \"postgres://h/db?sslmode=maybe\"\n".to_string(),
            3,
            "source.url",
            "sslmode \"maybe\" is not valid",
        ),
        (
            "name = \"shop\"\n[source]\nurl = \"postgres:///db\"\n".to_string(),
            3,
            "source.url",
            "no host",
        ),
        (
            "name = \"shop\"\n[source]\nurl = \"\"\n".to_string(),
            3,
            "source.url",
            "is empty",
        ),
        (
            with("slot = \"My-Slot\"\n"),
            4,
            "source.slot",
            "lowercase letters, digits and `_`",
        ),
        (
            with(&format!("slot = \"{}\"\n", "s".repeat(64))),
            4,
            "source.slot",
            "1 to 63",
        ),
        (
            with("publication = \"1pub\"\n"),
            4,
            "source.publication",
            "must not start with a digit",
        ),
        (
            with("publication = \"pub lic\"\n"),
            4,
            "source.publication",
            "lowercase",
        ),
        (
            with("user = \"x\"\n"),
            4,
            "source.user",
            "unknown key `user` in [source]",
        ),
    ]);
}

#[test]
fn missing_name_and_missing_source() {
    let e = err("[source]\nurl = \"postgres://h/db\"\n");
    assert_eq!(e.key.as_deref(), Some("name"));
    assert!(e.message.contains("missing required key `name`"), "{e}");
    assert!(
        e.hint.as_deref().unwrap().contains("name = \"shop\""),
        "{e}"
    );

    let e = err("name = \"shop\"\n");
    assert_eq!(e.key.as_deref(), Some("source.url"));
    assert!(e.message.contains("`source`"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("[source]"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// [tables]

#[test]
fn tables_valid() {
    let p = ok(&with(
        "[tables]\ninclude = [\"public.orders\", \"sales.*\", '\"My Schema\".\"Order.Items\"']\nexclude = [\"sales.tmp_%\"]\n",
    ));
    assert!(p.tables.selects("public", "orders"));
    assert!(!p.tables.selects("public", "customers"));
    assert!(p.tables.selects("sales", "eu"));
    assert!(!p.tables.selects("sales", "tmp_x"));
    assert!(p.tables.selects("My Schema", "Order.Items"));
    assert!(!p.tables.selects("my schema", "order.items"));

    let p = ok(&with(
        r#"[tables."public.orders"]
where = "created_at >= '2024-01-01'"
exclude_columns = ["internal_note", "secret"]
partitions = 8
cdc = "inserts-only"
numeric = "text"
"#,
    ));
    let s = p.table_settings("public", "orders");
    assert_eq!(
        s.where_clause.as_deref(),
        Some("created_at >= '2024-01-01'")
    );
    assert_eq!(s.exclude_columns, ["internal_note", "secret"]);
    assert_eq!(s.partitions, Some(8));
    assert_eq!(s.cdc, CdcMode::InsertsOnly);
    assert_eq!(s.numeric, NumericMode::Text);
    // Other tables keep the defaults.
    assert_eq!(p.table_settings("public", "customers").partitions, None);
    assert_eq!(p.table_settings("public", "customers").cdc, CdcMode::All);
}

#[test]
fn per_table_settings_first_match_in_file_order() {
    // "public.*" sorts before "public.zz"; file order must win, not key order.
    let p = ok(&with(
        "[tables.\"public.zz\"]\npartitions = 3\n[tables.\"public.*\"]\npartitions = 2\n",
    ));
    assert_eq!(p.table_settings("public", "zz").partitions, Some(3));
    assert_eq!(p.table_settings("public", "other").partitions, Some(2));
    assert_eq!(p.table_settings("sales", "zz").partitions, None);
    assert_eq!(
        p.tables.settings_key("public", "zz").as_deref(),
        Some("tables.\"public.zz\"")
    );
    assert_eq!(
        p.tables.settings_key("public", "other").as_deref(),
        Some("tables.\"public.*\"")
    );
    assert_eq!(p.tables.settings_key("sales", "zz"), None);
    assert_eq!(p.line_of("tables.\"public.*\".partitions"), Some(7));
    let order: Vec<&str> = p.tables.settings.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(order, ["public.zz", "public.*"]);

    let p = ok(&with(
        "[tables.\"public.*\"]\npartitions = 2\n[tables.\"public.zz\"]\npartitions = 3\n",
    ));
    assert_eq!(p.table_settings("public", "zz").partitions, Some(2));
}

#[test]
fn table_patterns_with_dots_spaces_and_unicode() {
    let p = ok(&with(
        r#"[tables]
include = ['my\.schema.t*', "Sales Data.Ünïcödé ?", "public.a.b"]
"#,
    ));
    assert!(p.tables.selects("my.schema", "tx"));
    assert!(!p.tables.selects("my", "schema.tx"));
    assert!(p.tables.selects("Sales Data", "Ünïcödé 1"));
    assert!(!p.tables.selects("Sales Data", "ünïcödé 1"));
    assert!(p.tables.selects("public", "a.b"));
}

#[test]
fn tables_invalid() {
    run_cases(&[
        (
            with("[tables]\ninclude = [\"orders\"]\n"),
            5,
            "tables.include[0]",
            "write schema.table",
        ),
        (
            with("[tables]\ninclude = [\n  \"public.orders\",\n  \"public.\",\n]\n"),
            7,
            "tables.include[1]",
            "empty table part",
        ),
        (
            with("[tables]\ninclude = []\n"),
            5,
            "tables.include",
            "no table would be selected",
        ),
        (
            with("[tables]\ninclude = \"public.*\"\n"),
            5,
            "tables.include",
            "expected an array",
        ),
        (
            with("[tables]\nexclude = [\"audit\"]\n"),
            5,
            "tables.exclude[0]",
            "schema.table",
        ),
        (
            with("[tables]\nexclude = [5]\n"),
            5,
            "tables.exclude[0]",
            "expected a string",
        ),
        (
            with("[tables]\nincludes = [\"public.*\"]\n"),
            5,
            "tables.includes",
            "did you mean `include`?",
        ),
        (
            with("[tables.\"orders\"]\npartitions = 2\n"),
            4,
            "tables.orders",
            "write schema.table",
        ),
        (
            with("[tables.public.orders]\npartitions = 2\n"),
            4,
            "tables.public",
            "nested tables, not as the table \"public.orders\"",
        ),
        (
            with("[tables.\"public.orders\"]\nwhere = 5\n"),
            5,
            "tables.\"public.orders\".where",
            "expected a string",
        ),
        (
            with("[tables.\"public.orders\"]\nwhere = \"  \"\n"),
            5,
            "tables.\"public.orders\".where",
            "is empty",
        ),
        (
            with("[tables.\"public.orders\"]\nexclude_columns = [\"a\", \"a\"]\n"),
            5,
            "tables.\"public.orders\".exclude_columns[1]",
            "listed twice",
        ),
        (
            with("[tables.\"public.orders\"]\nexclude_columns = \"a\"\n"),
            5,
            "tables.\"public.orders\".exclude_columns",
            "expected an array",
        ),
        (
            with("[tables.\"public.orders\"]\npartitions = 0\n"),
            5,
            "tables.\"public.orders\".partitions",
            "must be from 1 to 1024, got 0",
        ),
        (
            with("[tables.\"public.orders\"]\npartitions = 1025\n"),
            5,
            "tables.\"public.orders\".partitions",
            "must be from 1 to 1024, got 1025",
        ),
        (
            with("[tables.\"public.orders\"]\ncdc = \"insert-only\"\n"),
            5,
            "tables.\"public.orders\".cdc",
            "\"inserts-only\"",
        ),
        (
            with("[tables.\"public.orders\"]\nnumeric = \"float\"\n"),
            5,
            "tables.\"public.orders\".numeric",
            "\"decimal\", \"text\"",
        ),
        (
            with("[tables.\"public.orders\"]\npartitions = 2\npartition_count = 4\n"),
            6,
            "tables.\"public.orders\".partition_count",
            "unknown key `partition_count`",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// [load]

#[test]
fn load_valid() {
    let p = ok(&with(
        "[load]\nparallel = 16\nbatch_rows = 1_000\nbatch_bytes = \"1MiB\"\n",
    ));
    assert_eq!(p.load.parallel, 16);
    assert_eq!(p.load.batch_rows, 1000);
    assert_eq!(p.load.batch_bytes, 1 << 20);
    assert_eq!(
        ok(&with("[load]\nbatch_bytes = 4096\n")).load.batch_bytes,
        4096
    );
    assert_eq!(
        ok(&with("[load]\nbatch_bytes = \"8MB\"\n"))
            .load
            .batch_bytes,
        8_000_000
    );
}

#[test]
fn load_invalid() {
    run_cases(&[
        (
            with("[load]\nparallel = 0\n"),
            5,
            "load.parallel",
            "must be from 1 to 256, got 0",
        ),
        (
            with("[load]\nparallel = 257\n"),
            5,
            "load.parallel",
            "must be from 1 to 256",
        ),
        (
            with("[load]\nparallel = \"4\"\n"),
            5,
            "load.parallel",
            "expected an integer, found a string",
        ),
        (
            with("[load]\nparallel = 4.5\n"),
            5,
            "load.parallel",
            "found a float",
        ),
        (
            with("[load]\nbatch_rows = 0\n"),
            5,
            "load.batch_rows",
            "must be from 1 to 10000000",
        ),
        (
            with("[load]\nbatch_rows = 10_000_001\n"),
            5,
            "load.batch_rows",
            "got 10000001",
        ),
        (
            with("[load]\nbatch_bytes = \"16 megs\"\n"),
            5,
            "load.batch_bytes",
            "unknown size unit",
        ),
        (
            with("[load]\nbatch_bytes = \"0\"\n"),
            5,
            "load.batch_bytes",
            "greater than zero",
        ),
        (
            with("[load]\nbatch_bytes = -1\n"),
            5,
            "load.batch_bytes",
            "cannot be negative",
        ),
        (
            with("[load]\nbatch_bytes = true\n"),
            5,
            "load.batch_bytes",
            "expected a size",
        ),
        (
            with("[load]\nbatch_bytes = \"2GiB\"\n"),
            5,
            "load.batch_bytes",
            "more than limits.memory",
        ),
        (
            with("[load]\nthreads = 4\n"),
            5,
            "load.threads",
            "unknown key `threads` in [load]",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// [target]

#[test]
fn target_url_forms() {
    let p = ok(&with("[target]\nurl = \"s3://shop-lake/exports/shop/\"\n"));
    assert_eq!(
        p.target.url,
        TargetUrl::S3 {
            bucket: "shop-lake".into(),
            prefix: "exports/shop".into()
        }
    );
    assert_eq!(
        p.state.url,
        StateUrl::S3 {
            bucket: "shop-lake".into(),
            prefix: "exports/shop/_godwit/state".into()
        }
    );
    let p = ok(&with("[target]\nurl = \"s3://${BUCKET}\"\n"));
    assert_eq!(
        p.state.url,
        StateUrl::S3 {
            bucket: "shop-lake".into(),
            prefix: "_godwit/state".into()
        }
    );
    let p = ok(&with("[target]\nurl = \"file://./out\"\n"));
    assert_eq!(p.target.url, TargetUrl::File(PathBuf::from("./out")));
    assert_eq!(
        p.state.url,
        StateUrl::File(PathBuf::from("./out/_godwit/state"))
    );
    let p = ok(&with("[target]\nurl = \"file:///var/lib/godwit\"\n"));
    assert_eq!(
        p.target.url,
        TargetUrl::File(PathBuf::from("/var/lib/godwit"))
    );
    assert!(PathBuf::from("/var/lib/godwit").is_absolute());
    let p = ok(&with("[target]\nurl = \"\"\n"));
    assert_eq!(
        p.target.url,
        TargetUrl::File(PathBuf::from("./godwit-out/shop"))
    );
    let p = ok(&with(
        "[target]\nurl = \"none\"\n[cache]\nurl = \"redis://127.0.0.1:6379\"\n[[cache.projections]]\ntable = \"public.users\"\ntype = \"invalidate\"\nkey = \"user:{id}\"\n",
    ));
    assert_eq!(p.target.url, TargetUrl::None);
    assert_eq!(
        p.state.url,
        StateUrl::File(PathBuf::from("./godwit-out/shop/_godwit/state"))
    );
}

#[test]
fn target_valid_keys() {
    let p = ok(&with(
        r#"[target]
url = "s3://shop-lake/x"
endpoint = "http://localhost:9000"
sse = "aws:kms"
kms_key_id = "arn:aws:kms:eu-west-1:123456789012:key/abc"
expected_bucket_owner = "123456789012"
format = "parquet"
compression = "snappy"
row_group_bytes = "64MiB"
max_file_size = "1GB"
cdc_max_batch_interval = "1h30m"
cdc_min_file_size = "64MB"
cdc_inserts_only = true
date_partitioning = "yyyy/mm/dd/hh"
timestamp_column = "commit_ts"
include_op_for_full_load = true
"#,
    ));
    let t = &p.target;
    assert_eq!(t.endpoint.as_deref(), Some("http://localhost:9000"));
    assert_eq!(t.sse, Sse::Kms);
    assert_eq!(
        t.kms_key_id.as_deref(),
        Some("arn:aws:kms:eu-west-1:123456789012:key/abc")
    );
    assert_eq!(t.expected_bucket_owner.as_deref(), Some("123456789012"));
    assert_eq!(t.compression, Compression::Snappy);
    assert_eq!(t.row_group_bytes, 64 << 20);
    assert_eq!(t.max_file_size, 1_000_000_000);
    assert_eq!(t.cdc_max_batch_interval, Duration::from_secs(5400));
    assert_eq!(t.cdc_min_file_size, 64_000_000);
    assert!(t.cdc_inserts_only);
    assert_eq!(t.date_partitioning, DatePartitioning::Hour);
    assert_eq!(t.timestamp_column.as_deref(), Some("commit_ts"));
    assert!(t.include_op_for_full_load);

    let p = ok(&with(
        "[target]\nformat = \"csv\"\ncsv_delimiter = \"\\t\"\ncsv_null_value = \"NULL\"\ncsv_header = true\n",
    ));
    assert_eq!(p.target.format, Format::Csv);
    assert_eq!(
        p.target.compression,
        Compression::None,
        "csv defaults to no compression"
    );
    assert_eq!(p.target.csv_delimiter, '\t');
    assert_eq!(p.target.csv_null_value, "NULL");
    assert!(p.target.csv_header);
    let p = ok(&with(
        "[target]\nformat = \"csv\"\ncompression = \"gzip\"\n",
    ));
    assert_eq!(p.target.compression, Compression::Gzip);
    let p = ok(&with("[target]\nsse = \"none\"\nendpoint = \"${EMPTY}\"\n"));
    assert_eq!(p.target.sse, Sse::None);
    assert_eq!(p.target.endpoint, None);
    let p = ok(&with("[target]\ndate_partitioning = \"yyyy/mm/dd\"\n"));
    assert_eq!(p.target.date_partitioning, DatePartitioning::Day);
    let p = ok(&with("[target]\nformat = \"${FMT}\"\n"));
    assert_eq!(p.target.format, Format::Csv);
}

#[test]
fn target_invalid() {
    run_cases(&[
        (
            with("[target]\nurl = \"ftp://x/y\"\n"),
            5,
            "target.url",
            "not a supported location",
        ),
        (
            with("[target]\nurl = \"./out\"\n"),
            5,
            "target.url",
            "file://./dir",
        ),
        (
            with("[target]\nurl = \"s3://Bad_Bucket/x\"\n"),
            5,
            "target.url",
            "not a valid S3 bucket name",
        ),
        (
            with("[target]\nurl = \"file://\"\n"),
            5,
            "target.url",
            "names no directory",
        ),
        (
            with("[target]\nurl = \"none\"\n"),
            5,
            "target.url",
            "would write nothing",
        ),
        (
            with("[target]\nendpoint = \"localhost:9000\"\n"),
            5,
            "target.endpoint",
            "not an http(s) URL",
        ),
        (
            with("[target]\nsse = \"AES256\"\n"),
            5,
            "target.sse",
            "values are lowercase: write \"aes256\"",
        ),
        (
            with("[target]\nsse = \"kms\"\n"),
            5,
            "target.sse",
            "\"aws:kms\"",
        ),
        (
            with("[target]\nurl = \"s3://shop-lake\"\nsse = \"aws:kms\"\n"),
            6,
            "target.sse",
            "sse = \"aws:kms\" needs kms_key_id",
        ),
        (
            with("[target]\nsse = \"aes256\"\nkms_key_id = \"alias/x\"\n"),
            6,
            "target.kms_key_id",
            "kms_key_id is set but sse is \"aes256\"",
        ),
        (
            with("[target]\nkms_key_id = \"alias/x\"\n"),
            5,
            "target.kms_key_id",
            "set sse = \"aws:kms\"",
        ),
        (
            with("[target]\nexpected_bucket_owner = \"12345\"\n"),
            5,
            "target.expected_bucket_owner",
            "12 digits",
        ),
        (
            with("[target]\nformat = \"json\"\n"),
            5,
            "target.format",
            "\"parquet\", \"csv\"",
        ),
        (
            with("[target]\ncompression = \"lz4\"\n"),
            5,
            "target.compression",
            "\"zstd\", \"snappy\", \"gzip\", \"none\"",
        ),
        (
            with("[target]\nformat = \"csv\"\ncompression = \"zstd\"\n"),
            6,
            "target.compression",
            "compression \"zstd\" is not available for format \"csv\"",
        ),
        (
            with("[target]\ncompression = \"snappy\"\nformat = \"csv\"\n"),
            5,
            "target.compression",
            "\"gzip\" or \"none\"",
        ),
        (
            with("[target]\nrow_group_bytes = \"100KiB\"\n"),
            5,
            "target.row_group_bytes",
            "at least 1MiB",
        ),
        (
            with("[target]\nrow_group_bytes = \"lots\"\n"),
            5,
            "target.row_group_bytes",
            "is not a size",
        ),
        (
            with("[target]\ncsv_delimiter = \",,\"\n"),
            5,
            "target.csv_delimiter",
            "exactly one character",
        ),
        (
            with("[target]\ncsv_delimiter = \"\"\n"),
            5,
            "target.csv_delimiter",
            "exactly one character",
        ),
        (
            with("[target]\ncsv_delimiter = '\"'\n"),
            5,
            "target.csv_delimiter",
            "cannot be a csv delimiter",
        ),
        (
            with("[target]\ncsv_null_value = \"a,b\"\n"),
            5,
            "target.csv_null_value",
            "the delimiter",
        ),
        (
            with("[target]\ncsv_header = \"yes\"\n"),
            5,
            "target.csv_header",
            "expected true or false",
        ),
        (
            with("[target]\nmax_file_size = 0\n"),
            5,
            "target.max_file_size",
            "greater than zero",
        ),
        (
            with("[target]\nmax_file_size = \"1.5B\"\n"),
            5,
            "target.max_file_size",
            "whole number of bytes",
        ),
        (
            with("[target]\ncdc_max_batch_interval = \"60\"\n"),
            5,
            "target.cdc_max_batch_interval",
            "without a unit",
        ),
        (
            with("[target]\ncdc_max_batch_interval = 60\n"),
            5,
            "target.cdc_max_batch_interval",
            "expected a duration",
        ),
        (
            with("[target]\ncdc_max_batch_interval = \"0s\"\n"),
            5,
            "target.cdc_max_batch_interval",
            "longer than zero",
        ),
        (
            with("[target]\ncdc_max_batch_interval = \"1 fortnight\"\n"),
            5,
            "target.cdc_max_batch_interval",
            "unknown unit",
        ),
        (
            with("[target]\ncdc_min_file_size = \"32mb\"\n"),
            5,
            "target.cdc_min_file_size",
            "unknown size unit \"mb\"",
        ),
        (
            with("[target]\ncdc_inserts_only = 1\n"),
            5,
            "target.cdc_inserts_only",
            "expected true or false, found an integer",
        ),
        (
            with("[target]\ndate_partitioning = \"daily\"\n"),
            5,
            "target.date_partitioning",
            "\"yyyy/mm/dd\"",
        ),
        (
            with("[target]\ntimestamp_column = \"_lsn\"\n"),
            5,
            "target.timestamp_column",
            "column godwit writes itself",
        ),
        (
            with("[target]\ntimestamp_column = 5\n"),
            5,
            "target.timestamp_column",
            "expected a string",
        ),
        (
            with("[target]\ninclude_op_for_full_load = \"true\"\n"),
            5,
            "target.include_op_for_full_load",
            "without quotes",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// [cache] and projections

/// `[cache]` at line 4, url at 5, the first projection header at line 6, its first key at line 7.
fn cache_with(projection_body: &str) -> String {
    with(&format!(
        "[cache]\nurl = \"redis://127.0.0.1:6379\"\n[[cache.projections]]\n{projection_body}"
    ))
}

#[test]
fn cache_valid() {
    let p = ok(&with(
        r#"[cache]
url = "rediss://default:pw@cache.example:6380"
cluster = true
tls_ca = "/etc/ssl/private-ca.pem"
key_prefix = "app1:"
wait_replicas = 1

[[cache.projections]]
table = "public.users"
type = "hash"
key = "user:{{{id}}}"
fields = ["email", "name"]
ttl = "1h"

[[cache.projections]]
table = "public.users"
type = "json"
key = "userdoc:{id}"
ttl_column = "expires_at"

[[cache.projections]]
table = "public.sessions"
type = "string"
key = "session:{user_id}"
value = "data"

[[cache.projections]]
table = "public.users"
type = "zset"
key = "leaderboard"
member = "{id}"
score = "score"

[[cache.projections]]
table = "public.users"
type = "set"
key = "users:active"
member = "{id}"

[[cache.projections]]
table = "public.stores"
type = "geo"
key = "stores:geo"
member = "{id}"
longitude = "lon"
latitude = "lat"

[[cache.projections]]
table = "public.users"
type = "invalidate"
key = "user:{id}"

[[cache.projections]]
table = "public.orders"
type = "stream"
key = "orders:changes"
maxlen = 100000
fields = ["status"]

[[cache.projections]]
table = "public.orders"
type = "publish"
key = "order:{id}"
channel = "orders"
"#,
    ));
    let c = p.cache.as_ref().unwrap();
    assert_eq!(c.url.expose(), "rediss://default:pw@cache.example:6380");
    assert!(!format!("{:?}", c.url).contains(":pw@"));
    assert!(c.cluster);
    assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/ssl/private-ca.pem")));
    assert_eq!(c.key_prefix, "app1:");
    assert_eq!(c.wait_replicas, 1);
    assert_eq!(c.projections.len(), 9);
    let h = &c.projections[0];
    assert_eq!(h.kind, ProjectionKind::Hash);
    assert_eq!(h.table.as_str(), "public.users");
    assert_eq!(h.key, "user:{{{id}}}");
    assert_eq!(
        h.fields.as_deref(),
        Some(&["email".to_string(), "name".to_string()][..])
    );
    assert_eq!(h.ttl, Some(Duration::from_secs(3600)));
    assert_eq!(c.projections[1].ttl_column.as_deref(), Some("expires_at"));
    assert_eq!(c.projections[2].value.as_deref(), Some("data"));
    assert_eq!(c.projections[3].score.as_deref(), Some("score"));
    assert_eq!(c.projections[3].member.as_deref(), Some("{id}"));
    assert_eq!(c.projections[4].kind, ProjectionKind::Set);
    assert_eq!(c.projections[5].longitude.as_deref(), Some("lon"));
    assert_eq!(c.projections[5].latitude.as_deref(), Some("lat"));
    assert_eq!(c.projections[6].kind, ProjectionKind::Invalidate);
    assert_eq!(c.projections[7].maxlen, Some(100_000));
    assert_eq!(c.projections[8].channel.as_deref(), Some("orders"));
}

#[test]
fn cache_invalid() {
    let hash = "table = \"public.users\"\ntype = \"hash\"\nkey = \"user:{id}\"\n";
    run_cases(&[
        (
            with("[cache]\ncluster = false\n[[cache.projections]]\n"),
            4,
            "cache.url",
            "[cache] needs `url`",
        ),
        (
            with("[cache]\nurl = \"http://cache:6379\"\n"),
            5,
            "cache.url",
            "redis:// or rediss://",
        ),
        (
            with("[cache]\nurl = \"redis://cache:port\"\n"),
            5,
            "cache.url",
            "port",
        ),
        (
            with("[cache]\nurl = \"redis://127.0.0.1:6379\"\n"),
            4,
            "cache.projections",
            "no projections",
        ),
        (
            with(
                "[cache]\nurl = \"redis://127.0.0.1:6379\"\n[cache.projections]\ntable = \"public.users\"\n",
            ),
            6,
            "cache.projections",
            "[[cache.projections]]",
        ),
        (
            with(&format!(
                "[cache]\nurl = \"redis://127.0.0.1:6379\"\ncluster = \"yes\"\n[[cache.projections]]\n{hash}"
            )),
            6,
            "cache.cluster",
            "expected true or false",
        ),
        (
            with(&format!(
                "[cache]\nurl = \"redis://127.0.0.1:6379/3\"\ncluster = true\n[[cache.projections]]\n{hash}"
            )),
            5,
            "cache.url",
            "only database 0",
        ),
        (
            with(&format!(
                "[cache]\nurl = \"redis://127.0.0.1:6379\"\ntls_ca = \"/ca.pem\"\n[[cache.projections]]\n{hash}"
            )),
            6,
            "cache.tls_ca",
            "rediss://",
        ),
        (
            with(&format!(
                "[cache]\nurl = \"redis://127.0.0.1:6379\"\nwait_replicas = -1\n[[cache.projections]]\n{hash}"
            )),
            6,
            "cache.wait_replicas",
            "must be from 0 to 100",
        ),
        (
            with(&format!(
                "[cache]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = 7\n[[cache.projections]]\n{hash}"
            )),
            6,
            "cache.key_prefix",
            "expected a string",
        ),
        (
            cache_with("table = \"public.*\"\ntype = \"hash\"\nkey = \"k:{id}\"\n"),
            7,
            "cache.projections[0].table",
            "has wildcards",
        ),
        (
            cache_with("table = \"users\"\ntype = \"hash\"\nkey = \"k:{id}\"\n"),
            7,
            "cache.projections[0].table",
            "schema.table",
        ),
        (
            cache_with("table = \"sales.users\"\ntype = \"hash\"\nkey = \"k:{id}\"\n"),
            7,
            "cache.projections[0].table",
            "not selected by [tables]",
        ),
        (
            cache_with("type = \"hash\"\nkey = \"k:{id}\"\n"),
            6,
            "cache.projections[0].table",
            "needs `table`",
        ),
        (
            cache_with("table = \"public.users\"\nkey = \"k:{id}\"\n"),
            6,
            "cache.projections[0].type",
            "needs `type`",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"list\"\nkey = \"k:{id}\"\n"),
            8,
            "cache.projections[0].type",
            "\"hash\", \"json\", \"string\", \"zset\", \"set\", \"geo\", \"invalidate\", \"stream\", \"publish\"",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"hash\"\n"),
            6,
            "cache.projections[0].key",
            "needs `key`",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"hash\"\nkey = \"user:{id\"\n"),
            9,
            "cache.projections[0].key",
            "unclosed `{`",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"hash\"\nkey = \"user:id}\"\n"),
            9,
            "cache.projections[0].key",
            "unmatched `}`",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"hash\"\nkey = \"user\"\n"),
            9,
            "cache.projections[0].key",
            "every row would write the same key",
        ),
        (
            cache_with(
                "table = \"public.users\"\ntype = \"zset\"\nkey = \"lb\"\nmember = \"{id}\"\n",
            ),
            6,
            "cache.projections[0].score",
            "type \"zset\" needs `score`",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"zset\"\nkey = \"lb\"\nscore = \"s\"\n"),
            6,
            "cache.projections[0].member",
            "type \"zset\" needs `member`",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"set\"\nkey = \"s\"\n"),
            6,
            "cache.projections[0].member",
            "type \"set\" needs `member`",
        ),
        (
            cache_with(
                "table = \"public.stores\"\ntype = \"geo\"\nkey = \"g\"\nmember = \"{id}\"\nlongitude = \"lon\"\n",
            ),
            6,
            "cache.projections[0].latitude",
            "type \"geo\" needs `latitude`",
        ),
        (
            cache_with("table = \"public.sessions\"\ntype = \"string\"\nkey = \"s:{id}\"\n"),
            6,
            "cache.projections[0].value",
            "type \"string\" needs `value`",
        ),
        (
            cache_with("table = \"public.orders\"\ntype = \"publish\"\nkey = \"o:{id}\"\n"),
            6,
            "cache.projections[0].channel",
            "type \"publish\" needs `channel`",
        ),
        (
            cache_with(&format!(
                "{hash}ttl = \"1h\"\nttl_column = \"expires_at\"\n"
            )),
            11,
            "cache.projections[0].ttl_column",
            "ttl and ttl_column cannot both be set",
        ),
        (
            cache_with(&format!("{hash}ttl = \"forever\"\n")),
            10,
            "cache.projections[0].ttl",
            "not a duration",
        ),
        (
            cache_with(&format!("{hash}score = \"s\"\n")),
            10,
            "cache.projections[0].score",
            "`score` is not used by type \"hash\"",
        ),
        (
            cache_with(
                "table = \"public.users\"\ntype = \"zset\"\nkey = \"lb\"\nmember = \"{id}\"\nscore = \"s\"\nttl = \"1h\"\n",
            ),
            12,
            "cache.projections[0].ttl",
            "`ttl` belongs to types: hash, json, string",
        ),
        (
            cache_with("table = \"public.orders\"\ntype = \"stream\"\nkey = \"o\"\nmaxlen = 0\n"),
            10,
            "cache.projections[0].maxlen",
            "must be from 1",
        ),
        (
            cache_with(&format!("{hash}fields = []\n")),
            10,
            "cache.projections[0].fields",
            "leave `fields` out",
        ),
        (
            cache_with("table = \"public.users\"\ntype = \"set\"\nkey = \"s\"\nmember = \"{}\"\n"),
            10,
            "cache.projections[0].member",
            "empty placeholder",
        ),
        (
            cache_with(&format!(
                "{hash}[[cache.projections]]\n{hash}expire = \"1h\"\n"
            )),
            14,
            "cache.projections[1].expire",
            "unknown key `expire` in [cache.projections[1]]",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// [notify], [limits], [errors], [state]

#[test]
fn notify_limits_errors_state_valid() {
    let p = ok(&with(
        r#"[notify]
sns_topic_arn = "arn:aws:sns:eu-west-1:123456789012:godwit-events"
events_file = "/var/log/godwit/events.jsonl"
cdc_lag_threshold = "10m"
[limits]
memory = "2GiB"
spill_dir = "/mnt/spill"
[errors]
table = "stop-task"
data = "ignore-record"
data_escalation_count = 10
recoverable_retries = 5
[state]
url = "file:///var/lib/godwit/state"
"#,
    ));
    assert_eq!(
        p.notify.sns_topic_arn.as_deref(),
        Some("arn:aws:sns:eu-west-1:123456789012:godwit-events")
    );
    assert_eq!(
        p.notify.events_file,
        PathBuf::from("/var/log/godwit/events.jsonl")
    );
    assert_eq!(p.notify.cdc_lag_threshold, Duration::from_secs(600));
    assert_eq!(p.limits.memory, 2 << 30);
    assert_eq!(p.limits.spill_dir, PathBuf::from("/mnt/spill"));
    assert_eq!(p.errors.table, TableErrorPolicy::StopTask);
    assert_eq!(p.errors.data, DataErrorPolicy::IgnoreRecord);
    assert_eq!(p.errors.data_escalation_count, 10);
    assert_eq!(p.errors.recoverable_retries, 5);
    assert_eq!(
        p.state.url,
        StateUrl::File(PathBuf::from("/var/lib/godwit/state"))
    );

    let p = ok(&with(
        "[notify]\nsns_topic_arn = \"${EVENTS_TOPIC_ARN:-}\"\nevents_file = \"\"\n[errors]\nrecoverable_retries = 0\ndata = \"suspend-table\"\n[state]\nurl = \"s3://shop-lake/state\"\n",
    ));
    assert_eq!(p.notify.sns_topic_arn, None);
    assert_eq!(
        p.notify.events_file,
        PathBuf::from("./godwit-out/shop/events.jsonl")
    );
    assert_eq!(p.errors.recoverable_retries, 0);
    assert_eq!(p.errors.data, DataErrorPolicy::SuspendTable);
    assert_eq!(
        p.state.url,
        StateUrl::S3 {
            bucket: "shop-lake".into(),
            prefix: "state".into()
        }
    );
    let p = ok(&with(
        "[notify]\nsns_topic_arn = \"arn:aws-cn:sns:cn-north-1:123456789012:t.fifo\"\n",
    ));
    assert!(p.notify.sns_topic_arn.is_some());
    let p = ok(&with("[limits]\nmemory = \"64MiB\"\nspill_dir = \"\"\n"));
    assert_eq!(p.limits.memory, 64 << 20);
    assert_eq!(p.limits.spill_dir, PathBuf::from("/tmp/godwit"));
}

#[test]
fn notify_limits_errors_state_invalid() {
    run_cases(&[
        (
            with("[notify]\nsns_topic_arn = \"arn:aws:sqs:eu-west-1:123456789012:q\"\n"),
            5,
            "notify.sns_topic_arn",
            "not an SNS topic ARN",
        ),
        (
            with("[notify]\nsns_topic_arn = \"godwit-events\"\n"),
            5,
            "notify.sns_topic_arn",
            "arn:aws:sns:",
        ),
        (
            with("[notify]\nevents_file = \"s3://b/events.jsonl\"\n"),
            5,
            "notify.events_file",
            "must be a local path",
        ),
        (
            with("[notify]\ncdc_lag_threshold = \"soon\"\n"),
            5,
            "notify.cdc_lag_threshold",
            "not a duration",
        ),
        (
            with("[notify]\ntopic = \"x\"\n"),
            5,
            "notify.topic",
            "unknown key `topic` in [notify]",
        ),
        (
            with("[limits]\nmemory = \"8MiB\"\n"),
            5,
            "limits.memory",
            "at least 16MiB",
        ),
        (
            with("[limits]\nmemory = \"a lot\"\n"),
            5,
            "limits.memory",
            "is not a size",
        ),
        (
            with("[limits]\nspill_dir = 5\n"),
            5,
            "limits.spill_dir",
            "expected a string",
        ),
        (
            with("[limits]\nspill_dir = \"s3://b/x\"\n"),
            5,
            "limits.spill_dir",
            "local path",
        ),
        (
            with("[errors]\ntable = \"stop\"\n"),
            5,
            "errors.table",
            "\"suspend-table\", \"stop-task\"",
        ),
        (
            with("[errors]\ndata = \"ignore\"\n"),
            5,
            "errors.data",
            "\"ignore-record\", \"log-error\", \"suspend-table\", \"stop-task\"",
        ),
        (
            with("[errors]\ndata_escalation_count = -1\n"),
            5,
            "errors.data_escalation_count",
            "got -1",
        ),
        (
            with("[errors]\nrecoverable_retries = -2\n"),
            5,
            "errors.recoverable_retries",
            "-1 retries forever",
        ),
        (
            with("[state]\nurl = \"none\"\n"),
            5,
            "state.url",
            "s3://bucket/prefix or file://./dir",
        ),
        (
            with("[state]\nurl = \"ftp://x\"\n"),
            5,
            "state.url",
            "not a supported location",
        ),
        (
            with("[state]\npath = \"x\"\n"),
            5,
            "state.path",
            "unknown key `path` in [state]",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Unknown keys, syntax errors

#[test]
fn unknown_keys_everywhere() {
    run_cases(&[
        (
            format!("name = \"shop\"\ncolour = \"blue\"\n{}", &HEAD[14..]),
            2,
            "colour",
            "unknown key `colour`",
        ),
        (
            with("[sourec]\nurl = \"x\"\n"),
            4,
            "sourec",
            "unknown section [sourec]",
        ),
        (
            with("[sourec]\nurl = \"x\"\n"),
            4,
            "sourec",
            "did you mean `source`?",
        ),
        (
            with("[target]\ncompresion = \"zstd\"\n"),
            5,
            "target.compresion",
            "did you mean `compression`?",
        ),
        (
            with("[tables.\"public.orders\"]\nwhere_clause = \"x\"\n"),
            5,
            "tables.\"public.orders\".where_clause",
            "unknown key `where_clause`",
        ),
        (
            cache_with(
                "table = \"public.users\"\ntype = \"hash\"\nkey = \"u:{id}\"\nexpiry = \"1h\"\n",
            ),
            10,
            "cache.projections[0].expiry",
            "unknown key `expiry` in [cache.projections[0]]",
        ),
    ]);
}

#[test]
fn syntax_errors_name_line_and_key() {
    run_cases(&[
        (
            with("[target]\nurl = \n"),
            5,
            "target.url",
            "TOML syntax error",
        ),
        (
            with("[target]\nurl = \"file://x\"\nurl = \"file://y\"\n"),
            6,
            "target.url",
            "duplicate key",
        ),
        (
            with("[load]\nparallel = 4\n[load]\nbatch_rows = 5\n"),
            6,
            "load",
            "duplicate key",
        ),
        (
            with("[target]\nformat = \"parquet\n"),
            5,
            "target.format",
            "TOML syntax error",
        ),
        (
            with("[[cache.projections]]\ntable = \"a\"\n[[cache.projections]]\nkey = user\n"),
            7,
            "cache.projections[1].key",
            "TOML syntax error",
        ),
    ]);
    let e = err(&with("[target]\nurl = \n"));
    assert!(
        e.hint.as_deref().unwrap_or("").contains("double quotes"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// ${VAR} interpolation

#[test]
fn missing_variable_names_variable_file_line_and_key() {
    let e = err("name = \"shop\"\n[source]\nurl = \"${SHOP_DATABASE_URL}\"\n");
    assert_eq!(e.file, FILE);
    assert_eq!(e.line, Some(3));
    assert_eq!(e.key.as_deref(), Some("source.url"));
    assert!(e.message.contains("`SHOP_DATABASE_URL` is not set"), "{e}");
    assert!(
        e.to_string().starts_with(
            "pipelines/shop.toml:3: source.url: environment variable `SHOP_DATABASE_URL` is not set"
        ),
        "{e}"
    );
    assert!(
        e.hint.as_deref().unwrap().contains("${SHOP_DATABASE_URL:-"),
        "{e}"
    );

    run_cases(&[
        (
            with("[target]\nurl = \"s3://${NO_BUCKET}/x\"\n"),
            5,
            "target.url",
            "environment variable `NO_BUCKET` is not set",
        ),
        (
            with("[tables]\ninclude = [\n  \"public.a\",\n  \"${NO_SCHEMA}.b\",\n]\n"),
            7,
            "tables.include[1]",
            "`NO_SCHEMA` is not set",
        ),
        (
            with("[target]\nurl = \"${BROKEN\"\n"),
            5,
            "target.url",
            "without a closing `}`",
        ),
        (
            with("[target]\nurl = \"${NOT VALID}\"\n"),
            5,
            "target.url",
            "invalid variable name",
        ),
    ]);
}

#[test]
fn variables_with_defaults_and_escapes() {
    let p = ok("name = \"shop\"\n[source]\nurl = \"${DB_URL}\"\n");
    assert_eq!(
        p.source.url.expose(),
        "postgres://app:pw@db.internal:5432/shop?sslmode=require"
    );
    let p = ok(&with(
        "[target]\nurl = \"${NO_TARGET:-file://./fallback}\"\n",
    ));
    assert_eq!(p.target.url, TargetUrl::File(PathBuf::from("./fallback")));
    // A default is literal text up to the first `}` and is not interpolated again.
    let e = err(&with("[target]\nurl = \"${EMPTY:-s3://${BUCKET}\"\n"));
    assert!(
        e.message
            .contains("\"${BUCKET\" is not a valid S3 bucket name"),
        "{e}"
    );
    let p = ok(&with("[target]\nurl = \"s3://${BUCKET}/${PREFIX:-raw}\"\n"));
    assert_eq!(
        p.target.url,
        TargetUrl::S3 {
            bucket: "shop-lake".into(),
            prefix: "raw".into()
        }
    );
    let p = ok(&with("[target]\ncsv_null_value = \"$${NULL}\"\n"));
    assert_eq!(p.target.csv_null_value, "${NULL}");
    let p = ok(&with(
        "[target]\ntimestamp_column = \"${EMPTY:-commit_ts}\"\n",
    ));
    assert_eq!(p.target.timestamp_column.as_deref(), Some("commit_ts"));
    let p = ok(&with("[tables]\ninclude = [\"${SCHEMA:-sales}.*\"]\n"));
    assert!(p.tables.selects("sales", "x"));
}

#[test]
fn quotes_in_a_variable_cannot_break_the_file() {
    let env = |n: &str| (n == "PW_URL").then(|| "postgres://app:p\"a'ss]=@db/shop".to_string());
    let p = parse_with_env(
        "name = \"shop\"\n[source]\nurl = \"${PW_URL}\"\n",
        FILE,
        &env,
    )
    .unwrap();
    assert_eq!(p.source.url.expose(), "postgres://app:p\"a'ss]=@db/shop");
}

// ---------------------------------------------------------------------------------------------
// Secrets never appear

#[test]
fn passwords_never_appear_in_errors() {
    let cases = [
        "postgres://app:Sup3rS3cret@db:notaport/shop",
        "postgres://app:Sup3rS3cret@db/shop?sslmode=bogus",
        "postgres://app:Sup3rS3cret@/shop",
        "mysql://app:Sup3rS3cret@db/shop",
        "postgres://app:Sup3r/S3cret@db/shop",
        "postgres://app:Sup3rS3cret%zz@db/shop",
        "Sup3rS3cret",
    ];
    for url in cases {
        let e = err(&format!("name = \"shop\"\n[source]\nurl = \"{url}\"\n"));
        let shown = format!("{e}\n{e:?}");
        assert!(
            !shown.contains("Sup3r"),
            "password leaked for {url}: {shown}"
        );
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("source.url"), "{e}");
    }
    // A redacted URL is still shown where it helps.
    let e = err("name = \"shop\"\n[source]\nurl = \"mysql://app:Sup3rS3cret@db/shop\"\n");
    assert!(e.message.contains("mysql://app:***@db/shop"), "{e}");

    // Through an environment variable.
    let e = err("name = \"shop\"\n[source]\nurl = \"${BAD_DB_URL}\"\n");
    assert!(!e.to_string().contains("Env-S3cret"), "{e}");
    assert!(e.message.contains("port"), "{e}");

    // Redis passwords too.
    let e = err(&with(
        "[cache]\nurl = \"redis://default:R3disPw@cache:xx\"\n",
    ));
    assert!(!format!("{e}{e:?}").contains("R3disPw"), "{e}");
    assert_eq!(e.key.as_deref(), Some("cache.url"));
}

#[test]
fn passwords_never_appear_in_debug_output() {
    let p = ok("name = \"shop\"\n[source]\nurl = \"${DB_URL}\"\n");
    let dbg = format!("{p:?}");
    assert!(!dbg.contains(":pw@"), "{dbg}");
    assert!(dbg.contains("postgres://app:***@db.internal:5432/shop?sslmode=require"));
    assert_eq!(
        p.source.url.to_string(),
        "postgres://app:***@db.internal:5432/shop?sslmode=require"
    );
}

// ---------------------------------------------------------------------------------------------
// Display format

#[test]
fn error_display_format() {
    let e = err(&with(
        "[target]\nformat = \"csv\"\ncompression = \"zstd\"\n",
    ));
    assert_eq!(
        e.to_string(),
        "pipelines/shop.toml:6: target.compression: compression \"zstd\" is not available for format \"csv\"\n  hint: csv files use compression \"gzip\" or \"none\""
    );
    let e = ConfigError {
        file: "f.toml".into(),
        line: None,
        key: None,
        message: "m".into(),
        hint: None,
    };
    assert_eq!(e.to_string(), "f.toml: m");
    let as_dyn: &dyn std::error::Error = &e;
    assert_eq!(as_dyn.to_string(), "f.toml: m");
}

// ---------------------------------------------------------------------------------------------
// load() from disk

#[test]
fn load_reads_a_file_and_reports_unreadable_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.toml");
    std::fs::write(&path, format!("{HEAD}[load]\nparallel = 2\n")).unwrap();
    let p = load(&path).unwrap();
    assert_eq!(p.load.parallel, 2);
    assert_eq!(p.file, path.display().to_string());

    std::fs::write(&path, format!("{HEAD}[load]\nparallel = 0\n")).unwrap();
    let e = load(&path).unwrap_err();
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(e.line, Some(5));

    let missing = dir.path().join("nope.toml");
    let e = load(&missing).unwrap_err();
    assert!(e.message.contains("cannot read"), "{e}");
    assert_eq!(e.file, missing.display().to_string());
}

#[test]
fn cache_defaults() {
    let p = ok(&cache_with(
        "table = \"public.users\"\ntype = \"hash\"\nkey = \"user:{id}\"\n",
    ));
    let c = p.cache.as_ref().unwrap();
    assert!(!c.cluster);
    assert_eq!(c.tls_ca, None);
    assert_eq!(c.key_prefix, "");
    assert_eq!(c.wait_replicas, 0);
}

//! From the TOML tree to a validated [`Pipeline`]: every section, key, default and cross-field check of
//! SPEC §3.

use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

use super::error::ConfigError;
use super::model::*;
use super::pattern::TablePattern;
use super::reader::{Ctx, Item, Section, join, suggest};
use super::template::{parse_template, template_columns};
use super::url::{
    Location, SecretUrl, parse_location, redact_url, validate_postgres, validate_redis,
};

type R<T> = Result<T, ConfigError>;

const TOP_KEYS: &[&str] = &[
    "name", "mode", "source", "tables", "load", "target", "cache", "notify", "metrics", "limits",
    "errors", "state",
];
const SOURCE_KEYS: &[&str] = &["url", "slot", "publication"];
const TABLE_KEYS: &[&str] = &["where", "exclude_columns", "partitions", "cdc", "numeric"];
const LOAD_KEYS: &[&str] = &["parallel", "batch_rows", "batch_bytes"];
const TARGET_KEYS: &[&str] = &[
    "url",
    "endpoint",
    "sse",
    "kms_key_id",
    "expected_bucket_owner",
    "format",
    "compression",
    "row_group_bytes",
    "csv_delimiter",
    "csv_null_value",
    "csv_header",
    "max_file_size",
    "cdc_max_batch_interval",
    "cdc_min_file_size",
    "cdc_inserts_only",
    "date_partitioning",
    "timestamp_column",
    "include_op_for_full_load",
];
const CACHE_KEYS: &[&str] = &[
    "url",
    "cluster",
    "tls_ca",
    "key_prefix",
    "wait_replicas",
    "projections",
];
const PROJECTION_KEYS: &[&str] = &[
    "table",
    "type",
    "key",
    "fields",
    "ttl",
    "ttl_column",
    "member",
    "score",
    "longitude",
    "latitude",
    "value",
    "maxlen",
    "channel",
];
const NOTIFY_KEYS: &[&str] = &["sns_topic_arn", "events_file", "cdc_lag_threshold"];
const METRICS_KEYS: &[&str] = &["listen", "health_threshold"];
const LIMITS_KEYS: &[&str] = &["memory", "spill_dir"];
const ERRORS_KEYS: &[&str] = &[
    "table",
    "data",
    "data_escalation_count",
    "recoverable_retries",
];
const STATE_KEYS: &[&str] = &["url"];

const MIB: u64 = 1 << 20;

/// Builds the pipeline from the parsed document.
pub(crate) fn build(ctx: &mut Ctx<'_>, root: &DeTable<'_>) -> R<Pipeline> {
    let top = Section::new(ctx, String::new(), None, root);
    top.check_keys(ctx, TOP_KEYS)?;

    let name = match top.get("name") {
        Some(it) => {
            let name = it.string(ctx)?;
            check_name(&name).map_err(|m| {
                it.err(ctx, m).with_hint(
                    "use 1 to 56 lowercase letters, digits, `_` or `-`, e.g. name = \"shop\"",
                )
            })?;
            name
        }
        None => {
            return Err(top
                .missing(ctx, "name", "the pipeline's name")
                .with_hint("add a first line like name = \"shop\""));
        }
    };

    let mode = match top.get("mode") {
        Some(it) => it.one_of(ctx, Mode::parse, Mode::VALUES)?,
        None => Mode::FullLoad,
    };

    let source = match top.section(ctx, "source")? {
        Some(sec) => source(ctx, &sec, &name)?,
        None => {
            return Err(top
                .missing(ctx, "source", "the PostgreSQL source")
                .with_key("source.url")
                .with_hint("add a [source] section with url = \"${DATABASE_URL}\""));
        }
    };

    let tables = match top.section(ctx, "tables")? {
        Some(sec) => tables(ctx, &sec)?,
        None => Tables {
            include: vec![TablePattern::parse("public.*").expect("valid default pattern")],
            exclude: Vec::new(),
            settings: Vec::new(),
        },
    };

    let load_sec = top.section(ctx, "load")?;
    let load = match &load_sec {
        Some(sec) => load(ctx, sec)?,
        None => Load::default(),
    };

    let target = {
        let sec = top.section(ctx, "target")?;
        target(ctx, sec.as_ref(), &name)
    }?;

    let cache = match top.section(ctx, "cache")? {
        Some(sec) => Some(cache(ctx, &sec, &tables)?),
        None => None,
    };

    let limits = {
        let sec = top.section(ctx, "limits")?;
        limits(ctx, sec.as_ref())
    }?;
    let errors = {
        let sec = top.section(ctx, "errors")?;
        errors(ctx, sec.as_ref())
    }?;
    let state = {
        let sec = top.section(ctx, "state")?;
        state(ctx, sec.as_ref(), &target.url, &name)
    }?;
    let notify = {
        let sec = top.section(ctx, "notify")?;
        notify(ctx, sec.as_ref(), &state.url, &name)
    }?;

    let metrics = {
        let sec = top.section(ctx, "metrics")?;
        metrics(ctx, sec.as_ref())
    }?;

    // Cross-section checks.
    if target.url == TargetUrl::None && cache.is_none() {
        let line = ctx.spans.line("target.url");
        return Err(ctx
            .err(
                line,
                "target.url",
                "target url = \"none\" and no [cache]: the pipeline would write nothing",
            )
            .with_hint("set target url to s3://… or file://…, or add a [cache] section"));
    }
    if load.batch_bytes > limits.memory {
        let key = "load.batch_bytes";
        return Err(ctx
            .err(
                ctx.spans.line(key),
                key,
                format!(
                    "{} bytes is more than limits.memory ({} bytes): one batch would not fit the memory budget",
                    load.batch_bytes, limits.memory
                ),
            )
            .with_hint("lower load.batch_bytes or raise limits.memory"));
    }

    Ok(Pipeline {
        file: ctx.file.to_string(),
        name,
        mode,
        source,
        tables,
        load,
        target,
        cache,
        notify,
        metrics,
        limits,
        errors,
        state,
        spans: std::mem::take(&mut ctx.spans),
    })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 56 {
        return Err(format!("\"{name}\" is longer than 56 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(format!(
            "\"{name}\" may only contain lowercase letters, digits, `_` and `-`"
        ));
    }
    Ok(())
}

/// Slot names: `[a-z0-9_]{1,63}`. Publication names additionally must not start with a digit, so they
/// can be written unquoted in SQL.
fn check_pg_name(s: &str, what: &str, publication: bool) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{what} \"{s}\" must be 1 to 63 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{what} \"{s}\" may only contain lowercase letters, digits and `_`"
        ));
    }
    if publication && s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{what} \"{s}\" must not start with a digit"));
    }
    Ok(())
}

fn source(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, name: &str) -> R<Source> {
    sec.check_keys(ctx, SOURCE_KEYS)?;
    let url = match sec.get("url") {
        Some(it) => {
            let url = it.string(ctx)?;
            validate_postgres(&url).map_err(|(m, h)| it.err(ctx, m).with_hint_opt(h))?;
            SecretUrl::new(url)
        }
        None => {
            return Err(sec.missing(ctx, "url", "the PostgreSQL URL").with_hint(
                "add url = \"${DATABASE_URL}\" (postgres://user:password@host:5432/db)",
            ));
        }
    };
    let default = Pipeline::default_object_name(name);
    let pg_name = |key: &str, what: &str, publication: bool| -> R<String> {
        match sec.get(key) {
            Some(it) => {
                let s = it.string(ctx)?;
                check_pg_name(&s, what, publication).map_err(|m| {
                    it.err(ctx, m)
                        .with_hint(format!("leave it out to use \"{default}\""))
                })?;
                Ok(s)
            }
            None => Ok(default.clone()),
        }
    };
    let slot = pg_name("slot", "slot name", false)?;
    let publication = pg_name("publication", "publication name", true)?;
    Ok(Source {
        url,
        slot,
        publication,
    })
}

fn patterns(ctx: &mut Ctx<'_>, it: &Item<'_, '_>) -> R<Vec<TablePattern>> {
    it.strings(ctx)?
        .into_iter()
        .map(|(s, el)| {
            TablePattern::parse(&s).map_err(|m| {
                el.err(ctx, m).with_hint(
                    "patterns are \"schema.table\" with * ? % wildcards; quote or \\-escape dots inside names",
                )
            })
        })
        .collect()
}

fn tables(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> R<Tables> {
    let mut include = None;
    let mut exclude = Vec::new();
    let mut settings = Vec::new();
    for (key, it) in sec.entries() {
        match key {
            "include" => {
                let list = patterns(ctx, &it)?;
                if list.is_empty() {
                    return Err(it
                        .err(ctx, "is empty: no table would be selected")
                        .with_hint("leave it out for [\"public.*\"], or list patterns like \"public.orders\""));
                }
                include = Some(list);
            }
            "exclude" => exclude = patterns(ctx, &it)?,
            _ if it.is_table() => settings.push(table_entry(ctx, key, &it)?),
            _ => {
                return Err(it
                    .err(ctx, format!("unknown key `{key}` in [tables]"))
                    .with_hint(format!(
                        "{} (per-table settings are sections like [tables.\"public.orders\"])",
                        suggest(key, &["include", "exclude"])
                    )));
            }
        }
    }
    Ok(Tables {
        include: include.unwrap_or_else(|| {
            vec![TablePattern::parse("public.*").expect("valid default pattern")]
        }),
        exclude,
        settings,
    })
}

fn table_entry(
    ctx: &mut Ctx<'_>,
    key: &str,
    it: &Item<'_, '_>,
) -> R<(TablePattern, TableSettings)> {
    let table = it.table(ctx)?;
    let pattern = match TablePattern::parse(key) {
        Ok(p) => p,
        Err(m) => {
            // `[tables.public.orders]` is nested tables in TOML: point at the quoting.
            let nested = table.iter().find_map(|(k, v)| match v.get_ref() {
                DeValue::Table(_) => Some(k.get_ref().to_string()),
                _ => None,
            });
            return Err(match nested {
                Some(sub) => it
                    .err(
                        ctx,
                        format!(
                            "[tables.{key}.{sub}] is read by TOML as nested tables, not as the table \"{key}.{sub}\""
                        ),
                    )
                    .with_hint(format!("quote the name: [tables.\"{key}.{sub}\"]")),
                None => it.err(ctx, m).with_hint(
                    "per-table sections are named by a quoted pattern: [tables.\"public.orders\"]",
                ),
            });
        }
    };
    let sec = Section::new(ctx, it.path.clone(), Some(it.line), table);
    sec.check_keys(ctx, TABLE_KEYS)?;
    let mut s = TableSettings::default();
    if let Some(w) = sec.get("where") {
        let clause = w.string(ctx)?;
        if clause.trim().is_empty() {
            return Err(w
                .err(ctx, "is empty")
                .with_hint("leave `where` out to load every row"));
        }
        let filter = crate::pg::filter::Filter::parse(&clause).map_err(|e| {
            w.err(ctx, format!("the filter `{}` {e}", clause.trim()))
                .with_hint(e.hint())
        })?;
        s.where_clause = Some(filter);
    }
    if let Some(ec) = sec.get("exclude_columns") {
        let cols = ec.strings(ctx)?;
        let mut seen: Vec<String> = Vec::new();
        for (c, el) in cols {
            if c.is_empty() {
                return Err(el.err(ctx, "a column name is empty"));
            }
            if seen.contains(&c) {
                return Err(el.err(ctx, format!("column \"{c}\" is listed twice")));
            }
            seen.push(c);
        }
        s.exclude_columns = seen;
    }
    if let Some(p) = sec.get("partitions") {
        s.partitions = Some(p.int_in(ctx, 1, 1024)? as u32);
    }
    if let Some(c) = sec.get("cdc") {
        s.cdc = c.one_of(ctx, CdcMode::parse, CdcMode::VALUES)?;
    }
    if let Some(n) = sec.get("numeric") {
        s.numeric = n.one_of(ctx, NumericMode::parse, NumericMode::VALUES)?;
    }
    Ok((pattern, s))
}

fn load(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> R<Load> {
    sec.check_keys(ctx, LOAD_KEYS)?;
    let mut l = Load::default();
    if let Some(it) = sec.get("parallel") {
        l.parallel = it.int_in(ctx, 1, 256)? as usize;
    }
    if let Some(it) = sec.get("batch_rows") {
        l.batch_rows = it.int_in(ctx, 1, 10_000_000)? as usize;
    }
    if let Some(it) = sec.get("batch_bytes") {
        l.batch_bytes = it.size(ctx, 1, "1 byte")?;
    }
    Ok(l)
}

fn location_to_target(loc: Location) -> TargetUrl {
    match loc {
        Location::S3 { bucket, prefix } => TargetUrl::S3 { bucket, prefix },
        Location::File(p) => TargetUrl::File(p),
        Location::None => TargetUrl::None,
    }
}

fn default_out_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("./godwit-out/{name}"))
}

fn target(ctx: &mut Ctx<'_>, sec: Option<&Section<'_, '_>>, name: &str) -> R<Target> {
    let mut t = Target {
        url: TargetUrl::File(default_out_dir(name)),
        endpoint: None,
        sse: Sse::Aes256,
        kms_key_id: None,
        expected_bucket_owner: None,
        format: Format::Parquet,
        compression: Compression::Zstd,
        row_group_bytes: 128 * MIB,
        csv_delimiter: ',',
        csv_null_value: String::new(),
        csv_header: false,
        max_file_size: 512 * MIB,
        cdc_max_batch_interval: std::time::Duration::from_secs(60),
        cdc_min_file_size: 32_000_000,
        cdc_inserts_only: false,
        date_partitioning: DatePartitioning::None,
        timestamp_column: None,
        include_op_for_full_load: false,
    };
    let Some(sec) = sec else {
        return Ok(t);
    };
    sec.check_keys(ctx, TARGET_KEYS)?;
    if let Some(it) = sec.get("url") {
        let s = it.string(ctx)?;
        if !s.is_empty() {
            t.url = parse_location(&s, true)
                .map(location_to_target)
                .map_err(|(m, h)| it.err(ctx, m).with_hint_opt(h))?;
        }
    }
    if let Some(it) = sec.get("endpoint")
        && let Some(e) = it.opt_string(ctx)?
    {
        let host = e
            .strip_prefix("https://")
            .or_else(|| e.strip_prefix("http://"));
        match host {
            Some(h) if !h.is_empty() && !h.starts_with('/') => {}
            _ => {
                return Err(it
                    .err(ctx, format!("\"{}\" is not an http(s) URL", redact_url(&e)))
                    .with_hint(
                        "write it like http://localhost:9000 or https://s3.eu-west-1.amazonaws.com",
                    ));
            }
        }
        t.endpoint = Some(e);
    }
    let sse_item = sec.get("sse");
    if let Some(it) = &sse_item {
        t.sse = it.one_of(ctx, Sse::parse, Sse::VALUES)?;
    }
    let kms_item = sec.get("kms_key_id");
    if let Some(it) = &kms_item
        && let Some(k) = it.opt_string(ctx)?
    {
        if k.contains(char::is_whitespace) {
            return Err(it.err(ctx, "a KMS key id cannot contain whitespace"));
        }
        t.kms_key_id = Some(k);
    }
    match (t.sse, &t.kms_key_id) {
        (Sse::Kms, None) => {
            let it = sse_item.as_ref().expect("sse = aws:kms was written");
            return Err(it.err(ctx, "sse = \"aws:kms\" needs kms_key_id").with_hint(
                "add kms_key_id = \"arn:aws:kms:…\" (a key id, key ARN or alias) to [target]",
            ));
        }
        (sse, Some(_)) if sse != Sse::Kms => {
            let it = kms_item.as_ref().expect("kms_key_id was written");
            return Err(it
                .err(ctx, format!("kms_key_id is set but sse is \"{sse}\""))
                .with_hint("set sse = \"aws:kms\", or remove kms_key_id"));
        }
        _ => {}
    }
    if let Some(it) = sec.get("expected_bucket_owner")
        && let Some(o) = it.opt_string(ctx)?
    {
        if o.len() != 12 || !o.bytes().all(|b| b.is_ascii_digit()) {
            return Err(it
                .err(ctx, format!("\"{o}\" is not an AWS account id"))
                .with_hint("an account id is 12 digits, e.g. \"123456789012\""));
        }
        t.expected_bucket_owner = Some(o);
    }
    if let Some(it) = sec.get("format") {
        t.format = it.one_of(ctx, Format::parse, Format::VALUES)?;
    }
    t.compression = match t.format {
        Format::Parquet => Compression::Zstd,
        Format::Csv => Compression::None,
    };
    if let Some(it) = sec.get("compression") {
        let c = it.one_of(ctx, Compression::parse, Compression::VALUES)?;
        if t.format == Format::Csv && !matches!(c, Compression::Gzip | Compression::None) {
            return Err(it
                .err(
                    ctx,
                    format!("compression \"{c}\" is not available for format \"csv\""),
                )
                .with_hint("csv files use compression \"gzip\" or \"none\""));
        }
        t.compression = c;
    }
    if let Some(it) = sec.get("row_group_bytes") {
        t.row_group_bytes = it.size(ctx, MIB, "1MiB")?;
    }
    if let Some(it) = sec.get("csv_delimiter") {
        let d = it.string(ctx)?;
        let mut chars = d.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if !matches!(c, '"' | '\n' | '\r') => t.csv_delimiter = c,
            (Some(c), None) => {
                return Err(it
                    .err(ctx, format!("{c:?} cannot be a csv delimiter"))
                    .with_hint("use a character such as \",\", \"|\", \";\" or \"\\t\""));
            }
            _ => {
                return Err(it
                    .err(ctx, format!("must be exactly one character, got {d:?}"))
                    .with_hint("use a character such as \",\", \"|\", \";\" or \"\\t\""));
            }
        }
    }
    if let Some(it) = sec.get("csv_null_value") {
        let v = it.string(ctx)?;
        if v.contains(['\n', '\r', '"']) || v.contains(t.csv_delimiter) {
            return Err(it
                .err(
                    ctx,
                    format!("{v:?} contains a quote, a line break or the delimiter"),
                )
                .with_hint("use a marker such as \"\" (default) or \"NULL\""));
        }
        t.csv_null_value = v;
    }
    if let Some(it) = sec.get("csv_header") {
        t.csv_header = it.bool(ctx)?;
    }
    if let Some(it) = sec.get("max_file_size") {
        t.max_file_size = it.size(ctx, 1, "1 byte")?;
    }
    if let Some(it) = sec.get("cdc_max_batch_interval") {
        t.cdc_max_batch_interval = it.duration(ctx)?;
    }
    if let Some(it) = sec.get("cdc_min_file_size") {
        t.cdc_min_file_size = it.size(ctx, 1, "1 byte")?;
    }
    if let Some(it) = sec.get("cdc_inserts_only") {
        t.cdc_inserts_only = it.bool(ctx)?;
    }
    if let Some(it) = sec.get("date_partitioning") {
        t.date_partitioning = it.one_of(ctx, DatePartitioning::parse, DatePartitioning::VALUES)?;
    }
    if let Some(it) = sec.get("timestamp_column")
        && let Some(c) = it.opt_string(ctx)?
    {
        const RESERVED: &[&str] = &["Op", "_lsn", "_seq", "_unchanged"];
        if RESERVED.contains(&c.as_str()) {
            return Err(it
                .err(ctx, format!("\"{c}\" is a column godwit writes itself"))
                .with_hint("pick another name, e.g. \"commit_ts\""));
        }
        t.timestamp_column = Some(c);
    }
    if let Some(it) = sec.get("include_op_for_full_load") {
        t.include_op_for_full_load = it.bool(ctx)?;
    }
    Ok(t)
}

fn cache(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, tables: &Tables) -> R<Cache> {
    sec.check_keys(ctx, CACHE_KEYS)?;
    let url_item = sec.get("url");
    let (url, info) = match &url_item {
        Some(it) => {
            let u = it.string(ctx)?;
            let info = validate_redis(&u).map_err(|(m, h)| it.err(ctx, m).with_hint_opt(h))?;
            (SecretUrl::new(u), info)
        }
        None => {
            return Err(sec
                .missing(ctx, "url", "the Redis URL")
                .with_hint("add url = \"redis://127.0.0.1:6379\" (rediss:// for TLS)"));
        }
    };
    let mut cluster = false;
    if let Some(it) = sec.get("cluster") {
        cluster = it.bool(ctx)?;
        if cluster && info.db != 0 {
            let u = url_item.as_ref().expect("url was written");
            return Err(u
                .err(
                    ctx,
                    format!(
                        "Redis Cluster has only database 0, the URL selects /{}",
                        info.db
                    ),
                )
                .with_hint("remove the /db number from the URL, or set cluster = false"));
        }
    }
    let mut tls_ca = None;
    if let Some(it) = sec.get("tls_ca")
        && let Some(p) = it.opt_string(ctx)?
    {
        if !info.tls {
            return Err(it
                .err(ctx, "tls_ca is set but the URL is redis:// (no TLS)")
                .with_hint("use a rediss:// URL for TLS, or remove tls_ca"));
        }
        tls_ca = Some(PathBuf::from(p));
    }
    let mut key_prefix = String::new();
    if let Some(it) = sec.get("key_prefix") {
        key_prefix = it.string(ctx)?;
    }
    let mut wait_replicas = 0;
    if let Some(it) = sec.get("wait_replicas") {
        wait_replicas = it.int_in(ctx, 0, 100)? as u32;
    }
    let mut projections = Vec::new();
    match sec.get("projections") {
        Some(it) => {
            let is_aot = matches!(it.val.get_ref(), DeValue::Array(_));
            if !is_aot {
                return Err(it.err(ctx, "must be an array of tables").with_hint(
                    "write each projection as [[cache.projections]] (double brackets)",
                ));
            }
            for el in it.array(ctx)? {
                projections.push(projection(ctx, &el, tables)?);
            }
        }
        None => {
            return Err(ctx
                .err(sec.line, "cache.projections", "[cache] has no projections")
                .with_hint("add at least one [[cache.projections]] section, or remove [cache]"));
        }
    }
    Ok(Cache {
        url,
        cluster,
        tls_ca,
        key_prefix,
        wait_replicas,
        projections,
    })
}

/// Which projection types use which optional keys.
fn key_applies(kind: ProjectionKind, key: &str) -> bool {
    use ProjectionKind as K;
    match key {
        "fields" => matches!(kind, K::Hash | K::Json | K::Stream | K::Publish),
        "ttl" | "ttl_column" => matches!(kind, K::Hash | K::Json | K::String),
        "member" => matches!(kind, K::Zset | K::Set | K::Geo),
        "score" => kind == K::Zset,
        "longitude" | "latitude" => kind == K::Geo,
        "value" => kind == K::String,
        "maxlen" => kind == K::Stream,
        "channel" => kind == K::Publish,
        _ => true,
    }
}

fn users_of(key: &str) -> String {
    ProjectionKind::VALUES
        .iter()
        .filter(|k| ProjectionKind::parse(k).is_some_and(|kind| key_applies(kind, key)))
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

fn projection(ctx: &mut Ctx<'_>, el: &Item<'_, '_>, tables: &Tables) -> R<Projection> {
    let table = el.table(ctx)?;
    let sec = Section::new(ctx, el.path.clone(), Some(el.line), table);
    sec.check_keys(ctx, PROJECTION_KEYS)?;

    let table_item = sec
        .get("table")
        .ok_or_else(|| sec.missing(ctx, "table", "the source table, e.g. \"public.users\""))?;
    let t = table_item.string(ctx)?;
    let pattern = TablePattern::parse(&t).map_err(|m| table_item.err(ctx, m))?;
    let Some((schema, tname)) = pattern.exact_name() else {
        return Err(table_item
            .err(
                ctx,
                format!("\"{t}\" has wildcards; a projection names exactly one table"),
            )
            .with_hint("write one projection per table, e.g. table = \"public.users\""));
    };
    if !tables.selects(&schema, &tname) {
        return Err(table_item
            .err(
                ctx,
                format!("table \"{t}\" is not selected by [tables] include/exclude"),
            )
            .with_hint("add it to tables.include (and keep it out of tables.exclude)"));
    }

    let kind = match sec.get("type") {
        Some(it) => it.one_of(ctx, ProjectionKind::parse, ProjectionKind::VALUES)?,
        None => {
            return Err(sec
                .missing(ctx, "type", "the Redis structure")
                .with_hint(format!(
                    "add type = one of: {}",
                    ProjectionKind::VALUES.join(", ")
                )));
        }
    };
    for (k, it) in sec.entries() {
        if !key_applies(kind, k) {
            return Err(it
                .err(ctx, format!("`{k}` is not used by type \"{kind}\""))
                .with_hint(format!("`{k}` belongs to types: {}", users_of(k))));
        }
    }

    let key_item = sec.get("key").ok_or_else(|| {
        sec.missing(ctx, "key", "the Redis key template")
            .with_hint("add key = \"user:{id}\"")
    })?;
    let key = key_item.string(ctx)?;
    let parts = parse_template(&key).map_err(|m| key_item.err(ctx, m))?;
    if key.is_empty() {
        return Err(key_item
            .err(ctx, "is empty")
            .with_hint("write a key template like \"user:{id}\""));
    }
    use ProjectionKind as K;
    if matches!(kind, K::Hash | K::Json | K::String | K::Invalidate)
        && template_columns(&parts).next().is_none()
    {
        return Err(key_item
            .err(
                ctx,
                format!(
                    "\"{key}\" has no {{column}} placeholder: every row would write the same key"
                ),
            )
            .with_hint(
                "add the row's key column, e.g. \"user:{id}\" (write {{ }} for literal braces)",
            ));
    }

    let mut p = Projection {
        table: pattern,
        kind,
        key,
        fields: None,
        ttl: None,
        ttl_column: None,
        member: None,
        score: None,
        longitude: None,
        latitude: None,
        value: None,
        maxlen: None,
        channel: None,
    };

    let column = |ctx: &Ctx<'_>, name: &str| -> R<Option<String>> {
        match sec.get(name) {
            Some(it) => {
                let c = it.string(ctx)?;
                if c.is_empty() {
                    return Err(it.err(ctx, "the column name is empty"));
                }
                Ok(Some(c))
            }
            None => Ok(None),
        }
    };
    let template = |ctx: &Ctx<'_>, name: &str| -> R<Option<String>> {
        match sec.get(name) {
            Some(it) => {
                let s = it.string(ctx)?;
                if s.is_empty() {
                    return Err(it.err(ctx, "is empty"));
                }
                parse_template(&s).map_err(|m| it.err(ctx, m))?;
                Ok(Some(s))
            }
            None => Ok(None),
        }
    };

    if let Some(it) = sec.get("fields") {
        let list = it.strings(ctx)?;
        if list.is_empty() {
            return Err(it
                .err(ctx, "is empty")
                .with_hint("leave `fields` out to write all columns"));
        }
        let mut fields: Vec<String> = Vec::new();
        for (f, fe) in list {
            if f.is_empty() {
                return Err(fe.err(ctx, "a column name is empty"));
            }
            if fields.contains(&f) {
                return Err(fe.err(ctx, format!("column \"{f}\" is listed twice")));
            }
            fields.push(f);
        }
        p.fields = Some(fields);
    }
    if let Some(it) = sec.get("ttl") {
        p.ttl = Some(it.duration(ctx)?);
    }
    p.ttl_column = column(ctx, "ttl_column")?;
    if p.ttl.is_some() && p.ttl_column.is_some() {
        let it = sec.get("ttl_column").expect("ttl_column was written");
        return Err(it
            .err(ctx, "ttl and ttl_column cannot both be set")
            .with_hint("keep ttl for a fixed lifetime, or ttl_column for a per-row expiry time"));
    }
    p.member = template(ctx, "member")?;
    p.score = column(ctx, "score")?;
    p.longitude = column(ctx, "longitude")?;
    p.latitude = column(ctx, "latitude")?;
    p.value = column(ctx, "value")?;
    p.channel = template(ctx, "channel")?;
    if let Some(it) = sec.get("maxlen") {
        p.maxlen = Some(it.int_in(ctx, 1, i64::MAX)? as u64);
    }

    let required: &[(&str, bool, &str)] = match kind {
        K::Zset => &[
            ("member", p.member.is_some(), "member = \"{id}\""),
            (
                "score",
                p.score.is_some(),
                "score = \"score\" (a numeric column)",
            ),
        ],
        K::Set => &[("member", p.member.is_some(), "member = \"{id}\"")],
        K::Geo => &[
            ("member", p.member.is_some(), "member = \"{id}\""),
            ("longitude", p.longitude.is_some(), "longitude = \"lon\""),
            ("latitude", p.latitude.is_some(), "latitude = \"lat\""),
        ],
        K::String => &[(
            "value",
            p.value.is_some(),
            "value = \"data\" (the column stored)",
        )],
        K::Publish => &[(
            "channel",
            p.channel.is_some(),
            "channel = \"changes:users\"",
        )],
        _ => &[],
    };
    for (k, present, example) in required {
        if !present {
            return Err(ctx
                .err(
                    sec.line,
                    &join(&sec.path, k),
                    format!("type \"{kind}\" needs `{k}`"),
                )
                .with_hint(format!("add {example}")));
        }
    }
    Ok(p)
}

fn check_local_path(it: &Item<'_, '_>, ctx: &Ctx<'_>, p: &str) -> R<()> {
    if p.contains("://") {
        return Err(it
            .err(ctx, format!("\"{p}\" is a URL; this must be a local path"))
            .with_hint("write a path such as ./godwit-out/events.jsonl or /var/tmp/godwit"));
    }
    Ok(())
}

fn check_sns_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && (parts[1] == "aws" || parts[1].starts_with("aws-"))
        && parts[2] == "sns"
        && !parts[3].is_empty()
        && parts[3]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && {
            let topic = parts[5].strip_suffix(".fifo").unwrap_or(parts[5]);
            (1..=256).contains(&topic.len())
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
    if ok {
        Ok(())
    } else {
        Err(format!("\"{arn}\" is not an SNS topic ARN"))
    }
}

/// The events file when `[notify] events_file` is not set: always a local file, beside a
/// local state (`<state dir>/events.jsonl`), else in `./godwit-out/<name>/`.
fn default_events_file(state: &StateUrl, name: &str) -> PathBuf {
    match state {
        StateUrl::File(dir) => dir.join("events.jsonl"),
        StateUrl::S3 { .. } => default_out_dir(name).join("events.jsonl"),
    }
}

fn notify(
    ctx: &mut Ctx<'_>,
    sec: Option<&Section<'_, '_>>,
    state: &StateUrl,
    name: &str,
) -> R<Notify> {
    let mut n = Notify {
        sns_topic_arn: None,
        events_file: default_events_file(state, name),
        cdc_lag_threshold: std::time::Duration::from_secs(300),
    };
    let Some(sec) = sec else {
        return Ok(n);
    };
    sec.check_keys(ctx, NOTIFY_KEYS)?;
    if let Some(it) = sec.get("sns_topic_arn")
        && let Some(arn) = it.opt_string(ctx)?
    {
        check_sns_arn(&arn).map_err(|m| {
            it.err(ctx, m).with_hint(
                "write it like arn:aws:sns:eu-west-1:123456789012:godwit-events, or leave it empty",
            )
        })?;
        n.sns_topic_arn = Some(arn);
    }
    if let Some(it) = sec.get("events_file")
        && let Some(p) = it.opt_string(ctx)?
    {
        check_local_path(&it, ctx, &p)?;
        n.events_file = PathBuf::from(p);
    }
    if let Some(it) = sec.get("cdc_lag_threshold") {
        n.cdc_lag_threshold = it.duration(ctx)?;
    }
    Ok(n)
}

fn metrics(ctx: &mut Ctx<'_>, sec: Option<&Section<'_, '_>>) -> R<Metrics> {
    let mut m = Metrics::default();
    let Some(sec) = sec else {
        return Ok(m);
    };
    sec.check_keys(ctx, METRICS_KEYS)?;
    if let Some(it) = sec.get("listen")
        && let Some(addr) = it.opt_string(ctx)?
    {
        let parsed = addr.parse::<std::net::SocketAddr>().map_err(|_| {
            it.err(ctx, format!("\"{addr}\" is not an address and port")).with_hint(
                "write an IP address and a port, e.g. \"127.0.0.1:9187\" (this machine only) or \"0.0.0.0:9187\" (every interface), or leave it empty for no metrics",
            )
        })?;
        m.listen = Some(parsed);
    }
    if let Some(it) = sec.get("health_threshold") {
        m.health_threshold = it.duration(ctx)?;
    }
    Ok(m)
}

fn limits(ctx: &mut Ctx<'_>, sec: Option<&Section<'_, '_>>) -> R<Limits> {
    let default_spill = || {
        let tmp = ctx.env("TMPDIR").filter(|t| !t.is_empty());
        PathBuf::from(tmp.unwrap_or_else(|| "/tmp".to_string())).join("godwit")
    };
    let mut l = Limits {
        memory: 1 << 30,
        spill_dir: default_spill(),
    };
    let Some(sec) = sec else {
        return Ok(l);
    };
    sec.check_keys(ctx, LIMITS_KEYS)?;
    if let Some(it) = sec.get("memory") {
        l.memory = it.size(ctx, 16 * MIB, "16MiB")?;
    }
    if let Some(it) = sec.get("spill_dir")
        && let Some(p) = it.opt_string(ctx)?
    {
        check_local_path(&it, ctx, &p)?;
        l.spill_dir = PathBuf::from(p);
    }
    Ok(l)
}

fn errors(ctx: &mut Ctx<'_>, sec: Option<&Section<'_, '_>>) -> R<ErrorPolicy> {
    let mut e = ErrorPolicy::default();
    let Some(sec) = sec else {
        return Ok(e);
    };
    sec.check_keys(ctx, ERRORS_KEYS)?;
    if let Some(it) = sec.get("table") {
        e.table = it.one_of(ctx, TableErrorPolicy::parse, TableErrorPolicy::VALUES)?;
    }
    if let Some(it) = sec.get("data") {
        e.data = it.one_of(ctx, DataErrorPolicy::parse, DataErrorPolicy::VALUES)?;
    }
    if let Some(it) = sec.get("data_escalation_count") {
        e.data_escalation_count = it.int_in(ctx, 0, i64::MAX)? as u64;
    }
    if let Some(it) = sec.get("recoverable_retries") {
        e.recoverable_retries = it.int_in(ctx, -1, i64::MAX).map_err(|err| {
            err.with_hint("-1 retries forever, 0 never retries, n retries n times")
        })?;
    }
    Ok(e)
}

fn state(
    ctx: &mut Ctx<'_>,
    sec: Option<&Section<'_, '_>>,
    target: &TargetUrl,
    name: &str,
) -> R<StateConfig> {
    if let Some(sec) = sec {
        sec.check_keys(ctx, STATE_KEYS)?;
        if let Some(it) = sec.get("url") {
            let s = it.string(ctx)?;
            if !s.is_empty() {
                let url = match parse_location(&s, false) {
                    Ok(Location::S3 { bucket, prefix }) => StateUrl::S3 { bucket, prefix },
                    Ok(Location::File(p)) => StateUrl::File(p),
                    Ok(Location::None) => unreachable!("none is not allowed here"),
                    Err((m, h)) => return Err(it.err(ctx, m).with_hint_opt(h)),
                };
                return Ok(StateConfig { url });
            }
        }
    }
    let url = match target {
        TargetUrl::S3 { bucket, prefix } => StateUrl::S3 {
            bucket: bucket.clone(),
            prefix: if prefix.is_empty() {
                "_godwit/state".to_string()
            } else {
                format!("{prefix}/_godwit/state")
            },
        },
        TargetUrl::File(p) => StateUrl::File(p.join("_godwit").join("state")),
        TargetUrl::None => StateUrl::File(default_out_dir(name).join("_godwit").join("state")),
    };
    Ok(StateConfig { url })
}

//! `godwit check PIPELINE`: validates the file and every prerequisite without moving data,
//! as a report (or `--json`). Exit 2 when something would stop a run, 0 otherwise.

use serde::Serialize;

use tokio_postgres::Client;

use crate::config::{CdcMode, Pipeline};
use crate::error::Error;
use crate::pg::replication::{identity, row_filter, slot};
use crate::task::plan::TablePlan;
use crate::task::{discover, state_store, target_store};

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct ColumnReport {
    name: String,
    pg_type: String,
    arrow_type: String,
}

#[derive(Debug, Serialize)]
struct TableReport {
    table: String,
    /// `reltuples`; null while the table was never analysed (the count is unknown).
    estimated_rows: Option<u64>,
    partitioned: bool,
    key: Vec<String>,
    select_privilege: bool,
    /// The table's replica identity (and its partitions').
    replica_identity: String,
    /// Why CDC could not publish its UPDATE/DELETE safely, with the fix.
    cdc_problem: Option<String>,
    /// In CDC modes, whether its `where` filter can be the publication's row filter.
    row_filter: Option<String>,
    columns: Vec<ColumnReport>,
}

#[derive(Debug, Serialize)]
struct Report {
    pipeline: String,
    ok: bool,
    checks: Vec<Check>,
    tables: Vec<TableReport>,
}

impl Report {
    fn add(&mut self, name: &'static str, status: &'static str, message: impl Into<String>) {
        // A prerequisite that could not be read fails the check as surely as a wrong one.
        if status == "error" || status == "unknown" {
            self.ok = false;
        }
        self.checks.push(Check {
            name,
            status,
            message: message.into(),
        });
    }
}

pub async fn execute(path: &str, json: bool) -> Result<i32, Error> {
    let p = super::load_pipeline(path).await?;
    let mut report = Report {
        pipeline: p.name.clone(),
        ok: true,
        checks: Vec::new(),
        tables: Vec::new(),
    };
    report.add("config", "ok", format!("{} is valid", p.file));
    if let Some(w) = crate::pg::connect::Source::from_url(p.source.url.expose())
        .ok()
        .and_then(|s| s.unverified_warning())
    {
        report.add("tls", "warning", w);
    }
    match discover(&p).await {
        Ok(d) => {
            report.add(
                "source",
                "ok",
                format!(
                    "connected to {} (PostgreSQL {})",
                    d.source.display, d.server_version
                ),
            );
            let c = d.snapshot.client();
            let tables: Vec<_> = d.plans.iter().map(|pl| pl.table.clone()).collect();
            let identities = identity::read(c, &tables).await.unwrap_or_default();
            for plan in &d.plans {
                let idents = identities.get(&plan.table.oid).cloned().unwrap_or_default();
                let cdc_problem = match plan.settings.cdc {
                    CdcMode::InsertsOnly => None,
                    CdcMode::All => {
                        identity::problem(&plan.table, &idents, plan.settings.where_clause.as_ref())
                    }
                };
                if let Some(problem) = &cdc_problem
                    && p.mode.has_cdc()
                {
                    report.add("identity", "error", problem.clone());
                }
                let row_filter = match &plan.settings.where_clause {
                    Some(f) if p.mode.has_cdc() => {
                        Some(match row_filter::problems(c, &plan.table, f).await {
                            Ok(problems) if problems.is_empty() => {
                                let msg = format!(
                                    "the filter `{f}` of {} qualifies as a publication row filter",
                                    plan.table.name
                                );
                                report.add("row_filter", "ok", msg);
                                "qualifies".to_string()
                            }
                            Ok(problems) => {
                                let msg = row_filter::describe(&plan.table, f, &problems);
                                report.add("row_filter", "error", msg);
                                format!("does not qualify: {}", problems.join("; "))
                            }
                            Err(e) => {
                                report.add("row_filter", "error", e.to_string());
                                format!("unknown: {e}")
                            }
                        })
                    }
                    _ => None,
                };
                let privilege: bool = c
                    .query_one(
                        "SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c WHERE c.oid = $1",
                        &[&plan.table.oid],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(false);
                if !privilege {
                    report.add(
                        "privileges",
                        "error",
                        format!(
                            "no SELECT privilege on {}: GRANT SELECT ON {} TO <godwit user>",
                            plan.table.name,
                            plan.table.name.quoted()
                        ),
                    );
                }
                report.tables.push(TableReport {
                    table: plan.key(),
                    estimated_rows: plan.table.estimated_rows,
                    partitioned: plan.table.partitioned,
                    key: plan.table.key.clone(),
                    select_privilege: privilege,
                    replica_identity: idents
                        .iter()
                        .map(|i| i.describe())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join("; "),
                    cdc_problem,
                    row_filter,
                    columns: plan
                        .copy
                        .columns
                        .iter()
                        .map(|col| ColumnReport {
                            name: col.name.clone(),
                            pg_type: plan
                                .table
                                .columns
                                .iter()
                                .find(|c| c.name == col.name)
                                .map(|c| c.type_name.clone())
                                .unwrap_or_default(),
                            arrow_type: col.ty.arrow_type().to_string(),
                        })
                        .collect(),
                });
            }
            report.add("tables", "ok", format!("{} tables matched", d.plans.len()));
            if let Some(cache) = &p.cache {
                for (name, status, message) in
                    crate::sink::redis::check::check(&p, cache, &d.plans).await
                {
                    report.add(name, status, message);
                }
            }
            if p.mode.has_cdc() {
                for (name, status, message) in cdc_checks(c, &p, &d.plans).await {
                    report.add(name, status, message);
                }
            }
            let _ = d.snapshot.release().await;
        }
        Err(e) => report.add("source", "error", e.to_string()),
    }
    if let Some(arn) = &p.notify.sns_topic_arn {
        let (status, message) = crate::notify::sns::check_topic(arn).await;
        report.add("sns", status, message);
    }
    match target_store(&p).await {
        Ok(store) => match store.probe().await {
            Ok(msg) => report.add("target", "ok", msg),
            Err(e) => report.add("target", "error", format!("{}: {e}", store.describe())),
        },
        Err(e) => report.add("target", "error", e.to_string()),
    }
    match state_store(&p).await {
        Ok(state) => match state.lease_holder().await {
            Ok(Some(holder)) => report.add(
                "lease",
                "warning",
                format!("a run holds the lease now ({holder}); a second run would exit 2"),
            ),
            Ok(None) => report.add("lease", "ok", format!("free ({})", state.describe())),
            Err(e) => report.add("lease", "unknown", format!("cannot be read: {e}")),
        },
        Err(e) => report.add("state", "error", e.to_string()),
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        )?;
    } else {
        print_report(&report)?;
    }
    Ok(if report.ok { 0 } else { 2 })
}

/// CDC prerequisites: wal_level (rds.logical_replication), the replication privilege (or
/// rds_replication), the publication (or the ownership creating it needs), the slot's health
/// and retained WAL, and `max_slot_wal_keep_size`.
async fn cdc_checks(
    c: &Client,
    p: &Pipeline,
    plans: &[TablePlan],
) -> Vec<(&'static str, &'static str, String)> {
    let mut out = Vec::new();
    let setting = |name: &str| {
        let q = format!("SELECT current_setting('{name}', true)");
        async move {
            c.query_one(&q, &[])
                .await
                .ok()
                .and_then(|r| r.get::<_, Option<String>>(0))
        }
    };
    let rds = setting("rds.logical_replication").await;
    match setting("wal_level").await.as_deref() {
        Some("logical") => out.push(("wal_level", "ok", "logical".to_string())),
        other => out.push((
            "wal_level",
            "error",
            format!(
                "wal_level is {}; CDC needs logical: set wal_level = logical{} and restart the server",
                other.unwrap_or("unknown"),
                if rds.is_some() {
                    " (on RDS: rds.logical_replication = 1 in the parameter group)"
                } else {
                    ""
                }
            ),
        )),
    }
    if let Some(v) = &rds {
        out.push((
            "rds",
            if v == "on" || v == "1" { "ok" } else { "error" },
            format!("rds.logical_replication = {v}"),
        ));
    }
    let privilege = c
        .query_one(
            "SELECT r.rolsuper OR r.rolreplication OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') THEN pg_has_role(current_user, 'rds_replication', 'MEMBER') ELSE false END
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0));
    match privilege {
        Ok(true) => out.push(("replication", "ok", "the user may replicate".into())),
        _ => out.push((
            "replication",
            "error",
            "the user has no REPLICATION attribute: ALTER ROLE <user> REPLICATION; (on RDS: GRANT rds_replication TO <user>;)".into(),
        )),
    }
    match slot::publication_exists(c, &p.source.publication).await {
        Ok(true) => out.push((
            "publication",
            "ok",
            format!("{} exists and is used as it is", p.source.publication),
        )),
        Ok(false) => {
            let mut not_owned = Vec::new();
            for plan in plans {
                let owned = c
                    .query_one(
                        "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = $1",
                        &[&plan.table.oid],
                    )
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false);
                if !owned {
                    not_owned.push(plan.key());
                }
            }
            if not_owned.is_empty() {
                out.push((
                    "publication",
                    "ok",
                    format!("{} will be created", p.source.publication),
                ));
            } else {
                out.push((
                    "publication",
                    "error",
                    format!(
                        "{} does not exist and cannot be created: CREATE PUBLICATION needs ownership of {}; create it as the owner and name it in source.publication",
                        p.source.publication,
                        not_owned.join(", ")
                    ),
                ));
            }
        }
        Err(e) => out.push(("publication", "error", e.to_string())),
    }
    match slot::slot_info(c, &p.source.slot).await {
        Ok(None) => out.push(("slot", "ok", format!("{} will be created", p.source.slot))),
        Ok(Some(i)) if i.lost() => out.push((
            "slot",
            "error",
            format!(
                "{} was invalidated (wal_status = lost): run `godwit drop` and start over",
                p.source.slot
            ),
        )),
        Ok(Some(i)) => out.push((
            "slot",
            "ok",
            format!(
                "{} exists ({}, wal_status {}, retains {} of WAL{})",
                p.source.slot,
                i.plugin.as_deref().unwrap_or("?"),
                i.wal_status.as_deref().unwrap_or("?"),
                human_bytes(i.retained_bytes.unwrap_or(0)),
                if i.active { ", in use now" } else { "" }
            ),
        )),
        Err(e) => out.push(("slot", "error", e.to_string())),
    }
    if let Ok(keep) = slot::max_slot_wal_keep_size(c).await {
        if keep == "-1" {
            out.push((
                "wal_keep",
                "warning",
                "max_slot_wal_keep_size = -1: a slot nobody reads keeps WAL until the disk is full; set a limit (e.g. 50GB) or watch `godwit status`".into(),
            ));
        } else {
            out.push(("wal_keep", "ok", format!("max_slot_wal_keep_size = {keep}")));
        }
    }
    if let Some(item) = partitions_check(p, plans) {
        out.push(item);
    }
    out
}

/// How CDC handles the partition changes PostgreSQL does not publish (see `task::partitions`).
fn partitions_check(
    p: &Pipeline,
    plans: &[TablePlan],
) -> Option<(&'static str, &'static str, String)> {
    let roots: Vec<String> = plans
        .iter()
        .filter(|pl| pl.table.partitioned)
        .map(|pl| pl.key())
        .collect();
    if roots.is_empty() {
        return None;
    }
    let unpublished = "a partition's own TRUNCATE, DETACH, ATTACH and DROP are not in the stream";
    Some(if p.mode == crate::config::Mode::FullLoadAndCdc {
        (
            "partitions",
            "ok",
            format!(
                "{} partitioned: {unpublished}; godwit compares the partitions with the load's                  at start and every 5 s and reloads the table when they changed (table.truncated)",
                roots.join(", ")
            ),
        )
    } else {
        (
            "partitions",
            "warning",
            format!(
                "{} partitioned: {unpublished}; mode cdc only reports them (table.truncated) —                  the change files do not hold those rows leaving",
                roots.join(", ")
            ),
        )
    })
}

/// 1536 → "1.5 KiB".
pub(crate) fn human_bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `~1,234 rows`, or `rows unknown (not analysed)`.
fn row_estimate(rows: Option<u64>) -> String {
    match rows {
        Some(n) => format!("~{} rows", indicatif::HumanCount(n)),
        None => "rows unknown (not analysed)".into(),
    }
}

fn print_report(r: &Report) -> Result<(), Error> {
    outln!("pipeline {}", r.pipeline)?;
    for c in &r.checks {
        outln!("  {:<8} {:<11} {}", c.status, c.name, c.message)?;
    }
    for t in &r.tables {
        outln!(
            "  table {} ({}{}{})",
            t.table,
            row_estimate(t.estimated_rows),
            if t.partitioned { ", partitioned" } else { "" },
            if t.key.is_empty() {
                ", no primary key".to_string()
            } else {
                format!(", key {}", t.key.join(", "))
            }
        )?;
        outln!("      replica identity: {}", t.replica_identity)?;
        if let Some(p) = &t.cdc_problem {
            outln!("      for CDC: {p}")?;
        }
        if let Some(f) = &t.row_filter {
            outln!("      row filter: {f}")?;
        }
        for c in &t.columns {
            outln!("      {:<30} {:<32} → {}", c.name, c.pg_type, c.arrow_type)?;
        }
    }
    outln!("{}", if r.ok { "check passed" } else { "check FAILED" })
}

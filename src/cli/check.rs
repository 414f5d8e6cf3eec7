//! `godwit check PIPELINE`: validates the file and every prerequisite without moving data,
//! as a report (or `--json`). Exit 2 when something would stop a run, 0 otherwise.

use serde::Serialize;

use crate::config::{self, CdcMode};
use crate::error::Error;
use crate::pg::replication::identity;
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
    estimated_rows: u64,
    partitioned: bool,
    key: Vec<String>,
    select_privilege: bool,
    /// The table's replica identity (and its partitions').
    replica_identity: String,
    /// Why CDC could not publish its UPDATE/DELETE safely, with the fix.
    cdc_problem: Option<String>,
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
        if status == "error" {
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
    if let Err(e) = config::unsupported(&p) {
        report.add("config", "error", e.to_string());
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
                    CdcMode::All => identity::problem(
                        &plan.table,
                        &idents,
                        plan.settings.where_clause.as_deref(),
                    ),
                };
                if let Some(problem) = &cdc_problem
                    && p.mode.has_cdc()
                {
                    report.add("identity", "error", problem.clone());
                }
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
                    columns: plan
                        .copy
                        .columns
                        .iter()
                        .map(|(name, t)| ColumnReport {
                            name: name.clone(),
                            pg_type: plan
                                .table
                                .columns
                                .iter()
                                .find(|c| &c.name == name)
                                .map(|c| c.type_name.clone())
                                .unwrap_or_default(),
                            arrow_type: t.arrow_type().to_string(),
                        })
                        .collect(),
                });
            }
            report.add("tables", "ok", format!("{} tables matched", d.plans.len()));
            let _ = d.snapshot.release().await;
        }
        Err(e) => report.add("source", "error", e.to_string()),
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
            Some(holder) => report.add(
                "lease",
                "warning",
                format!("a run holds the lease now ({holder}); a second run would exit 2"),
            ),
            None => report.add("lease", "ok", format!("free ({})", state.describe())),
        },
        Err(e) => report.add("state", "error", e.to_string()),
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&report);
    }
    Ok(if report.ok { 0 } else { 2 })
}

fn print_report(r: &Report) {
    println!("pipeline {}", r.pipeline);
    for c in &r.checks {
        println!("  {:<8} {:<11} {}", c.status, c.name, c.message);
    }
    for t in &r.tables {
        println!(
            "  table {} (~{} rows{}{})",
            t.table,
            t.estimated_rows,
            if t.partitioned { ", partitioned" } else { "" },
            if t.key.is_empty() {
                ", no primary key".to_string()
            } else {
                format!(", key {}", t.key.join(", "))
            }
        );
        println!("      replica identity: {}", t.replica_identity);
        if let Some(p) = &t.cdc_problem {
            println!("      for CDC: {p}");
        }
        for c in &t.columns {
            println!("      {:<30} {:<32} → {}", c.name, c.pg_type, c.arrow_type);
        }
    }
    println!("{}", if r.ok { "check passed" } else { "check FAILED" });
}

//! What `godwit check` says about `[cache]`: every projection resolved against the catalog
//! (its table selected, every column it names present, scores and positions numeric, expiry
//! columns times), every Redis node answering, and eviction policies that could drop the
//! versions and tombstones the guard depends on.

use arrow::datatypes::DataType;

use super::conn::Redis;
use crate::config::{Cache, Pipeline, ProjectionKind, parse_template, template_columns};
use crate::task::plan::TablePlan;

/// (check name, status, message) lines for the report.
pub type Line = (&'static str, &'static str, String);

/// Checks the projections against `plans` and reaches every Redis node.
pub async fn check(p: &Pipeline, cache: &Cache, plans: &[TablePlan]) -> Vec<Line> {
    let mut lines = projections(p, cache, plans);
    match Redis::connect(cache).await {
        Err(e) => lines.push(("redis", "error", e.to_string())),
        Ok(redis) => match redis.nodes().await {
            Err(e) => lines.push(("redis", "error", e.to_string())),
            Ok(nodes) => {
                for n in nodes {
                    lines.push((
                        "redis",
                        "ok",
                        format!(
                            "{} answers (Redis {}, {}, {} bytes used)",
                            n.address, n.redis_version, n.role, n.used_memory
                        ),
                    ));
                    if n.maxmemory_policy != "noeviction" {
                        lines.push((
                            "redis",
                            "warning",
                            format!(
                                "{} has maxmemory-policy {}: under memory pressure Redis may evict \
                                 godwit's versions and tombstones, and an evicted version lets an \
                                 older write through; set maxmemory-policy noeviction (or size the \
                                 server so that it never evicts)",
                                n.address, n.maxmemory_policy
                            ),
                        ));
                    }
                }
            }
        },
    }
    lines
}

/// Each projection resolved against its table's written columns.
fn projections(p: &Pipeline, cache: &Cache, plans: &[TablePlan]) -> Vec<Line> {
    let mut lines = Vec::new();
    for (i, pr) in cache.projections.iter().enumerate() {
        let at = match p.spans.line(&format!("cache.projections[{i}].key")) {
            Some(l) => format!("{}:{l}: cache.projections[{i}]", p.file),
            None => format!("{}: cache.projections[{i}]", p.file),
        };
        let Some((schema, name)) = pr.table.exact_name() else {
            continue;
        };
        let Some(plan) = plans
            .iter()
            .find(|pl| pl.table.name.schema == schema && pl.table.name.name == name)
        else {
            lines.push((
                "projection",
                "error",
                format!("{at}: table {schema}.{name} was not found in the source (or no column of it is selected)"),
            ));
            continue;
        };
        let column = |c: &str| plan.copy.columns.iter().find(|col| col.name == c);
        let mut named: Vec<(&str, String)> = Vec::new();
        for (key, template) in [
            ("key", Some(&pr.key)),
            ("member", pr.member.as_ref()),
            ("channel", pr.channel.as_ref()),
        ] {
            if let Some(t) = template {
                let parts = parse_template(t).unwrap_or_default();
                named.extend(template_columns(&parts).map(|c| (key, c.to_string())));
            }
        }
        for f in pr.fields.iter().flatten() {
            named.push(("fields", f.clone()));
        }
        for (key, c) in [
            ("value", &pr.value),
            ("score", &pr.score),
            ("longitude", &pr.longitude),
            ("latitude", &pr.latitude),
            ("ttl_column", &pr.ttl_column),
        ] {
            if let Some(c) = c {
                named.push((key, c.clone()));
            }
        }
        let mut ok = true;
        for (key, c) in &named {
            let Some(col) = column(c) else {
                ok = false;
                lines.push((
                    "projection",
                    "error",
                    format!(
                        "{at}.{key}: column \"{c}\" is not a written column of {schema}.{name} \
                         (excluded, or not in the table); name one of: {}",
                        plan.copy
                            .columns
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
                continue;
            };
            let t = col.ty.arrow_type();
            let numeric = matches!(
                t,
                DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Decimal128(_, _)
            );
            let time = matches!(t, DataType::Timestamp(_, _) | DataType::Date32);
            let wrong = match *key {
                "score" | "longitude" | "latitude" if !numeric => Some("a number"),
                "ttl_column" if !time => Some("a timestamp or date"),
                _ => None,
            };
            if let Some(want) = wrong {
                ok = false;
                lines.push((
                    "projection",
                    "error",
                    format!("{at}.{key}: column \"{c}\" is {t}, not {want}"),
                ));
            }
        }
        if ok {
            let what = match pr.kind {
                ProjectionKind::Invalidate | ProjectionKind::Stream | ProjectionKind::Publish => {
                    "written by CDC only"
                }
                _ => "warmed by the full load, kept by CDC",
            };
            lines.push((
                "projection",
                "ok",
                format!("{} {} of {schema}.{name}: {what}", pr.kind, pr.key),
            ));
        }
    }
    lines
}

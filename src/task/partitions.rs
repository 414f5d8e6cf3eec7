//! Partition changes the stream never shows. With `publish_via_partition_root` PostgreSQL does
//! not publish a partition's own TRUNCATE, and never publishes DETACH, ATTACH or DROP
//! PARTITION; the only trace is the catalog. Each partitioned root's fingerprint (see
//! [`catalog::partition_fingerprints`]) is stored with the table, taken in the snapshot its
//! files were loaded from; a different fingerprint now means rows the files do not know about
//! came or went, and the table is reloaded.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use super::plan::TablePlan;
use crate::pg::catalog::{self, TableName};
use crate::pg::connect::{Source, describe_error};
use crate::pg::import_snapshot;

/// The partition fingerprint of every partitioned table of `plans`, by table key, read inside
/// the exported snapshot `snapshot_id` (the one the tables are loaded from).
pub(crate) async fn in_snapshot(
    source: &Source,
    snapshot_id: &str,
    plans: &[TablePlan],
) -> Result<BTreeMap<String, String>, String> {
    let roots: Vec<&TablePlan> = plans.iter().filter(|pl| pl.table.partitioned).collect();
    if roots.is_empty() {
        return Ok(BTreeMap::new());
    }
    let client = source.connect().await.map_err(|e| e.to_string())?;
    let pg = |e: tokio_postgres::Error| describe_error(&e, &source.display);
    import_snapshot(&client, snapshot_id).await.map_err(pg)?;
    let found = now(&client, &roots).await.map_err(pg)?;
    let _ = client.batch_execute("COMMIT").await;
    Ok(found)
}

/// The fingerprints of the partitioned tables among `plans` as `client` sees them now.
pub(crate) async fn now(
    client: &Client,
    plans: &[&TablePlan],
) -> Result<BTreeMap<String, String>, tokio_postgres::Error> {
    let oids: Vec<u32> = plans
        .iter()
        .filter(|pl| pl.table.partitioned)
        .map(|pl| pl.table.oid)
        .collect();
    let found = catalog::partition_fingerprints(client, &oids).await?;
    Ok(plans
        .iter()
        .filter_map(|pl| Some((pl.key(), found.get(&pl.table.oid)?.clone())))
        .collect())
}

/// One partition that differs between two fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Changed {
    pub oid: u32,
    pub change: &'static str,
}

/// What differs between the `stored` fingerprint and the `current` one; empty when `stored`
/// is not a fingerprint (not recorded yet, or an older state's format). `exists` says whether
/// a table that left the tree still exists (detached) or not (dropped).
pub(crate) fn diff(stored: &str, current: &str, exists: &dyn Fn(u32) -> bool) -> Vec<Changed> {
    let (Some(old), Some(new)) = (
        catalog::parse_fingerprint(stored),
        catalog::parse_fingerprint(current),
    ) else {
        return Vec::new();
    };
    let old: BTreeMap<u32, _> = old.into_iter().map(|e| (e.oid, e)).collect();
    let new: BTreeMap<u32, _> = new.into_iter().map(|e| (e.oid, e)).collect();
    let mut out = Vec::new();
    for (oid, o) in &old {
        let change = match new.get(oid) {
            None if exists(*oid) => "detached",
            None => "dropped",
            Some(n) if n.link != o.link => "detached and attached again",
            Some(n) if n.relfilenode != o.relfilenode => "truncated",
            Some(_) => continue,
        };
        out.push(Changed { oid: *oid, change });
    }
    for oid in new.keys().filter(|o| !old.contains_key(o)) {
        out.push(Changed {
            oid: *oid,
            change: "attached",
        });
    }
    out
}

/// A partition's name for events: `schema.table`, or its oid once it is dropped.
pub(crate) fn name_of(names: &HashMap<u32, TableName>, oid: u32) -> String {
    names
        .get(&oid)
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("oid {oid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_partition_change_is_named() {
        let stored = "100:0:,101:5001:700,102:5002:700,103:5003:700,104:5004:700";
        let current = "100:0:,101:6001:700,104:5004:900,105:5005:901";
        let exists = |oid: u32| oid != 103;
        let got = diff(stored, current, &exists);
        let want = vec![
            Changed {
                oid: 101,
                change: "truncated",
            },
            Changed {
                oid: 102,
                change: "detached",
            },
            Changed {
                oid: 103,
                change: "dropped",
            },
            Changed {
                oid: 104,
                change: "detached and attached again",
            },
            Changed {
                oid: 105,
                change: "attached",
            },
        ];
        assert_eq!(got, want);
        assert!(diff(stored, stored, &exists).is_empty());
        // Not recorded yet, or the older `relfilenode:counters` format: nothing to compare.
        assert!(diff("", current, &exists).is_empty());
        assert!(diff("5001:17,5002:0", current, &exists).is_empty());
    }
}

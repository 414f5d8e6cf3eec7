//! Sharded full loads: `run --shard I/N` (1-based) splits the units of a full load — every
//! segment of every table, or a table without segments — among N processes, coordinated only
//! through the state store.
//!
//! Shard 1 is the coordinator: it takes the pipeline's lease, exports the snapshot, writes
//! the task record (with `shards = N`), loads its own units and keeps the snapshot open until
//! the other shards have loaded theirs; then it completes the tables as a single run would.
//! Shards 2..N wait for that record, import its snapshot and load their units; each has its
//! own lease and record under `<state>/shard-I/`. Unit k (counting tables in plan order, then
//! their segments) belongs to shard (k mod N) + 1.
//!
//! With CDC (`full-load-and-cdc`), the CDC job is shard 1: the snapshot is its new slot's
//! exported one, and once the tables are complete it follows the slot. A shard started after
//! the initial load is done has nothing to load and ends at once.
//!
//! A shard killed and run again keeps the units its record completed under the same
//! snapshot. When the coordinator dies, its snapshot is gone: the other shards fail (exit 1)
//! and everything loads again from the coordinator's next snapshot.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Pipeline, StateUrl};
use crate::error::Error;
use crate::state::{StateStore, TableRecord, TableState, TaskRecord};

/// This process's share of a sharded load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Reads `I/N` (1 ≤ I ≤ N).
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad = || {
            format!(
                "--shard {text:?}: write it as I/N with 1 ≤ I ≤ N, e.g. 2/3 for the second of \
                 three shards"
            )
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether this shard coordinates (holds the snapshot and completes the tables).
    pub fn coordinates(&self) -> bool {
        self.index == 1
    }

    /// The shard that loads unit `unit` (0-based, counted over the whole load).
    pub fn owner(count: u32, unit: usize) -> u32 {
        (unit % count as usize) as u32 + 1
    }

    /// Whether unit `unit` is this shard's.
    pub fn owns(&self, unit: usize) -> bool {
        Shard::owner(self.count, unit) == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The state store of shard `index`: `<state>/shard-<index>/`.
pub async fn store(p: &Pipeline, index: u32) -> Result<StateStore, Error> {
    let mut q = p.clone();
    q.state.url = match &p.state.url {
        StateUrl::File(dir) => StateUrl::File(dir.join(format!("shard-{index}"))),
        StateUrl::S3 { bucket, prefix } => StateUrl::S3 {
            bucket: bucket.clone(),
            prefix: match prefix.trim_end_matches('/') {
                "" => format!("shard-{index}"),
                p => format!("{p}/shard-{index}"),
            },
        },
    };
    super::state_store(&q).await
}

/// Waits for the coordinator's record of a sharded load with `shard.count` shards (how long:
/// `patience`); a record of a finished or other load does not count. `None`: the pipeline's
/// initial load is done and CDC follows the slot — nothing is left to split.
pub async fn wait_for_coordinator(
    main: &StateStore,
    shard: Shard,
    run: &super::run_context::RunContext,
    patience: Duration,
) -> Result<Option<TaskRecord>, Error> {
    let started = std::time::Instant::now();
    let mut told = std::time::Instant::now();
    loop {
        match main.load().await {
            Ok(Some(r)) if r.cdc.as_ref().is_some_and(|c| c.full_load_done) => return Ok(None),
            Ok(Some(r))
                if r.state == "running"
                    && r.shards == Some(shard.count)
                    && r.snapshot.is_some() =>
            {
                return Ok(Some(r));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading the coordinator's record: {e}"),
        }
        if started.elapsed() > patience {
            return Err(Error::Runtime(format!(
                "shard {shard}: no sharded load with {} shards is running after {}s; start \
                 shard 1/{} (the coordinator) first, with the same pipeline",
                shard.count,
                patience.as_secs(),
                shard.count
            )));
        }
        if told.elapsed() > Duration::from_secs(15) {
            told = std::time::Instant::now();
            tracing::info!(
                "shard {shard}: waiting for shard 1/{} to start the load",
                shard.count
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            why = run.stopping() => {
                return Err(Error::Runtime(format!("shard {shard}: {why} while waiting for the coordinator")));
            }
        }
    }
}

/// The first unit of every table of a (possibly sharded) load: units are counted over the
/// record's tables in key order, a table's segments or the whole table, so every shard numbers
/// them alike.
pub(crate) fn first_units(tables: &BTreeMap<String, TableRecord>) -> HashMap<String, usize> {
    let mut next = 0;
    tables
        .iter()
        .map(|(key, r)| {
            let first = next;
            next += r.segments.len().max(1);
            (key.clone(), first)
        })
        .collect()
}

/// One shard of a sharded load, as `status` shows it: the units it owns, how many of them are
/// complete (in its own record under the load's snapshot, or taken over by the coordinator),
/// their rows, its record's state and who holds its lease now.
#[derive(Debug, Serialize)]
pub struct ShardView {
    pub shard: String,
    pub units: usize,
    pub completed: usize,
    pub rows: u64,
    pub state: String,
    pub running: Option<String>,
}

/// Every shard of the sharded load `coordinator` records (shard 1 is the coordinator itself).
pub async fn views(p: &Pipeline, coordinator: &TaskRecord) -> Vec<ShardView> {
    let Some(count) = coordinator.shards else {
        return Vec::new();
    };
    let firsts = first_units(&coordinator.tables);
    let mut views = Vec::new();
    for index in 1..=count {
        let shard = Shard { index, count };
        let (own, running) = if index == 1 {
            (None, None)
        } else {
            match store(p, index).await {
                Ok(s) => (
                    s.load()
                        .await
                        .ok()
                        .flatten()
                        .filter(|r| r.snapshot == coordinator.snapshot),
                    s.lease_holder().await.ok().flatten(),
                ),
                Err(_) => (None, None),
            }
        };
        let mut view = ShardView {
            shard: shard.to_string(),
            units: 0,
            completed: 0,
            rows: 0,
            state: match (index, &own) {
                (1, _) => coordinator.state.clone(),
                (_, Some(r)) => r.state.clone(),
                (_, None) => "not started".into(),
            },
            running,
        };
        for (key, t) in &coordinator.tables {
            let first = firsts.get(key).copied().unwrap_or(0);
            let mine = own.as_ref().and_then(|r| r.tables.get(key));
            // (completed, rows) of unit j in the coordinator's record and in the shard's.
            let unit = |r: &TableRecord, j: usize| match r.segments.get(j) {
                Some(s) => (s.state == TableState::Completed, s.rows),
                None if r.segments.is_empty() => {
                    (r.state == TableState::Completed, r.full_load_rows)
                }
                None => (false, 0),
            };
            for j in 0..t.segments.len().max(1) {
                if !shard.owns(first + j) {
                    continue;
                }
                view.units += 1;
                let done = [Some(t), mine]
                    .into_iter()
                    .flatten()
                    .map(|r| unit(r, j))
                    .find(|(done, _)| *done);
                if let Some((_, rows)) = done {
                    view.completed += 1;
                    view.rows += rows;
                }
            }
        }
        views.push(view);
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_written_i_of_n() {
        assert_eq!(Shard::parse("2/3"), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn units_go_round_robin() {
        let owners: Vec<u32> = (0..7).map(|u| Shard::owner(3, u)).collect();
        assert_eq!(owners, [1, 2, 3, 1, 2, 3, 1]);
        let s = Shard { index: 2, count: 3 };
        assert!(s.owns(1) && s.owns(4) && !s.owns(0));
    }
}

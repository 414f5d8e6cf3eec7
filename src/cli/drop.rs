//! `godwit drop PIPELINE`: removes the replication slot, the publications and the state that
//! godwit created for this pipeline — a forgotten slot holds WAL on the source forever. An
//! existing publication named in the file, and a slot godwit did not create, stay.

use std::io::{BufRead, IsTerminal};

use crate::error::Error;
use crate::pg::connect::describe_error;
use crate::pg::replication::slot;
use crate::task::{connect_source, state_store};

/// Drops what the state says godwit created; asks first unless `yes`.
pub async fn execute(path: &str, yes: bool) -> Result<i32, Error> {
    // Asked to change things: done even when nobody reads what it says (`| true`).
    super::output::finish_when_closed();
    let p = super::load_pipeline(path).await?;
    let state = state_store(&p).await?;
    let lease = state
        .acquire_lease(&p.name)
        .await
        .map_err(|e| Error::Startup(e.to_string()))?;
    let result = drop_all(&p, &state, yes).await;
    lease.release().await;
    result
}

async fn drop_all(
    p: &crate::config::Pipeline,
    state: &crate::state::StateStore,
    yes: bool,
) -> Result<i32, Error> {
    let record = state
        .load()
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let cdc = record
        .as_ref()
        .and_then(|r| r.cdc.clone())
        .unwrap_or_default();
    let mut plan = Vec::new();
    if cdc.slot_created {
        plan.push(format!("replication slot {}", cdc.slot));
    }
    for publication in &cdc.publications_created {
        plan.push(format!("publication {publication}"));
    }
    if record.is_some() {
        plan.push(format!("the state at {}", state.describe()));
    }
    if plan.is_empty() {
        outln!(
            "nothing to drop: no state of pipeline {} at {} (a slot or publication godwit did not record stays as it is)",
            p.name,
            state.describe()
        )?;
        return Ok(0);
    }
    outln!("godwit drop {} removes:", p.name)?;
    for item in &plan {
        outln!("  {item}")?;
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::Startup(
                "not asking without a terminal: pass --yes to drop".into(),
            ));
        }
        out!("drop these? [y/N] ")?;
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            outln!("nothing dropped")?;
            return Ok(0);
        }
    }
    if cdc.slot_created || !cdc.publications_created.is_empty() {
        let (source, client) = connect_source(p).await?;
        let pg_err = |what: String, e: tokio_postgres::Error| {
            Error::Runtime(format!("{what}: {}", describe_error(&e, &source.display)))
        };
        if cdc.slot_created {
            let dropped = slot::drop_slot(&client, &cdc.slot)
                .await
                .map_err(|e| pg_err(format!("dropping slot {}", cdc.slot), e))?;
            outln!(
                "slot {}: {}",
                cdc.slot,
                if dropped {
                    "dropped"
                } else {
                    "was already gone"
                }
            )?;
        }
        for publication in &cdc.publications_created {
            slot::drop_publication(&client, publication)
                .await
                .map_err(|e| pg_err(format!("dropping publication {publication}"), e))?;
            outln!("publication {publication}: dropped")?;
        }
    }
    state
        .remove()
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    outln!("state: removed")?;
    Ok(0)
}

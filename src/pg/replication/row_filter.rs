//! Whether a `where` filter can be a publication row filter (CDC modes), asked before anything
//! is created. PostgreSQL 15+ allows there only columns (no system columns, no user-defined
//! types), constants, built-in operators, types and collations, and immutable built-in
//! functions — no subqueries, aggregates or window functions. The parsed expression says what
//! the filter uses; the catalog says what each function, type, collation and operator is.
//! PostgreSQL itself judges again when the publication is created (in one transaction, before
//! any slot), so what this misses still creates nothing.

use tokio_postgres::Client;

use crate::pg::catalog::Table;
use crate::pg::filter::{Filter, FunctionName};

/// The first OID of objects created after `initdb`: below it, built in.
const FIRST_NORMAL_OID: u32 = 16384;

/// Why `filter` cannot be `table`'s row filter, one reason each (empty when it qualifies).
pub async fn problems(
    client: &Client,
    table: &Table,
    filter: &Filter,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .get(0);
    if version < 150000 {
        out.push(format!(
            "publication row filters need PostgreSQL 15 or later (this server: {})",
            version / 10000
        ));
        return Ok(out);
    }
    let uses = filter.uses();
    out.extend(uses.never.iter().cloned());
    for col in table
        .columns
        .iter()
        .filter(|c| uses.columns.contains(&c.name))
    {
        if col.type_oid >= FIRST_NORMAL_OID {
            out.push(format!(
                "the column {} has the user-defined type {}",
                col.name, col.type_name
            ));
        }
    }
    for f in &uses.functions {
        if let Some(p) = function_problem(client, f).await? {
            out.push(p);
        }
    }
    for ty in &uses.types {
        let oid: Option<u32> = client
            .query_one("SELECT to_regtype($1)::oid", &[ty])
            .await?
            .get(0);
        if oid.is_some_and(|o| o >= FIRST_NORMAL_OID) {
            out.push(format!("it casts to the user-defined type {ty}"));
        }
    }
    for (column, ty) in &uses.column_casts {
        let Some(col) = table.columns.iter().find(|c| &c.name == column) else {
            continue;
        };
        let row = client
            .query_opt(
                "SELECT c.castmethod::text, coalesce(p.provolatile::text, 'i'), coalesce(p.oid, 0)
                 FROM pg_cast c LEFT JOIN pg_proc p ON p.oid = c.castfunc
                 WHERE c.castsource = $1 AND c.casttarget = to_regtype($2)",
                &[&col.type_oid, ty],
            )
            .await?;
        if let Some(r) = row {
            let method: String = r.get(0);
            let volatile: String = r.get(1);
            let func: u32 = r.get(2);
            if method == "i" {
                out.push(format!(
                    "the cast {column}::{ty} converts through text (an I/O cast)"
                ));
            } else if volatile != "i" || func >= FIRST_NORMAL_OID {
                out.push(format!(
                    "the cast {column}::{ty} calls a function that is {}",
                    volatility(&volatile, func)
                ));
            }
        }
    }
    for c in &uses.collations {
        let oid: Option<u32> = client
            .query_one("SELECT to_regcollation($1)::oid", &[c])
            .await?
            .get(0);
        if oid.is_some_and(|o| o >= FIRST_NORMAL_OID) {
            out.push(format!("it uses the user-defined collation {c}"));
        }
    }
    for op in &uses.operators {
        let user_defined: Option<bool> = client
            .query_one(
                "SELECT bool_and(oid >= $2) FROM pg_operator WHERE oprname = $1",
                &[op, &FIRST_NORMAL_OID],
            )
            .await?
            .get(0);
        if user_defined == Some(true) {
            out.push(format!("it uses the user-defined operator {op}"));
        }
    }
    Ok(out)
}

/// What is wrong with calling `f` in a row filter, judged by every function of that name the
/// filter can reach (its schema, or the search path). When only some overloads qualify, the
/// argument types decide and PostgreSQL will (at CREATE PUBLICATION).
async fn function_problem(
    client: &Client,
    f: &FunctionName,
) -> Result<Option<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT p.provolatile::text, p.prokind::text, p.oid
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proname = $1
               AND CASE WHEN $2::text IS NULL THEN n.nspname = ANY(current_schemas(true))
                        ELSE n.nspname = $2::text END",
            &[&f.name, &f.schema],
        )
        .await?;
    let candidates: Vec<(String, String, u32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if candidates
        .iter()
        .any(|(v, k, oid)| v == "i" && k == "f" && *oid < FIRST_NORMAL_OID)
    {
        return Ok(None);
    }
    let Some((v, k, oid)) = candidates.first() else {
        // Unknown here: the probe on the table reports it.
        return Ok(None);
    };
    Ok(Some(match k.as_str() {
        "a" => format!("{f} is an aggregate function"),
        "w" => format!("{f} is a window function"),
        "p" => format!("{f} is a procedure"),
        _ => format!("{f} is {}", volatility(v, *oid)),
    }))
}

fn volatility(provolatile: &str, oid: u32) -> String {
    let kind = match provolatile {
        "v" => "volatile",
        "s" => "stable (its result can change from one statement to the next)",
        _ => "immutable",
    };
    if oid >= FIRST_NORMAL_OID {
        format!("user-defined ({kind})")
    } else {
        kind.to_string()
    }
}

/// The message for a filter that does not qualify, with the fix.
pub fn describe(table: &Table, filter: &Filter, problems: &[String]) -> String {
    format!(
        "the filter `{filter}` of {} cannot be a publication row filter, which CDC makes it: {}. \
         PostgreSQL allows there only columns, constants, built-in operators and types, and \
         immutable built-in functions (no subqueries, aggregates, window functions or system \
         columns). Fix: rewrite the condition with those (e.g. a constant date instead of now()), \
         or use mode = \"full-load\" for this filter",
        table.name,
        problems.join("; ")
    )
}

//! What `godwit inspect` shows of the cache: per projection, how many keys match its key
//! template (SCAN on every primary) and a few of them with their values.

use redis::Value;

use super::conn::{Redis, Routed};
use super::writer::key_pattern;
use crate::config::{Cache, ProjectionKind};
use crate::error::Error;

/// Lines describing every projection (of `table` only, when given), `samples` keys each.
pub async fn describe(
    cache: &Cache,
    table: Option<&str>,
    samples: usize,
) -> Result<Vec<String>, Error> {
    let redis = Redis::connect(cache)
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let own = format!("{}godwit:", cache.key_prefix).into_bytes();
    let mut lines = vec![format!("cache {}", redis.shown())];
    for p in &cache.projections {
        let name = p
            .table
            .exact_name()
            .map(|(s, n)| format!("{s}.{n}"))
            .unwrap_or_default();
        if table.is_some_and(|t| t != name) {
            continue;
        }
        let (pattern, literal) = key_pattern(&cache.key_prefix, &p.key);
        let keys: Vec<Vec<u8>> = match literal {
            Some(k) => vec![k],
            None => redis
                .scan(&pattern)
                .await
                .map_err(|e| Error::Runtime(e.to_string()))?
                .into_iter()
                .filter(|k| !k.starts_with(&own))
                .collect(),
        };
        let mut keys = keys;
        keys.sort();
        lines.push(format!(
            "\n{} {} of {name}: {} key{} match {}",
            p.kind,
            p.key,
            keys.len(),
            if keys.len() == 1 { "" } else { "s" },
            String::from_utf8_lossy(&pattern)
        ));
        if matches!(p.kind, ProjectionKind::Publish) {
            lines.push("    (publish writes no keys: messages go to subscribers)".into());
            continue;
        }
        for k in keys.iter().take(samples) {
            let shown = String::from_utf8_lossy(k).into_owned();
            let value = sample(&redis, k).await?;
            lines.push(format!("    {shown} = {value}"));
        }
    }
    Ok(lines)
}

/// A key's value in a line (long values cut).
async fn sample(redis: &Redis, key: &[u8]) -> Result<String, Error> {
    let run = |cmd: redis::Cmd| Routed::new(key, cmd);
    let kind = redis
        .exec(vec![run(redis::cmd("TYPE").arg(key).clone())])
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let kind = match kind.first() {
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Okay) => "none".into(),
        _ => String::new(),
    };
    let cmd = match kind.as_str() {
        "hash" => redis::cmd("HGETALL").arg(key).clone(),
        "string" => redis::cmd("GET").arg(key).clone(),
        "zset" => redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(4)
            .arg("WITHSCORES")
            .clone(),
        "set" => redis::cmd("SRANDMEMBER").arg(key).arg(5).clone(),
        "stream" => redis::cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .clone(),
        other => return Ok(format!("({other})")),
    };
    let v = redis
        .exec(vec![run(cmd)])
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let mut text = format!("{kind} {}", flat(v.first().unwrap_or(&Value::Nil)));
    if text.chars().count() > 160 {
        text = text.chars().take(157).collect::<String>() + "...";
    }
    Ok(text)
}

/// A reply as compact text.
fn flat(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Array(items) | Value::Set(items) => {
            format!(
                "[{}]",
                items.iter().map(flat).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Map(pairs) => format!(
            "{{{}}}",
            pairs
                .iter()
                .map(|(k, v)| format!("{}: {}", flat(k), flat(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Nil => "nil".into(),
        other => format!("{other:?}"),
    }
}

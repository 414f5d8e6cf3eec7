//! One `[[cache.projections]]` entry turned into Redis operations, batch by batch: rows of a
//! full load (all inserts, at the snapshot's version) or committed changes (`Op`, `_lsn`,
//! `_seq`, `_unchanged`). Values come from the Arrow columns rendered the way the projection
//! type wants them (text form for hashes and strings, JSON for `json`).

use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef, TimeUnit};

use super::keys::{Bound, Companion, Companions, MissingColumn};
use super::ops::{Expire, Ops};
use crate::config::{Projection, ProjectionKind};
use crate::pg::types::PgType;
use crate::pg::types::render::Render;
use crate::state::Mark;

/// The version a write carries: (`_lsn`, `_seq`) as 32 hex digits, which sort as the pair.
pub fn version(mark: Mark) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = [0u8; 32];
    for (half, n) in [mark.lsn, mark.seq].into_iter().enumerate() {
        for d in 0..16 {
            out[half * 16 + d] = HEX[((n >> (60 - 4 * d)) & 0xF) as usize];
        }
    }
    out
}

/// Where a batch comes from.
#[derive(Clone, Copy)]
pub enum Origin {
    /// Full-load rows, all at the snapshot's consistent point.
    Load(Mark),
    /// CDC rows: the batch has `_lsn`, `_seq` (and `Op`, `_unchanged` unless inserts only).
    Changes,
}

/// A projection bound to one batch schema.
struct Bound1 {
    key: Bound,
    member: Option<Bound>,
    channel: Option<Bound>,
    /// (field name, column, renderer) written to hashes, json documents, streams.
    fields: Vec<(String, usize, Render)>,
    value: Option<(usize, Render)>,
    score: Option<(usize, Render)>,
    lon_lat: Option<((usize, Render), (usize, Render))>,
    ttl_column: Option<usize>,
    op: Option<usize>,
    lsn: Option<usize>,
    seq: Option<usize>,
    unchanged: Option<usize>,
}

/// A projection and the schema it was last bound to.
pub struct Projector {
    pub config: Projection,
    key_prefix: String,
    /// The table's written columns and their types, in order.
    columns: Vec<(String, PgType)>,
    bound: Option<(SchemaRef, Bound1)>,
    /// Operations this projector sent: (written, removed).
    pub counts: (u64, u64),
}

impl Projector {
    pub fn new(config: Projection, key_prefix: &str, columns: Vec<(String, PgType)>) -> Projector {
        Projector {
            config,
            key_prefix: key_prefix.to_string(),
            columns,
            bound: None,
            counts: (0, 0),
        }
    }

    /// Where the table's column `name` is in a batch of `schema`: the first field of that
    /// name that is not one of godwit's own (`Op` first, `_lsn`, `_seq`, `_unchanged` last).
    fn position(schema: &Schema, name: &str) -> Option<usize> {
        let n = schema.fields().len();
        let meta = |i: usize| {
            let f = schema.field(i).name();
            (i == 0 && f == "Op")
                || (i + 3 >= n && matches!(f.as_str(), "_lsn" | "_seq" | "_unchanged"))
        };
        (0..n).find(|&i| schema.field(i).name() == name && !meta(i))
    }

    fn bind(&self, schema: &Schema) -> Result<Bound1, MissingColumn> {
        let c = &self.config;
        let col = |name: &str| -> Result<(usize, Render), MissingColumn> {
            let i = Self::position(schema, name).ok_or_else(|| MissingColumn {
                template: c.key.clone(),
                column: name.to_string(),
            })?;
            let field = schema.field(i);
            let render = match self.columns.iter().find(|(n, _)| n == name) {
                Some((_, t)) => Render::with_type(field, t),
                None => Render::new(field),
            };
            Ok((i, render))
        };
        let meta = |name: &str| schema.fields().iter().rposition(|f| f.name() == name);
        let names: Vec<String> = match &c.fields {
            Some(list) => list.clone(),
            None => self.columns.iter().map(|(n, _)| n.clone()).collect(),
        };
        let fields = names
            .into_iter()
            .map(|f| col(&f).map(|(i, r)| (f, i, r)))
            .collect::<Result<Vec<_>, _>>()?;
        let opt = |name: &Option<String>| name.as_deref().map(col).transpose();
        let lon_lat = match (opt(&c.longitude)?, opt(&c.latitude)?) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        Ok(Bound1 {
            key: Bound::new(&c.key, &self.key_prefix, schema)?,
            member: c
                .member
                .as_deref()
                .map(|m| Bound::new(m, "", schema))
                .transpose()?,
            channel: c
                .channel
                .as_deref()
                .map(|m| Bound::new(m, &self.key_prefix, schema))
                .transpose()?,
            fields,
            value: opt(&c.value)?,
            score: opt(&c.score)?,
            lon_lat,
            ttl_column: opt(&c.ttl_column)?.map(|(i, _)| i),
            op: schema
                .fields()
                .first()
                .filter(|f| f.name() == "Op" && f.data_type() == &DataType::Utf8)
                .map(|_| 0),
            lsn: meta("_lsn"),
            seq: meta("_seq"),
            unchanged: meta("_unchanged"),
        })
    }

    /// Adds the operations of every row of `batch` to `ops`. Rows whose key cannot be formed
    /// (a NULL in a key column) are counted in the returned number and skipped.
    pub fn encode(
        &mut self,
        batch: &RecordBatch,
        origin: Origin,
        companions: &Companions,
        ops: &mut Ops,
    ) -> Result<u64, MissingColumn> {
        self.encode_with_before(batch, None, origin, companions, ops)
    }

    /// [`Projector::encode`] with the before images of the batch's updates (same schema, row
    /// for row; see `Changes::before`): an update whose key or member differs from its before
    /// image's removes the old one first.
    pub fn encode_with_before(
        &mut self,
        batch: &RecordBatch,
        before: Option<&RecordBatch>,
        origin: Origin,
        companions: &Companions,
        ops: &mut Ops,
    ) -> Result<u64, MissingColumn> {
        let (ops_before, removals_before) = (ops.operations, ops.removals);
        let skipped = self.encode_rows(batch, before, origin, companions, ops)?;
        let removed = ops.removals - removals_before;
        self.counts.0 += ops.operations - ops_before - removed;
        self.counts.1 += removed;
        Ok(skipped)
    }

    /// [`Projector::counts`] as the state records them.
    pub fn recorded_counts(&self) -> crate::state::ProjectionCounts {
        crate::state::ProjectionCounts {
            projection: format!("{} {}", self.config.kind.as_str(), self.config.key),
            written: self.counts.0,
            removed: self.counts.1,
        }
    }

    fn encode_rows(
        &mut self,
        batch: &RecordBatch,
        before: Option<&RecordBatch>,
        origin: Origin,
        companions: &Companions,
        ops: &mut Ops,
    ) -> Result<u64, MissingColumn> {
        let before =
            before.filter(|bb| bb.schema() == batch.schema() && bb.num_rows() == batch.num_rows());
        let schema = batch.schema();
        if self.bound.as_ref().is_none_or(|(s, _)| s != &schema) {
            let b = self.bind(&schema)?;
            self.bound = Some((schema.clone(), b));
        }
        let (_, b) = self.bound.as_ref().expect("bound just now");
        let kind = self.config.kind;
        let cols = batch.columns();
        // The before image of row `row`, when it has one.
        let image = |row: usize| {
            let bb = before?;
            let op = bb.column(b.op?).as_string::<i32>();
            (op.value(row) == "B").then(|| bb.columns())
        };
        let mut old_key = Vec::new();
        let mut old_member = Vec::new();
        let mut key = Vec::new();
        let mut member = Vec::new();
        let mut buf = Vec::new();
        let mut spans: Vec<(usize, Option<(usize, usize)>)> = Vec::new();
        let mut scratch = Vec::new();
        let mut sets_kept: Vec<(&[u8], &[u8])> = Vec::new();
        let mut dels_kept: Vec<&[u8]> = Vec::new();
        let mut skipped = 0;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for row in 0..batch.num_rows() {
            let (op, mark) = row_op(b, cols, row, origin);
            if op == b'T' {
                // The writer splits batches at TRUNCATEs and applies them itself.
                continue;
            }
            let has_key = b.key.render(cols, row, &mut key);
            // An update that moved the row to another key or member (or to none: a NULL in a
            // templated column): the old one goes first.
            if let Some(oc) = image(row)
                && b.key.render(oc, row, &mut old_key)
            {
                let ver = version(mark);
                if let Some(m) = b.member.as_ref().filter(|_| kind.has_members()) {
                    let new_member = has_key && m.render(cols, row, &mut member);
                    if m.render(oc, row, &mut old_member)
                        && (!new_member || old_key != key || old_member != member)
                    {
                        let remove = member_removal(kind);
                        ops.remove_member(&old_key, &old_member, remove, &ver, companions);
                    }
                } else if !has_key || old_key != key {
                    match kind {
                        ProjectionKind::Hash => ops.delete(&old_key, None, &ver, companions),
                        ProjectionKind::String | ProjectionKind::Json => {
                            ops.delete(&old_key, Some(Companion::Version), &ver, companions)
                        }
                        ProjectionKind::Invalidate => ops.invalidate(&old_key),
                        _ => {}
                    }
                }
            }
            if !has_key {
                skipped += 1;
                continue;
            }
            let unchanged = unchanged_columns(b, cols, row);
            let expire = expire_of(&self.config, b, cols, row, now_ms);
            let deleting = op == b'D' || matches!(expire, Expire::Past);
            let ver = version(mark);
            match kind {
                ProjectionKind::Hash => {
                    if deleting {
                        ops.delete(&key, None, &ver, companions);
                        continue;
                    }
                    // Values rendered end to end in `buf`: (field, start, end) or NULL.
                    buf.clear();
                    spans.clear();
                    for (f, (name, i, render)) in b.fields.iter().enumerate() {
                        if unchanged.iter().any(|u| u == name) {
                            continue;
                        }
                        let start = buf.len();
                        if render.text(cols[*i].as_ref(), row, &mut buf) {
                            spans.push((f, Some((start, buf.len()))));
                        } else {
                            buf.truncate(start);
                            spans.push((f, None));
                        }
                    }
                    let name = |f: usize| b.fields[f].0.as_bytes();
                    // The lists reuse one allocation from row to row.
                    let mut sets = recycle_pairs(std::mem::take(&mut sets_kept));
                    sets.extend(
                        spans
                            .iter()
                            .filter_map(|&(f, v)| v.map(|(a, z)| (name(f), &buf[a..z]))),
                    );
                    let mut dels = recycle_names(std::mem::take(&mut dels_kept));
                    dels.extend(
                        spans
                            .iter()
                            .filter(|(_, v)| v.is_none())
                            .map(|&(f, _)| name(f)),
                    );
                    ops.hash(&key, &ver, &sets, &dels, expire, companions, &mut scratch);
                    sets_kept = recycle_pairs(sets);
                    dels_kept = recycle_names(dels);
                }
                ProjectionKind::String | ProjectionKind::Json => {
                    if deleting {
                        ops.delete(&key, Some(Companion::Version), &ver, companions);
                        continue;
                    }
                    buf.clear();
                    if kind == ProjectionKind::String {
                        let (i, render) = b.value.as_ref().expect("string has a value column");
                        let name = self.config.value.as_deref().unwrap_or_default();
                        if unchanged.iter().any(|u| u == name) {
                            // An unchanged TOASTed value: the cached one stays as it is.
                            continue;
                        }
                        if !render.text(cols[*i].as_ref(), row, &mut buf) {
                            // NULL has no string form: the key goes.
                            ops.delete(&key, Some(Companion::Version), &ver, companions);
                            continue;
                        }
                    } else {
                        if !unchanged.is_empty() {
                            // Columns whose value was not sent keep the cached document's.
                            let fields = b
                                .fields
                                .iter()
                                .map(|(name, i, render)| {
                                    let mut n = Vec::new();
                                    json_string(name.as_bytes(), &mut n);
                                    let value = (!unchanged.iter().any(|u| u == name)).then(|| {
                                        let mut v = Vec::new();
                                        render.json(cols[*i].as_ref(), row, &mut v);
                                        v
                                    });
                                    (n, value)
                                })
                                .collect();
                            ops.json_merge(&key, &ver, fields, expire, companions);
                            continue;
                        }
                        json_document(b, cols, row, &unchanged, &mut buf);
                    }
                    ops.value(&key, &ver, buf.clone(), expire, companions);
                }
                ProjectionKind::Zset | ProjectionKind::Set | ProjectionKind::Geo => {
                    let m = b.member.as_ref().expect("member template");
                    if !m.render(cols, row, &mut member) {
                        skipped += 1;
                        continue;
                    }
                    let remove = member_removal(kind);
                    if deleting {
                        ops.remove_member(&key, &member, remove, &ver, companions);
                        continue;
                    }
                    let mut values: Vec<Vec<u8>> = Vec::new();
                    let mut missing = false;
                    let mut text = |(i, r): &(usize, Render), values: &mut Vec<Vec<u8>>| {
                        buf.clear();
                        if r.text(cols[*i].as_ref(), row, &mut buf) {
                            values.push(buf.clone());
                        } else {
                            missing = true;
                        }
                    };
                    let command = match kind {
                        ProjectionKind::Zset => {
                            text(b.score.as_ref().expect("score column"), &mut values);
                            "ZADD"
                        }
                        ProjectionKind::Geo => {
                            let (lon, lat) = b.lon_lat.as_ref().expect("geo columns");
                            text(lon, &mut values);
                            text(lat, &mut values);
                            "GEOADD"
                        }
                        _ => "SADD",
                    };
                    if missing {
                        // No score or position: the member is not in the collection.
                        ops.remove_member(&key, &member, remove, &ver, companions);
                    } else {
                        ops.add_member(&key, &member, command, values, &ver, companions);
                    }
                }
                ProjectionKind::Invalidate => {
                    if matches!(origin, Origin::Changes) {
                        ops.invalidate(&key);
                    }
                }
                ProjectionKind::Stream => {
                    if matches!(origin, Origin::Changes) {
                        let mut entry: Vec<(Vec<u8>, Vec<u8>)> = vec![
                            (b"op".to_vec(), vec![op]),
                            (b"key".to_vec(), key.clone()),
                            (
                                b"lsn".to_vec(),
                                crate::pg::lsn::Lsn(mark.lsn).to_string().into_bytes(),
                            ),
                        ];
                        for (name, i, render) in &b.fields {
                            if unchanged.iter().any(|u| u == name) {
                                continue;
                            }
                            buf.clear();
                            if render.text(cols[*i].as_ref(), row, &mut buf) {
                                entry.push((name.clone().into_bytes(), buf.clone()));
                            }
                        }
                        ops.stream(&key, mark, self.config.maxlen, entry);
                    }
                }
                ProjectionKind::Publish => {
                    if matches!(origin, Origin::Changes) {
                        let ch = b.channel.as_ref().expect("channel template");
                        if !ch.render(cols, row, &mut member) {
                            skipped += 1;
                            continue;
                        }
                        buf.clear();
                        buf.extend_from_slice(b"{\"op\":\"");
                        buf.push(op);
                        buf.extend_from_slice(b"\",\"key\":");
                        json_string(&key, &mut buf);
                        buf.extend_from_slice(b",\"lsn\":\"");
                        buf.extend_from_slice(crate::pg::lsn::Lsn(mark.lsn).to_string().as_bytes());
                        buf.extend_from_slice(b"\",\"row\":");
                        let mut doc = Vec::new();
                        json_document(b, cols, row, &unchanged, &mut doc);
                        buf.extend_from_slice(&doc);
                        buf.push(b'}');
                        ops.publish(&member, buf.clone());
                    }
                }
            }
        }
        Ok(skipped)
    }
}

/// `v` emptied, its allocation kept for pairs that borrow something else (a collect into the
/// same layout reuses it).
fn recycle_pairs<'b>(mut v: Vec<(&[u8], &[u8])>) -> Vec<(&'b [u8], &'b [u8])> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

/// [`recycle_pairs`] for a list of names.
fn recycle_names<'b>(mut v: Vec<&[u8]>) -> Vec<&'b [u8]> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

/// The command that removes a member of a `set` (`SREM`) or a `zset`/`geo` (`ZREM`).
fn member_removal(kind: ProjectionKind) -> &'static str {
    if kind == ProjectionKind::Set {
        "SREM"
    } else {
        "ZREM"
    }
}

/// The row's operation (`I`, `U`, `D`, `T`) and version.
fn row_op(b: &Bound1, cols: &[ArrayRef], row: usize, origin: Origin) -> (u8, Mark) {
    match origin {
        Origin::Load(mark) => (b'I', mark),
        Origin::Changes => {
            let op =
                b.op.map(|i| cols[i].as_string::<i32>().value(row).as_bytes()[0])
                    .unwrap_or(b'I');
            let num = |c: Option<usize>| {
                c.map(|i| cols[i].as_primitive::<Int64Type>().value(row) as u64)
                    .unwrap_or(0)
            };
            (
                op,
                Mark {
                    lsn: num(b.lsn),
                    seq: num(b.seq),
                },
            )
        }
    }
}

/// Columns whose value was not sent (unchanged TOASTed values): the cache keeps its own.
fn unchanged_columns(b: &Bound1, cols: &[ArrayRef], row: usize) -> Vec<String> {
    let Some(i) = b.unchanged else {
        return Vec::new();
    };
    let list = cols[i].as_list::<i32>();
    if list.is_null(row) || list.value_length(row) == 0 {
        return Vec::new();
    }
    let names = list.value(row);
    let names = names.as_string::<i32>();
    (0..names.len())
        .map(|j| names.value(j).to_string())
        .collect()
}

/// The expiry of a row's key: fixed `ttl`, or `ttl_column`'s time (a past one deletes).
fn expire_of(p: &Projection, b: &Bound1, cols: &[ArrayRef], row: usize, now_ms: i64) -> Expire {
    if let Some(ttl) = p.ttl {
        return Expire::After(ttl.as_millis() as i64);
    }
    let Some(i) = b.ttl_column else {
        return Expire::Never;
    };
    let a = &cols[i];
    if a.is_null(row) {
        return Expire::Persist;
    }
    let ms = match a.data_type() {
        DataType::Timestamp(unit, _) => {
            let v = a
                .as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
                .map(|x| x.value(row))
                .unwrap_or(0);
            match unit {
                TimeUnit::Microsecond => v.div_euclid(1000),
                _ => v,
            }
        }
        DataType::Date32 => {
            a.as_primitive::<arrow::datatypes::Date32Type>().value(row) as i64 * 86_400_000
        }
        _ => return Expire::Never,
    };
    if ms <= now_ms {
        Expire::Past
    } else {
        Expire::At(ms)
    }
}

/// A row as a JSON object of the projection's fields (unchanged ones left out).
fn json_document(
    b: &Bound1,
    cols: &[ArrayRef],
    row: usize,
    unchanged: &[String],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(b'{');
    let mut first = true;
    for (name, i, render) in &b.fields {
        if unchanged.iter().any(|u| u == name) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json_string(name.as_bytes(), out);
        out.push(b':');
        render.json(cols[*i].as_ref(), row, out);
    }
    out.push(b'}');
}

/// `s` as a JSON string (UTF-8 assumed; invalid bytes replaced).
fn json_string(s: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(s);
    out.extend_from_slice(serde_json::to_string(&text).unwrap_or_default().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_the_mark_in_fixed_width_hex() {
        for (lsn, seq) in [(0, 0), (1, 2), (0x16B3748, 7), (u64::MAX, u64::MAX - 1)] {
            let v = version(Mark { lsn, seq });
            assert_eq!(&v[..], format!("{lsn:016X}{seq:016X}").as_bytes());
        }
        // Byte order is numeric order, which the script's string comparison relies on.
        let a = version(Mark { lsn: 0x9F, seq: 0 });
        let b = version(Mark { lsn: 0xA0, seq: 0 });
        assert!(a < b);
    }
}

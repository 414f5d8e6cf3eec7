//! Redis keys of a projection: key, member and channel templates bound to a batch's columns,
//! rendered row by row; and the keys godwit keeps beside a user's key — its version and its
//! tombstone — always in the user key's own hash slot, so one script can touch them together
//! in Redis Cluster.

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::Schema;

use super::conn::slot;
use crate::config::{TemplatePart, parse_template};
use crate::pg::types::render::Render;

/// What a `{column}` of a template refers to, bound to one batch schema.
enum Piece {
    Literal(Vec<u8>),
    Column { index: usize, render: Render },
}

/// A template bound to a schema: renders one row's key (or member, or channel).
pub struct Bound {
    prefix: Vec<u8>,
    pieces: Vec<Piece>,
}

/// A template names a column the batch does not have.
#[derive(Debug, thiserror::Error)]
#[error("template \"{template}\" names column \"{column}\", which the table does not have")]
pub struct MissingColumn {
    pub template: String,
    pub column: String,
}

impl Bound {
    /// Binds `template` (already validated by the configuration) to `schema`; `prefix` is the
    /// `[cache] key_prefix` (empty for members and channels that take none).
    pub fn new(template: &str, prefix: &str, schema: &Schema) -> Result<Bound, MissingColumn> {
        let parts = parse_template(template).unwrap_or_default();
        let mut pieces = Vec::new();
        for part in parts {
            match part {
                TemplatePart::Literal(text) => pieces.push(Piece::Literal(text.into_bytes())),
                TemplatePart::Column(name) => {
                    let index = schema.index_of(&name).map_err(|_| MissingColumn {
                        template: template.to_string(),
                        column: name.clone(),
                    })?;
                    let render = Render::new(schema.field(index));
                    pieces.push(Piece::Column { index, render });
                }
            }
        }
        Ok(Bound {
            prefix: prefix.as_bytes().to_vec(),
            pieces,
        })
    }

    /// The columns (batch positions) the template reads.
    pub fn columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Column { index, .. } => Some(*index),
            Piece::Literal(_) => None,
        })
    }

    /// Row `row` rendered into `out` (cleared first); false when a column it reads is NULL
    /// (such a row has no key).
    pub fn render(&self, columns: &[ArrayRef], row: usize, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.extend_from_slice(&self.prefix);
        for p in &self.pieces {
            match p {
                Piece::Literal(b) => out.extend_from_slice(b),
                Piece::Column { index, render } => {
                    let array: &dyn Array = columns[*index].as_ref();
                    if !render.text(array, row, out) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// What godwit keeps beside a user's key. Each lives in the key's hash slot: its name starts
/// with `<key_prefix>godwit:<what>:{<tag>}:` where `<tag>` is a short text whose slot is the
/// key's slot, then the key itself (so the name is unique and readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Companion {
    /// The version (`_lsn`, `_seq`) of a `string` or `json` value.
    Version,
    /// A deleted key's or member's last version, kept for a while so that no replay or
    /// re-warm older than the delete brings it back.
    Tombstone,
    /// The versions of a `zset`, `set` or `geo` key's members (a hash: member → version).
    Members,
}

impl Companion {
    fn word(self) -> &'static [u8] {
        match self {
            Companion::Version => b"v",
            Companion::Tombstone => b"t",
            Companion::Members => b"m",
        }
    }
}

/// Names companions of keys; `prefix` is `[cache] key_prefix`.
pub struct Companions {
    prefix: Vec<u8>,
    /// For each of the 16384 slots, a short tag that hashes to it.
    tags: Vec<Box<[u8]>>,
}

impl Companions {
    pub fn new(prefix: &str) -> Companions {
        Companions {
            prefix: prefix.as_bytes().to_vec(),
            tags: slot_tags(),
        }
    }

    /// The companion `what` of `key` (a whole key, prefix included), into `out`; for a
    /// member tombstone `member` is appended after a NUL.
    pub fn name(&self, what: Companion, key: &[u8], member: Option<&[u8]>, out: &mut Vec<u8>) {
        self.name_in(slot(key), what, key, member, out);
    }

    /// [`Companions::name`] when the key's slot is known already.
    pub fn name_in(
        &self,
        slot: u16,
        what: Companion,
        key: &[u8],
        member: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"godwit:");
        out.extend_from_slice(what.word());
        out.extend_from_slice(b":{");
        out.extend_from_slice(&self.tags[slot as usize]);
        out.extend_from_slice(b"}:");
        out.extend_from_slice(key.strip_prefix(&self.prefix[..]).unwrap_or(key));
        if let Some(m) = member {
            out.push(0);
            out.extend_from_slice(m);
        }
    }
}

impl Companions {
    /// The high-water key of group `group` (a lane of a standalone server) of `pipeline`: the
    /// newest version the pipeline's changes wrote to keys of that group (see `apply.lua`).
    pub fn high_water(&self, group: u16, pipeline: &str) -> Vec<u8> {
        let mut out = self.prefix.clone();
        out.extend_from_slice(b"godwit:w:{");
        out.extend_from_slice(&self.tags[group as usize]);
        out.extend_from_slice(b"}:");
        out.extend_from_slice(pipeline.as_bytes());
        out
    }
}

/// One tag per hash slot: the first of `0`…`z`, `00`…`zz`, `000`…`zzzz` that hashes there. Every
/// slot is covered within four characters.
fn slot_tags() -> Vec<Box<[u8]>> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut tags: Vec<Box<[u8]>> = vec![Box::default(); 16384];
    let mut left = tags.len();
    for len in 1..=4u32 {
        for mut n in 0..ALPHABET.len().pow(len) {
            let mut tag = vec![0u8; len as usize];
            for c in tag.iter_mut().rev() {
                *c = ALPHABET[n % ALPHABET.len()];
                n /= ALPHABET.len();
            }
            let t = &mut tags[slot(&tag) as usize];
            if t.is_empty() {
                *t = tag.into_boxed_slice();
                left -= 1;
                if left == 0 {
                    return tags;
                }
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag_of_at_most_four_characters() {
        let tags = slot_tags();
        assert_eq!(tags.len(), 16384);
        for (s, t) in tags.iter().enumerate() {
            assert!(!t.is_empty() && t.len() <= 4, "slot {s}");
            assert_eq!(slot(t) as usize, s);
        }
    }

    #[test]
    fn companions_share_the_slot_of_their_key() {
        let c = Companions::new("app:");
        let mut out = Vec::new();
        for key in [
            &b"app:user:42"[..],
            b"app:user:{42}:p",
            b"app:odd{}key",
            b"app:a{b",
            b"app:{}",
        ] {
            for what in [Companion::Version, Companion::Tombstone, Companion::Members] {
                c.name(what, key, Some(b"m1"), &mut out);
                assert_eq!(slot(&out), slot(key), "{}", String::from_utf8_lossy(&out));
                assert!(out.starts_with(b"app:godwit:"));
            }
        }
        c.name(Companion::Version, b"app:user:42", None, &mut out);
        let name = String::from_utf8_lossy(&out).to_string();
        assert!(name.ends_with("}:user:42"), "{name}");
    }
}

//! The pgoutput logical replication protocol (version 1): bytes of one `XLogData` payload →
//! a typed message. Values are borrowed from the payload; nothing is copied until a value is
//! appended to an Arrow builder.

use crate::pg::lsn::Lsn;

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    /// An unchanged TOASTed value that was not sent (`u`): never to be read as NULL.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// Which old tuple an update or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity key columns (others NULL).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
}

/// A table's description, sent before its first change in a session and after DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        final_lsn: Lsn,
        /// Commit time, microseconds since 1970.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        schema: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Value<'a>>,
    },
    Update {
        relation: u32,
        old: Option<(OldTuple, Vec<Value<'a>>)>,
        new: Vec<Value<'a>>,
    },
    Delete {
        relation: u32,
        kind: OldTuple,
        old: Vec<Value<'a>>,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: &'a [u8],
    },
}

/// A payload that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| DecodeError(format!("{what} runs past the end")))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Room for `count` items that take at least `min_size` bytes each: a count read off the
    /// wire never reserves more than the rest of the message can hold.
    fn capacity(&self, count: i32, min_size: usize) -> usize {
        let count = usize::try_from(count).unwrap_or(0);
        count.min((self.buf.len() - self.pos) / min_size)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(self.i32(what)? as u32)
    }

    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        Ok(i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn lsn(&mut self, what: &str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(what)? as u64))
    }

    fn time(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(self.i64(what)?.saturating_add(PG_EPOCH_MICROS))
    }

    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError(format!("{what} is not terminated")))?;
        let s = String::from_utf8(rest[..nul].to_vec())
            .map_err(|_| DecodeError(format!("{what} is not UTF-8")))?;
        self.pos += nul + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Value<'a>>, DecodeError> {
        let n = self.i16("tuple column count")?;
        // Each value takes at least its kind byte.
        let mut values = Vec::with_capacity(self.capacity(n.into(), 1));
        for _ in 0..n {
            values.push(match self.u8("tuple value kind")? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                kind @ (b't' | b'b') => {
                    let len = self.i32("value length")?;
                    let len = usize::try_from(len)
                        .map_err(|_| DecodeError("negative value length".into()))?;
                    let bytes = self.take(len, "value")?;
                    if kind == b't' {
                        Value::Text(bytes)
                    } else {
                        Value::Binary(bytes)
                    }
                }
                other => return Err(DecodeError(format!("unknown value kind {other:#x}"))),
            });
        }
        Ok(values)
    }

    fn old_kind(&mut self, tag: u8) -> Result<OldTuple, DecodeError> {
        match tag {
            b'K' => Ok(OldTuple::Key),
            b'O' => Ok(OldTuple::Full),
            other => Err(DecodeError(format!("unknown old tuple kind {other:#x}"))),
        }
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut c = Cursor { buf, pos: 0 };
    let tag = c.u8("message tag")?;
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: c.lsn("final LSN")?,
            commit_time: c.time("commit time")?,
            xid: c.u32("xid")?,
        },
        b'C' => {
            let _flags = c.u8("commit flags")?;
            Message::Commit {
                lsn: c.lsn("commit LSN")?,
                end_lsn: c.lsn("end LSN")?,
                commit_time: c.time("commit time")?,
            }
        }
        b'O' => Message::Origin {
            lsn: c.lsn("origin LSN")?,
            name: c.string("origin name")?,
        },
        b'R' => {
            let oid = c.u32("relation id")?;
            let schema = c.string("namespace")?;
            let name = c.string("relation name")?;
            let replica_identity = c.u8("replica identity")?;
            let n = c.i16("column count")?;
            // flags, name terminator, type, typmod
            let mut columns = Vec::with_capacity(c.capacity(n.into(), 10));
            for _ in 0..n {
                columns.push(RelationColumn {
                    is_key: c.u8("column flags")? & 1 == 1,
                    name: c.string("column name")?,
                    type_oid: c.u32("column type")?,
                    typmod: c.i32("column typmod")?,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: c.u32("type id")?,
            schema: c.string("type namespace")?,
            name: c.string("type name")?,
        },
        b'I' => {
            let relation = c.u32("relation id")?;
            match c.u8("new tuple tag")? {
                b'N' => Message::Insert {
                    relation,
                    new: c.tuple()?,
                },
                other => {
                    return Err(DecodeError(format!(
                        "insert without a new tuple ({other:#x})"
                    )));
                }
            }
        }
        b'U' => {
            let relation = c.u32("relation id")?;
            let mut tag = c.u8("update tuple tag")?;
            let mut old = None;
            if tag == b'K' || tag == b'O' {
                let kind = c.old_kind(tag)?;
                old = Some((kind, c.tuple()?));
                tag = c.u8("new tuple tag")?;
            }
            if tag != b'N' {
                return Err(DecodeError(format!(
                    "update without a new tuple ({tag:#x})"
                )));
            }
            Message::Update {
                relation,
                old,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let relation = c.u32("relation id")?;
            let tag = c.u8("old tuple tag")?;
            let kind = c.old_kind(tag)?;
            Message::Delete {
                relation,
                kind,
                old: c.tuple()?,
            }
        }
        b'T' => {
            let n = c.i32("relation count")?;
            let options = c.u8("truncate options")?;
            let mut relations = Vec::with_capacity(c.capacity(n, 4));
            for _ in 0..n {
                relations.push(c.u32("relation id")?);
            }
            Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'M' => {
            let transactional = c.u8("message flags")? & 1 == 1;
            let lsn = c.lsn("message LSN")?;
            let prefix = c.string("message prefix")?;
            let len = c.i32("message length")?;
            let len =
                usize::try_from(len).map_err(|_| DecodeError("negative message length".into()))?;
            Message::Message {
                transactional,
                lsn,
                prefix,
                content: c.take(len, "message content")?,
            }
        }
        other => return Err(DecodeError(format!("unknown message tag {other:#x}"))),
    };
    if c.pos != buf.len() {
        return Err(DecodeError(format!(
            "{} bytes left after a {:?} message",
            buf.len() - c.pos,
            tag as char
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> Vec<u8> {
        let mut b = vec![b't'];
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
        b
    }

    #[test]
    fn update_with_old_key_and_unchanged_toast() {
        let mut m = vec![b'U'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.push(b'K');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.extend(text("7"));
        m.push(b'n');
        m.push(b'N');
        m.extend_from_slice(&3i16.to_be_bytes());
        m.extend(text("8"));
        m.push(b'u');
        m.push(b'n');
        let got = decode(&m).unwrap();
        assert_eq!(
            got,
            Message::Update {
                relation: 16384,
                old: Some((OldTuple::Key, vec![Value::Text(b"7"), Value::Null])),
                new: vec![Value::Text(b"8"), Value::Unchanged, Value::Null],
            }
        );
    }

    #[test]
    fn relation_begin_commit_truncate() {
        let mut r = vec![b'R'];
        r.extend_from_slice(&42u32.to_be_bytes());
        r.extend_from_slice(b"public\0orders\0");
        r.push(b'd');
        r.extend_from_slice(&1i16.to_be_bytes());
        r.push(1);
        r.extend_from_slice(b"id\0");
        r.extend_from_slice(&20u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&r).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.name, "orders");
        assert!(rel.columns[0].is_key);
        assert_eq!(rel.columns[0].type_oid, 20);

        let mut b = vec![b'B'];
        b.extend_from_slice(&0x10u64.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(&b).unwrap(),
            Message::Begin {
                final_lsn: Lsn(0x10),
                commit_time: PG_EPOCH_MICROS,
                xid: 7
            }
        );

        let mut t = vec![b'T'];
        t.extend_from_slice(&2i32.to_be_bytes());
        t.push(1);
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            decode(&t).unwrap(),
            Message::Truncate {
                relations: vec![1, 2],
                cascade: true,
                restart_identity: false
            }
        );
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"Z",
            b"I\0\0\0\x01N\0\x01t\0\0\0\x09ab",
            b"B\0\0",
            b"U\0\0\0\x01X",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // Every prefix of a valid message is an error, never a panic.
        let mut m = vec![b'I'];
        m.extend_from_slice(&1u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&1i16.to_be_bytes());
        m.extend(text("hello"));
        assert!(decode(&m).is_ok());
        for n in 0..m.len() {
            assert!(decode(&m[..n]).is_err());
        }
    }

    #[test]
    fn claimed_counts_reserve_no_more_than_the_message_holds() {
        let c = Cursor {
            buf: &[0; 10],
            pos: 2,
        };
        assert_eq!(c.capacity(i32::MAX, 4), 2);
        assert_eq!(c.capacity(1, 4), 1);
        assert_eq!(c.capacity(-5, 1), 0);
        // Truncate claiming 2^31-1 relations with one id: an error, not an 8 GiB reservation.
        let mut t = vec![b'T'];
        t.extend_from_slice(&i32::MAX.to_be_bytes());
        t.push(0);
        t.extend_from_slice(&1u32.to_be_bytes());
        assert!(decode(&t).is_err());
    }
}

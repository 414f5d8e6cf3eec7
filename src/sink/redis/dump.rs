//! A hash serialized the way Redis's `DUMP` serializes one (a listpack inside an RDB value,
//! then the RDB version and a CRC-64), for `RESTORE`: the first warm of an empty keyspace hands
//! Redis each hash whole instead of field by field, which costs the server about half the work
//! of an `HSET` into a new key. Only servers that proved at a probe that they read it back
//! as written get these (see `CacheTarget::restore_limits`).

/// `RDB_TYPE_HASH_LISTPACK`.
const HASH_LISTPACK: u8 = 16;
/// RDB version 10 (Redis 7.0), the first with listpack hashes; later servers read it too.
const RDB_VERSION: u16 = 10;

/// What a server keeps as a listpack hash (`hash-max-listpack-entries`, `-value`): a larger
/// hash is written with `HSET`, so that the server encodes it as it would any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listpack {
    pub entries: usize,
    pub value: usize,
}

impl Listpack {
    /// Whether a hash of `fields` and one more field of `extra` bytes fits: not more fields
    /// than `entries`, no name or value longer than `value`.
    pub fn fits(&self, fields: &[(&[u8], &[u8])], extra: usize) -> bool {
        fields.len() < self.entries
            && extra <= self.value
            && fields
                .iter()
                .all(|(f, v)| f.len() <= self.value && v.len() <= self.value)
    }
}

/// The `DUMP` payload of a hash with `fields` then `last` (names unique), into `out` (cleared
/// first).
pub fn hash(fields: &[(&[u8], &[u8])], last: Option<(&[u8], &[u8])>, out: &mut Vec<u8>) {
    let all = || fields.iter().copied().chain(last);
    let body: usize = all()
        .map(|(f, v)| entry_size(f.len()) + entry_size(v.len()))
        .sum();
    // Header: total bytes (u32) and number of elements (u16); then the entries and 0xFF.
    let total = 6 + body + 1;
    let elements = 2 * (fields.len() + usize::from(last.is_some()));
    out.clear();
    out.reserve(1 + 9 + total + 10);
    out.push(HASH_LISTPACK);
    rdb_length(total, out);
    out.extend_from_slice(&(total as u32).to_le_bytes());
    let count = if elements < u16::MAX as usize {
        elements as u16
    } else {
        u16::MAX
    };
    out.extend_from_slice(&count.to_le_bytes());
    for (f, v) in all() {
        entry(f, out);
        entry(v, out);
    }
    out.push(0xFF);
    out.extend_from_slice(&RDB_VERSION.to_le_bytes());
    let crc = crc64(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// A listpack string entry's size: encoding, bytes, back-length.
fn entry_size(len: usize) -> usize {
    let head = if len < 64 {
        1
    } else if len < 4096 {
        2
    } else {
        5
    };
    head + len + backlen_size(head + len)
}

fn backlen_size(l: usize) -> usize {
    match l {
        0..=127 => 1,
        128..=16382 => 2,
        16383..=2097150 => 3,
        2097151..=268435454 => 4,
        _ => 5,
    }
}

/// A listpack string entry (always a string: the server reads `5` back as `5` whether it keeps
/// it as text or as a number).
fn entry(s: &[u8], out: &mut Vec<u8>) {
    let len = s.len();
    let head = if len < 64 {
        out.push(0x80 | len as u8);
        1
    } else if len < 4096 {
        out.push(0xE0 | (len >> 8) as u8);
        out.push((len & 0xFF) as u8);
        2
    } else {
        out.push(0xF0);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        5
    };
    out.extend_from_slice(s);
    // The entry's length again, read from the right: 7 bits a byte, the high bit set on all
    // but the leftmost.
    let l = head + len;
    let n = backlen_size(l);
    for i in (0..n).rev() {
        let bits = ((l >> (7 * i)) & 127) as u8;
        out.push(if i == n - 1 { bits } else { bits | 128 });
    }
}

/// An RDB length: 6 bits, 14 bits, or a 32/64-bit big-endian number after a marker.
fn rdb_length(len: usize, out: &mut Vec<u8>) {
    if len < 64 {
        out.push(len as u8);
    } else if len < 16384 {
        out.push(0x40 | (len >> 8) as u8);
        out.push((len & 0xFF) as u8);
    } else if len <= u32::MAX as usize {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// CRC-64/Jones as Redis computes it (reflected, polynomial 0xad93d23594c935a9, initial 0),
/// eight bytes at a time: table `k` advances a byte's contribution by `k` more bytes.
const CRC64_TABLES: [[u64; 256]; 8] = {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x95AC_9329_AC4B_C9B5
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

fn crc64(data: &[u8]) -> u64 {
    let t = &CRC64_TABLES;
    let mut crc = 0u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let x = crc ^ u64::from_le_bytes(w.try_into().expect("8 bytes"));
        crc = t[7][(x & 0xFF) as usize]
            ^ t[6][((x >> 8) & 0xFF) as usize]
            ^ t[5][((x >> 16) & 0xFF) as usize]
            ^ t[4][((x >> 24) & 0xFF) as usize]
            ^ t[3][((x >> 32) & 0xFF) as usize]
            ^ t[2][((x >> 40) & 0xFF) as usize]
            ^ t[1][((x >> 48) & 0xFF) as usize]
            ^ t[0][(x >> 56) as usize];
    }
    for &b in words.remainder() {
        crc = t[0][((crc ^ b as u64) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_redis_s() {
        // The check value of CRC-64/Jones (Redis's crc64.c self-test).
        assert_eq!(crc64(b"123456789"), 0xe9c6d914c4b8d9ca);
        // Eight bytes at a time and one at a time agree, whatever the length.
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 % 251) as u8).collect();
        for n in 0..data.len() {
            let one = data[..n].iter().fold(0u64, |crc, &b| {
                CRC64_TABLES[0][((crc ^ b as u64) & 0xFF) as usize] ^ (crc >> 8)
            });
            assert_eq!(crc64(&data[..n]), one, "{n} bytes");
        }
    }

    #[test]
    fn a_small_hash_is_a_listpack_of_short_strings() {
        let mut out = Vec::new();
        hash(&[], Some((b"a", b"1")), &mut out);
        let lp = [
            13, 0, 0, 0, 2, 0, // 13 bytes, 2 elements
            0x81, b'a', 2, // "a", back-length 2
            0x81, b'1', 2, 0xFF,
        ];
        let mut want = vec![HASH_LISTPACK, 13];
        want.extend_from_slice(&lp);
        want.extend_from_slice(&[10, 0]);
        let crc = crc64(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn longer_strings_take_longer_headers_and_back_lengths() {
        let long = vec![b'x'; 200];
        let mut e = Vec::new();
        entry(&long, &mut e);
        // 12-bit header, then the back-length of 202 in two bytes (leftmost without the flag).
        assert_eq!(&e[..2], &[0xE0, 200]);
        assert_eq!(&e[202..], &[202 >> 7, (202 & 127) | 128]);
        assert_eq!(e.len(), entry_size(200));
        let mut out = Vec::new();
        rdb_length(300, &mut out);
        assert_eq!(out, [0x41, 0x2C]);
        out.clear();
        rdb_length(70000, &mut out);
        assert_eq!(out, [0x80, 0, 1, 0x11, 0x70]);
    }
}

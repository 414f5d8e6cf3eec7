//! Log sequence numbers: PostgreSQL's `X/Y` form, and the 16-hex-digit form of object names.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// 16 uppercase hex digits, so names sort in WAL order (SPEC §4).
    pub fn to_hex16(self) -> String {
        format!("{:016X}", self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN (X/Y)"))?;
        let part = |p: &str| u32::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not an LSN"));
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(l.to_hex16(), "00000016B374D848");
        assert!("16-B3".parse::<Lsn>().is_err());
        assert!(Lsn(1) < Lsn(0x1_0000_0000));
    }
}

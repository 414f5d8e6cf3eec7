//! Object names, as DMS lays them out (SPEC §4): `<schema>/<table>/LOAD00000001.parquet` for
//! the full load, `<schema>/<table>/[yyyy/mm/dd/]<YYYYMMDD-HHMMSSmmm>-<first LSN>-<last LSN>.parquet`
//! for CDC.

use crate::pg::catalog::TableName;

/// Escapes a schema or table name for use as one key segment, so that every name is one
/// ordinary folder inside the target: `/` (and `%`, so the escaping can be undone) are
/// percent-encoded, and so is a leading `.` — `.` and `..` are no path steps then, and no
/// table folder is hidden like the temporary files are. An empty name (PostgreSQL has none)
/// becomes `%00`, and `_godwit` (godwit's own folder for state and staging) `%5Fgodwit`. Everything else is kept as it is, as DMS does.
pub fn segment(name: &str) -> String {
    if name.is_empty() {
        return "%00".into();
    }
    let escaped = name.replace('%', "%25").replace('/', "%2F");
    if escaped == "_godwit" {
        // godwit's own folder (state, staging) beside the schemas.
        return "%5Fgodwit".into();
    }
    match escaped.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => escaped,
    }
}

/// `<schema>/<table>/`
pub fn table_prefix(table: &TableName) -> String {
    format!("{}/{}/", segment(&table.schema), segment(&table.name))
}

/// The table folder (`<schema>/<table>/`) of an object key this layout made; `None` for a
/// key whose folders no [`segment`] gives (such as `..`, from an older version's record).
pub fn table_prefix_of(key: &str) -> Option<String> {
    let mut parts = key.splitn(3, '/');
    let ok = |s: &str| !s.is_empty() && !s.starts_with('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(schema), Some(table), Some(_)) if ok(schema) && ok(table) => {
            Some(format!("{schema}/{table}/"))
        }
        _ => None,
    }
}

/// True when `rest`, a key below a table prefix, is a file of that table: in its folder or
/// in one of its date folders (see [`date_folder`]) — not in a folder some other pipeline
/// whose prefix lies inside this table's folder could own.
pub fn in_table_folder(rest: &str) -> bool {
    let folders: Vec<&str> = rest.split('/').collect();
    let folders = &folders[..folders.len() - 1];
    folders.len() <= 4
        && folders
            .iter()
            .enumerate()
            .all(|(level, name)| is_date_folder(level, name))
}

/// True when `name` can be the folder at `level` (0 = year) of a date folder path
/// `yyyy/mm/dd/[hh/]`.
pub fn is_date_folder(level: usize, name: &str) -> bool {
    let digits = match level {
        0 => 4,
        1..=3 => 2,
        _ => return false,
    };
    name.len() == digits && name.bytes().all(|b| b.is_ascii_digit())
}

/// A full-load file: `LOAD` + 8 uppercase hex digits, `SEGMENT<n>_` for parallel segments.
pub fn load_file(table: &TableName, segment_no: Option<u32>, number: u32, ext: &str) -> String {
    let seg = segment_no
        .map(|s| format!("SEGMENT{s}_"))
        .unwrap_or_default();
    format!("{}{seg}LOAD{number:08X}.{ext}", table_prefix(table))
}

/// True for the file name (last key segment) of a full-load file.
pub fn is_load_file(file_name: &str) -> bool {
    let rest = match file_name.strip_prefix("SEGMENT") {
        Some(r) => match r.find("_LOAD") {
            Some(i) if r[..i].bytes().all(|b| b.is_ascii_digit()) => &r[i + 1..],
            _ => return false,
        },
        None => file_name,
    };
    rest.strip_prefix("LOAD")
        .and_then(|r| r.get(..8))
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A CDC file: written at `written_ms` (ms since 1970), holding commits `first..=last`, in
/// the date folder `partition` (`""` or `yyyy/mm/dd/…/`).
pub fn cdc_file(
    table: &TableName,
    partition: &str,
    written_ms: i64,
    first: u64,
    last: u64,
    ext: &str,
) -> String {
    let time = chrono::DateTime::from_timestamp_millis(written_ms)
        .unwrap_or_default()
        .format("%Y%m%d-%H%M%S%3f");
    format!(
        "{}{partition}{time}-{first:016X}-{last:016X}.{ext}",
        table_prefix(table)
    )
}

/// The first and last LSN of a CDC file name (last key segment); `None` for other files.
pub fn parse_cdc_file(file_name: &str) -> Option<(u64, u64)> {
    let stem = file_name.split('.').next()?;
    let parts: Vec<&str> = stem.split('-').collect();
    let [date, time, first, last] = parts[..] else {
        return None;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(date, 8) || !digits(time, 9) || first.len() != 16 || last.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(first, 16).ok()?,
        u64::from_str_radix(last, 16).ok()?,
    ))
}

/// The date folder of a commit time (µs since 1970) under `date_partitioning`.
pub fn date_folder(commit_micros: i64, hourly: bool) -> String {
    let t = chrono::DateTime::from_timestamp_micros(commit_micros).unwrap_or_default();
    if hourly {
        t.format("%Y/%m/%d/%H/").to_string()
    } else {
        t.format("%Y/%m/%d/").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = TableName::new("My Schema", "a/b%c");
        assert_eq!(
            load_file(&t, None, 26, "parquet"),
            "My Schema/a%2Fb%25c/LOAD0000001A.parquet"
        );
        assert_eq!(
            load_file(&t, Some(3), 1, "csv"),
            "My Schema/a%2Fb%25c/SEGMENT3_LOAD00000001.csv"
        );
        assert!(is_load_file("LOAD0000001A.parquet"));
        assert!(is_load_file("SEGMENT12_LOAD00000001.csv"));
        assert!(!is_load_file("20261127-000000000-0-0.parquet"));
        assert!(!is_load_file("LOADX.parquet"));
    }

    #[test]
    fn path_syntax_is_encoded() {
        let folder = |s: &str, t: &str| table_prefix(&TableName::new(s, t));
        assert_eq!(folder("..", ".."), "%2E./%2E./");
        assert_eq!(folder(".", "."), "%2E/%2E/");
        assert_eq!(folder("public", ".x"), "public/%2Ex/");
        assert_eq!(folder("public", "..."), "public/%2E../");
        assert_eq!(folder("", "a"), "%00/a/");
        // godwit's own folder is never a schema's.
        assert_eq!(folder("_godwit", "state"), "%5Fgodwit/state/");
        assert_eq!(folder("_godwit2", "t"), "_godwit2/t/");
        // Ordinary names, dots inside included, stay as they are.
        assert_eq!(folder("public", "a.b.."), "public/a.b../");
        assert_eq!(folder("My Schema", "Order Items"), "My Schema/Order Items/");
        // Encoded names never collide with each other.
        assert_ne!(segment(".x"), segment("%2Ex"));
        assert_eq!(segment("%2Ex"), "%252Ex");
    }

    #[test]
    fn table_folders() {
        let t = TableName::new(".", "a/b");
        assert_eq!(
            table_prefix_of(&load_file(&t, Some(2), 1, "csv")),
            Some(table_prefix(&t))
        );
        assert_eq!(
            table_prefix_of("s/t/2026/01/02/x.parquet"),
            Some("s/t/".into())
        );
        assert_eq!(table_prefix_of("s/t"), None);
        assert_eq!(table_prefix_of("../../LOAD00000001.parquet"), None);
        assert_eq!(table_prefix_of("s//LOAD00000001.parquet"), None);
        assert!(in_table_folder("LOAD00000001.parquet"));
        assert!(in_table_folder(".LOAD00000001.parquet.x.godwit-tmp"));
        assert!(in_table_folder("2026/01/02/x.parquet"));
        assert!(in_table_folder("2026/01/02/03/x.parquet"));
        assert!(!in_table_folder("public/b/LOAD00000001.parquet"));
        assert!(!in_table_folder("2026/01/02/03/04/x.parquet"));
        assert!(!in_table_folder("2026/1/02/x.parquet"));
        assert!(!in_table_folder("nested/2026/01/02/x.parquet"));
    }

    #[test]
    fn cdc_names() {
        let t = TableName::new("public", "orders");
        let key = cdc_file(
            &t,
            "2026/11/18/",
            1_795_000_000_123,
            0x16B3748,
            0x1_0000_0000,
            "parquet",
        );
        assert_eq!(
            key,
            "public/orders/2026/11/18/20261118-110640123-00000000016B3748-0000000100000000.parquet"
        );
        let name = key.rsplit('/').next().unwrap();
        assert_eq!(parse_cdc_file(name), Some((0x16B3748, 0x1_0000_0000)));
        assert_eq!(parse_cdc_file("LOAD00000001.parquet"), None);
        assert_eq!(date_folder(1_795_000_000_123_000, true), "2026/11/18/11/");
    }
}

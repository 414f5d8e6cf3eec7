//! Object names, as DMS lays them out (SPEC §4): `<schema>/<table>/LOAD00000001.parquet`.

use crate::pg::catalog::TableName;

/// Escapes a schema or table name for use as one key segment: `/` (and `%`, so the
/// escaping can be undone) are percent-encoded; everything else is kept as it is.
pub fn segment(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// `<schema>/<table>/`
pub fn table_prefix(table: &TableName) -> String {
    format!("{}/{}/", segment(&table.schema), segment(&table.name))
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
}

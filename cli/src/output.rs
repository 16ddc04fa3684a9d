//! Output formatting: aligned tables for people, JSON/YAML for scripts.
//!
//! Every function here returns the text to print; commands decide where it goes. JSON and YAML
//! show resources as objects with the proto's snake_case field names, enums by their proto names
//! and maps as objects. Tables show short enum names (`leader`, `created`) and readable times.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::args::Format;
use crate::error::CliError;

/// A resource that can be shown as a table row (in lists) or a Field/Value table (alone).
pub trait Tabular: Serialize {
    /// Column headers of list output.
    fn columns() -> &'static [&'static str];
    /// One cell per column.
    fn row(&self) -> Vec<String>;
    /// Every field, for `show`.
    fn fields(&self) -> Vec<(&'static str, String)>;
}

/// A list of resources: a table with a header, or a JSON/YAML array.
pub fn list<T: Tabular>(format: Format, items: &[T]) -> Result<String, CliError> {
    match format {
        Format::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(Tabular::row).collect();
            Ok(table(T::columns(), &rows))
        }
        _ => structured(format, &items),
    }
}

/// One resource: a Field/Value table, or a JSON/YAML object.
pub fn show<T: Tabular>(format: Format, item: &T) -> Result<String, CliError> {
    match format {
        Format::Table => Ok(fields_table(&item.fields())),
        _ => structured(format, item),
    }
}

/// `value` as pretty JSON or YAML (each ending with a newline); `Format::Table` gives JSON.
pub fn structured<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<String, CliError> {
    match format {
        Format::Yaml => Ok(serde_yaml::to_string(value)?),
        _ => {
            let mut text = serde_json::to_string_pretty(value)?;
            text.push('\n');
            Ok(text)
        }
    }
}

/// A Field/Value table.
pub fn fields_table(fields: &[(&'static str, String)]) -> String {
    let rows: Vec<Vec<String>> = fields
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.clone()])
        .collect();
    table(&["FIELD", "VALUE"], &rows)
}

/// Left-aligned columns separated by two spaces, with a header line. Cells are made safe for
/// a terminal (control characters escaped) and trailing spaces are trimmed.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| sanitize(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Escapes control characters (newlines, escape sequences) so a value stays on its line and
/// cannot drive the terminal.
pub fn sanitize(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `k1=v1, k2=v2` in key order.
pub fn map_cell(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ROLE_PRE_CANDIDATE` → `pre-candidate` (for tables).
pub fn short_enum(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// A byte count for people: `512 B`, `1.5 KiB`, `20.0 GiB` (binary units, one decimal).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration for people: `850ms`, `12.3s`, `4m 05s`, `2h 03m`, `3d 04h`; negative values
/// (unknown) print as `-`.
pub fn human_duration_ms(ms: i64) -> String {
    if ms < 0 {
        return "-".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else {
        format!("{m}m {s:02}s")
    }
}

/// One line of a streamed table: each cell padded to its fixed width (rows are printed before
/// later ones are known; a longer value simply pushes the rest of the line), two spaces apart,
/// control characters escaped, trailing spaces trimmed.
pub fn fixed_line(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (cell, width) in cells.iter().zip(widths) {
        let cell = sanitize(cell);
        let pad = width.saturating_sub(cell.chars().count());
        line.push_str(&cell);
        line.extend(std::iter::repeat_n(' ', pad + 2));
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2024-05-01T12:00:00.123Z`); empty for 0.
pub fn format_time_ms(ms: i64) -> String {
    if ms == 0 {
        return String::new();
    }
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Thing {
        id: String,
        size: u32,
        labels: BTreeMap<String, String>,
    }

    impl Tabular for Thing {
        fn columns() -> &'static [&'static str] {
            &["ID", "SIZE"]
        }
        fn row(&self) -> Vec<String> {
            vec![self.id.clone(), self.size.to_string()]
        }
        fn fields(&self) -> Vec<(&'static str, String)> {
            vec![
                ("id", self.id.clone()),
                ("size", self.size.to_string()),
                ("labels", map_cell(&self.labels)),
            ]
        }
    }

    fn things() -> Vec<Thing> {
        vec![
            Thing {
                id: "a".into(),
                size: 1234,
                labels: BTreeMap::from([("k".into(), "v".into())]),
            },
            Thing {
                id: "longer-id".into(),
                size: 5,
                labels: BTreeMap::new(),
            },
        ]
    }

    #[test]
    fn tables_align_columns_under_a_header() {
        let text = list(Format::Table, &things()).unwrap();
        assert_eq!(text, "ID         SIZE\na          1234\nlonger-id  5\n");
    }

    #[test]
    fn empty_lists_still_print_the_header() {
        assert_eq!(list::<Thing>(Format::Table, &[]).unwrap(), "ID  SIZE\n");
        assert_eq!(list::<Thing>(Format::Json, &[]).unwrap(), "[]\n");
    }

    #[test]
    fn show_prints_field_value_pairs() {
        let text = show(Format::Table, &things()[0]).unwrap();
        assert_eq!(
            text,
            "FIELD   VALUE\nid      a\nsize    1234\nlabels  k=v\n"
        );
    }

    #[test]
    fn json_and_yaml_keep_field_names_and_maps() {
        let json: serde_json::Value =
            serde_json::from_str(&list(Format::Json, &things()).unwrap()).unwrap();
        assert_eq!(json[0]["id"], "a");
        assert_eq!(json[0]["labels"]["k"], "v");
        assert_eq!(json[1]["size"], 5);
        let yaml = show(Format::Yaml, &things()[0]).unwrap();
        assert_eq!(yaml, "id: a\nsize: 1234\nlabels:\n  k: v\n");
    }

    #[test]
    fn control_characters_cannot_break_the_table() {
        let text = table(&["A"], &[vec!["x\ny\u{1b}[31m".into()]]);
        assert_eq!(text, "A\nx\\ny\\u{1b}[31m\n");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_time_ms(0), "");
        assert_eq!(format_time_ms(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_time_ms(1_714_564_800_123),
            "2024-05-01T12:00:00.123Z"
        );
        assert_eq!(format_time_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations_are_short_and_readable() {
        assert_eq!(human_duration_ms(-1), "-");
        assert_eq!(human_duration_ms(850), "850ms");
        assert_eq!(human_duration_ms(12_345), "12.3s");
        assert_eq!(human_duration_ms(245_000), "4m 05s");
        assert_eq!(human_duration_ms(7_380_000), "2h 03m");
        assert_eq!(human_duration_ms(273_600_000), "3d 04h");
    }

    #[test]
    fn fixed_lines_pad_each_cell_to_its_width() {
        let cells = ["a".to_string(), "bb".to_string(), "c\nd".to_string()];
        assert_eq!(fixed_line(&cells, &[3, 1, 0]), "a    bb  c\\nd\n");
    }

    #[test]
    fn enum_names_are_shortened_for_tables() {
        assert_eq!(short_enum("ROLE_PRE_CANDIDATE", "ROLE_"), "pre-candidate");
        assert_eq!(
            short_enum("EVENT_ACTION_CREATED", "EVENT_ACTION_"),
            "created"
        );
        assert_eq!(short_enum("7", "ROLE_"), "7");
    }
}

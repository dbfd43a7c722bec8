//! A tiny aligned-table formatter for the CLI's human-readable output, and value formatting
//! helpers (sizes, UUIDs, hex dumps).

use std::fmt::Write as _;

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows of cells printed in aligned columns, two spaces apart, without trailing whitespace.
#[derive(Debug, Default)]
pub struct Table {
    header: Option<Vec<String>>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: Some(header.into_iter().map(Into::into).collect()),
            ..Table::default()
        }
    }

    /// A table without a header (key/value listings).
    pub fn plain() -> Self {
        Table::default()
    }

    /// Right-aligns column `index` (numbers).
    pub fn right(mut self, index: usize) -> Self {
        if self.align.len() <= index {
            self.align.resize(index + 1, Align::Left);
        }
        self.align[index] = Align::Right;
        self
    }

    /// Adds a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The rendered table, each line ending in `\n`; empty when there is nothing to show.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in &lines {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                let right = self.align.get(i) == Some(&Align::Right);
                if right {
                    text.extend(std::iter::repeat_n(' ', pad));
                }
                text.push_str(cell);
                if !right {
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A byte count in binary units: `512 B`, `4 KiB`, `1.5 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let scale = 1u64 << (10 * unit);
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        // Precision loss is fine for display.
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// A UUID as `8-4-4-4-12` hex digits; other lengths as plain hex.
pub fn uuid(bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    if bytes.len() != 16 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `xxd`-style hex dump: offset (from `base`), 16 bytes in hex, their printable ASCII.
pub fn hex_dump(base: u64, data: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in data.chunks(16).enumerate() {
        let offset = base.wrapping_add(16 * i as u64);
        let _ = write!(out, "{offset:08x}: ");
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x}");
                }
                None => out.push_str("  "),
            }
            if j % 2 == 1 {
                out.push(' ');
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["ID", "KIND", "SIZE"]).right(2);
        t.row(["abc", "buffer", "4096"]);
        t.row(["defghij", "semaphore", "7"]);
        assert_eq!(
            t.render(),
            "ID       KIND       SIZE\n\
             abc      buffer     4096\n\
             defghij  semaphore     7\n"
        );
    }

    #[test]
    fn no_trailing_whitespace_and_ragged_rows() {
        let mut t = Table::plain();
        t.row(["key", ""]);
        t.row(["longer key", "v"]);
        t.row(["only"]);
        assert_eq!(t.render(), "key\nlonger key  v\nonly\n");
        assert_eq!(Table::plain().render(), "");
        assert_eq!(Table::new(["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn counts_chars_not_bytes() {
        let mut t = Table::new(["N", "X"]);
        t.row(["é", "1"]);
        assert_eq!(t.render(), "N  X\né  1\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(1536 << 10), "1.5 MiB");
        assert_eq!(human_size(64 << 30), "64 GiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn uuids_and_dumps() {
        let u: Vec<u8> = (0..16).collect();
        assert_eq!(uuid(&u), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(uuid(&[1, 2]), "0102");
        assert_eq!(
            hex_dump(16, b"Hello, gpushare!\x00\x01"),
            "00000010: 4865 6c6c 6f2c 2067 7075 7368 6172 6521  Hello, gpushare!\n\
             00000020: 0001                                     ..\n"
        );
    }
}

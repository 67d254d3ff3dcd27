//! The part of kubectl's output machinery that `describe` relies on: its
//! "prefix writer" (two spaces per indentation level, terminal escapes
//! neutralised) in front of Go's `text/tabwriter` configured as
//! `Init(buf, 0, 8, 2, ' ', 0)`. Byte-exact alignment needs Go's column
//! *blocks*: a column is as wide as its widest cell among consecutive lines
//! that have a cell in it, so reimplementing "pad every column to its
//! widest cell" would differ wherever a line without tabs splits a table.

/// Padding after the widest cell of a column (tabwriter's `padding`).
const PADDING: usize = 2;

/// Collects text like kubectl's `PrefixWriter` and aligns it on
/// [`Writer::flush`] and [`Writer::finish`].
#[derive(Default)]
pub(super) struct Writer {
    out: String,
    pending: String,
}

impl Writer {
    /// `PrefixWriter.Write`: `text` prefixed with `level` indentations.
    /// Cells end at tabs; lines at newlines, which `text` may contain.
    pub(super) fn write(&mut self, level: usize, text: &str) {
        self.pending.push_str(&"  ".repeat(level));
        push_escaped(&mut self.pending, text);
    }

    /// `PrefixWriter.Flush`: what was written so far is aligned on its own,
    /// as `DescribeEvents` does before its table.
    pub(super) fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let lines: Vec<Vec<&str>> = pending
            .split('\n')
            .map(|l| l.split('\t').collect())
            .collect();
        let mut widths = Vec::new();
        format(&lines, &mut widths, 0, lines.len(), &mut self.out);
    }

    /// The aligned text.
    pub(super) fn finish(mut self) -> String {
        self.flush();
        self.out
    }
}

/// `printers.WriteEscaped`: ESC and CR in pod data must not drive the
/// reader's terminal.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\x1b' => out.push_str("^["),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// tabwriter's `format`: finds the block of consecutive lines that have a
/// cell in column `widths.len()`, sizes that column for the block, and
/// recurses into the next column within it.
fn format(lines: &[Vec<&str>], widths: &mut Vec<usize>, from: usize, to: usize, out: &mut String) {
    let column = widths.len();
    let has_cell = |line: usize| column + 1 < lines[line].len();
    let mut start = from;
    let mut this = from;
    while this < to {
        if !has_cell(this) {
            this += 1;
            continue;
        }
        write_lines(lines, widths, start, this, out);
        start = this;
        let mut width = 0;
        while this < to && has_cell(this) {
            width = width.max(lines[this][column].chars().count() + PADDING);
            this += 1;
        }
        widths.push(width);
        format(lines, widths, start, this, out);
        widths.pop();
        start = this;
    }
    write_lines(lines, widths, start, to, out);
}

/// tabwriter's `writeLines`: cells padded to their column's width; the
/// last cell of a line, which no tab ends, is never padded.
fn write_lines(lines: &[Vec<&str>], widths: &[usize], from: usize, to: usize, out: &mut String) {
    for (index, line) in lines.iter().enumerate().take(to).skip(from) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(width) = widths.get(j) {
                let padding = width.saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', padding));
            }
        }
        if index + 1 < lines.len() {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(text: &str) -> String {
        let mut w = Writer::default();
        w.write(0, text);
        w.finish()
    }

    #[test]
    fn a_line_without_tabs_ends_a_block() {
        assert_eq!(
            aligned("Name:\tweb\nNamespace:\tdefault\nContainers:\n  a:\tb\n"),
            "Name:       web\nNamespace:  default\nContainers:\n  a:  b\n"
        );
    }

    #[test]
    fn later_columns_align_within_their_own_sub_block() {
        assert_eq!(
            aligned("a\tbb\tc\nlonger\tb\ndd\tx\ty\n"),
            "a       bb  c\nlonger  b\ndd      x  y\n"
        );
    }

    #[test]
    fn empty_trailing_cells_keep_their_padding_and_flush_splits_blocks() {
        let mut w = Writer::default();
        w.write(0, "Container ID:\t\nImage:\tx\n");
        w.flush();
        w.write(1, "Events:\t<none>\n");
        assert_eq!(
            w.finish(),
            "Container ID:  \nImage:         x\n  Events:  <none>\n"
        );
    }

    #[test]
    fn terminal_escapes_are_neutralised() {
        assert_eq!(aligned("a\x1b[2J\r\n"), "a^[[2J\\r\n");
    }
}

//! How results are printed: tables and colour for people, JSON for scripts.

use chrono::{DateTime, Utc};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;
use std::io::Write;

/// A colour of the few the tool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paint {
    /// Something needs a person.
    Red,
    /// Worth a look.
    Yellow,
    /// All is well.
    Green,
    /// Less important.
    Dim,
    /// A heading.
    Bold,
}

/// Where results go, and whether they are coloured.
pub(crate) struct Out<'w> {
    writer: &'w mut dyn Write,
    colour: bool,
}

impl<'w> Out<'w> {
    pub(crate) fn new(writer: &'w mut dyn Write, colour: bool) -> Self {
        Self { writer, colour }
    }

    /// `text` in `paint`, when colouring.
    pub(crate) fn paint(&self, text: &str, paint: Paint) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let code = match paint {
            Paint::Red => "31",
            Paint::Yellow => "33",
            Paint::Green => "32",
            Paint::Dim => "2",
            Paint::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// A line.
    pub(crate) fn line(&mut self, text: impl AsRef<str>) -> std::io::Result<()> {
        writeln!(self.writer, "{}", text.as_ref())
    }

    /// A heading line.
    pub(crate) fn heading(&mut self, text: &str) -> std::io::Result<()> {
        let text = self.paint(text, Paint::Bold);
        self.line(text)
    }

    /// `value` as pretty JSON.
    pub(crate) fn json(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
        self.line(text)
    }

    /// A table with `header` and `rows`, or `empty` when there are none.
    pub(crate) fn table(
        &mut self,
        header: &[&str],
        rows: Vec<Vec<String>>,
        empty: &str,
    ) -> std::io::Result<()> {
        if rows.is_empty() {
            let text = self.paint(empty, Paint::Dim);
            return self.line(text);
        }
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(header.to_vec());
        for row in rows {
            table.add_row(row);
        }
        self.line(table.to_string())
    }
}

/// How long ago `at` was, from `now`: `3m12s ago`.
pub(crate) fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    match (now - at).to_std() {
        Ok(d) => format!("{} ago", dtx_postgres::health::human(d)),
        Err(_) => format!(
            "in {}",
            dtx_postgres::health::human((at - now).to_std().unwrap_or_default())
        ),
    }
}

/// A timestamp, to the second.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The first line of `text`, cut to `max` characters.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        line.to_owned()
    }
}

//! How a log line is written: `text` (`key="value"`, every value quoted
//! and escaped) or `json` (one object per line). One formatter for both,
//! for every line the gateway logs, so that no value reaches a line raw.

use std::fmt::{self, Write as _};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{
    fmt::{
        format::Writer, time::FormatTime, time::SystemTime, FmtContext, FormatEvent, FormatFields,
    },
    registry::LookupSpan,
};

/// The line format of `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `TIME LEVEL target: message key="value" ...`
    #[default]
    Text,
    /// `{"timestamp":…,"level":…,"target":…,"message":…,"key":value,…}`
    Json,
}

impl Format {
    /// `text` or `json`, as `FRAMEGATE_LOG_FORMAT` spells it.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

impl<S, N> FormatEvent<S, N> for Format
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A line is built in the thread's buffers, kept from line to line:
        // an access line per handshake would otherwise cost a handful of
        // allocations (and their growth) for strings thrown away at once.
        // A line logged while one is being formatted gets buffers of its own.
        BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => self.write_line(&mut w, event, &mut bufs),
            Err(_) => self.write_line(&mut w, event, &mut Buffers::default()),
        })
    }
}

/// The strings one line is built in.
#[derive(Default)]
struct Buffers {
    time: String,
    message: String,
    rest: String,
    escaped: String,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

impl Format {
    fn write_line(&self, w: &mut Writer<'_>, event: &Event<'_>, bufs: &mut Buffers) -> fmt::Result {
        let meta = event.metadata();
        let Buffers {
            time,
            message,
            rest,
            escaped,
        } = bufs;
        time.clear();
        SystemTime.format_time(&mut Writer::new(time))?;
        message.clear();
        rest.clear();
        let mut fields = Fields {
            format: *self,
            message,
            rest,
        };
        event.record(&mut fields);
        match self {
            Format::Text => {
                escaped.clear();
                escape_into(escaped, fields.message);
                writeln!(
                    w,
                    "{time} {:>5} {}: {escaped}{}",
                    meta.level(),
                    meta.target(),
                    fields.rest
                )
            }
            Format::Json => {
                let s = |v: &str| serde_json::to_string(v).map_err(|_| fmt::Error);
                writeln!(
                    w,
                    "{{\"timestamp\":{},\"level\":{},\"target\":{},\"message\":{}{}}}",
                    s(time)?,
                    s(meta.level().as_str())?,
                    s(meta.target())?,
                    s(fields.message)?,
                    fields.rest
                )
            }
        }
    }
}

/// Collects an event's fields in the order they were written.
struct Fields<'a> {
    format: Format,
    message: &'a mut String,
    /// ` key="value"` (text) or `,"key":value` (json), one per field.
    rest: &'a mut String,
}

impl Fields<'_> {
    /// A value written as it is in JSON (a number, a boolean), quoted in text.
    fn raw(&mut self, field: &Field, v: impl fmt::Display) {
        let name = field.name();
        let _ = match self.format {
            Format::Text => write!(self.rest, " {name}=\"{v}\""),
            Format::Json => write!(self.rest, ",\"{name}\":{v}"),
        };
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, v: &str) {
        if field.name() == "message" {
            self.message.push_str(v);
            return;
        }
        match self.format {
            Format::Text => {
                let _ = write!(self.rest, " {}=\"", field.name());
                escape_into(self.rest, v);
                self.rest.push('"');
            }
            Format::Json => {
                let v = serde_json::to_string(v).unwrap_or_default();
                let _ = write!(self.rest, ",\"{}\":{v}", field.name());
            }
        }
    }

    fn record_debug(&mut self, field: &Field, v: &dyn fmt::Debug) {
        match self.format {
            // Escaped as it is written: no string of its own.
            Format::Text if field.name() != "message" => {
                let _ = write!(self.rest, " {}=\"", field.name());
                let _ = write!(Escaping(self.rest), "{v:?}");
                self.rest.push('"');
            }
            _ => self.record_str(field, &format!("{v:?}")),
        }
    }

    fn record_u64(&mut self, field: &Field, v: u64) {
        self.raw(field, v);
    }

    fn record_i64(&mut self, field: &Field, v: i64) {
        self.raw(field, v);
    }

    fn record_bool(&mut self, field: &Field, v: bool) {
        self.raw(field, v);
    }

    fn record_f64(&mut self, field: &Field, v: f64) {
        match v.is_finite() {
            true => self.raw(field, v),
            false => self.record_str(field, &v.to_string()),
        }
    }
}

/// Appends `s` with quotes, backslashes, control characters and invisible
/// format characters (bidi overrides, zero-widths, line separators)
/// escaped: a line shows what a client sent, never what it wanted shown.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || invisible(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Writes into a string through [`escape_into`].
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// Unicode format characters that change how a line reads without showing.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd\u{202e}e\u{9b}f\u{2028}é");
        assert_eq!(out, "a\\\"b\\\\c\\nd\\u{202e}e\\u{9b}f\\u{2028}é");
    }
}

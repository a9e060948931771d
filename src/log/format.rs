//! How a log line is written: `text` (`key="value"`, every value quoted
//! and escaped) or `json` (one object per line). One formatter for both,
//! for every line the gateway logs, so that no value reaches a line raw.

use std::fmt::{self, Write as _};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_log::NormalizeEvent;
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
        // A `log` record (a dependency's: rustls, tungstenite) has its
        // target and level in fields of its own; its metadata says "log".
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
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
            log_record: normalized.is_some(),
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
            Format::Json => writeln!(
                w,
                "{{\"timestamp\":{},\"level\":{},\"target\":{},\"message\":{}{}}}",
                Json(time),
                Json(meta.level().as_str()),
                Json(meta.target()),
                Json(fields.message),
                fields.rest
            ),
        }
    }
}

/// Collects an event's fields in the order they were written.
struct Fields<'a> {
    format: Format,
    /// The event is a `log` record, whose `log.*` fields are left out: the
    /// line's target and level come from them, and `log.file` is a path
    /// on the machine that built the binary.
    log_record: bool,
    message: &'a mut String,
    /// ` key="value"` (text) or `,"key":value` (json), one per field.
    rest: &'a mut String,
}

impl Fields<'_> {
    fn left_out(&self, field: &Field) -> bool {
        self.log_record && field.name().starts_with("log.")
    }

    /// A value written as it is in JSON (a number, a boolean), quoted in text.
    fn raw(&mut self, field: &Field, v: impl fmt::Display) {
        if self.left_out(field) {
            return;
        }
        let name = field.name();
        let _ = match self.format {
            Format::Text => write!(self.rest, " {name}=\"{v}\""),
            Format::Json => write!(self.rest, ",{}:{v}", Json(name)),
        };
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, v: &str) {
        if self.left_out(field) {
            return;
        }
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
                let _ = write!(self.rest, ",{}:{}", Json(field.name()), Json(v));
            }
        }
    }

    fn record_debug(&mut self, field: &Field, v: &dyn fmt::Debug) {
        match self.format {
            // Escaped as it is written: no string of its own.
            Format::Text if field.name() != "message" && !self.left_out(field) => {
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
    let _ = escape(out, s, false);
}

/// A string as a JSON string, escaped as [`escape_into`] escapes text:
/// beyond what JSON requires (`"`, `\\`, U+0000 to U+001F), DEL, the C1
/// controls (U+009B is a terminal's CSI) and the invisible format
/// characters are written `\uXXXX`, so a JSON line read as it is (`tail`,
/// `grep`) shows no more than a text line, and parses to what was sent.
struct Json<'a>(&'a str);

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        escape(f, self.0, true)?;
        f.write_char('"')
    }
}

/// Writes `s` escaped, the runs between escapes whole: `\u{202e}` in
/// text, `\u202e` in JSON (every character escaped this way is in the BMP).
fn escape(out: &mut impl fmt::Write, s: &str, json: bool) -> fmt::Result {
    let mut run = 0;
    for (i, c) in s.char_indices() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            c if needs_escape(c) => None,
            _ => continue,
        };
        out.write_str(&s[run..i])?;
        run = i + c.len_utf8();
        match short {
            Some(short) => out.write_str(short)?,
            None if json => write!(out, "\\u{:04x}", c as u32)?,
            None => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
    }
    out.write_str(&s[run..])
}

/// Writes into a string through [`escape_into`].
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// Whether a line never shows `c` as it is: a control character or an
/// invisible format character.
pub fn needs_escape(c: char) -> bool {
    c.is_control() || invisible(c)
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
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn json_escapes_what_text_escapes_and_parses_back_to_it() {
        let hostile = "a\"b\\c\nd\u{202e}e\u{9b}f\u{7f}g\u{2028}\u{1b}[2Jé";
        let line = crate::log::tests::logged(LevelFilter::TRACE, Format::Json, || {
            tracing::info!(reason = hostile, debug = ?hostile, "{hostile}");
        });
        let raw = line.strip_suffix('\n').unwrap();
        assert!(!raw.chars().any(needs_escape), "{line}");
        assert!(
            raw.contains(r#""reason":"a\"b\\c\nd\u202ee\u009bf\u007fg\u2028\u001b[2Jé""#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(v["reason"], hostile);
        assert_eq!(v["message"], hostile);
        assert_eq!(v["debug"], format!("{hostile:?}"));
    }

    #[test]
    fn a_log_record_has_its_own_target_and_no_log_fields() {
        use tracing_log::log::{Level, Record};
        for format in [Format::Json, Format::Text] {
            let line = crate::log::tests::logged(LevelFilter::TRACE, format, || {
                tracing_log::format_trace(
                    &Record::builder()
                        .args(format_args!("Sending fatal alert"))
                        .level(Level::Warn)
                        .target("rustls::common_state")
                        .module_path(Some("rustls::common_state"))
                        .file(Some("/root/.cargo/registry/src/rustls/common_state.rs"))
                        .line(Some(144))
                        .build(),
                )
                .unwrap();
            });
            assert!(!line.contains("log.") && !line.contains("/root"), "{line}");
            match format {
                Format::Json => {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    assert_eq!(v["target"], "rustls::common_state", "{line}");
                    assert_eq!(v["level"], "WARN", "{line}");
                    assert_eq!(v["message"], "Sending fatal alert", "{line}");
                }
                Format::Text => assert!(
                    line.ends_with(" WARN rustls::common_state: Sending fatal alert\n"),
                    "{line}"
                ),
            }
        }
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd\u{202e}e\u{9b}f\u{2028}é");
        assert_eq!(out, "a\\\"b\\\\c\\nd\\u{202e}e\\u{9b}f\\u{2028}é");
    }
}

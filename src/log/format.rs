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
    clock: Clock,
    message: String,
    rest: String,
    /// The whole line, written out at once.
    line: String,
    /// A `Debug` value's text before it is quoted as JSON.
    debug: String,
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
            clock,
            message,
            rest,
            line,
            debug,
        } = bufs;
        message.clear();
        rest.clear();
        let mut fields = Fields {
            format: *self,
            message,
            rest,
            debug,
            log_record: normalized.is_some(),
        };
        event.record(&mut fields);
        line.clear();
        // Every piece is pushed as it is: `write!` runs the formatting
        // machinery for each, which made the session line a sixth of a
        // handshake's instructions (18,000 of 103,000; 7,000 this way).
        match self {
            Format::Text => {
                clock.write_now(line)?;
                line.push(' ');
                line.push_str(padded(meta.level()));
                line.push(' ');
                line.push_str(meta.target());
                line.push_str(": ");
                escape_into(line, fields.message);
            }
            Format::Json => {
                // A time has nothing JSON escapes.
                line.push_str("{\"timestamp\":\"");
                clock.write_now(line)?;
                line.push('"');
                line.push_str(",\"level\":");
                json_into(line, meta.level().as_str());
                line.push_str(",\"target\":");
                json_into(line, meta.target());
                line.push_str(",\"message\":");
                json_into(line, fields.message);
            }
        }
        line.push_str(fields.rest);
        if *self == Format::Json {
            line.push('}');
        }
        line.push('\n');
        w.write_str(line)
    }
}

/// A level as `{:>5}` prints it: lines of every level line up.
fn padded(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::TRACE => "TRACE",
        tracing::Level::DEBUG => "DEBUG",
        tracing::Level::INFO => " INFO",
        tracing::Level::WARN => " WARN",
        tracing::Level::ERROR => "ERROR",
    }
}

/// `v` as a JSON string, escaped as [`escape_into`] escapes text: beyond
/// what JSON requires (`"`, `\\`, U+0000 to U+001F), DEL, the C1 controls
/// (U+009B is a terminal's CSI) and the invisible format characters are
/// written `\uXXXX`, so a JSON line read as it is (`tail`, `grep`) shows no
/// more than a text line, and parses to what was sent.
fn json_into(out: &mut String, v: &str) {
    out.push('"');
    escape(out, v, true);
    out.push('"');
}

/// The time of a line, as tracing's `SystemTime` writes it
/// (`2024-05-01T12:34:56.789012Z`, UTC). The date and time of day change
/// once a second, so they are worked out once a second and kept.
#[derive(Default)]
struct Clock {
    /// The second since the epoch `day_and_time` is for.
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS`.
    day_and_time: String,
}

impl Clock {
    fn write_now(&mut self, out: &mut String) -> fmt::Result {
        let now = std::time::SystemTime::now();
        let since = now.duration_since(std::time::UNIX_EPOCH).ok();
        // Before 1970 or after 9999 tracing's own writing takes over.
        match since.filter(|d| d.as_secs() < LAST_SECOND) {
            Some(d) => {
                self.write(out, d.as_secs(), d.subsec_micros());
                Ok(())
            }
            None => SystemTime.format_time(&mut Writer::new(out)),
        }
    }

    fn write(&mut self, out: &mut String, second: u64, micros: u32) {
        if self.second != Some(second) {
            self.second = Some(second);
            self.day_and_time.clear();
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second);
            // `YYYY-MM-DDTHH:MM:SSZ`, without its `Z`.
            let _ = write!(
                self.day_and_time,
                "{}",
                humantime::format_rfc3339_seconds(at)
            );
            self.day_and_time.pop();
        }
        out.push_str(&self.day_and_time);
        out.push('.');
        push_digits(out, micros.into(), 6);
        out.push('Z');
    }
}

/// The first second of the year 10000, which takes a fifth digit.
const LAST_SECOND: u64 = 253_402_300_800;

/// `n`'s last `width` decimal digits, zero-padded.
fn push_digits(out: &mut String, n: u64, width: u32) {
    for k in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u64.pow(k) % 10) as u8));
    }
}

/// Collects an event's fields in the order they were written.
struct Fields<'a> {
    format: Format,
    message: &'a mut String,
    /// ` key="value"` (text) or `,"key":value` (json), one per field.
    rest: &'a mut String,
    debug: &'a mut String,
    /// The event is a `log` record, whose `log.*` fields are left out: the
    /// line's target and level come from them, and `log.file` is a path
    /// on the machine that built the binary.
    log_record: bool,
}

impl Fields<'_> {
    fn left_out(&self, field: &Field) -> bool {
        self.log_record && field.name().starts_with("log.")
    }

    /// A value written as it is in JSON (a number, a boolean), quoted in
    /// text; `v` needs no escaping.
    fn raw(&mut self, field: &Field, v: &str) {
        if self.left_out(field) {
            return;
        }
        match self.format {
            Format::Text => {
                self.text_name(field.name());
                self.rest.push_str(v);
                self.rest.push('"');
            }
            Format::Json => {
                self.json_name(field.name());
                self.rest.push_str(v);
            }
        }
    }

    /// ` name="`, before a text value (and its closing quote).
    fn text_name(&mut self, name: &str) {
        self.rest.push(' ');
        self.rest.push_str(name);
        self.rest.push_str("=\"");
    }

    /// `,"name":`, before a JSON value.
    fn json_name(&mut self, name: &str) {
        self.rest.push(',');
        json_into(self.rest, name);
        self.rest.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, v: &str) {
        if field.name() == "message" {
            self.message.push_str(v);
            return;
        }
        if self.left_out(field) {
            return;
        }
        match self.format {
            Format::Text => {
                self.text_name(field.name());
                escape_into(self.rest, v);
                self.rest.push('"');
            }
            Format::Json => {
                self.json_name(field.name());
                json_into(self.rest, v);
            }
        }
    }

    fn record_debug(&mut self, field: &Field, v: &dyn fmt::Debug) {
        match self.format {
            _ if field.name() == "message" => {
                let _ = write!(self.message, "{v:?}");
            }
            _ if self.left_out(field) => {}
            // Escaped as it is written: no string of its own.
            Format::Text => {
                self.text_name(field.name());
                let _ = write!(Escaping(self.rest), "{v:?}");
                self.rest.push('"');
            }
            Format::Json => {
                let mut debug = std::mem::take(self.debug);
                debug.clear();
                let _ = write!(debug, "{v:?}");
                self.record_str(field, &debug);
                *self.debug = debug;
            }
        }
    }

    fn record_u64(&mut self, field: &Field, v: u64) {
        self.raw(field, itoa::Buffer::new().format(v));
    }

    fn record_i64(&mut self, field: &Field, v: i64) {
        self.raw(field, itoa::Buffer::new().format(v));
    }

    fn record_bool(&mut self, field: &Field, v: bool) {
        self.raw(field, if v { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, v: f64) {
        let mut text = std::mem::take(self.debug);
        text.clear();
        let _ = write!(text, "{v}");
        match v.is_finite() {
            true => self.raw(field, &text),
            false => self.record_str(field, &text),
        }
        *self.debug = text;
    }
}

/// Appends `s` with quotes, backslashes, control characters and invisible
/// format characters (bidi overrides, zero-widths, line separators)
/// escaped: a line shows what a client sent, never what it wanted shown.
pub fn escape_into(out: &mut String, s: &str) {
    escape(out, s, false);
}

/// Appends `s` escaped: `\u{202e}` in text, `\u202e` in JSON (every
/// character escaped this way is in the BMP).
fn escape(out: &mut String, s: &str, json: bool) {
    // Runs of printable ASCII (nearly every value) go in whole.
    let mut rest = s;
    while let Some(at) = rest.bytes().position(|b| !plain(b)) {
        out.push_str(&rest[..at]);
        let c = rest[at..]
            .chars()
            .next()
            .expect("what precedes is ASCII, so a char starts here");
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && json => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
}

/// Printable ASCII other than a quote or a backslash: written as it is.
fn plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
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

    #[test]
    fn the_time_is_tracings_own() {
        let mut clock = Clock::default();
        let mut at = |second, micros| {
            let mut out = String::new();
            clock.write(&mut out, second, micros);
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 42), "2000-02-29T00:00:00.000042Z");
        assert_eq!(at(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 1), "2100-03-01T00:00:00.000001Z");
        assert_eq!(at(LAST_SECOND - 1, 0), "9999-12-31T23:59:59.000000Z");
        // Now, next to tracing's writing: the same but for the fraction,
        // read again if a second boundary fell between the two.
        loop {
            let (mut ours, mut theirs) = (String::new(), String::new());
            Clock::default().write_now(&mut ours).unwrap();
            SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            let mut again = String::new();
            Clock::default().write_now(&mut again).unwrap();
            if ours[..19] == again[..19] {
                assert_eq!(ours[..20], theirs[..20]);
                assert_eq!(ours.len(), theirs.len());
                break;
            }
        }
    }
}

//! Every line a gateway of the suite prints is JSON and is checked, so the
//! formatter meets its promises on every path the suite drives, not only
//! on the few lines a logs test looks at.
//!
//! - In-process gateways ([`super::GatewayBuilder::start`]) log through one
//!   global subscriber, installed on the first start in the process
//!   ([`check_in_process_logs`]): the gateway's own JSON formatter at
//!   `debug` for framegate (`info` for other crates), writing into
//!   [`Checked`], which checks each line, records a bad one, and echoes
//!   every line into the running test's captured output. A gateway fails
//!   its test when it is dropped if any bad line has been recorded
//!   ([`assert_no_bad_line`]).
//! - The binary ([`super::Binary`]) runs with `FRAMEGATE_LOG_FORMAT=json`
//!   unless its config names a format, and each line is checked as it is
//!   read ([`super::Lines::checked`]).

use std::{
    fmt,
    io::{self, Write},
    sync::{Mutex, Once, PoisonError},
};

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// The fields of one checked line, by name.
pub type Fields = Map<String, Value>;

/// The keys every line starts with, in this order.
const FIRST: [&str; 4] = ["timestamp", "level", "target", "message"];

/// The fields of a JSON log line; fails the test if the line is not one
/// the formatter promises (see [`check_line`]).
pub fn fields(line: &str) -> Fields {
    check_line(line).unwrap_or_else(|why| panic!("a bad log line: {why}:\n{line}"))
}

/// Checks one line (without its newline) against what the JSON format
/// promises (README, Logs): one object with unique keys, starting with
/// `timestamp`, `level`, `target` and `message` (strings); no raw control
/// or invisible character (each is escaped); no stand-in for an absent
/// value (`null`, `""`, `"-"`, a negative number); no tracing-log `log.*`
/// fields (the target already names the crate); and an access line has its
/// documented fields with their types, and no others.
pub fn check_line(line: &str) -> Result<Fields, String> {
    if let Some(c) = line.chars().find(|&c| framegate::log::needs_escape(c)) {
        return Err(format!("a raw {c:?} (U+{:04X})", c as u32));
    }
    let Object { keys, fields } =
        serde_json::from_str(line).map_err(|e| format!("not one JSON object: {e}"))?;
    if keys.len() < 4 || keys[..4] != FIRST {
        return Err(format!("keys {keys:?}: the first four are not {FIRST:?}"));
    }
    let text = |key: &str| {
        fields[key]
            .as_str()
            .ok_or_else(|| format!("{key} is not a string"))
    };
    let timestamp = text("timestamp")?;
    if !is_rfc3339_utc(timestamp) {
        return Err(format!("timestamp {timestamp:?} is not RFC 3339 in UTC"));
    }
    let level = text("level")?;
    if !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level) {
        return Err(format!("level {level:?}"));
    }
    text("target")?;
    text("message")?;
    for (key, value) in &fields {
        if key.starts_with("log.") {
            return Err(format!("{key}: tracing-log's own field"));
        }
        let stand_in = match value {
            Value::Null => true,
            Value::String(s) => s.is_empty() || s == "-",
            Value::Number(n) => n.as_i64().is_some_and(|n| n < 0),
            _ => false,
        };
        if stand_in {
            return Err(format!("{key} is {value}, a stand-in for no value"));
        }
    }
    if fields["target"] == framegate::log::ACCESS {
        check_access(&fields)?;
    }
    Ok(fields)
}

/// The type of an access line's field.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Count,
    Flag,
}

use Kind::*;

/// An access line's fields the README documents: name, type, and whether
/// every line of its kind has it.
type Documented = &'static [(&'static str, Kind, bool)];

const SESSION: Documented = &[
    ("client", Text, true),
    ("host", Text, false),
    ("route", Text, true),
    ("path", Text, true),
    ("subprotocol", Text, false),
    ("subject", Text, false),
    ("upstream", Text, true),
    ("duration_ms", Count, true),
    ("frames_up", Count, true),
    ("bytes_up", Count, true),
    ("frames_down", Count, true),
    ("bytes_down", Count, true),
    ("closed_by", Text, true),
    ("ending", Text, true),
    ("client_sent_code", Count, false),
    ("client_sent_reason", Text, false),
    ("client_received_code", Count, false),
    ("client_received_reason", Text, false),
    ("upstream_sent_code", Count, false),
    ("upstream_sent_reason", Text, false),
    ("upstream_received_code", Count, false),
    ("upstream_received_reason", Text, false),
    ("clean", Flag, true),
    ("rtt_client_us", Count, false),
    ("rtt_upstream_us", Count, false),
];

const REQUEST: Documented = &[
    ("client", Text, true),
    ("host", Text, false),
    ("route", Text, true),
    ("method", Text, true),
    ("path", Text, true),
    ("status", Count, false),
    ("bytes_in", Count, true),
    ("bytes_out", Count, true),
    ("duration_ms", Count, true),
    ("upstream", Text, false),
    ("reused", Flag, true),
    ("error", Text, false),
];

const REFUSAL: Documented = &[
    ("client", Text, true),
    ("host", Text, false),
    ("route", Text, false),
    ("path", Text, false),
    ("status", Count, true),
    ("reason", Text, true),
    ("cause", Text, true),
];

/// An access line is one of the four the README documents, with their
/// fields and no others.
fn check_access(fields: &Fields) -> Result<(), String> {
    let documented = match fields["message"].as_str() {
        Some("session ended") => SESSION,
        Some("http request") => REQUEST,
        Some("upgrade refused" | "request refused") => REFUSAL,
        other => return Err(format!("an access line with message {other:?}")),
    };
    if let Some(key) = fields
        .keys()
        .filter(|k| !FIRST.contains(&k.as_str()))
        .find(|k| documented.iter().all(|(name, _, _)| name != k))
    {
        return Err(format!("{key}: not a documented field of this line"));
    }
    for &(name, kind, required) in documented {
        let ok = match (fields.get(name), kind) {
            (None, _) => !required,
            (Some(v), Text) => v.is_string(),
            (Some(v), Count) => v.is_u64(),
            (Some(v), Flag) => v.is_boolean(),
        };
        if !ok {
            return Err(format!("{name}: missing or of the wrong type"));
        }
    }
    if fields["message"] == "session ended"
        && !["client", "upstream", "gateway"].contains(&fields["closed_by"].as_str().unwrap())
    {
        return Err(format!("closed_by {}", fields["closed_by"]));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
fn is_rfc3339_utc(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && t.ends_with('Z')
        && (b.len() == 20 || b[19] == b'.' && digits(20..b.len() - 1) && b.len() > 21)
}

/// A JSON object, its keys in order; a key twice is an error (a flat
/// object whose field shadows `level`, say, would parse into a map silently).
struct Object {
    keys: Vec<String>,
    fields: Fields,
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Object, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Object;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut o = Object {
                    keys: Vec::new(),
                    fields: Map::new(),
                };
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if o.fields.insert(key.clone(), value).is_some() {
                        return Err(A::Error::custom(format!("{key:?} twice")));
                    }
                    o.keys.push(key);
                }
                Ok(o)
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// Installs the in-process gateways' subscriber, once per process. A test
/// that installed a global subscriber of its own before keeps it.
pub fn check_in_process_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let lines = tracing_subscriber::fmt::layer()
            .event_format(framegate::log::Format::Json)
            .with_writer(|| Checked);
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::new("info,framegate=debug"))
            .with(lines)
            .try_init();
    });
}

/// Fails the test if an in-process gateway has printed a bad line.
pub fn assert_no_bad_line() {
    if let Some(report) = BAD.report() {
        panic!("{report}");
    }
}

/// The bad lines the in-process gateways have printed.
static BAD: BadLines = BadLines::new();

/// The in-process gateways' log writer: each line echoed with `print!`
/// into the running test's captured output (shown when it fails) and
/// checked into [`BAD`].
struct Checked;

impl Write for Checked {
    /// Takes whole lines: the fmt layer writes each event at once.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        print!("{}", String::from_utf8_lossy(buf));
        BAD.check(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bad lines, each with why: the first [`BadLines::KEPT`], and how many.
struct BadLines(Mutex<(Vec<String>, usize)>);

impl BadLines {
    const KEPT: usize = 20;

    const fn new() -> BadLines {
        BadLines(Mutex::new((Vec::new(), 0)))
    }

    /// Checks each line of `buf` with [`check_line`]; a last one without
    /// its newline is bad too.
    fn check(&self, buf: &[u8]) {
        let text = String::from_utf8_lossy(buf);
        for line in text.split_inclusive('\n') {
            let (line, checked) = match line.strip_suffix('\n') {
                Some(line) => (line, check_line(line).map(drop)),
                None => (line, Err("no newline at its end".to_owned())),
            };
            if let Err(why) = checked {
                let mut bad = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                bad.1 += 1;
                if bad.0.len() < Self::KEPT {
                    bad.0.push(format!("{why}: {line}"));
                }
            }
        }
    }

    /// What has been found, if anything.
    fn report(&self) -> Option<String> {
        let bad = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (bad.1 > 0).then(|| {
            format!(
                "{} bad log line(s) from the gateways in this process; the first:\n{}",
                bad.1,
                bad.0.join("\n")
            )
        })
    }
}

mod tests {
    use super::*;

    const GOOD: &str = r#"{"timestamp":"2026-11-28T12:39:50.568681Z","level":"INFO","target":"framegate::access","message":"upgrade refused","client":"127.0.0.1:48362","host":"gw.example","path":"/nowhere","status":404,"reason":"no route for this host and path","cause":"no_route"}"#;

    #[test]
    fn the_check_passes_a_good_line_and_fails_each_broken_one() {
        let fields = check_line(GOOD).unwrap();
        assert_eq!(fields["status"], 404);
        let broken = |from: &str, to: &str| {
            assert!(GOOD.contains(from), "{from}");
            GOOD.replacen(from, to, 1)
        };
        for (line, why) in [
            (GOOD[..GOOD.len() - 1].to_owned(), "not one JSON object"),
            (broken("gw.example", "gw\u{1b}[2J"), "a raw '\\u{1b}'"),
            (broken("gw.example", "gw\u{9b}2J"), "a raw '\\u{9b}'"),
            (
                broken("gw.example", "gw\u{202e}elpmaxe"),
                "a raw '\\u{202e}'",
            ),
            (broken("\"gw.example\"", "\"-\""), "host is \"-\""),
            (broken("\"gw.example\"", "\"\""), "host is \"\""),
            (broken("\"gw.example\"", "null"), "host is null"),
            (broken("404", "-1"), "status is -1"),
            (
                broken("404", "\"404\""),
                "status: missing or of the wrong type",
            ),
            (
                broken(r#","reason":"no route for this host and path""#, ""),
                "reason: missing",
            ),
            (broken(r#""host""#, r#""level""#), "\"level\" twice"),
            (broken(r#""level":"INFO","#, ""), "the first four"),
            (broken("12:39:50.568681Z", "12:39:50"), "timestamp"),
            (broken("INFO", "info"), "level \"info\""),
            (
                broken("upgrade refused", "upgrade denied"),
                "an access line with message",
            ),
            (
                broken(r#","client""#, r#","log.file":"src/x.rs","client""#),
                "log.file",
            ),
            (
                broken(r#","client""#, r#","user_agent":"curl","client""#),
                "user_agent: not a documented field",
            ),
        ] {
            let err = check_line(&line).expect_err(&line);
            assert!(err.contains(why), "{line}: {err}, not {why}");
        }
    }

    #[test]
    fn bad_lines_are_recorded_and_reported() {
        let bad = BadLines::new();
        bad.check(format!("{GOOD}\n{GOOD}\n").as_bytes());
        assert_eq!(bad.report(), None);
        bad.check(format!("{GOOD}\nnot json\n{GOOD}").as_bytes());
        let report = bad.report().unwrap();
        assert!(report.starts_with("2 bad log line(s)"), "{report}");
        assert!(report.contains("not one JSON object") && report.contains("no newline"));
        for _ in 0..30 {
            bad.check(b"{}\n");
        }
        let report = bad.report().unwrap();
        assert!(report.starts_with("32 bad log line(s)"), "{report}");
        assert_eq!(report.lines().count(), 1 + BadLines::KEPT, "{report}");
    }
}

//! Values that are legal but probably not meant: reported as warnings by
//! `check` and at start, never refused (someone may mean them).

use std::{ops::Range, time::Duration};

use toml::de::{DeTable, DeValue};

use super::file::{PolicyFile, ServerSection};

/// A surprising value: the key path it is at, and why it surprises.
pub(super) type Warning = (&'static [&'static str], String);

/// Longer than this is a typo for something shorter (`"30d"` for `"30s"`).
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// Under this, one late pong on a slow mobile link closes the session.
const SHORTEST_PONG: Duration = Duration::from_secs(1);

fn too_long(path: &'static [&'static str], d: Option<Duration>, out: &mut Vec<Warning>) {
    if let Some(d) = d.filter(|d| *d > LONGEST) {
        out.push((
            path,
            format!(
                "{} = {} is more than a day; was a shorter unit meant?",
                path[path.len() - 1],
                humantime::format_duration(d)
            ),
        ));
    }
}

/// The surprising values of `[server]`.
pub(super) fn server(s: &ServerSection) -> Vec<Warning> {
    let mut out = Vec::new();
    too_long(
        &["server", "request_timeout"],
        Some(s.request_timeout.0),
        &mut out,
    );
    too_long(
        &["server", "tls_handshake_timeout"],
        Some(s.tls_handshake_timeout.0),
        &mut out,
    );
    too_long(
        &["server", "drain_timeout"],
        Some(s.drain_timeout.0),
        &mut out,
    );
    too_long(&["server", "drain_spread"], s.drain_spread.0, &mut out);
    too_long(
        &["server", "keepalive_timeout"],
        Some(s.keepalive_timeout.0),
        &mut out,
    );
    out
}

/// The surprising values of a policy file.
pub(super) fn policy(p: &PolicyFile) -> Vec<Warning> {
    let mut out = Vec::new();
    // Per leg: where its keys are, then frame and message limits, ping, pong.
    let legs = [
        (
            [
                &["client", "max_frame_size"][..],
                &["client", "ping_interval"],
                &["client", "pong_timeout"],
            ],
            p.client.max_frame_size.0,
            p.client.max_message_size.0,
            p.client.ping_interval.0,
            p.client.pong_timeout.0,
        ),
        (
            [
                &["upstream", "max_frame_size"][..],
                &["upstream", "ping_interval"],
                &["upstream", "pong_timeout"],
            ],
            p.upstream.max_frame_size.0,
            p.upstream.max_message_size.0,
            p.upstream.ping_interval.0,
            p.upstream.pong_timeout.0,
        ),
    ];
    for ([frame_at, ping_at, pong_at], frame, message, ping, pong) in legs {
        if frame > message {
            out.push((
                frame_at,
                format!(
                    "max_frame_size ({frame} bytes) is above max_message_size ({message} bytes): \
                     a frame is a message or part of one, so the message limit closes first"
                ),
            ));
        }
        if pong < SHORTEST_PONG {
            out.push((
                pong_at,
                format!(
                    "pong_timeout = {} is under a second: one late pong on a slow link closes the session",
                    humantime::format_duration(pong)
                ),
            ));
        }
        too_long(ping_at, ping, &mut out);
        too_long(pong_at, Some(pong), &mut out);
    }
    too_long(
        &["upstream", "connect_timeout"],
        Some(p.upstream.connect_timeout.0),
        &mut out,
    );
    too_long(
        &["upstream", "handshake_timeout"],
        Some(p.upstream.handshake_timeout.0),
        &mut out,
    );
    too_long(
        &["upstream", "attempt_timeout"],
        Some(p.upstream.attempt_timeout.0),
        &mut out,
    );
    too_long(
        &["session", "close_timeout"],
        Some(p.session.close_timeout.0),
        &mut out,
    );
    too_long(
        &["http", "response_timeout"],
        Some(p.http.response_timeout.0),
        &mut out,
    );
    too_long(
        &["http", "body_timeout"],
        Some(p.http.body_timeout.0),
        &mut out,
    );
    // `idle_timeout` and `max_lifetime` of days are normal: not checked.
    out
}

/// Where the key at `path` is written in `text`; `None` when it is not
/// (a default), and the warning then goes on the file's first line.
pub(super) fn span_of(text: &str, path: &[&str]) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let (last, parents) = path.split_last()?;
    for key in parents {
        match table.get(*key)?.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    table.get_key_value(*last).map(|(k, _)| k.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(text: &str) -> PolicyFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn shipped_defaults_raise_nothing() {
        assert_eq!(policy(&policy_of("")), []);
        assert_eq!(server(&ServerSection::default()), []);
    }

    #[test]
    fn surprising_values_are_named() {
        let p = policy_of(
            "[client]\nmax_frame_size = \"2MiB\"\nmax_message_size = \"1MiB\"\npong_timeout = \"200ms\"\n\
             [upstream]\nconnect_timeout = \"365d\"\n",
        );
        let found = policy(&p);
        let paths: Vec<_> = found.iter().map(|(p, _)| p.join(".")).collect();
        assert_eq!(
            paths,
            [
                "client.max_frame_size",
                "client.pong_timeout",
                "upstream.connect_timeout"
            ],
            "{found:?}"
        );
        assert!(found[2].1.contains("more than a day"), "{found:?}");
    }

    #[test]
    fn spans_are_found_by_path() {
        let text = "[client]\npong_timeout = \"1ms\"\n";
        let span = span_of(text, &["client", "pong_timeout"]).unwrap();
        assert_eq!(&text[span], "pong_timeout");
        assert_eq!(span_of(text, &["session", "close_timeout"]), None);
    }
}

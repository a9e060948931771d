//! TOML into the serde structs of [`file`](super::file), reporting every
//! problem rather than the first.
//!
//! serde stops at the first value it cannot take. An operator fixing a
//! policy file one line per run would need as many runs as mistakes, so on
//! an error the offending key is taken out of the parsed document and the
//! whole file deserialized again, until it goes through. Each round removes
//! a key, so this ends after at most as many rounds as the file has keys.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::{
    de::{DeTable, DeValue},
    Spanned,
};

/// One problem: where, and what.
pub(super) type Problem = (Range<usize>, String);

/// Deserializes `text` as `T`, or returns every problem found: all syntax
/// errors, or else each key that cannot be taken as written.
pub(super) fn parse_all<T: DeserializeOwned>(text: &str) -> Result<T, Vec<Problem>> {
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax.iter().map(problem).collect());
    }
    doc.get_mut().make_owned();
    let mut problems = Vec::new();
    // The keys taken out: the "missing field" one causes is not the
    // operator's mistake and is not reported.
    let mut removed: Vec<String> = Vec::new();
    loop {
        let e = match T::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(value) if problems.is_empty() => return Ok(value),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let caused_by_removal = removed
            .iter()
            .any(|key| e.message().starts_with(&format!("missing field `{key}`")));
        if !caused_by_removal {
            problems.push(problem(&e));
        }
        match remove_at(doc.get_mut(), &span) {
            Some(gone) => removed.push(gone),
            None => return Err(problems),
        }
    }
}

fn problem(e: &toml::de::Error) -> Problem {
    (e.span().unwrap_or(0..0), e.message().trim().to_owned())
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer != &(0..0)
}

/// Removes the innermost key whose name or value holds `span`, and returns
/// its name; `None` when no key holds it. Every table
/// is searched: a `[section]`'s own span covers its header, not its keys.
fn remove_at(table: &mut DeTable<'_>, span: &Range<usize>) -> Option<String> {
    let mut hit = None;
    for (k, v) in table.iter_mut() {
        if contains(&k.span(), span) {
            hit = Some(k.clone());
            break;
        }
        if let Some(inner) = remove_inside(v, span) {
            return Some(inner);
        }
        if contains(&v.span(), span) {
            hit = Some(k.clone());
            break;
        }
    }
    let key = hit?;
    table.remove(&key);
    Some(key.into_inner().into_owned())
}

fn remove_inside(value: &mut Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<String> {
    match value.get_mut() {
        DeValue::Table(t) => remove_at(t, span),
        DeValue::Array(items) => items.iter_mut().find_map(|item| match item.get_mut() {
            DeValue::Table(t) => remove_at(t, span),
            _ => None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default)]
        a: Section,
        #[serde(default)]
        b: Section,
        #[serde(default)]
        item: Vec<Required>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        #[serde(default)]
        n: u32,
        #[serde(default)]
        s: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Required {
        name: String,
    }

    fn lines(text: &str) -> Vec<(usize, String)> {
        parse_all::<Doc>(text)
            .unwrap_err()
            .into_iter()
            .map(|(span, msg)| (text[..span.start].matches('\n').count() + 1, msg))
            .collect()
    }

    #[test]
    fn every_bad_key_is_reported_once() {
        let text = "[a]\nn = \"x\"\ns = 5\nzz = 1\n[b]\nn = -1\n[[item]]\nname = 3\n[c]\n";
        let found = lines(text);
        let mut at: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        at.sort();
        assert_eq!(at, [2, 3, 4, 6, 8, 9], "{found:?}");
        // Taking `name` out does not add "missing field `name`".
        assert!(
            !found.iter().any(|(_, m)| m.contains("missing")),
            "{found:?}"
        );
    }

    #[test]
    fn a_missing_field_is_reported() {
        assert!(lines("[[item]]\n")[0].1.contains("missing field `name`"));
    }

    #[test]
    fn syntax_errors_are_reported_and_a_good_file_parses() {
        assert!(!lines("[a\nn = 1\n").is_empty());
        let doc = parse_all::<Doc>("[a]\nn = 1\n").unwrap();
        assert_eq!(doc.a.n, 1);
    }
}

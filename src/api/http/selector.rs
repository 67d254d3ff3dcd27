//! Label and field selectors with the Kubernetes grammar, parsed and
//! matched purely.
//!
//! Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`,
//! `!k`, joined by commas (all must hold). Fields: `f=v`, `f==v`, `f!=v`
//! joined by commas, `\` escaping `,`, `=`, `!` and itself in values.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement {0:?}: {1}")]
    Label(String, &'static str),
    #[error("invalid field selector {0:?}: {1}")]
    Field(String, &'static str),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// Every requirement must hold; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let requirements = split_top_level(text)
            .into_iter()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(requirement)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|(key, op)| {
            let value = labels.get(key);
            match op {
                LabelOp::In(values) => value.is_some_and(|v| values.contains(v)),
                LabelOp::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn requirement(text: &str) -> Result<(String, LabelOp), SelectorError> {
    let fail = |why| SelectorError::Label(text.chars().take(100).collect(), why);
    if let Some(key) = text.strip_prefix('!') {
        return Ok((
            label_key(key.trim()).ok_or_else(|| fail("invalid key"))?,
            LabelOp::DoesNotExist,
        ));
    }
    for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((key, value)) = text.split_once(op) {
            let key = label_key(key.trim()).ok_or_else(|| fail("invalid key"))?;
            let value = label_value(value.trim()).ok_or_else(|| fail("invalid value"))?;
            let op = if negate {
                LabelOp::NotIn(vec![value])
            } else {
                LabelOp::In(vec![value])
            };
            return Ok((key, op));
        }
    }
    if let Some(open) = text.find('(') {
        let (head, set) = text.split_at(open);
        let mut words = head.split_whitespace();
        let key = words
            .next()
            .and_then(label_key)
            .ok_or_else(|| fail("invalid key"))?;
        let negate = match words.next() {
            Some("in") => false,
            Some("notin") => true,
            _ => return Err(fail("expected in or notin")),
        };
        if words.next().is_some() {
            return Err(fail("unexpected word"));
        }
        let inner = set
            .strip_prefix('(')
            .and_then(|s| s.trim_end().strip_suffix(')'))
            .ok_or_else(|| fail("unbalanced parentheses"))?;
        let values = inner
            .split(',')
            .map(|v| label_value(v.trim()).ok_or_else(|| fail("invalid value")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((
            key,
            if negate {
                LabelOp::NotIn(values)
            } else {
                LabelOp::In(values)
            },
        ));
    }
    let key = label_key(text).ok_or_else(|| fail("invalid key or unsupported operator"))?;
    Ok((key, LabelOp::Exists))
}

/// `[prefix/]name`: letters, digits, `-`, `_`, `.`, at most one `/`.
fn label_key(key: &str) -> Option<String> {
    let valid = !key.is_empty()
        && key.len() <= 317
        && key.matches('/').count() <= 1
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    valid.then(|| key.to_string())
}

/// Letters, digits, `-`, `_`, `.`; may be empty.
fn label_value(value: &str) -> Option<String> {
    let valid = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then(|| value.to_string())
}

/// Every term must hold; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (field, wanted value, negated)
    terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        let mut terms = Vec::new();
        for term in split_unescaped(text, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let fail = |why| SelectorError::Field(term.chars().take(100).collect(), why);
            let (field, value, negate) = if let Some((f, v)) = split_operator(&term, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = split_operator(&term, "==") {
                (f, v, false)
            } else if let Some((f, v)) = split_operator(&term, "=") {
                (f, v, false)
            } else {
                return Err(fail("expected field=value or field!=value"));
            };
            let field = field.trim().to_string();
            if field.is_empty() {
                return Err(fail("empty field"));
            }
            terms.push((field, unescape(value), negate));
        }
        Ok(FieldSelector { terms })
    }

    /// Refuses fields outside `supported`, as the API server does.
    pub fn check(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .terms
            .iter()
            .find(|(f, _, _)| !supported.contains(&f.as_str()))
        {
            Some((field, _, _)) => Err(SelectorError::UnsupportedField(
                field.chars().take(100).collect(),
            )),
            None => Ok(()),
        }
    }

    /// Whether the object whose field values `value_of` gives (empty for
    /// a missing one) matches.
    pub fn matches(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.terms
            .iter()
            .all(|(field, wanted, negate)| (value_of(field) == *wanted) != *negate)
    }
}

/// Splits at `separator` where it is not escaped by `\`.
fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else if c == separator {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Splits at the first unescaped `op`.
fn split_operator<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if term[i..].starts_with(op) {
            return Some((&term[..i], &term[i + op.len()..]));
        }
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_operators_match_like_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let check = |selector: &str, expected: [bool; 2]| {
            let parsed =
                LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(
                [parsed.matches(&web), parsed.matches(&db)],
                expected,
                "{selector}"
            );
        };
        check("", [true, true]);
        check("app=web", [true, false]);
        check("app==web", [true, false]);
        check("app!=web", [false, true]);
        check("app in (web, db)", [true, true]);
        check("app notin (web)", [false, true]);
        check("tier", [true, false]);
        check("!tier", [false, true]);
        check("app=web,tier=front", [true, false]);
        check("app in (db),!tier", [false, true]);
        for bad in [
            "app in web",
            "a b",
            "=x",
            "app=(x",
            "app>1",
            "app in (a b)",
            "!",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_take_escapes_and_refuse_unknown_fields() {
        let selector =
            FieldSelector::parse(r"metadata.name=a\,b,status.phase!=Failed").expect("parse");
        let value = |f: &str| match f {
            "metadata.name" => "a,b".to_string(),
            "status.phase" => "Running".to_string(),
            _ => String::new(),
        };
        assert!(selector.matches(value));
        assert!(selector.check(&["metadata.name", "status.phase"]).is_ok());
        assert!(matches!(
            selector.check(&["metadata.name"]),
            Err(SelectorError::UnsupportedField(_))
        ));
        assert!(FieldSelector::parse("novalue").is_err());
        assert!(FieldSelector::parse("=x").is_err());
    }
}

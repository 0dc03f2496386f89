//! `${NAME}` and `${NAME:-default}` in the file's string values, replaced from the
//! environment each time the file is loaded (start, check, reload), before it is parsed.
//!
//! Only strings are touched (comments and keys are left as they are), and a value is
//! escaped for the kind of string it lands in, so an environment value can never change
//! the file's structure. `$${` stands for a literal `${`.

use std::ops::Range;

/// Why a `${…}` could not be replaced, and where it is.
pub type Problem = (Range<usize>, String);

#[derive(Clone, Copy, PartialEq)]
enum In {
    Code,
    Comment,
    /// `"…"` or `"""…"""`: escapes apply.
    Basic {
        multiline: bool,
    },
    /// `'…'` or `'''…'''`: taken as written.
    Literal {
        multiline: bool,
    },
}

/// `text` with every `${NAME}` in a string replaced by `lookup(NAME)` (or the default), or
/// every reference that could not be.
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut state = In::Code;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        match state {
            In::Code => {
                if rest.starts_with('#') {
                    state = In::Comment;
                } else if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
                    out.push_str(&rest[..3]);
                    i += 3;
                    state = if rest.starts_with('"') {
                        In::Basic { multiline: true }
                    } else {
                        In::Literal { multiline: true }
                    };
                    continue;
                } else if rest.starts_with('"') {
                    state = In::Basic { multiline: false };
                } else if rest.starts_with('\'') {
                    state = In::Literal { multiline: false };
                }
            }
            In::Comment => {
                if rest.starts_with('\n') {
                    state = In::Code;
                }
            }
            In::Basic { multiline } | In::Literal { multiline } => {
                let basic = matches!(state, In::Basic { .. });
                let quote = if basic { "\"" } else { "'" };
                let closing = if multiline {
                    quote.repeat(3)
                } else {
                    quote.to_string()
                };
                if basic && rest.starts_with('\\') {
                    // An escape: copy it whole, so `\"` does not end the string.
                    let len = rest.chars().take(2).map(char::len_utf8).sum();
                    out.push_str(&rest[..len]);
                    i += len;
                    continue;
                }
                if rest.starts_with(&closing) {
                    out.push_str(&closing);
                    i += closing.len();
                    state = In::Code;
                    continue;
                }
                if rest.starts_with("$${") {
                    out.push_str("${");
                    i += 3;
                    continue;
                }
                if rest.starts_with("${") {
                    let end = rest
                        .find('}')
                        .filter(|&e| !rest[..e].contains(['\n', '"', '\'']));
                    let Some(end) = end else {
                        problems.push((i..i + 2, "\"${\" without a closing \"}\"".into()));
                        out.push_str("${");
                        i += 2;
                        continue;
                    };
                    let span = i..i + end + 1;
                    let inner = &rest[2..end];
                    let (name, default) = match inner.split_once(":-") {
                        Some((name, default)) => (name, Some(default)),
                        None => (inner, None),
                    };
                    let valid_name = name
                        .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    let value = if !valid_name {
                        Err(format!(
                            "${{{inner}}}: {name:?} is not a variable name (letters, digits and _)"
                        ))
                    } else {
                        match (lookup(name), default) {
                            (Some(v), _) => Ok(v),
                            (None, Some(d)) => Ok(d.to_string()),
                            (None, None) => Err(format!(
                                "${{{name}}}: {name} is not set in the environment (give a default with ${{{name}:-…}})"
                            )),
                        }
                    };
                    match value.and_then(|v| escape(&v, basic, name)) {
                        Ok(v) => out.push_str(&v),
                        Err(why) => problems.push((span.clone(), why)),
                    }
                    i = span.end;
                    continue;
                }
            }
        }
        let c = rest.chars().next().expect("not at the end");
        out.push(c);
        i += c.len_utf8();
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `value` as it must be written inside the string it replaces a reference in.
fn escape(value: &str, basic: bool, name: &str) -> Result<String, String> {
    if basic {
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        Ok(out)
    } else if value.contains('\'') || value.chars().any(char::is_control) {
        Err(format!(
            "${{{name}}}: its value has a quote or a control character, which a '…' string cannot hold; use \"…\""
        ))
    } else {
        Ok(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "QUOTE" => Some("a\"b\\c".into()),
            "EMPTY" => Some(String::new()),
            "APOS" => Some("it's".into()),
            _ => None,
        }
    }

    #[test]
    fn references_in_strings_are_replaced_and_defaults_used() {
        let text =
            "listen = \"0.0.0.0:${PORT}\"\nx = '${MISSING:-fallback}'\ny = \"${EMPTY:-unused}\"\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "listen = \"0.0.0.0:8080\"\nx = 'fallback'\ny = \"\"\n"
        );
    }

    #[test]
    fn comments_keys_escapes_and_dollar_dollar_are_left_alone() {
        let text = "# ${NOT_SET}\na = \"\\\"${PORT}\" # ${ALSO_NOT}\nb = \"$${PORT}\"\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "# ${NOT_SET}\na = \"\\\"8080\" # ${ALSO_NOT}\nb = \"${PORT}\"\n"
        );
    }

    #[test]
    fn a_value_cannot_break_out_of_its_string() {
        let text = "a = \"${QUOTE}\"\n";
        let out = substitute(text, env).unwrap();
        assert_eq!(out, "a = \"a\\\"b\\\\c\"\n");
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["a"].as_str(), Some("a\"b\\c"));
        assert_eq!(
            substitute("a = '${QUOTE}'\n", env).unwrap(),
            "a = 'a\"b\\c'\n"
        );
        assert!(substitute("a = '${APOS}'\n", env).is_err());
    }

    #[test]
    fn unset_names_and_broken_references_are_reported_with_their_place() {
        let text = "a = \"${NOPE}\"\nb = \"${1BAD}\"\nc = \"${OPEN\"\n";
        let problems = substitute(text, env).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(problems[0].0, 5..12);
        assert!(problems[0].1.contains("NOPE is not set"), "{problems:?}");
        assert!(
            problems[1].1.contains("not a variable name"),
            "{problems:?}"
        );
        assert!(problems[2].1.contains("without a closing"), "{problems:?}");
    }

    proptest::proptest! {
        /// Fuzz pass (`PROPTEST_CASES=1000000 cargo test --release --lib fuzz`): any text
        /// is scanned without a panic, and whatever the environment holds, a reference in a
        /// "…" string becomes exactly that value once the file is parsed.
        #[test]
        fn fuzz_substitution(text in "\\PC{0,200}", value in "\\PC{0,40}") {
            let _ = substitute(&text, |_| Some(value.clone()));
            let file = "a = \"<${X}>\"\n";
            let out = substitute(file, |_| Some(value.clone())).unwrap();
            let parsed: toml::Table = toml::from_str(&out).unwrap();
            proptest::prop_assert_eq!(parsed["a"].as_str().unwrap(), format!("<{value}>"));
        }
    }
}

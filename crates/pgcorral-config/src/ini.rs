//! A line-tracking reader for the INI dialect of `pgagroal.conf`.
//!
//! This replaces `rust-ini`, which forgets where a section or key came from:
//! every error and warning of this crate has to name the file and the line.
//!
//! The dialect:
//! * `[name]` starts a section (spaces inside the brackets are trimmed);
//! * `key = value`, where the value may be quoted with `"` or `'` (the same
//!   character must open and close it, the other one may appear inside);
//! * `#` and `;` start a comment, on a line of its own or after a value
//!   (outside quotes);
//! * blank lines are ignored; anything else is a syntax error.

use std::path::Path;

use crate::ConfigError;

/// One meaningful line of an INI file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Section {
        name: String,
        line: usize,
    },
    Entry {
        key: String,
        value: String,
        line: usize,
    },
}

/// Reads a file and returns its lines with their 1-based numbers.
///
/// The file is read as bytes so that invalid UTF-8 is reported with the
/// line it is on instead of as a bare I/O error. A leading UTF-8 byte order
/// mark is skipped and `\r\n` line ends are accepted.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut lines = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|_| ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            message: "the line is not valid UTF-8".to_string(),
        })?;
        if text.contains('\0') {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                message: "the line contains a NUL byte (is this a binary file?)".to_string(),
            });
        }
        lines.push((line, text.to_string()));
    }
    Ok(lines)
}

/// Parses the lines of an INI file into sections and entries, in order.
pub(crate) fn parse(path: &Path, lines: &[(usize, String)]) -> Result<Vec<Item>, ConfigError> {
    let syntax = |line: usize, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut items = Vec::new();
    for (line, text) in lines {
        let line = *line;
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(syntax(line, "section header without a closing ']'".into()));
            };
            let name = rest[..close].trim();
            let after = rest[close + 1..].trim();
            if !after.is_empty() && !after.starts_with('#') && !after.starts_with(';') {
                return Err(syntax(
                    line,
                    format!("unexpected text '{after}' after the section header"),
                ));
            }
            if name.is_empty() {
                return Err(syntax(line, "empty section name '[]'".into()));
            }
            if name.contains('[') {
                return Err(syntax(line, format!("invalid section name '{name}'")));
            }
            items.push(Item::Section {
                name: name.to_string(),
                line,
            });
            continue;
        }
        let Some(eq) = trimmed.find('=') else {
            return Err(syntax(
                line,
                format!("expected '[section]' or 'key = value', found '{trimmed}'"),
            ));
        };
        let key = trimmed[..eq].trim();
        if key.is_empty() {
            return Err(syntax(line, "missing key before '='".into()));
        }
        if key
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '[' | ']' | '#' | ';'))
        {
            return Err(syntax(line, format!("invalid key '{key}'")));
        }
        let value = parse_value(&trimmed[eq + 1..]).map_err(|message| syntax(line, message))?;
        items.push(Item::Entry {
            key: key.to_string(),
            value,
            line,
        });
    }
    Ok(items)
}

/// Parses the text after `=`: an optionally quoted value, then an optional comment.
fn parse_value(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let mut chars = raw.chars();
    match chars.next() {
        Some(quote @ ('"' | '\'')) => {
            let body = &raw[1..];
            let Some(end) = body.find(quote) else {
                return Err(format!("unterminated {quote} quote in value"));
            };
            let value = &body[..end];
            let after = body[end + 1..].trim();
            if !after.is_empty() && !after.starts_with('#') && !after.starts_with(';') {
                return Err(format!("unexpected text '{after}' after the quoted value"));
            }
            Ok(value.to_string())
        }
        _ => {
            let end = raw.find(['#', ';']).unwrap_or(raw.len());
            Ok(raw[..end].trim().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str) -> Result<Vec<Item>, ConfigError> {
        let lines: Vec<(usize, String)> = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.to_string()))
            .collect();
        parse(Path::new("t.conf"), &lines)
    }

    #[test]
    fn comments_and_quotes() {
        let got =
            items("# c\n; c\n[ s ] # c\na = 1 # c\nb='x # y' ; c\nc = \"it's\"\nd =\ne=v;w\n")
                .unwrap();
        assert_eq!(
            got,
            vec![
                Item::Section {
                    name: "s".into(),
                    line: 3
                },
                Item::Entry {
                    key: "a".into(),
                    value: "1".into(),
                    line: 4
                },
                Item::Entry {
                    key: "b".into(),
                    value: "x # y".into(),
                    line: 5
                },
                Item::Entry {
                    key: "c".into(),
                    value: "it's".into(),
                    line: 6
                },
                Item::Entry {
                    key: "d".into(),
                    value: "".into(),
                    line: 7
                },
                Item::Entry {
                    key: "e".into(),
                    value: "v".into(),
                    line: 8
                },
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line) in [
            ("[a]\nnot a key value\n", 2),
            ("\n\n[a\n", 3),
            ("[a]\nk = \"open\n", 2),
            ("[a]\n = v\n", 2),
            ("[a]\nk = 'v' x\n", 2),
            ("[]\n", 1),
            ("[a] x\n", 1),
            ("[a]\nmy key = v\n", 2),
        ] {
            match items(text) {
                Err(ConfigError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}

//! `pgcorral_databases.conf`: `DATABASE[=alias,...] USER MAX_SIZE [INITIAL_SIZE] [MIN_SIZE]`.

use std::collections::HashMap;
use std::path::Path;

use crate::hba::columns;
use crate::ini::read_lines;
use crate::values::column_error;
use crate::{ConfigError, LimitRule};

/// The most aliases one rule may have.
pub const MAX_ALIASES: usize = 8;

#[derive(Clone, Copy)]
enum Size {
    All,
    N(usize),
}

struct Raw {
    database: String,
    aliases: Vec<String>,
    user: String,
    max: Size,
    initial: Size,
    min: Size,
    line: usize,
}

pub(crate) fn load(
    path: &Path,
    max_connections: usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<LimitRule>, ConfigError> {
    let mut raws: Vec<Raw> = Vec::new();
    for (line, text) in read_lines(path)? {
        let cols = columns(&text);
        if cols.is_empty() {
            continue;
        }
        raws.push(parse_line(path, line, &cols)?);
    }
    check_names(path, &raws)?;

    // MAX_SIZE: the numeric ones must fit; `all` rules share what is left.
    let numeric: usize = raws
        .iter()
        .map(|r| match r.max {
            Size::N(n) => n,
            Size::All => 0,
        })
        .fold(0usize, |a, b| a.saturating_add(b));
    if numeric > max_connections {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "too many connections defined: the limits add up to {numeric} but max_connections is {max_connections}"
            ),
        });
    }
    let all_count = raws.iter().filter(|r| matches!(r.max, Size::All)).count();
    let remaining = max_connections - numeric;
    if all_count > 0 && remaining < all_count {
        let first_all = raws
            .iter()
            .find(|r| matches!(r.max, Size::All))
            .map_or(0, |r| r.line);
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "too many connections defined: MAX_SIZE all on line {first_all} gets no connections, \
                 the numeric limits add up to {numeric} and max_connections is {max_connections}"
            ),
        });
    }

    let mut rules = Vec::with_capacity(raws.len());
    let mut all_seen = 0usize;
    for raw in raws {
        let max_size = match raw.max {
            Size::N(n) => n,
            Size::All => {
                // Split the remainder evenly; the first `all` rules get the leftover.
                let share = remaining / all_count + usize::from(all_seen < remaining % all_count);
                all_seen += 1;
                share
            }
        };
        let resolve = |s: Size| match s {
            Size::All => max_size,
            Size::N(n) => n,
        };
        let mut initial_size = resolve(raw.initial);
        let mut min_size = resolve(raw.min);
        let mut warn = |what: String| {
            warnings.push(format!("{}:{}: {what}", path.display(), raw.line));
        };
        if initial_size > max_size {
            warn(format!(
                "INITIAL_SIZE {initial_size} is greater than MAX_SIZE {max_size}, lowered to {max_size}"
            ));
            initial_size = max_size;
        }
        if min_size > max_size {
            warn(format!(
                "MIN_SIZE {min_size} is greater than MAX_SIZE {max_size}, lowered to {max_size}"
            ));
            min_size = max_size;
        }
        if initial_size < min_size {
            warn(format!(
                "INITIAL_SIZE {initial_size} is less than MIN_SIZE {min_size}, raised to {min_size}"
            ));
            initial_size = min_size;
        }
        rules.push(LimitRule {
            database: raw.database,
            aliases: raw.aliases,
            user: raw.user,
            max_size,
            initial_size,
            min_size,
            line: raw.line,
        });
    }
    Ok(rules)
}

fn parse_line(path: &Path, line: usize, cols: &[&str]) -> Result<Raw, ConfigError> {
    if !(3..=5).contains(&cols.len()) {
        return Err(ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            message: format!(
                "expected 3 to 5 columns (DATABASE[=alias,...] USER MAX_SIZE [INITIAL_SIZE] [MIN_SIZE]), found {}",
                cols.len()
            ),
        });
    }
    let (database, aliases_text) = match cols[0].split_once('=') {
        Some((d, a)) => (d, Some(a)),
        None => (cols[0], None),
    };
    if database.is_empty() {
        return Err(column_error(
            path,
            line,
            1,
            "DATABASE",
            cols[0],
            "the database name is empty",
        ));
    }
    let mut aliases: Vec<String> = Vec::new();
    if let Some(text) = aliases_text {
        if database == "all" {
            return Err(column_error(
                path,
                line,
                1,
                "DATABASE",
                cols[0],
                "'all' cannot have aliases",
            ));
        }
        for alias in text.split(',') {
            let reason = if alias.is_empty() {
                Some("empty alias".to_string())
            } else if alias == "all" {
                Some("'all' cannot be an alias".to_string())
            } else if alias == database {
                Some(format!("alias '{alias}' is the database name itself"))
            } else if aliases.iter().any(|a| a == alias) {
                Some(format!("alias '{alias}' is listed twice"))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(column_error(path, line, 1, "DATABASE", cols[0], &reason));
            }
            aliases.push(alias.to_string());
        }
        if aliases.len() > MAX_ALIASES {
            return Err(column_error(
                path,
                line,
                1,
                "DATABASE",
                cols[0],
                &format!(
                    "{} aliases, at most {MAX_ALIASES} are allowed",
                    aliases.len()
                ),
            ));
        }
    }
    let max = match cols[2] {
        "all" => Size::All,
        text => match text.parse::<usize>() {
            Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Size::N(n),
            _ => {
                return Err(column_error(
                    path,
                    line,
                    3,
                    "MAX_SIZE",
                    text,
                    "expected 'all' or an integer greater than 0",
                ))
            }
        },
    };
    let optional = |n: usize, name: &str| -> Result<Size, ConfigError> {
        match cols.get(n - 1) {
            None => Ok(Size::N(0)),
            Some(&"all") => Ok(Size::All),
            Some(text) => match text.parse::<usize>() {
                Ok(v) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(Size::N(v)),
                _ => Err(column_error(
                    path,
                    line,
                    n,
                    name,
                    text,
                    "expected 'all' or a non-negative integer",
                )),
            },
        }
    };
    let initial = optional(4, "INITIAL_SIZE")?;
    let min = optional(5, "MIN_SIZE")?;
    Ok(Raw {
        database: database.to_string(),
        aliases,
        user: cols[1].to_string(),
        max,
        initial,
        min,
        line,
    })
}

/// Duplicate (database, user) pairs; aliases unique and never a real database name.
fn check_names(path: &Path, raws: &[Raw]) -> Result<(), ConfigError> {
    let err = |line: usize, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut pairs: HashMap<(&str, &str), usize> = HashMap::new();
    let mut databases: HashMap<&str, usize> = HashMap::new();
    for raw in raws {
        if let Some(first) = pairs.insert((&raw.database, &raw.user), raw.line) {
            return Err(err(
                raw.line,
                format!(
                    "duplicate rule for database '{}' and user '{}' (first defined on line {first})",
                    raw.database, raw.user
                ),
            ));
        }
        databases.entry(&raw.database).or_insert(raw.line);
    }
    let mut aliases: HashMap<&str, (usize, &str)> = HashMap::new();
    for raw in raws {
        for alias in &raw.aliases {
            if let Some(line) = databases.get(alias.as_str()) {
                return Err(err(
                    raw.line,
                    format!(
                        "alias '{alias}' is the name of the database of the rule on line {line}"
                    ),
                ));
            }
            if let Some((line, db)) = aliases.get(alias.as_str()) {
                // The same database listed for several users may repeat its aliases.
                if *db != raw.database {
                    return Err(err(
                        raw.line,
                        format!(
                            "alias '{alias}' is already an alias of database '{db}' on line {line}"
                        ),
                    ));
                }
            } else {
                aliases.insert(alias, (raw.line, &raw.database));
            }
        }
    }
    Ok(())
}

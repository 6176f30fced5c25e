//! `--format text`: a readable summary of a successful result.

use serde_json::{Map, Value};
use std::fmt::Write;

/// A scalar as text: strings without quotes, null as `-`.
fn s(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(x)) => x.clone(),
        Some(Value::Array(a)) => {
            if a.is_empty() {
                "(none)".into()
            } else {
                a.iter().map(|x| s(Some(x))).collect::<Vec<_>>().join(", ")
            }
        }
        Some(other) => other.to_string(),
    }
}

/// `key=value` pairs of an object, in the order received.
fn pairs(v: Option<&Value>) -> String {
    match v {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", s(Some(v))))
            .collect::<Vec<_>>()
            .join(" "),
        other => s(other),
    }
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM:SS`.
fn time(v: Option<&Value>) -> String {
    let Some(t) = v.and_then(Value::as_i64) else {
        return s(v);
    };
    if t <= 0 {
        return "-".into();
    }
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn status(r: &Map<String, Value>) -> String {
    let mut o = String::new();
    let g = |k: &str| r.get(k);
    let _ = writeln!(o, "pid:             {}", s(g("pid")));
    let _ = writeln!(o, "pipeline:        {}", s(g("pipeline")));
    let _ = writeln!(
        o,
        "active backends: {} / {}",
        s(g("active_backends")),
        s(g("max_connections"))
    );
    let _ = writeln!(o, "clients:         {}", s(g("clients")));
    let _ = writeln!(o, "waiting:         {}", s(g("waiting")));
    let _ = writeln!(o, "shutdown:        {}", s(g("shutdown")));
    let _ = writeln!(o, "disabled:        {}", s(g("disabled")));
    let _ = writeln!(o, "states:          {}", pairs(g("states")));
    if let Some(Value::Array(limits)) = g("limits") {
        for l in limits {
            let _ = writeln!(
                o,
                "limit:           database={} user={} backends={} / {}",
                s(l.get("database")),
                s(l.get("user")),
                s(l.get("backends")),
                s(l.get("max_size"))
            );
        }
    }
    if g("stats").is_some() {
        let _ = writeln!(o, "stats:           {}", pairs(g("stats")));
    }
    if let Some(Value::Array(slots)) = g("slots") {
        let cols = [
            "SLOT",
            "STATE",
            "USER",
            "DATABASE",
            "APPLICATION",
            "OWNER",
            "BACKEND",
            "SERVER",
            "SINCE",
            "LAST USE",
        ];
        let keys = [
            "slot",
            "state",
            "user",
            "database",
            "application_name",
            "owner_pid",
            "backend_pid",
            "server",
            "since",
            "last_use",
        ];
        let mut rows: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_string()).collect()];
        for slot in slots {
            rows.push(
                keys.iter()
                    .map(|k| match *k {
                        "since" | "last_use" => time(slot.get(*k)),
                        _ => match s(slot.get(*k)) {
                            v if v.is_empty() => "-".into(),
                            v => v,
                        },
                    })
                    .collect(),
            );
        }
        let widths: Vec<usize> = (0..cols.len())
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        o.push('\n');
        for row in rows {
            let line = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ");
            let _ = writeln!(o, "{}", line.trim_end());
        }
    }
    o
}

/// The text for the result of `command`.
pub fn render(command: &str, result: &Value) -> String {
    let empty = Map::new();
    let r = result.as_object().unwrap_or(&empty);
    let g = |k: &str| r.get(k);
    match command {
        "ping" => format!(
            "pgcorral is alive (pid {}, version {})\n",
            s(g("pid")),
            s(g("version"))
        ),
        "status" => status(r),
        "flush" => format!(
            "flush: closed {}, marked {}, signalled {}\n",
            s(g("closed")),
            s(g("marked")),
            s(g("signalled"))
        ),
        "enable" | "disable" => format!("disabled databases: {}\n", s(g("disabled"))),
        "shutdown" => format!(
            "shutdown {}: {} client(s) connected\n",
            s(g("mode")),
            s(g("clients"))
        ),
        "conf_reload" => {
            let mut o = String::new();
            if g("applied").and_then(Value::as_bool).unwrap_or(false) {
                o.push_str("configuration reloaded\n");
            } else {
                let _ = writeln!(
                    o,
                    "configuration NOT reloaded: restart required for: {}",
                    s(g("restart_required"))
                );
            }
            if let Some(Value::Array(w)) = g("warnings") {
                for w in w {
                    let _ = writeln!(o, "warning: {}", s(Some(w)));
                }
            }
            o
        }
        "conf_get" if r.len() == 1 => format!("{}\n", s(r.values().next())),
        "conf_get" | "conf_ls" => {
            let width = r.keys().map(|k| k.len()).max().unwrap_or(0);
            r.iter()
                .map(|(k, v)| format!("{k:<width$} = {}\n", s(Some(v))))
                .collect()
        }
        "conf_set" => format!("{} = {}\n", s(g("key")), s(g("value"))),
        "clear" => "cleared\n".into(),
        "switch_to" => format!(
            "primary is now {} ({} backend(s) flushed)\n",
            s(g("primary")),
            s(g("flushed"))
        ),
        _ => format!(
            "{}\n",
            serde_json::to_string_pretty(result).unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_text() {
        let r = json!({
            "pid": 1234, "pipeline": "performance", "max_connections": 100,
            "active_backends": 7, "clients": 5, "waiting": 0, "shutdown": "none",
            "disabled": ["db1", "db2"],
            "states": {"free": 2, "in_use": 5},
            "limits": [{"database": "db", "user": "u", "max_size": 10, "backends": 3}],
            "stats": {"clients_served": 9},
            "slots": [{"slot": 0, "state": "in_use", "user": "u", "database": "db",
                       "application_name": "psql", "owner_pid": 42, "backend_pid": 4242,
                       "server": "primary", "since": 0, "last_use": 1764030005}]
        });
        let t = render("status", &r);
        assert!(t.contains("pid:             1234"), "{t}");
        assert!(t.contains("active backends: 7 / 100"), "{t}");
        assert!(t.contains("disabled:        db1, db2"), "{t}");
        assert!(t.contains("states:          free=2 in_use=5"), "{t}");
        assert!(t.contains("database=db user=u backends=3 / 10"), "{t}");
        assert!(t.contains("SLOT  STATE"), "{t}");
        assert!(t.contains("psql"), "{t}");
        assert!(t.contains("2025-11-25 00:20:05"), "{t}");
        let t = render("status", &json!({"disabled": []}));
        assert!(t.contains("disabled:        (none)"), "{t}");
        assert!(!t.contains("SLOT"), "{t}");
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            render("ping", &json!({"pid": 7, "version": "0.1.0"})),
            "pgcorral is alive (pid 7, version 0.1.0)\n"
        );
        assert_eq!(
            render("conf_get", &json!({"log_level": "debug"})),
            "debug\n"
        );
        assert_eq!(
            render("conf_get", &json!({"a": "1", "bbb": "2"})),
            "a   = 1\nbbb = 2\n"
        );
        assert!(render(
            "conf_reload",
            &json!({"applied": false, "restart_required": ["port"]})
        )
        .contains("restart required for: port"));
        assert_eq!(
            render("flush", &json!({"closed": 1, "marked": 2, "signalled": 3})),
            "flush: closed 1, marked 2, signalled 3\n"
        );
        assert_eq!(time(Some(&json!(0))), "-");
        assert_eq!(time(Some(&json!(86400 + 3661))), "1970-01-02 01:01:01");
    }
}

//! Acceptance 9: configuration errors stop the daemon at startup with a message naming the file,
//! the line and the key.

mod common;
use common::*;

fn line_of(conf: &str, needle: &str) -> usize {
    conf.lines()
        .position(|l| l.trim() == needle)
        .expect("line in the config")
        + 1
}

/// Whether `log` names line `n` as `…conf:N`, `line N` or `line: N` (not followed by a digit).
fn names_line(log: &str, n: usize) -> bool {
    let n = n.to_string();
    ["conf:", "line ", "line: ", "line="].iter().any(|prefix| {
        let pat = format!("{prefix}{n}");
        log.match_indices(&pat).any(|(i, _)| {
            !log[i + pat.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    })
}

#[test]
fn bad_value_names_file_line_and_key() {
    let cluster = PgCluster::start();
    let mut o = opts("performance", &[]);
    o.extra_main = vec!["max_connections = lots".into()];
    let f = match Pgcorral::try_start(&cluster, o) {
        Ok(_) => panic!("pgcorral started with max_connections = lots"),
        Err(f) => f,
    };
    let status = f.status.unwrap_or_else(|| panic!("no exit status: {f}"));
    assert!(
        !status.success(),
        "exit status {status} for a bad value\n{f}"
    );
    let line = line_of(&f.conf, "max_connections = lots");
    let path = f.conf_path.display().to_string();
    assert!(
        f.log.contains(&path) || f.log.contains("pgcorral.conf"),
        "file not named:\n{f}"
    );
    assert!(names_line(&f.log, line), "line {line} not named:\n{f}");
    assert!(f.log.contains("max_connections"), "key not named:\n{f}");
}

#[test]
fn unknown_pipeline_names_file_line_and_key() {
    let cluster = PgCluster::start();
    let o = opts("statement", &["pgcorral_test trust_user 5 1 1"]);
    let f = match Pgcorral::try_start(&cluster, o) {
        Ok(_) => panic!("pgcorral started with pipeline = statement"),
        Err(f) => f,
    };
    let status = f.status.unwrap_or_else(|| panic!("no exit status: {f}"));
    assert!(!status.success(), "exit status {status}\n{f}");
    let line = line_of(&f.conf, "pipeline = statement");
    assert!(names_line(&f.log, line), "line {line} not named:\n{f}");
    assert!(
        f.log
            .contains("expected auto, performance, session or transaction"),
        "no list of pipelines:\n{f}"
    );
}

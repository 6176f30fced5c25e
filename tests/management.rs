//! Acceptance of issue 5 (the commands): `pgcorral-ctl` against a running pgcorral with real
//! clients connected, checking each command's effect on the pool, the clients and PostgreSQL
//! (doc/management.md), in `--format text` and `--format json`.

mod common;
use common::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

const LIMITS: &[&str] = &["pgcorral_test trust_user 5"];

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("pgcorral-ctl killed by a signal: {:?}", o.status))
}

fn show(args: &[&str], o: &Output) -> String {
    format!(
        "pgcorral-ctl {args:?}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// Runs a command in text format; asserts exit 0 and returns stdout.
fn text_ok(p: &Pgcorral, args: &[&str]) -> String {
    let o = p.ctl(args);
    assert_eq!(code(&o), 0, "{}", show(args, &o));
    stdout(&o)
}

/// Runs a command with `--format json`; asserts the exit status, that stdout is one line of JSON
/// with the status matching it, and returns the document.
fn json_doc(p: &Pgcorral, args: &[&str], want_code: i32) -> Value {
    let mut full = vec!["--format", "json"];
    full.extend_from_slice(args);
    let o = p.ctl(&full);
    assert_eq!(code(&o), want_code, "{}", show(&full, &o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().count(),
        1,
        "JSON not on one line: {}",
        show(&full, &o)
    );
    let doc: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&full, &o)));
    assert_eq!(doc["version"], 1, "{doc}");
    let status = if want_code == 0 { "ok" } else { "error" };
    if !(want_code == 1 && doc["command"] == "conf_reload" && doc["status"] == "ok") {
        assert_eq!(doc["status"], status, "{doc}");
    }
    doc
}

/// `json_doc` for a successful command: returns `result`.
fn json_ok(p: &Pgcorral, args: &[&str]) -> Value {
    json_doc(p, args, 0)["result"].clone()
}

/// A JSON scalar as text (config values may come as strings or numbers).
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_u64(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"))
}

/// A new trust_user client must be refused; returns its SQLSTATE.
fn refused_state(port: u16) -> String {
    match with_timeout(Duration::from_secs(20), "refused connect", move || {
        connect(port, TRUST_USER.user, None).map(|_| ())
    }) {
        Ok(()) => panic!("a new client was accepted"),
        Err(e) => sqlstate(&e),
    }
}

/// A new trust_user client gets served.
fn new_client_works(port: u16) {
    let v: i32 = with_timeout(Duration::from_secs(20), "new client", move || {
        let mut c = must_connect(port, TRUST_USER.user, None);
        c.query_one("SELECT 40+2", &[]).expect("SELECT").get(0)
    });
    assert_eq!(v, 42);
}

fn still_works(c: &mut Client, what: &str) {
    let v: i32 = c
        .query_one("SELECT 7", &[])
        .unwrap_or_else(|e| panic!("{what}: existing session broken: {e}"))
        .get(0);
    assert_eq!(v, 7, "{what}");
}

fn connect_app(port: u16, app: &str) -> Client {
    let mut c = postgres::Config::new();
    c.user(TRUST_USER.user)
        .dbname(TEST_DB)
        .host("127.0.0.1")
        .port(port)
        .application_name(app)
        .connect_timeout(Duration::from_secs(10));
    c.connect(NoTls)
        .unwrap_or_else(|e| panic!("connect with application_name {app}: {e}"))
}

fn ctl_binary() -> PathBuf {
    pgcorral_binary().with_file_name("pgcorral-ctl")
}

#[test]
fn ping_and_status_match_pg_stat_activity() {
    let s = setup(opts("performance", LIMITS));
    let p = &s.pooler;

    let r = json_ok(p, &["ping"]);
    assert_eq!(as_u64(&r["pid"], "ping pid"), p.pid() as u64, "{r}");
    assert!(r["version"].is_string(), "{r}");
    let t = text_ok(p, &["ping"]);
    assert!(t.contains(&p.pid().to_string()), "ping text: {t}");
    let t = text_ok(p, &["is-alive"]);
    assert!(t.contains(&p.pid().to_string()), "is-alive text: {t}");

    let apps = ["mgmt-a", "mgmt-b", "mgmt-c"];
    let mut clients: Vec<Client> = apps.iter().map(|a| connect_app(p.port, a)).collect();
    for c in &mut clients {
        still_works(c, "setup");
    }
    assert_eq!(s.cluster.backend_count(TRUST_USER.user), 3);

    let st = json_ok(p, &["status"]);
    assert_eq!(as_u64(&st["states"]["in_use"], "in_use"), 3, "{st}");
    assert_eq!(as_u64(&st["active_backends"], "active_backends"), 3, "{st}");
    assert_eq!(as_u64(&st["clients"], "clients"), 3, "{st}");
    assert_eq!(as_u64(&st["waiting"], "waiting"), 0, "{st}");
    assert_eq!(
        as_u64(&st["max_connections"], "max_connections"),
        20,
        "{st}"
    );
    assert_eq!(as_u64(&st["pid"], "pid"), p.pid() as u64, "{st}");
    assert_eq!(st["pipeline"], "performance", "{st}");
    assert_eq!(st["shutdown"], "none", "{st}");
    assert_eq!(st["disabled"], serde_json::json!([]), "{st}");
    assert!(st.get("slots").is_none(), "slots without details: {st}");
    let limits = st["limits"].as_array().expect("limits array");
    let rule = limits
        .iter()
        .find(|l| l["user"] == TRUST_USER.user && l["database"] == TEST_DB)
        .unwrap_or_else(|| panic!("no limit rule for trust_user in {st}"));
    assert_eq!(as_u64(&rule["max_size"], "max_size"), 5, "{st}");
    assert_eq!(as_u64(&rule["backends"], "backends"), 3, "{st}");

    let st = json_ok(p, &["status", "details"]);
    let slots = st["slots"].as_array().expect("slots array with details");
    let in_use: Vec<&Value> = slots.iter().filter(|s| s["state"] == "in_use").collect();
    assert_eq!(in_use.len(), 3, "{st}");
    let pids = s.cluster.backend_pids(TRUST_USER.user);
    let mut seen_apps: Vec<String> = Vec::new();
    for slot in &in_use {
        assert_eq!(slot["user"], TRUST_USER.user, "{slot}");
        assert_eq!(slot["database"], TEST_DB, "{slot}");
        assert_eq!(slot["server"], "primary", "{slot}");
        let bp = as_u64(&slot["backend_pid"], "backend_pid") as i32;
        assert!(pids.contains(&bp), "backend_pid {bp} not in {pids:?}");
        seen_apps.push(as_text(&slot["application_name"]));
    }
    seen_apps.sort();
    assert_eq!(seen_apps, apps, "{st}");
    // The alias gives the same.
    let st2 = json_ok(p, &["details"]);
    assert_eq!(
        st2["slots"]
            .as_array()
            .map(|a| a.iter().filter(|s| s["state"] == "in_use").count()),
        Some(3),
        "{st2}"
    );

    let t = text_ok(p, &["status"]);
    assert!(t.contains("in_use=3"), "status text: {t}");
    assert!(t.contains("3 / 20"), "status text: {t}");
    assert!(t.contains(&p.pid().to_string()), "status text: {t}");
    assert!(
        !t.contains("mgmt-a"),
        "status text without details lists slots: {t}"
    );
    let t = text_ok(p, &["status", "details"]);
    for a in apps {
        assert!(t.contains(a), "status details text lacks {a}: {t}");
    }

    // Disconnected: back in the pool as free.
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let st = json_ok(p, &["status"]);
            st["states"]["in_use"] == 0 && st["states"]["free"] == 3 && st["clients"] == 0
        }),
        "status after disconnect: {}",
        json_ok(p, &["status"])
    );
    assert_eq!(s.cluster.backend_count(TRUST_USER.user), 3);
}

#[test]
fn flush_idle_gracefully_all() {
    let s = setup(opts("performance", LIMITS));
    let p = &s.pooler;
    let user = TRUST_USER.user;

    // idle: two pooled free backends are closed.
    {
        let mut a = must_connect(p.port, user, None);
        let mut b = must_connect(p.port, user, None);
        still_works(&mut a, "a");
        still_works(&mut b, "b");
    }
    assert_eq!(
        s.cluster
            .wait_backend_count(user, 2, Duration::from_secs(5)),
        2
    );
    let r = json_ok(p, &["flush", "idle"]);
    assert_eq!(as_u64(&r["closed"], "closed"), 2, "{r}");
    assert_eq!(
        s.cluster
            .wait_backend_count(user, 0, Duration::from_secs(5)),
        0,
        "backends left after flush idle"
    );

    // The 1.x alias with a database.
    {
        let mut a = must_connect(p.port, user, None);
        still_works(&mut a, "a");
    }
    assert_eq!(
        s.cluster
            .wait_backend_count(user, 1, Duration::from_secs(5)),
        1
    );
    let t = text_ok(p, &["flush-idle", TEST_DB]);
    assert!(t.contains("closed 1"), "flush-idle text: {t}");
    assert_eq!(
        s.cluster
            .wait_backend_count(user, 0, Duration::from_secs(5)),
        0
    );

    // gracefully: the connected client goes on, its backend goes when it leaves.
    let mut a = must_connect(p.port, user, None);
    still_works(&mut a, "before flush gracefully");
    let r = json_ok(p, &["flush", "gracefully", "all"]);
    assert_eq!(as_u64(&r["marked"], "marked"), 1, "{r}");
    still_works(&mut a, "after flush gracefully");
    still_works(&mut a, "after flush gracefully, again");
    assert_eq!(s.cluster.backend_count(user), 1);
    drop(a);
    assert_eq!(
        s.cluster
            .wait_backend_count(user, 0, Duration::from_secs(5)),
        0,
        "the gracefully flushed backend went back to the pool"
    );

    // all: the connected client is ended.
    let mut b = must_connect(p.port, user, None);
    still_works(&mut b, "before flush all");
    let r = json_ok(p, &["flush", "all"]);
    assert_eq!(as_u64(&r["signalled"], "signalled"), 1, "{r}");
    let err = b
        .query_one("SELECT 1", &[])
        .expect_err("a query after flush all succeeded");
    if let Some(c) = err.code() {
        assert_eq!(c.code(), "57P01", "{err}");
    }
    assert_eq!(
        s.cluster
            .wait_backend_count(user, 0, Duration::from_secs(5)),
        0,
        "backend left after flush all"
    );

    // The default (gracefully all) in text form.
    let t = text_ok(p, &["flush"]);
    assert!(
        t.contains("closed") && t.contains("marked"),
        "flush text: {t}"
    );
    assert_pool_works(p);
}

#[test]
fn disable_and_enable() {
    let s = setup(opts("performance", LIMITS));
    let p = &s.pooler;
    let mut a = must_connect(p.port, TRUST_USER.user, None);
    still_works(&mut a, "setup");

    let r = json_ok(p, &["disable", TEST_DB]);
    assert!(
        r["disabled"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == TEST_DB)),
        "{r}"
    );
    assert_eq!(refused_state(p.port), "57P03");
    still_works(&mut a, "after disable");
    let st = json_ok(p, &["status"]);
    assert!(
        st["disabled"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == TEST_DB)),
        "{st}"
    );
    let t = text_ok(p, &["status"]);
    assert!(
        t.contains(TEST_DB),
        "status text names the disabled database: {t}"
    );

    let t = text_ok(p, &["enable", TEST_DB]);
    assert!(!t.is_empty());
    new_client_works(p.port);
    still_works(&mut a, "after enable");

    text_ok(p, &["disable", "all"]);
    assert_eq!(refused_state(p.port), "57P03");
    still_works(&mut a, "after disable all");
    let r = json_ok(p, &["enable", "all"]);
    assert_eq!(r["disabled"], serde_json::json!([]), "{r}");
    new_client_works(p.port);
    let st = json_ok(p, &["status"]);
    assert_eq!(st["disabled"], serde_json::json!([]), "{st}");
    still_works(&mut a, "at the end");
}

#[test]
fn shutdown_gracefully_waits_for_the_clients() {
    let mut s = setup(opts("performance", LIMITS));
    let port = s.pooler.port;
    let mut a = must_connect(port, TRUST_USER.user, None);
    let mut b = must_connect(port, TRUST_USER.user, None);
    still_works(&mut a, "a");
    still_works(&mut b, "b");

    let r = json_ok(&s.pooler, &["shutdown", "gracefully"]);
    assert_eq!(r["mode"], "gracefully", "{r}");
    assert_eq!(as_u64(&r["clients"], "clients"), 2, "{r}");
    assert_eq!(refused_state(port), "57P03");
    still_works(&mut a, "a during graceful shutdown");
    still_works(&mut b, "b during graceful shutdown");
    let st = json_ok(&s.pooler, &["status"]);
    assert_eq!(st["shutdown"], "gracefully", "{st}");

    drop(a);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.pooler.is_running(),
        "exited with a client still connected"
    );
    still_works(&mut b, "b after a left");
    drop(b);
    let st = s.pooler.wait_exit(Duration::from_secs(10));
    let st = st.unwrap_or_else(|| panic!("still running after the last client left"));
    assert!(st.success(), "exit status {st}\n{}", s.pooler.log());
    assert_eq!(
        s.cluster
            .wait_backend_count(TRUST_USER.user, 0, Duration::from_secs(5)),
        0
    );
}

#[test]
fn shutdown_cancel_then_immediate() {
    let mut s = setup(opts("performance", LIMITS));
    let port = s.pooler.port;
    let mut a = must_connect(port, TRUST_USER.user, None);
    still_works(&mut a, "a");

    let t = text_ok(&s.pooler, &["shutdown", "gracefully"]);
    assert!(t.contains("gracefully"), "shutdown text: {t}");
    assert_eq!(refused_state(port), "57P03");
    let r = json_ok(&s.pooler, &["shutdown", "cancel"]);
    assert_eq!(r["mode"], "cancel", "{r}");
    new_client_works(port);
    drop(a);
    std::thread::sleep(Duration::from_secs(1));
    assert!(s.pooler.is_running(), "exited after shutdown cancel");
    let st = json_ok(&s.pooler, &["status"]);
    assert_eq!(st["shutdown"], "none", "{st}");
    new_client_works(port);

    // The 1.x aliases, cancelled again (with a client connected, so it does not just exit).
    let mut b = must_connect(port, TRUST_USER.user, None);
    still_works(&mut b, "b");
    text_ok(&s.pooler, &["gracefully"]);
    assert_eq!(refused_state(port), "57P03");
    text_ok(&s.pooler, &["cancel-shutdown"]);
    new_client_works(port);
    still_works(&mut b, "b after cancel-shutdown");
    text_ok(&s.pooler, &["shutdown", "immediate"]);
    let st = s
        .pooler
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after shutdown immediate"));
    assert!(st.success(), "exit status {st}\n{}", s.pooler.log());
    assert!(
        b.query_one("SELECT 1", &[]).is_err(),
        "session survived shutdown immediate"
    );
}

#[test]
fn shutdown_gracefully_with_timeout_escalates() {
    let mut s = setup(opts("performance", LIMITS));
    let mut a = must_connect(s.pooler.port, TRUST_USER.user, None);
    still_works(&mut a, "a");
    let r = json_ok(&s.pooler, &["shutdown", "gracefully", "--timeout", "2"]);
    assert_eq!(as_u64(&r["clients"], "clients"), 1, "{r}");
    still_works(&mut a, "a before the timeout");
    let st = s
        .pooler
        .wait_exit(Duration::from_secs(12))
        .unwrap_or_else(|| panic!("still running 12 s after shutdown gracefully --timeout 2"));
    assert!(st.success(), "exit status {st}\n{}", s.pooler.log());
    assert!(
        a.query_one("SELECT 1", &[]).is_err(),
        "session survived the escalation"
    );
}

#[test]
fn conf_get_ls_set() {
    let s = setup(opts("performance", LIMITS));
    let p = &s.pooler;

    let all = json_ok(p, &["conf", "get"]);
    assert!(all.is_object(), "{all}");
    assert_eq!(as_text(&all["max_connections"]), "20", "{all}");
    assert_eq!(as_text(&all["port"]), p.port.to_string(), "{all}");
    assert_eq!(as_text(&all["pipeline"]), "performance", "{all}");
    let one = json_ok(p, &["conf", "get", "max_connections"]);
    assert_eq!(as_text(&one["max_connections"]), "20", "{one}");
    assert_eq!(text_ok(p, &["conf", "get", "max_connections"]), "20");
    assert_eq!(text_ok(p, &["config-get", "max_connections"]), "20");
    let t = text_ok(p, &["conf", "get"]);
    assert!(
        t.lines()
            .any(|l| l.starts_with("max_connections") && l.ends_with("20")),
        "conf get text: {t}"
    );

    let ls = json_ok(p, &["conf", "ls"]);
    let path = |v: &Value| PathBuf::from(as_text(v));
    assert_eq!(path(&ls["main"]), p.conf_path(), "{ls}");
    assert_eq!(path(&ls["hba"]), p.dir.join("pgcorral_hba.conf"), "{ls}");
    assert_eq!(
        path(&ls["limits"]),
        p.dir.join("pgcorral_databases.conf"),
        "{ls}"
    );
    let t = text_ok(p, &["conf", "ls"]);
    assert!(
        t.contains(&p.conf_path().display().to_string()),
        "conf ls text: {t}"
    );

    let r = json_ok(p, &["conf", "set", "log_level", "debug"]);
    assert_eq!(r["key"], "log_level", "{r}");
    assert!(as_text(&r["value"]).starts_with("debug"), "{r}");
    let got = json_ok(p, &["conf", "get", "log_level"]);
    assert!(as_text(&got["log_level"]).starts_with("debug"), "{got}");
    assert!(text_ok(p, &["conf", "get", "log_level"]).starts_with("debug"));
    text_ok(p, &["config-set", "log_level", "info"]);
    assert_eq!(text_ok(p, &["conf", "get", "log_level"]), "info");
    let conf = std::fs::read_to_string(p.conf_path()).unwrap();
    assert!(
        conf.contains("log_level = info"),
        "conf set wrote the file:\n{conf}"
    );

    let o = p.ctl(&["conf", "set", "port", "1"]);
    assert_eq!(code(&o), 1, "{}", show(&["conf", "set", "port", "1"], &o));
    assert!(!stderr(&o).is_empty(), "no reason given");
    let doc = json_doc(p, &["conf", "set", "port", "1"], 1);
    assert!(doc["error"].is_string(), "{doc}");
    assert_eq!(
        as_text(&json_ok(p, &["conf", "get", "port"])["port"]),
        p.port.to_string()
    );
    new_client_works(p.port);
}

/// Runs pgcorral-ctl with another `-c` than the daemon's own file.
fn ctl_with(conf: &std::path::Path, args: &[&str]) -> Output {
    Command::new(ctl_binary())
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("spawn pgcorral-ctl")
}

#[test]
fn conf_reload() {
    let s = setup(opts("performance", LIMITS));
    let p = &s.pooler;
    let mut a = must_connect(p.port, TRUST_USER.user, None);
    still_works(&mut a, "setup");
    let conf_path = p.conf_path();
    let original = std::fs::read_to_string(&conf_path).unwrap();
    // pgcorral-ctl finds the socket through -c: while the daemon's own file says another port
    // or does not parse, it is pointed at a copy of the original.
    let ctl_conf = p.dir.join("ctl.conf");
    std::fs::write(&ctl_conf, &original).unwrap();

    // A reload with nothing changed is applied.
    let r = json_ok(p, &["conf", "reload"]);
    assert_eq!(r["applied"], true, "{r}");

    // A changed port needs a restart: refused, the daemon keeps the old port.
    let other = free_port();
    let port_line = format!("port = {}\n", p.port);
    assert!(original.contains(&port_line), "{original}");
    let moved = original.replacen(&port_line, &format!("port = {other}\n"), 1);
    std::fs::write(&conf_path, &moved).unwrap();
    let o = ctl_with(&ctl_conf, &["conf", "reload"]);
    assert_eq!(code(&o), 1, "{}", show(&["conf", "reload"], &o));
    let said = format!("{}\n{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("port"),
        "the reason does not name port: {said}"
    );
    let o = ctl_with(&ctl_conf, &["--format", "json", "reload"]);
    assert_eq!(code(&o), 1, "{}", show(&["--format", "json", "reload"], &o));
    let doc: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert!(
        doc["result"]["restart_required"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "port"))
            || as_text(&doc["error"]).contains("port"),
        "{doc}"
    );
    new_client_works(p.port);
    still_works(&mut a, "after the refused reload");
    let o = ctl_with(&ctl_conf, &["conf", "get", "port"]);
    assert_eq!(
        stdout(&o),
        p.port.to_string(),
        "{}",
        show(&["conf", "get", "port"], &o)
    );
    assert!(
        connect(other, TRUST_USER.user, None).is_err(),
        "the daemon listens on the new port {other}"
    );

    // A syntax error: refused, nothing changes (not even the valid log_level line).
    let broken = original.replacen("log_level = info", "log_level = debug", 1)
        + "this line is not an ini line\n";
    std::fs::write(&conf_path, &broken).unwrap();
    let o = ctl_with(&ctl_conf, &["conf", "reload"]);
    assert_eq!(code(&o), 1, "{}", show(&["conf", "reload"], &o));
    assert!(!stderr(&o).is_empty(), "no error message");
    new_client_works(p.port);
    still_works(&mut a, "after the failed reload");
    let o = ctl_with(&ctl_conf, &["conf", "get", "log_level"]);
    assert_eq!(
        stdout(&o),
        "info",
        "{}",
        show(&["conf", "get", "log_level"], &o)
    );
    std::fs::write(&conf_path, &original).unwrap();

    // HBA: trust_user rejected for new clients; the existing session goes on.
    std::fs::write(
        p.dir.join("pgcorral_hba.conf"),
        "host all trust_user all reject\nhost all all all all\nlocal all all all\n",
    )
    .unwrap();
    let t = text_ok(p, &["conf", "reload"]);
    assert!(t.contains("reloaded"), "reload text: {t}");
    assert_eq!(refused_state(p.port), "28000");
    still_works(&mut a, "after the HBA reload");
}

#[test]
fn clear_switch_usage_and_unreachable() {
    let s = setup(opts("performance", LIMITS));
    let p = &s.pooler;

    assert_eq!(code(&p.ctl(&["clear", "prometheus"])), 0);
    let r = json_ok(p, &["reset"]);
    assert!(r.is_object(), "{r}");
    let r = json_ok(p, &["switch-to", "primary"]);
    assert_eq!(r["primary"], "primary", "{r}");
    let o = p.ctl(&["switch-to", "nosuch"]);
    assert_eq!(code(&o), 1, "{}", show(&["switch-to", "nosuch"], &o));
    assert!(!stderr(&o).is_empty());
    let doc = json_doc(p, &["switch-to", "nosuch"], 1);
    assert!(doc["error"].is_string(), "{doc}");
    new_client_works(p.port);

    // Usage errors.
    for args in [
        &["frobnicate"][..],
        &["flush", "sometimes", "db"],
        &["conf", "set", "log_level"],
        &["shutdown", "now"],
        &["--format", "xml", "ping"],
    ] {
        let o = p.ctl(args);
        assert_eq!(code(&o), 2, "{}", show(args, &o));
    }

    // No daemon behind the configuration.
    let tmp = TempDir::new("pgcorral-ctl-");
    let conf = tmp.path().join("pgcorral.conf");
    std::fs::write(
        &conf,
        format!(
            "[pgcorral]\nhost = 127.0.0.1\nport = {}\nunix_socket_dir = {}\n\n[primary]\nhost = 127.0.0.1\nport = 5432\n",
            free_port(),
            tmp.path().display()
        ),
    )
    .unwrap();
    for format in ["text", "json"] {
        let o = Command::new(ctl_binary())
            .arg("-c")
            .arg(&conf)
            .args(["--format", format, "ping"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 3, "unreachable daemon: {}", show(&["ping"], &o));
        assert!(!stderr(&o).is_empty());
    }
}

#[test]
fn control_socket_permissions() {
    let s = setup(opts("performance", LIMITS));
    let p = &s.pooler;
    let sock = p.socket_dir.join(format!(".s.pgcorral.{}", p.port));
    let meta = std::fs::metadata(&sock)
        .unwrap_or_else(|e| panic!("control socket {}: {e}", sock.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode of {}",
        sock.display()
    );
    json_ok(p, &["ping"]);

    // Another OS user cannot connect.
    let daemon_uid = std::fs::metadata(format!("/proc/{}", p.pid()))
        .unwrap()
        .uid();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test needs root to run pgcorral-ctl as another user (runuser)"
    );
    let other = if daemon_uid == 0 {
        "postgres"
    } else {
        "nobody"
    };
    std::fs::set_permissions(p.conf_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = Command::new("runuser")
        .args(["-u", other, "--"])
        .arg(ctl_binary())
        .arg("-c")
        .arg(p.conf_path())
        .arg("ping")
        .output()
        .expect("spawn runuser");
    assert_eq!(code(&o), 3, "ping as {other}: {}", show(&["ping"], &o));
    assert!(
        stderr(&o).to_lowercase().contains("permission denied"),
        "ping as {other}: {}",
        show(&["ping"], &o)
    );
}

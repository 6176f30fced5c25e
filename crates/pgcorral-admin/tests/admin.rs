//! Runs the built pgcorral-admin with PGCORRAL_HOME_DIR in a temporary
//! directory and checks the files it writes with pgcorral-vault.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use pgcorral_vault::{MasterKey, UsersFile};

/// A temporary directory, removed on drop, with `home/` for the master key
/// (created by the tool) and `users.conf`.
struct Env(PathBuf);

impl Env {
    fn new() -> Env {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pgcorral-admin-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap();
        Env(path)
    }

    fn home(&self) -> PathBuf {
        self.0.join("home")
    }

    fn key_path(&self) -> PathBuf {
        self.home().join("master.key")
    }

    fn users(&self) -> PathBuf {
        self.0.join("users.conf")
    }

    /// Runs the tool with `-f users.conf` first; no terminal, no
    /// PGCORRAL_PASSWORD unless `password_env`.
    fn run_env(&self, args: &[&str], password_env: Option<&str>) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcorral-admin"));
        cmd.arg("-f")
            .arg(self.users())
            .args(args)
            .env("PGCORRAL_HOME_DIR", self.home())
            .env_remove("PGCORRAL_PASSWORD")
            .stdin(Stdio::null());
        if let Some(p) = password_env {
            cmd.env("PGCORRAL_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, None)
    }

    fn with_master_key(self) -> Env {
        self.run(&["master-key", "-P", "master passphrase"]).ok();
        self
    }

    fn key(&self) -> MasterKey {
        MasterKey::load(&self.key_path()).unwrap()
    }

    fn password_of(&self, key: &MasterKey, user: &str) -> String {
        let users = UsersFile::load(&self.users()).unwrap();
        key.decrypt(user, users.get(user).unwrap()).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    /// Exit 1 and an error on stderr containing `text`.
    fn fails_with(self, text: &str) -> Out {
        assert_eq!(self.code, 1, "expected failure: {self:?}");
        assert!(self.stderr.starts_with("pgcorral-admin: "), "{self:?}");
        assert!(self.stderr.contains(text), "expected {text:?} in {self:?}");
        self
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn master_key_created_once() {
    let env = Env::new();
    let out = env.run(&["master-key", "-P", "master passphrase"]).ok();
    assert!(out.stdout.contains("master.key"), "{out:?}");
    assert_eq!(mode(&env.home()), 0o700);
    assert_eq!(mode(&env.key_path()), 0o600);
    let before = std::fs::read(env.key_path()).unwrap();
    env.run(&["master-key", "-P", "another passphrase"])
        .fails_with("refusing to overwrite");
    env.run(&["master-key", "-g"])
        .fails_with("refusing to overwrite");
    assert_eq!(std::fs::read(env.key_path()).unwrap(), before);
    MasterKey::check(&env.key_path()).unwrap();
}

#[test]
fn master_key_password_sources() {
    // From the environment.
    let env = Env::new();
    env.run_env(&["master-key"], Some("from the environment"))
        .ok();
    let text = std::fs::read_to_string(env.key_path()).unwrap();
    assert!(text.starts_with("ZnJvbSB0aGUgZW52aXJvbm1lbnQ=\n"), "{text}");
    // Generated, with a length.
    let env = Env::new();
    env.run(&["master-key", "-g", "-l", "12"]).ok();
    let text = std::fs::read_to_string(env.key_path()).unwrap();
    let line = text.lines().next().unwrap();
    assert_eq!(line.len(), 16, "base64 of 12 bytes: {line}");
    // None, and no terminal.
    let env = Env::new();
    env.run(&["master-key"]).fails_with("pass -P PASS or -g");
    assert!(!env.key_path().exists());
    // -P and -g together.
    assert_ne!(env.run(&["master-key", "-P", "long enough", "-g"]).code, 0);
}

#[test]
fn short_passphrase_refused() {
    let env = Env::new();
    env.run(&["master-key", "-P", "short"])
        .fails_with("at least 8");
    env.run(&["master-key", "-g", "-l", "7"])
        .fails_with("at least 8");
    assert!(!env.key_path().exists());
}

#[test]
fn user_add_edit_del_ls() {
    let env = Env::new().with_master_key();
    let users = env.users();
    let out = env
        .run(&["user", "add", "-U", "alice", "-P", "alice pw"])
        .ok();
    assert!(!out.stdout.contains("alice pw"), "{out:?}");
    assert_eq!(mode(&users), 0o600);
    env.run(&["user", "add", "-U", "alice", "-P", "other"])
        .fails_with("already exists");
    // Options also before the command, and the password from the environment.
    env.run_env(&["-U", "bob", "user", "add"], Some("bob pw"))
        .ok();
    // Generated, printed once.
    let out = env
        .run(&["user", "add", "-U", "carol", "-g", "-l", "20"])
        .ok();
    let generated = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Password for user carol: "))
        .unwrap_or_else(|| panic!("no generated password in {out:?}"))
        .to_string();
    assert_eq!(generated.chars().count(), 20);
    env.run(&["user", "edit", "-U", "alice", "-P", "alice new"])
        .ok();

    let key = env.key();
    assert_eq!(env.password_of(&key, "alice"), "alice new");
    assert_eq!(env.password_of(&key, "bob"), "bob pw");
    assert_eq!(env.password_of(&key, "carol"), generated);

    let out = env.run(&["user", "ls"]).ok();
    assert_eq!(out.stdout, "alice\nbob\ncarol\n");
    env.run(&["user", "verify"]).ok();
    env.run(&["user", "del", "-U", "alice"]).ok();
    env.run(&["user", "del", "-U", "alice"])
        .fails_with("not in");
    env.run(&["user", "edit", "-U", "alice", "-P", "x"])
        .fails_with("not in");
    assert_eq!(env.run(&["user", "ls"]).ok().stdout, "bob\ncarol\n");
    // Missing user name and password without a terminal.
    env.run(&["user", "add", "-P", "x"]).fails_with("-U USER");
    env.run(&["user", "add", "-U", "dave"])
        .fails_with("pass -P PASS or -g");
    env.run(&["user", "add", "-U", "a:b", "-P", "x"])
        .fails_with("invalid user name");
    // No temporary file left beside the users file.
    let names: Vec<String> = std::fs::read_dir(&env.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn pgagroal_1_aliases() {
    let env = Env::new().with_master_key();
    env.run(&["add-user", "-U", "alice", "-P", "one"]).ok();
    env.run(&["update-user", "-U", "alice", "-P", "two"]).ok();
    env.run(&["add-user", "-U", "bob", "-P", "three"]).ok();
    assert_eq!(env.run(&["list-users"]).ok().stdout, "alice\nbob\n");
    env.run(&["remove-user", "-U", "bob"]).ok();
    assert_eq!(env.run(&["list-users"]).ok().stdout, "alice\n");
    assert_eq!(env.password_of(&env.key(), "alice"), "two");
}

#[test]
fn missing_master_key_is_an_error() {
    let env = Env::new();
    env.run(&["user", "add", "-U", "alice", "-P", "pw"])
        .fails_with("pgcorral-admin master-key");
    assert!(!env.users().exists());
    std::fs::write(env.users(), "# empty\n").unwrap();
    env.run(&["user", "ls"]).fails_with("not found");
    env.run(&["user", "edit", "-U", "alice", "-P", "pw"])
        .fails_with("not found");
}

#[test]
fn missing_users_file_for_ls_del_edit() {
    let env = Env::new().with_master_key();
    env.run(&["user", "ls"]).fails_with("users file");
    env.run(&["user", "del", "-U", "x"])
        .fails_with("users file");
    env.run(&["user", "edit", "-U", "x", "-P", "y"])
        .fails_with("users file");
}

#[test]
fn wrong_permissions_refused() {
    let env = Env::new().with_master_key();
    chmod(&env.home(), 0o755);
    env.run(&["user", "add", "-U", "alice", "-P", "pw"])
        .fails_with(&format!("chmod 0700 {}", env.home().display()));
    env.run(&["master-key", "-P", "long enough"]).fails_with("");
    chmod(&env.home(), 0o700);
    chmod(&env.key_path(), 0o644);
    env.run(&["user", "add", "-U", "alice", "-P", "pw"])
        .fails_with(&format!("chmod 0600 {}", env.key_path().display()));
    assert!(!env.users().exists());
}

#[test]
fn corrupt_entry_detected_by_verify() {
    let env = Env::new().with_master_key();
    env.run(&["user", "add", "-U", "alice", "-P", "pw"]).ok();
    let text = std::fs::read_to_string(env.users()).unwrap();
    let (user, blob) = text.trim_end().split_once(':').unwrap();
    // Change one base64 character into another valid one.
    let mut chars: Vec<char> = blob.chars().collect();
    chars[30] = if chars[30] == 'A' { 'B' } else { 'A' };
    let blob: String = chars.into_iter().collect();
    std::fs::write(env.users(), format!("{user}:{blob}\n")).unwrap();
    env.run(&["user", "verify"])
        .fails_with("entry for user alice is corrupt");
    env.run(&["user", "verify", "-U", "alice"])
        .fails_with("entry for user alice is corrupt");
}

#[test]
fn json_output() {
    let env = Env::new();
    let parse = |out: &Out| -> serde_json::Value {
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let out = env
        .run(&["--format", "json", "master-key", "-P", "master passphrase"])
        .ok();
    let v = parse(&out);
    assert_eq!(v["command"], "master-key");
    assert_eq!(v["status"], "ok");

    let out = env
        .run(&["--format", "json", "user", "add", "-U", "alice", "-P", "pw"])
        .ok();
    let v = parse(&out);
    assert_eq!(v["command"], "user add");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["users"], serde_json::json!(["alice"]));

    let out = env
        .run(&[
            "-F", "json", "user", "add", "-U", "bob\"q", "-g", "-l", "10",
        ])
        .ok();
    let v = parse(&out);
    assert_eq!(v["users"], serde_json::json!(["bob\"q"]));
    assert_eq!(v["password"].as_str().unwrap().len(), 10);

    let out = env.run(&["user", "ls", "--format", "json"]).ok();
    let v = parse(&out);
    assert_eq!(v["command"], "user ls");
    assert_eq!(v["users"], serde_json::json!(["alice", "bob\"q"]));

    let out = env.run(&["--format", "json", "user", "add", "-U", "alice", "-P", "x"]);
    assert_eq!(out.code, 1);
    let v = parse(&out);
    assert_eq!(v["command"], "user add");
    assert_eq!(v["status"], "error");
    assert!(
        v["error"].as_str().unwrap().contains("already exists"),
        "{v}"
    );

    let out = env.run(&["--format", "json", "no-such-command"]);
    assert_eq!(out.code, 1);
    assert_eq!(parse(&out)["status"], "error");
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let env = Env::new();
    assert_eq!(
        env.run(&["no-such-command"])
            .fails_with("no-such-command")
            .code,
        1
    );
    assert_eq!(env.run(&[]).code, 1);
    assert_eq!(env.run(&["user", "add", "-l", "0", "-g"]).code, 1);
    let help = env.run(&["-?"]).ok();
    assert!(help.stdout.contains("master-key"), "{help:?}");
    assert!(!help.stdout.contains("verify"), "{help:?}");
    env.run(&["-h"]).ok();
    let version = env.run(&["-V"]).ok();
    assert!(version.stdout.starts_with("pgcorral-admin "), "{version:?}");
}

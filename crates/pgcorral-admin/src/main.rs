//! pgcorral-admin: creates the master key and manages the users files of
//! pgcorral (pgagroal-admin compatible, pgagroal 2.1 vault format).
//!
//! ```text
//! pgcorral-admin [-f FILE] [-U USER] [-P PASS] [-g] [-l LEN] [--format text|json] [-V] [-?] COMMAND
//!   master-key                 create ~/.pgcorral/master.key (or $PGCORRAL_HOME_DIR/master.key)
//!   user add|edit|del|ls       manage the users file (-f, default /etc/pgcorral/pgcorral_users.conf)
//!   add-user, update-user, remove-user, list-users   pgagroal 1.x names
//! ```

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use pgcorral_vault::{default_master_key_path, MasterKey, UsersFile, VaultError};
use ring::rand::{SecureRandom, SystemRandom};

/// The users file when -f is not given.
const DEFAULT_USERS_FILE: &str = "/etc/pgcorral/pgcorral_users.conf";
/// The environment variable that may hold the password or passphrase.
const PASSWORD_ENV: &str = "PGCORRAL_PASSWORD";
/// Longest password accepted (pgagroal's MAX_PASSWORD_LENGTH - 1).
const MAX_PASSWORD_BYTES: usize = 8191;
/// Characters of generated passwords: letters, digits and symbols that need
/// no quoting in a shell's double quotes or a connection string.
const GENERATED_CHARS: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!@#%^&*()-_=+[]{},.<>/?~";

#[derive(Parser, Debug)]
#[command(
    name = "pgcorral-admin",
    version,
    about = "Create the master key and manage the encrypted users files of pgcorral",
    disable_help_flag = true,
    disable_help_subcommand = true
)]
struct Cli {
    /// Users file to manage
    #[arg(short = 'f', long = "file", value_name = "FILE", global = true)]
    file: Option<PathBuf>,
    /// User name
    #[arg(short = 'U', long = "user", value_name = "USER", global = true)]
    user: Option<String>,
    /// Password or master key passphrase (else $PGCORRAL_PASSWORD, -g, or a prompt)
    #[arg(short = 'P', long = "password", value_name = "PASS", global = true)]
    password: Option<String>,
    /// Generate a random password
    #[arg(
        short = 'g',
        long = "generate",
        global = true,
        conflicts_with = "password"
    )]
    generate: bool,
    /// Length of a generated password
    #[arg(short = 'l', long = "length", value_name = "LEN", global = true,
          default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=8191))]
    length: u32,
    /// Output format
    #[arg(short = 'F', long = "format", value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
    /// Print help
    #[arg(short = '?', short_alias = 'h', long = "help", action = ArgAction::Help, global = true)]
    help: Option<bool>,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the master key (refuses to overwrite one)
    MasterKey,
    /// Manage the users file
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Same as `user add` (pgagroal 1.x)
    #[command(name = "add-user", hide = true)]
    AddUser,
    /// Same as `user edit` (pgagroal 1.x)
    #[command(name = "update-user", hide = true)]
    UpdateUser,
    /// Same as `user del` (pgagroal 1.x)
    #[command(name = "remove-user", hide = true)]
    RemoveUser,
    /// Same as `user ls` (pgagroal 1.x)
    #[command(name = "list-users", hide = true)]
    ListUsers,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum UserAction {
    /// Add a user
    Add,
    /// Change the password of a user
    Edit,
    /// Remove a user
    Del,
    /// List the user names
    Ls,
    /// Check that the entries decrypt with the master key (all, or -U USER)
    #[command(hide = true)]
    Verify,
}

impl UserAction {
    fn name(self) -> &'static str {
        match self {
            UserAction::Add => "user add",
            UserAction::Edit => "user edit",
            UserAction::Del => "user del",
            UserAction::Ls => "user ls",
            UserAction::Verify => "user verify",
        }
    }
}

/// What a successful command reports.
#[derive(Default)]
struct Outcome {
    /// Lines printed in text mode.
    text: Vec<String>,
    /// The user names of the "users" JSON field (absent if None).
    users: Option<Vec<String>>,
    /// A generated password, printed once.
    generated: Option<String>,
    /// Path of the file written or read.
    file: Option<PathBuf>,
}

/// An error of this tool: the message printed after "pgcorral-admin: ".
struct AdminError(String);

impl From<VaultError> for AdminError {
    fn from(e: VaultError) -> Self {
        AdminError(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if json_requested() {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or("invalid command line");
                let msg = first.strip_prefix("error: ").unwrap_or(first);
                println!(
                    "{}",
                    json_error("", &format!("{msg}; see pgcorral-admin --help"))
                );
            } else {
                eprint!("pgcorral-admin: {}", e.render());
            }
            return ExitCode::FAILURE;
        }
    };
    let (name, result) = run(&cli);
    match (cli.format, result) {
        (Format::Text, Ok(outcome)) => {
            for line in &outcome.text {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        (Format::Json, Ok(outcome)) => {
            println!("{}", json_ok(name, &outcome));
            ExitCode::SUCCESS
        }
        (Format::Text, Err(AdminError(msg))) => {
            eprintln!("pgcorral-admin: {msg}");
            ExitCode::FAILURE
        }
        (Format::Json, Err(AdminError(msg))) => {
            println!("{}", json_error(name, &msg));
            ExitCode::FAILURE
        }
    }
}

/// Whether the raw command line asks for JSON (for errors clap finds before
/// the options are parsed).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().enumerate().any(|(i, a)| {
        a == "--format=json"
            || a == "-Fjson"
            || ((a == "--format" || a == "-F") && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

fn run(cli: &Cli) -> (&'static str, Result<Outcome, AdminError>) {
    let action = match cli.command {
        Command::MasterKey => return ("master-key", master_key(cli)),
        Command::User { action } => action,
        Command::AddUser => UserAction::Add,
        Command::UpdateUser => UserAction::Edit,
        Command::RemoveUser => UserAction::Del,
        Command::ListUsers => UserAction::Ls,
    };
    (action.name(), user_command(cli, action))
}

fn master_key(cli: &Cli) -> Result<Outcome, AdminError> {
    let path = default_master_key_path()?;
    // Check first so that nobody types a passphrase for nothing.
    if path.exists() {
        return Err(VaultError::MasterKeyExists { path }.into());
    }
    let (passphrase, _generated) = password(cli, "master key passphrase")?;
    MasterKey::create(&path, &passphrase)?;
    Ok(Outcome {
        text: vec![format!("Master key created: {}", path.display())],
        file: Some(path),
        ..Outcome::default()
    })
}

fn user_command(cli: &Cli, action: UserAction) -> Result<Outcome, AdminError> {
    let path = cli
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_USERS_FILE));
    let mut outcome = Outcome {
        file: Some(path.clone()),
        ..Outcome::default()
    };
    match action {
        UserAction::Ls => {
            // No decryption, but a missing or unusable master key means the
            // file cannot be used: say so now.
            MasterKey::check(&default_master_key_path()?)?;
            let users = UsersFile::load(&path)?;
            let names: Vec<String> = users.users().into_iter().map(String::from).collect();
            outcome.text = names.clone();
            outcome.users = Some(names);
        }
        UserAction::Verify => {
            let key = MasterKey::load_default()?;
            let users = UsersFile::load(&path)?;
            let names = match &cli.user {
                Some(user) => {
                    let blob = users.get(user).ok_or_else(|| unknown_user(user, &path))?;
                    key.decrypt(user, blob)?;
                    vec![user.clone()]
                }
                None => users
                    .decrypt_all(&key)?
                    .into_iter()
                    .map(|(user, _)| user)
                    .collect(),
            };
            outcome.text = names.iter().map(|u| format!("{u}: ok")).collect();
            outcome.users = Some(names);
        }
        UserAction::Add | UserAction::Edit => {
            let key_path = default_master_key_path()?;
            MasterKey::check(&key_path)?;
            let mut users = match UsersFile::load(&path) {
                Err(VaultError::UsersFileMissing { .. }) if action == UserAction::Add => {
                    UsersFile::empty(&path)
                }
                other => other?,
            };
            let user = user_name(cli)?;
            pgcorral_vault::validate_user_name(&user)?;
            let exists = users.get(&user).is_some();
            if action == UserAction::Add && exists {
                return Err(VaultError::UserExists { path, user }.into());
            }
            if action == UserAction::Edit && !exists {
                return Err(unknown_user(&user, &path));
            }
            let (password, generated) = password(cli, &format!("password for user {user}"))?;
            // Derive only now: the costly step comes after every cheap check.
            let key = MasterKey::load(&key_path)?;
            users.set(&user, &key.encrypt(&password))?;
            users.save()?;
            let verb = if action == UserAction::Add {
                "added"
            } else {
                "updated"
            };
            outcome
                .text
                .push(format!("User {user} {verb} in {}", path.display()));
            if generated {
                outcome
                    .text
                    .push(format!("Password for user {user}: {password}"));
                outcome.generated = Some(password);
            }
            outcome.users = Some(vec![user]);
        }
        UserAction::Del => {
            let mut users = UsersFile::load(&path)?;
            let user = user_name(cli)?;
            if !users.remove(&user) {
                return Err(unknown_user(&user, &path));
            }
            users.save()?;
            outcome
                .text
                .push(format!("User {user} removed from {}", path.display()));
            outcome.users = Some(vec![user]);
        }
    }
    Ok(outcome)
}

fn unknown_user(user: &str, path: &Path) -> AdminError {
    AdminError(format!(
        "user {user} is not in {}: see `pgcorral-admin -f {} user ls`",
        path.display(),
        path.display()
    ))
}

/// The user name from -U, or asked for on a terminal.
fn user_name(cli: &Cli) -> Result<String, AdminError> {
    if let Some(user) = &cli.user {
        return Ok(user.clone());
    }
    if !io::stdin().is_terminal() {
        return Err(AdminError("no user name: pass -U USER".into()));
    }
    let user = prompt("User name: ", true)?;
    if user.is_empty() {
        return Err(AdminError("no user name given".into()));
    }
    Ok(user)
}

/// The password from -P, -g, $PGCORRAL_PASSWORD or a prompt (asked twice),
/// in that order; the flag tells whether it was generated.
fn password(cli: &Cli, what: &str) -> Result<(String, bool), AdminError> {
    let (password, generated) = if let Some(p) = &cli.password {
        (p.clone(), false)
    } else if cli.generate {
        (generate_password(cli.length as usize), true)
    } else if let Some(p) = std::env::var_os(PASSWORD_ENV).filter(|p| !p.is_empty()) {
        let p = p
            .into_string()
            .map_err(|_| AdminError(format!("{PASSWORD_ENV} is not valid UTF-8")))?;
        (p, false)
    } else if io::stdin().is_terminal() {
        let first = prompt(&format!("Enter the {what}: "), false)?;
        let second = prompt(&format!("Enter the {what} again: "), false)?;
        if first != second {
            return Err(AdminError(
                "the two entries differ; nothing was changed".into(),
            ));
        }
        (first, false)
    } else {
        return Err(AdminError(format!(
            "no {what}: pass -P PASS or -g, or set {PASSWORD_ENV}, or run on a terminal to be asked"
        )));
    };
    if password.is_empty() {
        return Err(AdminError(format!("the {what} is empty")));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AdminError(format!(
            "the {what} has {} bytes; at most {MAX_PASSWORD_BYTES} are allowed",
            password.len()
        )));
    }
    Ok((password, generated))
}

/// A random password of `len` characters from [`GENERATED_CHARS`]
/// (rejection sampling, so every character is equally likely).
fn generate_password(len: usize) -> String {
    let rng = SystemRandom::new();
    let limit = 256 - 256 % GENERATED_CHARS.len();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf)
            .expect("the system random number generator failed");
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(GENERATED_CHARS[b as usize % GENERATED_CHARS.len()] as char);
            }
        }
    }
    out
}

/// Reads one line from the terminal on stdin; without echo unless `echo`.
fn prompt(message: &str, echo: bool) -> Result<String, AdminError> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};

    /// Puts the terminal settings back, also on an early return.
    struct Restore(nix::sys::termios::Termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = tcsetattr(io::stdin(), SetArg::TCSANOW, &self.0);
        }
    }

    let mut stderr = io::stderr();
    let _ = write!(stderr, "{message}");
    let _ = stderr.flush();
    let _restore = if echo {
        None
    } else {
        let saved = tcgetattr(io::stdin())
            .map_err(|e| AdminError(format!("cannot read the terminal settings: {e}")))?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        tcsetattr(io::stdin(), SetArg::TCSANOW, &quiet)
            .map_err(|e| AdminError(format!("cannot turn off the terminal echo: {e}")))?;
        Some(Restore(saved))
    };
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| AdminError(format!("cannot read from the terminal: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// The JSON output is a handful of string fields, written by hand rather
// than with a serializer dependency.
fn json_ok(command: &str, outcome: &Outcome) -> String {
    let mut out = format!("{{\"command\":{},\"status\":\"ok\"", json_str(command));
    if let Some(file) = &outcome.file {
        out.push_str(&format!(",\"file\":{}", json_str(&file.to_string_lossy())));
    }
    if let Some(users) = &outcome.users {
        let list: Vec<String> = users.iter().map(|u| json_str(u)).collect();
        out.push_str(&format!(",\"users\":[{}]", list.join(",")));
    }
    if let Some(p) = &outcome.generated {
        out.push_str(&format!(",\"password\":{}", json_str(p)));
    }
    out.push('}');
    out
}

fn json_error(command: &str, message: &str) -> String {
    format!(
        "{{\"command\":{},\"status\":\"error\",\"error\":{}}}",
        json_str(command),
        json_str(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords() {
        let p = generate_password(64);
        assert_eq!(p.chars().count(), 64);
        assert!(p.bytes().all(|b| GENERATED_CHARS.contains(&b)));
        assert_ne!(p, generate_password(64));
        assert_eq!(generate_password(1).len(), 1);
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_str("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

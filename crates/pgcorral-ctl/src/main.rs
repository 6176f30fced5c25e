//! pgcorral-ctl: controls a running pgcorral over its control socket
//! `unix_socket_dir/.s.pgcorral.<port>` (doc/management.md).
//!
//! ```text
//! pgcorral-ctl [-c CONF] [--format text|json] COMMAND [ARGS]
//! pgcorral-ctl -h HOST -p PORT -U USER [-P PASSWORD] [--format text|json] COMMAND [ARGS]
//! ```
//!
//! With `-h` the request goes to the daemon's remote management port (`management = PORT`) after
//! SCRAM-SHA-256 as an admin of its admins file (see `remote`); `-c` is then not read. The password
//! comes from `-P`, else `$PGCORRAL_PASSWORD`, else a prompt without echo on the terminal.
//!
//! Exit status: 0 success; 1 the daemon answered with an error, or refused the credentials
//! ("authentication failed"); 2 usage error; 3 the daemon cannot be reached (no socket, connection
//! refused, permission denied, timeout, malformed response).

mod cli;
mod frame;
mod password;
mod remote;
mod text;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use cli::{Cli, Format, RemoteTarget, Request};

const EXIT_OK: u8 = 0;
const EXIT_DAEMON_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

/// Read and write timeout on the control socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The start of the message of a refused login (printed without the "error: " prefix).
const AUTH_FAILED: &str = "authentication failed";

/// A failure that ends the program: exit status and message.
struct Failure(u8, String);

/// The control socket of the daemon configured in `conf`.
fn control_socket(conf: &Path) -> Result<PathBuf, Failure> {
    let main = pgcorral_config::Config::load_main(conf).map_err(|e| {
        Failure(
            EXIT_UNREACHABLE,
            format!("cannot read the configuration: {e}"),
        )
    })?;
    Ok(main
        .unix_socket_dir
        .join(format!(".s.pgcorral.{}", main.port)))
}

/// Validates a response document: a JSON object with `"status"` "ok" or "error".
fn parse_response(body: &[u8]) -> Result<Value, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if !doc.is_object() {
        return Err("not a JSON object".into());
    }
    match doc.get("status").and_then(Value::as_str) {
        Some("ok") | Some("error") => Ok(doc),
        Some(other) => Err(format!("unknown status \"{other}\"")),
        None => Err("no \"status\"".into()),
    }
}

/// The request document as bytes; a usage error when it is over the daemon's limit.
fn payload(req: &Request) -> Result<Vec<u8>, Failure> {
    let payload = serde_json::to_vec(&req.to_json()).expect("serialise request");
    if payload.len() > frame::MAX_REQUEST {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "request of {} bytes exceeds the {}-byte limit",
                payload.len(),
                frame::MAX_REQUEST
            ),
        ));
    }
    Ok(payload)
}

/// Sends `req` to a remote daemon's management port and returns the raw response and the parsed
/// document.
fn exchange_remote(
    target: &RemoteTarget,
    password: &str,
    req: &Request,
) -> Result<(Vec<u8>, Value), Failure> {
    let payload = payload(req)?;
    let where_ = format!("{}:{}", target.host, target.port);
    let fail = |e: remote::RemoteError| match e {
        remote::RemoteError::Auth(m) => Failure(
            EXIT_DAEMON_ERROR,
            format!("{AUTH_FAILED}: {where_} as \"{}\": {m}", target.user),
        ),
        remote::RemoteError::Refused(m) => Failure(
            EXIT_DAEMON_ERROR,
            format!("{where_} refused the connection: {m}"),
        ),
        remote::RemoteError::Unreachable(m) => Failure(EXIT_UNREACHABLE, format!("{where_}: {m}")),
    };
    let mut stream = remote::connect(&target.host, target.port, IO_TIMEOUT).map_err(&fail)?;
    let body = remote::exchange(&mut stream, &target.user, password, &payload).map_err(&fail)?;
    let doc = parse_response(&body).map_err(|e| {
        Failure(
            EXIT_UNREACHABLE,
            format!("malformed response from {where_}: {e}"),
        )
    })?;
    Ok((body, doc))
}

/// Sends `req` on `socket` and returns the raw response and the parsed document.
fn exchange(socket: &Path, req: &Request) -> Result<(Vec<u8>, Value), Failure> {
    let unreachable = |what: String| Failure(EXIT_UNREACHABLE, what);
    let payload = payload(req)?;
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| unreachable(format!("cannot connect to {}: {e}", socket.display())))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| unreachable(format!("{}: {e}", socket.display())))?;
    frame::write_frame(&mut stream, &payload)
        .map_err(|e| unreachable(format!("cannot send the request: {e}")))?;
    let body = frame::read_frame(&mut stream, frame::MAX_RESPONSE)
        .map_err(|e| unreachable(format!("no valid response from the daemon: {e}")))?;
    let doc = parse_response(&body)
        .map_err(|e| unreachable(format!("malformed response from the daemon: {e}")))?;
    Ok((body, doc))
}

/// The response on one line, as received when it is one already.
fn one_line(body: &[u8], doc: &Value) -> String {
    match std::str::from_utf8(body) {
        Ok(s) if !s.contains(['\n', '\r']) => s.trim().to_string(),
        _ => serde_json::to_string(doc).expect("serialise response"),
    }
}

fn run(cli: &Cli) -> Result<u8, Failure> {
    let req = cli
        .command
        .to_request()
        .map_err(|e| Failure(EXIT_USAGE, e))?;
    let target = cli.remote_target().map_err(|e| Failure(EXIT_USAGE, e))?;
    let (body, doc) = match &target {
        Some(t) => {
            let pw = password::resolve(cli.password.as_deref(), &t.user, &t.host)
                .map_err(|e| Failure(EXIT_USAGE, e))?;
            exchange_remote(t, &pw, &req)?
        }
        None => exchange(&control_socket(&cli.config)?, &req)?,
    };
    let ok = doc.get("status").and_then(Value::as_str) == Some("ok");
    let result = doc.get("result").cloned().unwrap_or(Value::Null);
    // A reload refused because keys need a restart is a failed command too.
    let refused = ok
        && req.command == "conf_reload"
        && result.get("applied").and_then(Value::as_bool) == Some(false);
    let code = if ok && !refused {
        EXIT_OK
    } else {
        EXIT_DAEMON_ERROR
    };
    let mut out = std::io::stdout().lock();
    match cli.format {
        Format::Json => {
            let _ = writeln!(out, "{}", one_line(&body, &doc));
        }
        Format::Text if ok => {
            let _ = write!(out, "{}", text::render(req.command, &result));
        }
        Format::Text => {
            let err = match doc.get("error") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "unknown error".into(),
            };
            return Err(Failure(
                EXIT_DAEMON_ERROR,
                format!("{}: {err}", req.command),
            ));
        }
    }
    let _ = out.flush();
    Ok(code)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // Usage errors exit with 2; --help and --version with 0.
        Err(e) => e.exit(),
    };
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            if msg.starts_with(AUTH_FAILED) {
                eprintln!("pgcorral-ctl: {msg}");
            } else {
                eprintln!("pgcorral-ctl: error: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn response_validation() {
        assert!(
            parse_response(br#"{"version":1,"command":"ping","status":"ok","result":{}}"#).is_ok()
        );
        assert!(parse_response(br#"{"status":"error","error":"x"}"#).is_ok());
        assert!(parse_response(br#"{"status":"maybe"}"#).is_err());
        assert!(parse_response(br#"{"result":{}}"#).is_err());
        assert!(parse_response(b"[1,2]").is_err());
        assert!(parse_response(b"{not json").is_err());
        assert!(parse_response(b"").is_err());
    }

    #[test]
    fn one_line_keeps_the_document() {
        let body = br#"{"status":"ok","b":1,"a":2}"#;
        let doc = parse_response(body).unwrap();
        assert_eq!(one_line(body, &doc), r#"{"status":"ok","b":1,"a":2}"#);
        let body = b"{\n \"status\": \"ok\"\n}";
        let doc = parse_response(body).unwrap();
        assert_eq!(one_line(body, &doc), r#"{"status":"ok"}"#);
    }

    /// A fake daemon on a socket in a fresh directory: reads one request, answers `reply`.
    fn fake_daemon(reply: Vec<u8>) -> (PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let dir = std::env::temp_dir().join(format!(
            "pgcorral-ctl-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".s.pgcorral.1");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let req = frame::read_frame(&mut s, frame::MAX_REQUEST).unwrap();
            let _ = s.write_all(&reply);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            let _ = std::fs::remove_dir_all(dir);
            req
        });
        (path, h)
    }

    #[test]
    fn exchange_sends_one_frame_and_reads_one() {
        let reply = frame::encode(
            br#"{"version":1,"command":"ping","status":"ok","result":{"pid":1,"version":"0.1.0"}}"#,
        );
        let (path, h) = fake_daemon(reply);
        let req = Request {
            command: "ping",
            args: None,
        };
        let (_, doc) = exchange(&path, &req).ok().expect("exchange");
        assert_eq!(doc["result"]["pid"], 1);
        let sent: Value = serde_json::from_slice(&h.join().unwrap()).unwrap();
        assert_eq!(sent, serde_json::json!({"version": 1, "command": "ping"}));
    }

    #[test]
    fn malformed_and_truncated_responses_are_unreachable() {
        for reply in [
            frame::encode(b"garbage"),
            vec![0, 0, 0, 50, b'{'],
            vec![0xff, 0xff, 0xff, 0xff],
            Vec::new(),
        ] {
            let (path, h) = fake_daemon(reply.clone());
            let req = Request {
                command: "ping",
                args: None,
            };
            match exchange(&path, &req) {
                Err(Failure(code, _)) => assert_eq!(code, EXIT_UNREACHABLE, "{reply:?}"),
                Ok(_) => panic!("accepted {reply:?}"),
            }
            h.join().unwrap();
        }
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let req = Request {
            command: "ping",
            args: None,
        };
        match exchange(Path::new("/nonexistent/.s.pgcorral.5432"), &req) {
            Err(Failure(code, msg)) => {
                assert_eq!(code, EXIT_UNREACHABLE);
                assert!(msg.contains("/nonexistent/.s.pgcorral.5432"), "{msg}");
            }
            Ok(_) => panic!("connected to nothing"),
        }
    }
}

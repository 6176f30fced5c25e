mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{chmod, mode, vectors_dir, TempDir, VECTOR_PASSPHRASE, VECTOR_SALT};
use pgcorral_vault::{MasterKey, UsersFile, VaultError};

/// The key of the test vectors, derived once for the whole binary.
fn vector_key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::derive(VECTOR_PASSPHRASE, &VECTOR_SALT))
}

const VECTOR_USERS: [(&str, &str); 3] = [
    ("alice", "secret123"),
    ("bob", "p\u{e4}ssw\u{f6}rd \u{2713}"),
    ("carol", "x"),
];

/// A home directory (0700) holding a copy of the vector master.key (0600).
fn home_with_vector_key(tmp: &TempDir) -> std::path::PathBuf {
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    chmod(&home, 0o700);
    let key = home.join("master.key");
    std::fs::copy(vectors_dir().join("master.key"), &key).unwrap();
    chmod(&key, 0o600);
    key
}

#[test]
fn pgagroal_2_1_vectors_decrypt() {
    let tmp = TempDir::new("vectors");
    let key_path = home_with_vector_key(&tmp);
    let key = MasterKey::load(&key_path).unwrap();
    let users = UsersFile::load(&vectors_dir().join("users.conf")).unwrap();
    assert_eq!(users.users(), vec!["alice", "bob", "carol"]);
    let got = users.decrypt_all(&key).unwrap();
    let want: Vec<(String, String)> = VECTOR_USERS
        .iter()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn encryption_is_byte_identical_to_the_vectors() {
    // Same salt as make_vectors.py gives the same entry, byte for byte.
    let users = UsersFile::load(&vectors_dir().join("users.conf")).unwrap();
    let alice = vector_key().encrypt_with_salt("secret123", &[0xA1; 16]);
    assert_eq!(users.get("alice"), Some(alice.as_str()));
    let carol = vector_key().encrypt_with_salt("x", &[0; 16]);
    assert_eq!(users.get("carol"), Some(carol.as_str()));
}

fn python_decrypt(blob: &str) -> String {
    let script = vectors_dir().join("decrypt.py");
    let check = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output();
    match check {
        Err(e) => {
            panic!("cannot run python3 ({e}): install Python 3 and `pip install cryptography`")
        }
        Ok(out) if !out.status.success() => panic!(
            "python3 has no `cryptography` module: run `pip install cryptography` ({})",
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }
    let out = Command::new("python3")
        .arg(script)
        .arg(B64.encode(VECTOR_PASSPHRASE))
        .arg(B64.encode(VECTOR_SALT))
        .arg(blob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decrypt.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn rust_entries_decrypt_in_python() {
    for password in [
        "hunter22",
        "p\u{e4}ssw\u{f6}rd \u{2713} with : and # inside",
        "",
    ] {
        let blob = vector_key().encrypt(password);
        assert_eq!(python_decrypt(&blob), password);
    }
}

#[test]
fn round_trip_and_random_salt() {
    let key = vector_key();
    let a = key.encrypt("s3cret!");
    let b = key.encrypt("s3cret!");
    assert_ne!(a, b, "each entry has its own random salt");
    assert_eq!(key.decrypt("u", &a).unwrap(), "s3cret!");
    assert_eq!(key.decrypt("u", &b).unwrap(), "s3cret!");
    assert_eq!(key.decrypt("u", &key.encrypt("")).unwrap(), "");
}

#[test]
fn flipped_byte_anywhere_is_detected() {
    let key = vector_key();
    let blob = key.encrypt("a password");
    let raw = B64.decode(&blob).unwrap();
    for i in 0..raw.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = raw.clone();
            bad[i] ^= bit;
            let err = key.decrypt("alice", &B64.encode(&bad)).unwrap_err();
            assert!(matches!(err, VaultError::Corrupt { .. }), "byte {i}: {err}");
            assert!(err.to_string().contains(
                "entry for user alice is corrupt or was encrypted with another master key"
            ));
        }
    }
    // Truncated, extended, not base64.
    for bad in [
        B64.encode(&raw[..raw.len() - 1]),
        B64.encode([raw.as_slice(), b"x"].concat()),
        "not base64!".to_string(),
        String::new(),
    ] {
        assert!(key.decrypt("alice", &bad).is_err());
    }
}

#[test]
fn another_master_key_is_detected() {
    let other = MasterKey::derive("another passphrase", &VECTOR_SALT);
    let blob = vector_key().encrypt("pw");
    assert!(matches!(
        other.decrypt("bob", &blob),
        Err(VaultError::Corrupt { .. })
    ));
}

#[test]
fn corrupt_entry_in_file_names_file_and_line() {
    let tmp = TempDir::new("corrupt");
    let path = tmp.path().join("users.conf");
    let text = std::fs::read_to_string(vectors_dir().join("users.conf")).unwrap();
    // Flip one base64 character of bob's entry (line 4) to another valid one.
    let text = text.replace("bob:ZGVm", "bob:ZGVn");
    std::fs::write(&path, text).unwrap();
    let users = UsersFile::load(&path).unwrap();
    let err = users.decrypt_all(vector_key()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, VaultError::CorruptEntry { line: 4, .. }),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}:4:", path.display())), "{msg}");
    assert!(msg.contains("entry for user bob is corrupt"), "{msg}");
}

#[test]
fn create_then_load() {
    let tmp = TempDir::new("create");
    // The directory does not exist yet: it is made 0700.
    let dir = tmp.path().join("dot-pgcorral");
    let path = dir.join("master.key");
    MasterKey::create(&path, "a long enough passphrase").unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(B64.decode(lines[0]).unwrap(), b"a long enough passphrase");
    assert_eq!(B64.decode(lines[1]).unwrap().len(), 16);
    MasterKey::check(&path).unwrap();
    let key = MasterKey::load(&path).unwrap();
    assert_eq!(key.decrypt("u", &key.encrypt("pw")).unwrap(), "pw");
    // No temporary file is left next to it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn create_refuses_to_overwrite() {
    let tmp = TempDir::new("overwrite");
    let path = tmp.path().join("master.key");
    MasterKey::create(&path, "first passphrase").unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = MasterKey::create(&path, "second passphrase").unwrap_err();
    assert!(matches!(err, VaultError::MasterKeyExists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn passphrase_length_rules() {
    let tmp = TempDir::new("short");
    let path = tmp.path().join("master.key");
    let err = MasterKey::create(&path, "1234567").unwrap_err();
    assert!(
        matches!(err, VaultError::PassphraseTooShort { chars: 7, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("at least 8"));
    // 7 code points in 14 bytes: still too short (characters count, not bytes).
    let err = MasterKey::create(&path, "\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}").unwrap_err();
    assert!(
        matches!(err, VaultError::PassphraseTooShort { chars: 7, .. }),
        "{err}"
    );
    assert!(!path.exists());
    let err = MasterKey::create(&path, &"x".repeat(8192)).unwrap_err();
    assert!(matches!(err, VaultError::PassphraseTooLong { .. }), "{err}");
    MasterKey::create(&path, "\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}").unwrap();
}

#[test]
fn permissions_are_enforced() {
    let tmp = TempDir::new("perms");
    let key_path = home_with_vector_key(&tmp);
    let home = key_path.parent().unwrap();

    chmod(home, 0o755);
    let err = MasterKey::check(&key_path).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            VaultError::Permissions {
                found: 0o755,
                wanted: 0o700,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains(&home.display().to_string()), "{msg}");
    assert!(
        msg.contains("0755") && msg.contains(&format!("chmod 0700 {}", home.display())),
        "{msg}"
    );
    // create refuses a directory with the wrong mode too.
    let err = MasterKey::create(&home.join("other.key"), "long enough!").unwrap_err();
    assert!(matches!(err, VaultError::Permissions { .. }), "{err}");
    chmod(home, 0o700);

    chmod(&key_path, 0o644);
    let err = MasterKey::load(&key_path).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            VaultError::Permissions {
                found: 0o644,
                wanted: 0o600,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("chmod 0600 {}", key_path.display())),
        "{msg}"
    );
    chmod(&key_path, 0o400);
    assert!(MasterKey::check(&key_path).is_err());
    chmod(&key_path, 0o600);
    MasterKey::check(&key_path).unwrap();
}

#[test]
fn master_key_format_errors() {
    let tmp = TempDir::new("format");
    let path = tmp.path().join("master.key");
    let write = |text: &str| {
        std::fs::write(&path, text).unwrap();
        chmod(&path, 0o600);
    };
    // pgagroal <= 2.0: one line.
    write("Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ==\n");
    let err = MasterKey::check(&path).unwrap_err();
    assert!(matches!(err, VaultError::MissingSalt { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("missing salt line; regenerate master.key"));
    write("not base64\nAAECAwQFBgcICQoLDA0ODw==\n");
    let err = MasterKey::check(&path).unwrap_err();
    assert!(
        matches!(err, VaultError::MasterKeyFormat { line: 1, .. }),
        "{err}"
    );
    write("cGFzc3BocmFzZQ==\nAAEC\n");
    let err = MasterKey::check(&path).unwrap_err();
    assert!(
        matches!(err, VaultError::MasterKeyFormat { line: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("16"), "{err}");
    write("");
    assert!(MasterKey::check(&path).is_err());
    // No trailing newline and CRLF are fine.
    write("cGFzc3BocmFzZQ==\r\nAAECAwQFBgcICQoLDA0ODw==");
    MasterKey::check(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = MasterKey::check(&path).unwrap_err();
    assert!(matches!(err, VaultError::MasterKeyMissing { .. }), "{err}");
    assert!(err.to_string().contains("pgcorral-admin master-key"));
}

#[test]
fn users_file_edit_keeps_comments_and_saves_0600() {
    let tmp = TempDir::new("users");
    let path = tmp.path().join("users.conf");
    let key = vector_key();
    let a = key.encrypt("pa");
    let b = key.encrypt("pb");
    std::fs::write(
        &path,
        format!("# header\n\nalice:{a}\n  # indented comment\nbob:{b}\n"),
    )
    .unwrap();
    chmod(&path, 0o644);
    let mut users = UsersFile::load(&path).unwrap();
    assert_eq!(users.users(), vec!["alice", "bob"]);
    assert_eq!(users.len(), 2);
    let err = users.add("alice", &key.encrypt("x")).unwrap_err();
    assert!(matches!(err, VaultError::UserExists { .. }), "{err}");
    let c = key.encrypt("pc");
    users.add("carol", &c).unwrap();
    let a2 = key.encrypt("pa2");
    users.set("alice", &a2).unwrap();
    assert!(users.remove("bob"));
    assert!(!users.remove("bob"));
    users.save().unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("# header\n\nalice:{a2}\n  # indented comment\ncarol:{c}\n")
    );
    let again = UsersFile::load(&path).unwrap();
    assert_eq!(
        again.decrypt_all(key).unwrap(),
        vec![
            ("alice".to_string(), "pa2".to_string()),
            ("carol".to_string(), "pc".to_string())
        ]
    );
    // Only the users file is in the directory: no temporary file left.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn new_users_file_from_empty() {
    let tmp = TempDir::new("empty");
    let path = tmp.path().join("users.conf");
    let err = UsersFile::load(&path).unwrap_err();
    assert!(matches!(err, VaultError::UsersFileMissing { .. }), "{err}");
    let mut users = UsersFile::empty(&path);
    assert!(users.is_empty());
    users.add("dave", &vector_key().encrypt("pd")).unwrap();
    users.save().unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(UsersFile::load(&path).unwrap().users(), vec!["dave"]);
}

fn parse_err(text: &str) -> VaultError {
    UsersFile::parse(Path::new("/x/users.conf"), text).unwrap_err()
}

#[test]
fn users_file_errors_name_file_and_line() {
    let blob = vector_key().encrypt("pw");
    let err = parse_err(&format!("# c\nalice:{blob}\n\nalice:{blob}\n"));
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            VaultError::DuplicateInFile {
                first: 2,
                second: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("/x/users.conf:4") && msg.contains("line 2"),
        "{msg}"
    );

    let err = parse_err("# c\nno colon here\n");
    assert!(matches!(err, VaultError::Parse { line: 2, .. }), "{err}");
    assert!(err.to_string().starts_with("/x/users.conf:2:"), "{err}");
    let err = parse_err(&format!("ok:{blob}\nbad:\n"));
    assert!(matches!(err, VaultError::Parse { line: 2, .. }), "{err}");
    let err = parse_err(&format!("ok:{blob}\n:{blob}\n"));
    assert!(matches!(err, VaultError::Parse { line: 2, .. }), "{err}");
    let err = parse_err("bad:QUJD\n");
    assert!(matches!(err, VaultError::Parse { line: 1, .. }), "{err}");
    let err = parse_err("bad:not*base64\n");
    assert!(matches!(err, VaultError::Parse { line: 1, .. }), "{err}");
}

#[test]
fn invalid_user_names_refused() {
    let blob = vector_key().encrypt("pw");
    let mut users = UsersFile::empty(Path::new("/x/users.conf"));
    for bad in ["", "a:b", "#root", " lead", "trail ", "new\nline"] {
        let err = users.set(bad, &blob).unwrap_err();
        assert!(
            matches!(err, VaultError::InvalidUser { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = users.set("ok", "short").unwrap_err();
    assert!(matches!(err, VaultError::InvalidEntry { .. }), "{err}");
    users.set("with space", &blob).unwrap();
}

#[test]
fn debug_does_not_show_the_key() {
    assert_eq!(format!("{:?}", vector_key()), "MasterKey(..)");
}

//! MD5 password hashing as PostgreSQL does it.

use md5::{Digest, Md5};

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// The stored form of an MD5 password: `"md5" + hex(md5(password ‖ user))`.
pub fn md5_password_hash(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// What a client sends for AuthenticationMD5Password: `"md5" + hex(md5(hex-part-of-stored ‖ salt))`.
/// `stored` is the output of [`md5_password_hash`].
pub fn md5_salted(stored: &str, salt: [u8; 4]) -> String {
    let inner = stored.strip_prefix("md5").unwrap_or(stored);
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// What the pooler knows of a user's password to check an MD5 answer.
#[derive(Clone, Copy)]
pub enum Md5Secret<'a> {
    /// The cleartext password.
    Password(&'a str),
    /// The stored hash as in `pg_authid.rolpassword`: `"md5"` + 32 lowercase hex digits.
    Stored(&'a str),
}

impl std::fmt::Debug for Md5Secret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Md5Secret::Password(_) => "Md5Secret::Password(..)",
            Md5Secret::Stored(_) => "Md5Secret::Stored(..)",
        })
    }
}

/// Whether `s` has the form of a stored MD5 hash, as PostgreSQL decides it (`"md5"` + 32 lowercase hex
/// digits).
fn is_md5_hash(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("md5")
        && s.bytes()
            .skip(3)
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl<'a> Md5Secret<'a> {
    /// Classifies a password as PostgreSQL does: a string of the form of a stored MD5 hash is one,
    /// anything else is a cleartext password.
    pub fn classify(s: &'a str) -> Self {
        if is_md5_hash(s) {
            Md5Secret::Stored(s)
        } else {
            Md5Secret::Password(s)
        }
    }
}

/// Checks a client's answer to AuthenticationMD5Password (the PasswordMessage string, without its NUL)
/// against the user's secret and the salt sent, in constant time. A [`Md5Secret::Stored`] that is not
/// `"md5"` + 32 lowercase hex digits never matches.
pub fn md5_verify(secret: Md5Secret<'_>, user: &str, salt: [u8; 4], answer: &[u8]) -> bool {
    let expected = match secret {
        Md5Secret::Password(p) => md5_salted(&md5_password_hash(user, p), salt),
        Md5Secret::Stored(s) if is_md5_hash(s) => md5_salted(s, salt),
        Md5Secret::Stored(_) => return false,
    };
    crate::ct_eq(expected.as_bytes(), answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_verify_both_forms() {
        let stored = "md54a0a68b43b6cd5cf266fa02f196e2371"; // alice / secret
        let answer = b"md598a0412b9c31436fc53776e863350083"; // salted with 01 02 03 04
        let salt = [1, 2, 3, 4];
        assert!(md5_verify(Md5Secret::Stored(stored), "alice", salt, answer));
        assert!(md5_verify(
            Md5Secret::Password("secret"),
            "alice",
            salt,
            answer
        ));
        assert!(md5_verify(
            Md5Secret::classify(stored),
            "alice",
            salt,
            answer
        ));
        assert!(md5_verify(
            Md5Secret::classify("secret"),
            "alice",
            salt,
            answer
        ));
        // Wrong answer, salt, user, password; truncated and empty answers.
        assert!(!md5_verify(
            Md5Secret::Stored(stored),
            "alice",
            salt,
            b"md598a0412b9c31436fc53776e863350084"
        ));
        assert!(!md5_verify(
            Md5Secret::Stored(stored),
            "alice",
            [1, 2, 3, 5],
            answer
        ));
        assert!(!md5_verify(
            Md5Secret::Password("secret"),
            "bob",
            salt,
            answer
        ));
        assert!(!md5_verify(
            Md5Secret::Password("Secret"),
            "alice",
            salt,
            answer
        ));
        assert!(!md5_verify(
            Md5Secret::Stored(stored),
            "alice",
            salt,
            &answer[..34]
        ));
        assert!(!md5_verify(Md5Secret::Stored(stored), "alice", salt, b""));
        // The stored hash sent as the answer (no salt applied) is refused.
        assert!(!md5_verify(
            Md5Secret::Stored(stored),
            "alice",
            salt,
            stored.as_bytes()
        ));
        // Malformed stored hashes never match, even an answer computed from them.
        for bad in [
            "md54A0A68B43B6CD5CF266FA02F196E2371",
            "md54a0a68b43b6cd5cf266fa02f196e237",
            "secret",
            "",
        ] {
            let answer = md5_salted(bad, salt);
            assert!(!md5_verify(
                Md5Secret::Stored(bad),
                "alice",
                salt,
                answer.as_bytes()
            ));
            assert!(matches!(Md5Secret::classify(bad), Md5Secret::Password(_)));
        }
    }

    #[test]
    fn md5_matches_independent_vectors() {
        // Vectors computed with Python's hashlib: 'md5' + md5(b'secretalice'), then salted with 01 02 03 04.
        let stored = md5_password_hash("alice", "secret");
        assert_eq!(stored, "md54a0a68b43b6cd5cf266fa02f196e2371");
        assert_eq!(
            md5_salted(&stored, [1, 2, 3, 4]),
            "md598a0412b9c31436fc53776e863350083"
        );
    }
}

#!/usr/bin/env python3
"""Independent pgagroal 2.1 vault vectors for pgcorral-vault's tests.

Writes, next to this script:
  master.key   -- base64(passphrase) and base64(16-byte salt), one per line
  users.conf   -- `user:base64(salt | nonce | ciphertext | tag)` lines
with fixed salts, so the output is stable and checked in. It uses only
hashlib and the `cryptography` package (pip install cryptography), not the
Rust code:

  MK = PBKDF2-HMAC-SHA256(passphrase, master_salt, 600000, 64)
  D  = PBKDF2-HMAC-SHA256(MK, entry_salt, 1, 44); key = D[:32]; nonce = D[32:44]
  entry = AESGCM(key).encrypt(nonce, password, None)
"""
import base64
import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PASSPHRASE = "correct horse battery staple"
MASTER_SALT = bytes(range(16))
ENTRIES = [
    ("alice", "secret123", bytes([0xA1] * 16)),
    ("bob", "p\u00e4ssw\u00f6rd \u2713", bytes(range(100, 116))),
    ("carol", "x", bytes(16)),
]


def entry(mk: bytes, password: str, salt: bytes) -> str:
    d = hashlib.pbkdf2_hmac("sha256", mk, salt, 1, 44)
    key, nonce = d[:32], d[32:44]
    sealed = AESGCM(key).encrypt(nonce, password.encode("utf-8"), None)
    return base64.b64encode(salt + nonce + sealed).decode("ascii")


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    mk = hashlib.pbkdf2_hmac("sha256", PASSPHRASE.encode("utf-8"), MASTER_SALT, 600000, 64)
    master = (
        base64.b64encode(PASSPHRASE.encode("utf-8")).decode("ascii")
        + "\n"
        + base64.b64encode(MASTER_SALT).decode("ascii")
        + "\n"
    )
    lines = ["# pgagroal 2.1 users file made by make_vectors.py", ""]
    for user, password, salt in ENTRIES:
        lines.append(f"{user}:{entry(mk, password, salt)}")
    users = "\n".join(lines) + "\n"
    with open(os.path.join(here, "master.key"), "w") as f:
        f.write(master)
    with open(os.path.join(here, "users.conf"), "w") as f:
        f.write(users)
    print(master, end="")
    print(users, end="")


if __name__ == "__main__":
    main()

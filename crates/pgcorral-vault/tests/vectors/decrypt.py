#!/usr/bin/env python3
"""Decrypts one pgagroal 2.1 vault entry, independently of the Rust code.

usage: decrypt.py BASE64_PASSPHRASE BASE64_MASTER_SALT BLOB
Prints the password (UTF-8) on stdout. Needs `pip install cryptography`.
"""
import base64
import hashlib
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def main() -> None:
    passphrase = base64.b64decode(sys.argv[1])
    master_salt = base64.b64decode(sys.argv[2])
    raw = base64.b64decode(sys.argv[3])
    mk = hashlib.pbkdf2_hmac("sha256", passphrase, master_salt, 600000, 64)
    salt, nonce, sealed = raw[:16], raw[16:28], raw[28:]
    d = hashlib.pbkdf2_hmac("sha256", mk, salt, 1, 44)
    if d[32:44] != nonce:
        sys.exit("nonce in the blob differs from the derived one")
    plain = AESGCM(d[:32]).decrypt(nonce, sealed, None)
    sys.stdout.buffer.write(plain)


if __name__ == "__main__":
    main()

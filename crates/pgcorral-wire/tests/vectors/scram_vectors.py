#!/usr/bin/env python3
"""Independent SCRAM-SHA-256 vectors for pgcorral-wire's unit tests.

Computes, with nothing but Python's standard library (hashlib.pbkdf2_hmac, hmac), the secret PostgreSQL
stores in pg_authid.rolpassword for a password (the format of PostgreSQL's scram_build_secret:
"SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", standard base64 with padding) and one whole
exchange with fixed nonces as libpq and the PostgreSQL backend perform it (gs2 header "n,,", empty user name
in client-first-message). Run it and redirect to scram_vectors.txt:

    python3 scram_vectors.py > scram_vectors.txt
"""
import base64
import hashlib
import hmac

PASSWORD = "correct horse battery staple"
SALT = bytes(range(1, 17))  # 16 bytes, as PostgreSQL's SCRAM_DEFAULT_SALT_LEN
ITERATIONS = 4096
CLIENT_NONCE = "fyko+d2lbbFgONRv9qkxdawL"
SERVER_NONCE = "3rfcNHYJY1ZVvWVs7j"


def b64(b):
    return base64.b64encode(b).decode()


def h(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SALT, ITERATIONS)
client_key = h(salted, b"Client Key")
stored_key = hashlib.sha256(client_key).digest()
server_key = h(salted, b"Server Key")
secret = f"SCRAM-SHA-256${ITERATIONS}:{b64(SALT)}${b64(stored_key)}:{b64(server_key)}"

client_first_bare = f"n=,r={CLIENT_NONCE}"
client_first = "n,," + client_first_bare
nonce = CLIENT_NONCE + SERVER_NONCE
server_first = f"r={nonce},s={b64(SALT)},i={ITERATIONS}"
final_without_proof = f"c={b64(b'n,,')},r={nonce}"
auth_message = f"{client_first_bare},{server_first},{final_without_proof}".encode()
client_signature = h(stored_key, auth_message)
proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
client_final = f"{final_without_proof},p={b64(proof)}"
server_final = f"v={b64(h(server_key, auth_message))}"

print(f"password={PASSWORD}")
print(f"secret={secret}")
print(f"client_key={client_key.hex()}")
print(f"client_nonce={CLIENT_NONCE}")
print(f"server_nonce={SERVER_NONCE}")
print(f"client_first={client_first}")
print(f"server_first={server_first}")
print(f"client_final={client_final}")
print(f"server_final={server_final}")

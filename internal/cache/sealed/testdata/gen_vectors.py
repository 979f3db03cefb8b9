#!/usr/bin/env python3
"""Writes vectors.json: sealed values made by pyca/cryptography's AES-GCM
(OpenSSL), independently of the Go code, in the format of keyring.go:

    version (1) | len(id) | id | nonce (12) | ciphertext | tag (16)
    associated data = version | len(id) | id | storage key

Run from this directory: python3 gen_vectors.py > vectors.json
"""
import json

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def vector(name, key, key_id, nonce, storage_key, plaintext):
    header = bytes([1, len(key_id)]) + key_id
    sealed = header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + storage_key)
    return {
        "name": name,
        "key_hex": key.hex(),
        "key_id": key_id.decode(),
        "nonce_hex": nonce.hex(),
        "storage_key_hex": storage_key.hex(),
        "plaintext_hex": plaintext.hex(),
        "sealed_hex": sealed.hex(),
    }


vectors = [
    vector("short", bytes(range(32)), b"k1", bytes(range(12)),
           b"token:demo\x00read write", b'{"access_token":"at-1"}'),
    vector("empty plaintext, longest id", bytes(range(32, 64)), b"K" * 31 + b"9",
           bytes(range(100, 112)), b"grant:demo", b""),
    vector("every byte, binary storage key", bytes(31) + b"\x01", b"a.b_c-D9",
           b"\xff" * 12, b"authstate:\x00\xff\xfe", bytes(range(256))),
    vector("empty storage key", b"\xaa" * 32, b"2026-01", bytes(12), b"", b"v"),
]
print(json.dumps(vectors, indent=2))

"""A foreign issuer for keyrot's tests: PyJWT signs RS256, PS256, EdDSA, ES256 and ES384 tokens and
prints {"jwks": ..., "tokens": {alg: token}} as one line of JSON.

Usage: python3 pyjwt_issuer.py ISSUER AUDIENCE
"""
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def public_jwk(algorithm, key, kid, alg):
    jwk = json.loads(algorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def main():
    issuer, audience = sys.argv[1], sys.argv[2]
    now = int(time.time())
    keys = {
        "RS256": (RSAAlgorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "PS256": (RSAAlgorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "EdDSA": (OKPAlgorithm, ed25519.Ed25519PrivateKey.generate()),
        "ES256": (ECAlgorithm, ec.generate_private_key(ec.SECP256R1())),
        "ES384": (ECAlgorithm, ec.generate_private_key(ec.SECP384R1())),
    }
    jwks = {"keys": []}
    tokens = {}
    for alg, (algorithm, key) in keys.items():
        kid = "pyjwt-" + alg.lower()
        jwks["keys"].append(public_jwk(algorithm, key, kid, alg))
        claims = {"iss": issuer, "aud": audience, "sub": "py-" + alg, "iat": now, "exp": now + 600}
        tokens[alg] = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    print(json.dumps({"jwks": jwks, "tokens": tokens, "pyjwt": jwt.__version__}))


if __name__ == "__main__":
    main()

"""Verifies keyrot's tokens with PyJWT and with jwcrypto, each through keyrot's JWKS.

Usage: python3 verify_elsewhere.py INPUT.json
INPUT: {"issuer": ..., "audience": ..., "cases": {alg: {"jwks": {...}, "token": "..."}}}
Prints {"pyjwt": {alg: sub}, "jwcrypto": {alg: sub}}; a refused token exits non-zero.
"""
import json
import sys

import jwt
from jwcrypto import jwk as jc_jwk
from jwcrypto import jwt as jc_jwt


def main():
    spec = json.load(open(sys.argv[1]))
    issuer, audience = spec["issuer"], spec["audience"]
    out = {"pyjwt": {}, "jwcrypto": {}}
    for alg, case in spec["cases"].items():
        kid = jwt.get_unverified_header(case["token"])["kid"]
        key = jwt.PyJWKSet.from_dict(case["jwks"])[kid]
        claims = jwt.decode(case["token"], key.key, algorithms=[alg], audience=audience, issuer=issuer)
        out["pyjwt"][alg] = claims["sub"]
        keys = jc_jwk.JWKSet.from_json(json.dumps(case["jwks"]))
        token = jc_jwt.JWT(jwt=case["token"], key=keys, algs=[alg],
                           check_claims={"iss": issuer, "aud": audience, "exp": None})
        out["jwcrypto"][alg] = json.loads(token.claims)["sub"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Verifies keyrot's tokens with PyJWT and with jwcrypto, each through keyrot's JWKS.

Usage: python3 verify_elsewhere.py INPUT.json
INPUT: {"issuer": ..., "audience": ..., "cases": {name: {"alg": ..., "jwks": {...},
        "token": "...", "tampered": "..." (optional)}}}
Prints {"pyjwt": {name: {"sub": ..., "tampered": ERROR}}, "jwcrypto": {...}}: the verified
token's sub, and the class of the error the tampered token (if given) was refused with, or
"accepted". A refused token exits non-zero.
"""
import json
import sys

import jwt
from jwcrypto import jwk as jc_jwk
from jwcrypto import jwt as jc_jwt


def pyjwt_sub(case, token, issuer, audience):
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(case["jwks"])[kid]
    claims = jwt.decode(token, key.key, algorithms=[case["alg"]], audience=audience, issuer=issuer)
    return claims["sub"]


def jwcrypto_sub(case, token, issuer, audience):
    # The key the header's kid names in the JWKS: given the whole set, jwcrypto reports a
    # bad signature as a missing key (JWTMissingKey), the same as an unknown kid.
    kid = jc_jwt.JWT(jwt=token).token.jose_header["kid"]
    key = jc_jwk.JWKSet.from_json(json.dumps(case["jwks"])).get_key(kid)
    if key is None:
        raise KeyError("kid %s is not in the JWKS" % kid)
    checked = jc_jwt.JWT(jwt=token, key=key, algs=[case["alg"]],
                         check_claims={"iss": issuer, "aud": audience, "exp": None})
    return json.loads(checked.claims)["sub"]


def refusal(verify, case, issuer, audience):
    try:
        verify(case, case["tampered"], issuer, audience)
    except Exception as e:  # the class is the answer
        return type(e).__name__
    return "accepted"


def main():
    spec = json.load(open(sys.argv[1]))
    issuer, audience = spec["issuer"], spec["audience"]
    out = {}
    for stack, verify in (("pyjwt", pyjwt_sub), ("jwcrypto", jwcrypto_sub)):
        out[stack] = {}
        for name, case in spec["cases"].items():
            result = {"sub": verify(case, case["token"], issuer, audience)}
            if "tampered" in case:
                result["tampered"] = refusal(verify, case, issuer, audience)
            out[stack][name] = result
    print(json.dumps(out))


if __name__ == "__main__":
    main()

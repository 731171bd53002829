// Verifies keyrot's tokens with node's `jose`, through keyrot's JWKS.
// Usage: node verify_elsewhere.mjs INPUT.json (same input as verify_elsewhere.py);
// prints {"jose": {alg: sub}}; a refused token exits non-zero.
import { readFileSync } from "node:fs";
import * as jose from "jose";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = { jose: {} };
for (const [alg, c] of Object.entries(spec.cases)) {
  const keys = jose.createLocalJWKSet(c.jwks);
  const { payload } = await jose.jwtVerify(c.token, keys, {
    algorithms: [alg],
    issuer: spec.issuer,
    audience: spec.audience,
  });
  out.jose[alg] = payload.sub;
}
console.log(JSON.stringify(out));

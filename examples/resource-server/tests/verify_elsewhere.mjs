// Verifies keyrot's tokens with node's `jose`, through keyrot's JWKS.
// Usage: node verify_elsewhere.mjs INPUT.json (same input as verify_elsewhere.py);
// prints {"jose": {name: {"sub": ..., "tampered": ERROR}}}: the verified token's sub, and
// the class of the error the tampered token (if given) was refused with, or "accepted".
// A refused token exits non-zero.
import { readFileSync } from "node:fs";
import * as jose from "jose";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = { jose: {} };
for (const [name, c] of Object.entries(spec.cases)) {
  const keys = jose.createLocalJWKSet(c.jwks);
  const options = { algorithms: [c.alg], issuer: spec.issuer, audience: spec.audience };
  const { payload } = await jose.jwtVerify(c.token, keys, options);
  const result = { sub: payload.sub };
  if (c.tampered !== undefined) {
    try {
      await jose.jwtVerify(c.tampered, keys, options);
      result.tampered = "accepted";
    } catch (e) {
      result.tampered = e.constructor.name;
    }
  }
  out.jose[name] = result;
}
console.log(JSON.stringify(out));

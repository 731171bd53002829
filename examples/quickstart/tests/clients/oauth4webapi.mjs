// node's oauth4webapi as a client of the quickstart: RFC 8414 discovery
// (discoveryRequest + processDiscoveryResponse), a client credentials grant with
// client_secret_basic at the discovered token endpoint, and OpenID Connect discovery,
// which must fail (the quickstart serves no OpenID document). Then validateJwtAccessToken
// (RFC 9068) on the service token and on a demo-login user token, with the keys of the
// discovered jwks_uri: each must be accepted, and refused tampered, for another audience
// and once expired (the validator's clock moved past exp). Prints one JSON object.
// Usage: node oauth4webapi.mjs ISSUER CLIENT_ID CLIENT_SECRET
import * as oauth from 'oauth4webapi';

const [issuerArg, clientId, clientSecret] = process.argv.slice(2);
const issuer = new URL(issuerArg);
// The quickstart listens on loopback http; oauth4webapi refuses http unless told.
const insecure = { [oauth.allowInsecureRequests]: true };
const out = {};

const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }),
);
out.issuer = as.issuer;
out.token_endpoint = as.token_endpoint;
out.jwks_uri = as.jwks_uri;
out.grant_types_supported = as.grant_types_supported;
out.response_types_supported = as.response_types_supported;
out.token_endpoint_auth_methods_supported = as.token_endpoint_auth_methods_supported;

const client = { client_id: clientId };
const response = await oauth.clientCredentialsGrantRequest(
  as,
  client,
  oauth.ClientSecretBasic(clientSecret),
  new URLSearchParams({ scope: 'service.rotate-keys' }),
  insecure,
);
const token = await oauth.processClientCredentialsResponse(as, client, response);
out.token_type = token.token_type;
out.access_token_parts = token.access_token.split('.').length;

// RFC 9068: the resource server's view of the tokens, through the discovered JWKS.
const audience = issuer.href.replace(/\/$/, '');
const validate = async (accessToken, expectedAudience, extra = {}) => {
  const request = new Request('http://resource.example/api', {
    headers: { authorization: `Bearer ${accessToken}` },
  });
  try {
    const claims = await oauth.validateJwtAccessToken(as, request, expectedAudience, {
      signingAlgorithms: ['EdDSA', 'Ed25519', 'RS256', 'PS256', 'ES256', 'ES384'],
      ...insecure,
      ...extra,
    });
    return { accepted: true, sub: claims.sub, client_id: claims.client_id, scope: claims.scope };
  } catch (e) {
    return { accepted: false, reason: e.message };
  }
};
const tamper = (jwt) => {
  const [h, p, s] = jwt.split('.');
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
  claims.sub = 'mallory';
  return [h, Buffer.from(JSON.stringify(claims)).toString('base64url'), s].join('.');
};
const login = await fetch(new URL('/demo/login', issuer), {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ username: 'alice', scope: 'profile read' }),
});
const user = await login.json();
out.validated = {};
for (const [name, jwt] of [['service', token.access_token], ['user', user.access_token]]) {
  out.validated[name] = {
    as_issued: await validate(jwt, audience),
    tampered: await validate(tamper(jwt), audience),
    wrong_audience: await validate(jwt, 'https://other.example'),
    expired: await validate(jwt, audience, { [oauth.clockSkew]: 3600 }),
  };
}

try {
  await oauth.processDiscoveryResponse(
    issuer,
    await oauth.discoveryRequest(issuer, { algorithm: 'oidc', ...insecure }),
  );
  out.openid = 'accepted';
} catch (e) {
  out.openid = `refused: ${e.message}`;
}
console.log(JSON.stringify(out));

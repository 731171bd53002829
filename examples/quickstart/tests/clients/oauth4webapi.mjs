// node's oauth4webapi as a client of the quickstart: RFC 8414 discovery
// (discoveryRequest + processDiscoveryResponse), a client credentials grant with
// client_secret_basic at the discovered token endpoint, and OpenID Connect discovery,
// which must fail (the quickstart serves no OpenID document). Prints one JSON object.
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

"""Python authlib as a client of the quickstart: its RFC 8414 metadata model
(AuthorizationServerMetadata) checks every member the quickstart serves, then an
OAuth2Session fetches a client credentials token at the discovered token endpoint with
client_secret_basic and with client_secret_post. Prints one JSON object.

Usage: python authlib_client.py ISSUER CLIENT_ID CLIENT_SECRET
"""

import json
import os
import sys

# The quickstart listens on loopback http; authlib refuses http unless told.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

import requests  # noqa: E402
from authlib.integrations.requests_client import OAuth2Session  # noqa: E402
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata  # noqa: E402

issuer, client_id, client_secret = sys.argv[1:4]
url = issuer.rstrip("/") + "/.well-known/oauth-authorization-server"
doc = requests.get(url, timeout=10).json()
metadata = AuthorizationServerMetadata(doc)

# Every validator authlib has, one by one, so that each verdict is reported. authlib reads
# RFC 8414's "REQUIRED" response_types_supported as non-empty; a server without an
# authorization endpoint offers no response type (RFC 7591 section 2), so that one verdict
# is reported, not treated as a failure, by the test.
verdicts = {}
for key in metadata.REGISTRY_KEYS:
    check = getattr(metadata, "validate_" + key, None)
    if check is None:
        continue
    try:
        check()
        verdicts[key] = "ok"
    except ValueError as e:
        verdicts[key] = str(e)

tokens = {}
for method in ("client_secret_basic", "client_secret_post"):
    session = OAuth2Session(client_id, client_secret, token_endpoint_auth_method=method, scope="service.rotate-keys")
    token = session.fetch_token(doc["token_endpoint"], grant_type="client_credentials")
    tokens[method] = {"token_type": token["token_type"], "parts": len(token["access_token"].split("."))}

print(json.dumps({"issuer": metadata["issuer"], "verdicts": verdicts, "tokens": tokens}))

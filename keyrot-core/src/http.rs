//! Framework-neutral HTTP logic (bearer verification, JWKS, rotation endpoint, status).

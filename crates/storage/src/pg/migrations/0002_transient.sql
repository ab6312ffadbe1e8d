-- Short-lived records every process must see (UIA sessions, registration nonces, OpenID
-- tokens), until they expire.
CREATE TABLE transient (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_ts BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX transient_expiry ON transient (expires_ts);

-- Synapse's legacy account validity (`account_validity:` in the config): when each account
-- expires, whether the renewal mail for this period went out, and the renewal link's token
-- (kept once used, so a second click says "already renewed").
CREATE TABLE account_validity (
    user_id TEXT PRIMARY KEY NOT NULL,
    expiration_ts_ms BIGINT NOT NULL,
    email_sent BOOLEAN NOT NULL DEFAULT FALSE,
    renewal_token TEXT UNIQUE,
    token_used_ts_ms BIGINT
);
CREATE INDEX account_validity_expiration ON account_validity (expiration_ts_ms);

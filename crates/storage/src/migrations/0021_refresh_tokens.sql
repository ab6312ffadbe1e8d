-- Refresh tokens (MSC2918) and expiring access tokens, kept as Synapse keeps them: a refresh
-- token names its successor once refreshed, and an access token its refresh token, when it
-- expires, and whether it has been used (which retires the refresh token before it).
CREATE TABLE refresh_tokens (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    next_token_id INTEGER,
    expiry_ts INTEGER,
    ultimate_session_expiry_ts INTEGER
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);
CREATE INDEX refresh_tokens_next ON refresh_tokens (next_token_id);
ALTER TABLE access_tokens ADD COLUMN valid_until_ms INTEGER;
ALTER TABLE access_tokens ADD COLUMN refresh_token_id INTEGER;
ALTER TABLE access_tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_id);

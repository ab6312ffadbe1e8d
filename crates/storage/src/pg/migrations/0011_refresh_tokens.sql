-- Refresh tokens (MSC2918) and expiring access tokens, kept as Synapse keeps them: a refresh
-- token names its successor once refreshed, and an access token its refresh token, when it
-- expires, and whether it has been used (which retires the refresh token before it).
CREATE TABLE refresh_tokens (
    id BIGSERIAL PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    next_token_id BIGINT,
    expiry_ts BIGINT,
    ultimate_session_expiry_ts BIGINT
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);
CREATE INDEX refresh_tokens_next ON refresh_tokens (next_token_id);
ALTER TABLE access_tokens ADD COLUMN valid_until_ms BIGINT;
ALTER TABLE access_tokens ADD COLUMN refresh_token_id BIGINT;
ALTER TABLE access_tokens ADD COLUMN used BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_id);

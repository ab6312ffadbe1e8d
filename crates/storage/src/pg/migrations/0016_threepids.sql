-- Third-party identifiers (e-mail addresses, phone numbers) on accounts, as Synapse's
-- `user_threepids`: an address belongs to one account at a time.
CREATE TABLE user_threepids (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    user_id TEXT NOT NULL,
    validated_at BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

-- Validation of an address this server mails itself (Synapse's `threepid_validation_session`
-- and `threepid_validation_token`): each send of a mail adds a token; following any unexpired
-- one validates the session.
CREATE TABLE threepid_validation_sessions (
    session_id TEXT PRIMARY KEY,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    last_send_attempt BIGINT NOT NULL,
    validated_at BIGINT
);
CREATE INDEX threepid_validation_sessions_secret ON threepid_validation_sessions (medium, client_secret, address);
CREATE TABLE threepid_validation_tokens (
    token TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    next_link TEXT,
    expires BIGINT NOT NULL
);
CREATE INDEX threepid_validation_tokens_session ON threepid_validation_tokens (session_id);

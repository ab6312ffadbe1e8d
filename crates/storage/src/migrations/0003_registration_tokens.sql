-- Myelin schema, version 3: registration tokens (Synapse's m.login.registration_token).

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    uses_allowed INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time INTEGER
);

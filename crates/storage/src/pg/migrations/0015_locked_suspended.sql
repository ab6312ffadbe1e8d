-- Admins may lock an account (every request refused but logout, Synapse's `locked`) or suspend
-- it (reads, leaving and redacting its own events only, MSC3823).
ALTER TABLE users ADD COLUMN locked BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN suspended BOOLEAN NOT NULL DEFAULT FALSE;

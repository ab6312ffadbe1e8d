-- Admins may lock an account (every request refused but logout, Synapse's `locked`) or suspend
-- it (reads, leaving and redacting its own events only, MSC3823).
ALTER TABLE users ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;

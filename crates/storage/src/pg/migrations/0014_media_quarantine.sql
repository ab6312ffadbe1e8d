-- Admins' media moderation (Synapse's quarantined_by and safe_from_quarantine): quarantined
-- media is served to nobody; protected media is never quarantined.
ALTER TABLE media ADD COLUMN quarantined_by TEXT;
ALTER TABLE media ADD COLUMN safe_from_quarantine BOOLEAN NOT NULL DEFAULT FALSE;

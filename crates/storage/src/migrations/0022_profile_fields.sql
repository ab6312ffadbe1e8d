-- Custom profile fields (extended profiles, MSC4133 / spec v1.16), as a JSON object, as
-- Synapse keeps them beside the display name and avatar.
ALTER TABLE profiles ADD COLUMN fields TEXT;

-- An account's type (Synapse's `users.user_type`): NULL for a regular user, `support`, `bot`, or
-- one of the config's `user_types.extra_user_types`.
ALTER TABLE users ADD COLUMN user_type TEXT;

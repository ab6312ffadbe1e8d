-- Per-user rate-limit overrides, as Synapse's table of the same name: a row whose
-- messages_per_second is 0 or NULL exempts the user from every rate limit; other values
-- replace rc_message for that user. Written by the admin API (later) or by hand.
CREATE TABLE ratelimit_override (
    user_id TEXT NOT NULL PRIMARY KEY,
    messages_per_second REAL,
    burst_count INTEGER
);

-- The user agent a device was last seen with (ModuleApi.get_user_ip_and_agents, and the admin
-- API's whois later).
ALTER TABLE devices ADD COLUMN last_seen_user_agent TEXT;

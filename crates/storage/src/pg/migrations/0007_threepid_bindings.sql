-- Where users bound third-party identifiers through this server (Synapse's
-- `user_threepid_id_server`): the identity servers to unbind them from when the identifier is
-- removed or the account deactivated.
CREATE TABLE threepid_bindings (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    id_server TEXT NOT NULL,
    PRIMARY KEY (user_id, medium, address, id_server)
);

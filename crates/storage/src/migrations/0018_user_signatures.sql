-- Signatures a user's user-signing key made on other users' master keys: shown only to the
-- signer (as Synapse's e2e_cross_signing_signatures), so kept apart from the signed key.
CREATE TABLE cross_signing_signatures (
    signer TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signatures_json TEXT NOT NULL,
    PRIMARY KEY (signer, target_user_id, target_key_id)
);
-- Device-list changes only one user hears of (Synapse's user_signature_stream): their own
-- user-signing key, and their signatures of others' keys.
CREATE TABLE private_device_list_changes (
    stream_ordering BIGINT NOT NULL,
    viewer TEXT NOT NULL,
    user_id TEXT NOT NULL
);
CREATE INDEX private_device_list_changes_by_viewer ON private_device_list_changes (viewer, stream_ordering);

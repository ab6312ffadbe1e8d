-- Filter IDs count per user from 0, as Synapse's do, so that a Synapse's filters are imported
-- with their IDs (clients keep them). Existing filters keep their numbers.
CREATE TABLE filters_per_user (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
INSERT INTO filters_per_user (user_id, filter_id, filter_json) SELECT user_id, filter_id, filter_json FROM filters;
DROP TABLE filters;
ALTER TABLE filters_per_user RENAME TO filters;

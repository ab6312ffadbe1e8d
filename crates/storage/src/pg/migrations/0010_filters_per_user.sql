-- Filter IDs count per user from 0, as Synapse's do, so that a Synapse's filters are imported
-- with their IDs (clients keep them). Existing filters keep their numbers.
ALTER TABLE filters DROP CONSTRAINT filters_pkey;
ALTER TABLE filters ALTER COLUMN filter_id DROP DEFAULT;
DROP SEQUENCE IF EXISTS filters_filter_id_seq;
ALTER TABLE filters ADD PRIMARY KEY (user_id, filter_id);

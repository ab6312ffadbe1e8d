-- /sync gives the sender's device back its transaction ID (`unsigned.transaction_id`): looked up
-- by event.
CREATE INDEX event_txn_ids_event ON event_txn_ids (event_id);

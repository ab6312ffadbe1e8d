//! Application services' delivery positions and pending transactions (`AppserviceStore`) on
//! PostgreSQL.

use super::*;

impl AppserviceStore for PostgresStore {
    fn appservice_state(&self, as_id: &str, start_position: i64) -> Result<AppserviceState> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO appservice_state (as_id, position) VALUES ($1, $2) ON CONFLICT (as_id) DO NOTHING",
                &[&as_id, &start_position],
            )?;
            let r = tx.one(
                "SELECT position, last_txn_id, pending_txn_id, pending_to, pending_body FROM appservice_state
                 WHERE as_id = $1",
                &[&as_id],
            )?;
            let pending = match (r.get::<_, Option<i64>>(2), r.get::<_, Option<i64>>(3), r.get::<_, Option<String>>(4))
            {
                (Some(txn_id), Some(to_position), Some(body)) => Some(PendingTransaction { txn_id, to_position, body }),
                _ => None,
            };
            Ok(AppserviceState { position: r.get(0), last_txn_id: r.get(1), pending })
        })
    }

    fn begin_appservice_txn(&self, as_id: &str, txn: &PendingTransaction) -> Result<()> {
        let written = self.write(|tx| {
            tx.exec(
                "UPDATE appservice_state SET pending_txn_id = $2, pending_to = $3, pending_body = $4
                 WHERE as_id = $1 AND pending_txn_id IS NULL AND last_txn_id + 1 = $2 AND position < $3",
                &[&as_id, &txn.txn_id, &txn.to_position, &txn.body],
            )
        })?;
        if written == 0 {
            return Err(StorageError::Conflict);
        }
        Ok(())
    }

    fn complete_appservice_txn(&self, as_id: &str, txn_id: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE appservice_state SET last_txn_id = pending_txn_id, position = pending_to,
                     pending_txn_id = NULL, pending_to = NULL, pending_body = NULL
                 WHERE as_id = $1 AND pending_txn_id = $2",
                &[&as_id, &txn_id],
            )?;
            Ok(())
        })
    }

    fn advance_appservice(&self, as_id: &str, position: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE appservice_state SET position = $2
                 WHERE as_id = $1 AND position < $2 AND pending_txn_id IS NULL",
                &[&as_id, &position],
            )?;
            Ok(())
        })
    }
}

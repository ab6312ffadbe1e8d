//! Full-text search over the `event_search` tsvectors (`SearchStore`).
//!
//! The rows are written with their events (see `rooms.rs`); there is no backlog to index first,
//! unlike SQLite's batched FTS5 index.

use super::*;

/// The `to_tsquery` text for `words`: every word required, each a prefix. A word is split on
/// anything but letters and digits, as the tokenizer splits the text (so user input can never
/// be tsquery syntax), lower-cased; `None` when nothing searchable is left.
fn tsquery(words: &[String]) -> Option<String> {
    let terms: Vec<String> = words
        .iter()
        .flat_map(|word| word.split(|c: char| !c.is_alphanumeric()))
        .filter(|term| !term.is_empty())
        // Lower-cased here as the indexed text is (`rooms.rs`): PostgreSQL folds only ASCII in
        // a `C`-ctype database, where SQLite's tokenizer folds all of Unicode.
        .map(|term| format!("{}:*", term.to_lowercase()))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" & "))
}

impl SearchStore for PostgresStore {
    fn search_events(
        &self,
        rooms: &[String],
        words: &[String],
        keys: &[String],
        newest_first: bool,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<SearchHit>)> {
        let Some(query) = tsquery(words) else { return Ok((0, Vec::new())) };
        if rooms.is_empty() {
            return Ok((0, Vec::new()));
        }
        let from = "FROM event_search, to_tsquery('simple', $1) AS query
             WHERE vector @@ query AND room_id = ANY($2) AND key = ANY($3)";
        // ts_rank is higher for better matches, as SQLite's negated bm25.
        let order = if newest_first { "stream_ordering DESC" } else { "rank DESC, stream_ordering DESC" };
        let page = format!(
            "SELECT event_id, room_id, ts_rank(vector, query) AS rank {from}
             ORDER BY {order} LIMIT $4 OFFSET $5"
        );
        // One snapshot, so that the count and the page agree.
        self.snapshot(|db| {
            let count: i64 = db.one(&format!("SELECT count(*) {from}"), &[&query, &rooms, &keys])?.get(0);
            let hits = db
                .rows(&page, &[&query, &rooms, &keys, &int(limit), &int(offset)])?
                .iter()
                .map(|r| SearchHit { event_id: r.get(0), room_id: r.get(1), rank: f64::from(r.get::<_, f32>(2)) })
                .collect();
            Ok((usize::try_from(count).unwrap_or(0), hits))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn tsquery_requires_every_word_as_a_prefix() {
        assert_eq!(tsquery(&words(&["hello", "Wor"])).as_deref(), Some("hello:* & wor:*"));
    }

    #[test]
    fn tsquery_splits_words_like_the_tokenizer_and_drops_syntax() {
        assert_eq!(
            tsquery(&words(&["foo-bar", "a&b|!c:*", "(x)"])).as_deref(),
            Some("foo:* & bar:* & a:* & b:* & c:* & x:*")
        );
        assert_eq!(tsquery(&words(&["Привет", "abc123"])).as_deref(), Some("привет:* & abc123:*"));
    }

    #[test]
    fn tsquery_of_nothing_searchable_is_none() {
        assert_eq!(tsquery(&words(&[])), None);
        assert_eq!(tsquery(&words(&["!!", "'\"", ":*"])), None);
    }
}

//! The change feed over all rings on PostgreSQL: the one `LISTEN` channel every commit
//! notifies, whose payload names the ring.

use crate::common::db_err;
use crate::store::SqlStore;
use async_trait::async_trait;
use keyrot_core::{RingEvent, RingName, RingsFeed, RingsStream, StorageError};
use sqlx::postgres::{PgListener, Postgres};

/// A `LISTEN` subscription for every ring.
pub(super) struct PgRingsStream {
    listener: PgListener,
    channel: String,
}

impl std::fmt::Debug for PgRingsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRingsStream").field("channel", &self.channel).finish()
    }
}

/// Parses a `<ring>:<generation>` payload.
pub(super) fn parse_any(payload: &str) -> Option<(RingName, u64)> {
    let (name, generation) = payload.rsplit_once(':')?;
    Some((RingName::new(name).ok()?, generation.parse().ok()?))
}

#[async_trait]
impl RingsStream for PgRingsStream {
    async fn next(&mut self) -> Result<RingEvent, StorageError> {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some((ring, generation)) = parse_any(n.payload()) {
                        return Ok(RingEvent::Changed { ring, generation });
                    }
                }
                Ok(None) => {
                    tracing::info!(channel = %self.channel,
                        "postgres change feed (all rings) reconnected; notifications may have been lost: resync");
                    return Ok(RingEvent::Resync);
                }
                Err(e) => return Err(db_err("postgres: change feed (LISTEN)")(e)),
            }
        }
    }
}

/// One connection and one channel for every ring of the store.
#[async_trait]
impl RingsFeed for SqlStore<Postgres> {
    async fn subscribe_all(&self) -> Result<Box<dyn RingsStream>, StorageError> {
        let mut listener = PgListener::connect_with(&self.inner.pool)
            .await
            .map_err(db_err("postgres: change feed connection"))?;
        listener
            .listen(&self.inner.state.channel)
            .await
            .map_err(db_err("postgres: LISTEN"))?;
        tracing::debug!(channel = %self.inner.state.channel, "postgres change feed for all rings listening");
        Ok(Box::new(PgRingsStream {
            listener,
            channel: self.inner.state.channel.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_their_ring() {
        let (ring, g) = parse_any("tenant-7:42").expect("parsed");
        assert_eq!((ring.as_str(), g), ("tenant-7", 42));
        assert!(parse_any("tenant-7").is_none());
        assert!(parse_any("bad name:1").is_none());
        assert!(parse_any("t:x").is_none());
    }
}

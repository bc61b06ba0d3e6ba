//! The PostgreSQL change feed: [`PostgresStore::listen`] keeps another
//! process's verifier cache honest through LISTEN/NOTIFY; its
//! [`ChangeListener`] and [`FeedStatus`].

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::postgres::{PostgresStore, err};
use super::sql::boxed;
use crate::ids::KeyId;
use crate::store::{Invalidate, StoreError};

/// Application name of the change feed's connection (visible in `pg_stat_activity`).
const FEED_APPLICATION_NAME: &str = "keyward-change-feed";
const FEED_BACKOFF_MIN: Duration = Duration::from_millis(50);
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The least time a connection check may take before it counts as failed.
const MIN_FEED_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection lost sooner than this after opening is followed by a pause
/// (with backoff) before the next one, so a server that drops the feed at
/// once cannot make it reconnect, and invalidate everything, in a tight loop.
const FEED_MIN_UPTIME: Duration = Duration::from_secs(1);

impl PostgresStore {
    /// Starts the change feed for `verifier` (a [`Verifier`](crate::Verifier),
    /// or anything [`Invalidate`]): a task holding its own
    /// connection (application name `keyward-change-feed`) that LISTENs on
    /// [`channel`](Self::channel) and calls [`Verifier::invalidate`](crate::Verifier::invalidate) for each
    /// notified key id.
    ///
    /// When the connection is lost, the task reconnects (with backoff from
    /// 50 ms to 5 s) and then calls [`Verifier::invalidate_all`](crate::Verifier::invalidate_all), since
    /// notices sent while it was away are lost; the verifier's cache TTL
    /// bounds staleness while it cannot reconnect. Returns once the first
    /// LISTEN is in place, so every change committed after this returns
    /// reaches the verifier. The feed stops when the returned
    /// [`ChangeListener`] is dropped.
    ///
    /// Errors: [`StoreError::Backend`] if the first connection fails or
    /// there is no tokio runtime.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use keyward::*;
    /// let store = PostgresStore::connect("postgres://app@db.internal/registry").await?;
    /// store.migrate().await?;
    /// # let (format, policy) = (TokenFormat::new("mkh", &["live"])?, Policy::new(PermissionRegistry::builder().permission("p").build()?));
    /// let manager = KeyManager::builder(store.clone(), format, policy).build().unwrap();
    /// let feed = store.listen(&manager.verifier()).await?;
    /// // ... serve requests; keep `feed` alive as long as the manager.
    /// # drop(feed);
    /// # Ok(()) }
    /// ```
    pub async fn listen<T: Invalidate + Clone>(
        &self,
        verifier: &T,
    ) -> Result<ChangeListener, StoreError> {
        boxed(self.listen_impl(verifier)).await
    }

    async fn listen_impl<T: Invalidate + Clone>(
        &self,
        verifier: &T,
    ) -> Result<ChangeListener, StoreError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Backend("the change feed needs a tokio runtime".into()))?;
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(FEED_APPLICATION_NAME);
        let pool = feed_pool(&options);
        let channel: String = self.channel.to_string();
        let (listener, pid) = open_feed(&pool, &channel)
            .await
            .map_err(err("start the change feed"))?;
        verifier.invalidate_all();
        let (tx, rx) = watch::channel(FeedStatus {
            connected: true,
            connections: 1,
            notifications: 0,
            backend_pid: Some(pid),
            pings_failed: 0,
        });
        let task = handle.spawn(run_feed(
            options,
            pool,
            channel,
            listener,
            verifier.clone(),
            tx,
            self.feed_ping,
        ));
        Ok(ChangeListener { task, status: rx })
    }
}

/// The feed's own pool: one connection, kept open.
fn feed_pool(options: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.clone())
}

async fn open_feed(pool: &PgPool, channel: &str) -> Result<(PgListener, u32), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut listener)
        .await?;
    Ok((listener, u32::try_from(pid).unwrap_or(0)))
}

async fn run_feed<T: Invalidate>(
    options: PgConnectOptions,
    mut pool: PgPool,
    channel: String,
    first: PgListener,
    verifier: T,
    status: watch::Sender<FeedStatus>,
    ping: Duration,
) {
    let mut current = Some(first);
    let mut backoff = FEED_BACKOFF_MIN;
    loop {
        let mut listener = match current.take() {
            Some(l) => l,
            None => {
                match tokio::time::timeout(ping.max(FEED_BACKOFF_MAX), open_feed(&pool, &channel))
                    .await
                {
                    Ok(Ok((l, pid))) => {
                        // Whatever was notified while we were away is lost: forget everything.
                        verifier.invalidate_all();
                        status.send_modify(|s| {
                            s.connected = true;
                            s.connections += 1;
                            s.backend_pid = Some(pid);
                        });
                        l
                    }
                    Ok(Err(_)) | Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
                        continue;
                    }
                }
            }
        };
        let opened = tokio::time::Instant::now();
        loop {
            // `try_recv` is cancel-safe (a partly read message stays buffered).
            match tokio::time::timeout(ping, listener.try_recv()).await {
                Ok(Ok(Some(notice))) => {
                    match KeyId::new(notice.payload()) {
                        Ok(id) => verifier.invalidate(&id),
                        Err(_) => verifier.invalidate_all(),
                    }
                    status.send_modify(|s| s.notifications += 1);
                }
                // `Ok(None)`: the connection was lost; `Err`: it failed
                // otherwise. Either way, start over.
                Ok(_) => break,
                // Quiet for a while: does the connection still answer?
                // (Notices that arrive meanwhile are buffered, not lost.)
                Err(_) => {
                    let check = sqlx::query("SELECT 1").execute(&mut listener);
                    let patience = ping.max(MIN_FEED_PING_TIMEOUT);
                    if !matches!(tokio::time::timeout(patience, check).await, Ok(Ok(_))) {
                        status.send_modify(|s| s.pings_failed += 1);
                        // The connection may still look open: never hand it
                        // back to be reused. A new pool, a new connection.
                        pool = feed_pool(&options);
                        break;
                    }
                }
            }
        }
        status.send_modify(|s| {
            s.connected = false;
            s.backend_pid = None;
        });
        drop(listener);
        if opened.elapsed() < FEED_MIN_UPTIME {
            // Lost at once: wait before trying again, longer each time.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
        } else {
            backoff = FEED_BACKOFF_MIN;
        }
    }
}

/// The state of a change feed, as [`ChangeListener::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedStatus {
    /// Whether the feed's connection is up and listening.
    pub connected: bool,
    /// How many times it connected (1 at start; each reconnect adds one and
    /// is followed by [`Verifier::invalidate_all`](crate::Verifier::invalidate_all)).
    pub connections: u64,
    /// Notifications received so far.
    pub notifications: u64,
    /// The PostgreSQL backend process id of the current connection.
    pub backend_pid: Option<u32>,
    /// Connection checks (after a quiet [`with_feed_ping`](PostgresStore::with_feed_ping)
    /// interval) that failed or timed out, each followed by a reconnect.
    pub pings_failed: u64,
}

/// A running change feed, from [`PostgresStore::listen`]. Dropping it stops the feed.
#[derive(Debug)]
pub struct ChangeListener {
    task: JoinHandle<()>,
    status: watch::Receiver<FeedStatus>,
}

impl ChangeListener {
    /// The feed's current state.
    pub fn status(&self) -> FeedStatus {
        *self.status.borrow()
    }

    /// A receiver that sees every change of [`status`](Self::status), for
    /// health checks and metrics (`wait_for` a reconnect, for example).
    pub fn subscribe(&self) -> watch::Receiver<FeedStatus> {
        self.status.clone()
    }

    /// Stops the feed (the same as dropping it).
    pub fn stop(self) {}
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! The Redis connection (fred), shared by limiters, caches and invalidation.
//!
//! All Redis access goes through this handle so key naming (the configured prefix) lives
//! in one place and a later client switch stays local.

use fred::clients::SubscriberClient;
use fred::prelude::*;

/// A connected Redis client plus the key prefix for this deployment.
#[derive(Clone)]
pub struct RedisConn {
    pub client: Client,
    pub subscriber: SubscriberClient,
    prefix: String,
}

impl RedisConn {
    /// Connects and verifies the server answers; an unreachable Redis is a start-up error.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, fred::error::Error> {
        let config = fred::types::config::Config::from_url(url)?;
        let client = Builder::from_config(config.clone())
            .with_connection_config(|c| {
                c.connection_timeout = std::time::Duration::from_secs(3);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = std::time::Duration::from_secs(2);
            })
            .set_policy(ReconnectPolicy::new_constant(0, 500))
            .build()?;
        let subscriber = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, 500))
            .build_subscriber_client()?;
        // Fail fast at start-up rather than retrying forever.
        tokio::time::timeout(std::time::Duration::from_secs(5), client.init())
            .await
            .map_err(|_| {
                fred::error::Error::new(fred::error::ErrorKind::Timeout, "connect timeout")
            })??;
        tokio::time::timeout(std::time::Duration::from_secs(5), subscriber.init())
            .await
            .map_err(|_| {
                fred::error::Error::new(fred::error::ErrorKind::Timeout, "connect timeout")
            })??;
        subscriber.manage_subscriptions();
        Ok(Self {
            client,
            subscriber,
            prefix: prefix.to_string(),
        })
    }

    /// This deployment's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key (or channel) name with this deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), fred::error::Error> {
        let _: String = self.client.ping(None).await?;
        Ok(())
    }

    /// Whether the client holds a live connection: a local read, nothing is sent. A
    /// closed or refused connection shows at once; a silent partition only once a
    /// command times out.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Closes both connections; bounded, so shutdown never waits on an unreachable Redis.
    pub async fn quit(&self) {
        let limit = std::time::Duration::from_secs(1);
        let _ = tokio::time::timeout(limit, self.client.quit()).await;
        let _ = tokio::time::timeout(limit, self.subscriber.quit()).await;
    }
}

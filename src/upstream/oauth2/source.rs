//! The token cache of one upstream: fetch, keep, refresh ahead of expiry, coalesce.
//!
//! One `tokio::sync::Mutex` guards the cache and is held across a fetch, so concurrent
//! connections that find the token stale wait for the one request in flight and then take
//! its result: one request, however many connections (RFC 6749 does not limit requests,
//! but Entra ID throttles a client that asks too often). Every fetch is bounded by the
//! HTTP client's timeout, so a waiter waits at most that long.
//!
//! Times come from the injected [`Clock`]: a test moves it on to see the refresh.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use super::endpoint::{Endpoint, GrantKind, TokenError};
use super::{AccessToken, Secret, TokenObserver, TokenResult};
use crate::clock::Clock;

/// A token is refreshed when less than this much of its life is left (or 10 % of its
/// lifetime, whichever is more; at most half of it).
const MIN_MARGIN: Duration = Duration::from_secs(60);

/// After a failed request, callers get its error for this long without asking again, so
/// the connections queued behind a request that timed out do not each wait out a timeout
/// of their own.
const FAILURE_HOLD: Duration = Duration::from_secs(5);

/// The tokens of one upstream. `Debug` shows no token.
#[derive(Debug)]
pub struct TokenSource {
    upstream: String,
    endpoint: Endpoint,
    clock: Clock,
    observer: Option<Arc<dyn TokenObserver>>,
    cache: Mutex<Cache>,
}

#[derive(Debug)]
struct Cache {
    token: Option<Cached>,
    /// The refresh token in use: the file's, or the latest the endpoint rotated in.
    refresh_token: Option<Secret>,
    /// The latest failed request's error, and until when it stands.
    failed: Option<(Instant, TokenError)>,
}

#[derive(Debug)]
struct Cached {
    token: AccessToken,
    /// Refresh from this moment on.
    refresh_at: Instant,
    /// Unusable from this moment on.
    expires: Instant,
}

impl TokenSource {
    /// A source asking `endpoint`; `refresh_token` for the refresh grant.
    pub fn new(
        upstream: String,
        endpoint: Endpoint,
        refresh_token: Option<Secret>,
        clock: Clock,
        observer: Option<Arc<dyn TokenObserver>>,
    ) -> TokenSource {
        TokenSource {
            upstream,
            endpoint,
            clock,
            observer,
            cache: Mutex::new(Cache {
                token: None,
                refresh_token,
                failed: None,
            }),
        }
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> &str {
        self.endpoint.url.as_str()
    }

    /// How long the cached token is still valid (zero when there is none).
    pub async fn valid_for(&self) -> Duration {
        let cache = self.cache.lock().await;
        let now = self.clock.now();
        cache
            .token
            .as_ref()
            .map_or(Duration::ZERO, |c| c.expires.saturating_duration_since(now))
    }

    /// The grant this source uses.
    pub fn grant(&self) -> GrantKind {
        self.endpoint.grant
    }

    /// A token that is not due for refresh, fetched if need be. While a refresh fails,
    /// the current token is used until it expires.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if let Some(c) = &cache.token
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        self.fetch(&mut cache, now).await
    }

    /// A new token after the upstream refused `rejected` (a `535`): fetched unless another
    /// connection already replaced it meanwhile.
    pub async fn after_rejection(&self, rejected: &AccessToken) -> Result<AccessToken, TokenError> {
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if let Some(c) = &cache.token
            && c.token != *rejected
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        cache.token = None;
        self.fetch(&mut cache, now).await
    }

    async fn fetch(&self, cache: &mut Cache, now: Instant) -> Result<AccessToken, TokenError> {
        let held = match &cache.failed {
            Some((until, e)) if now < *until => Some(e.clone()),
            _ => None,
        };
        let result = match held {
            Some(e) => Err(e),
            None => {
                let result = self
                    .endpoint
                    .request(cache.refresh_token.as_ref(), self.clock.unix())
                    .await;
                if let Err(e) = &result {
                    self.count(e.result());
                    self.log_failure(e);
                    cache.failed = Some((self.clock.now() + FAILURE_HOLD, e.clone()));
                }
                result
            }
        };
        let issued = match result {
            Ok(issued) => issued,
            Err(e) => {
                return match &cache.token {
                    Some(c) if now < c.expires => Ok(c.token.clone()),
                    _ => Err(e),
                };
            }
        };
        cache.failed = None;
        self.count(TokenResult::Issued);
        if let Some(rotated) = issued.refresh_token {
            cache.refresh_token = Some(rotated);
        }
        let lifetime = issued.lifetime;
        let margin = MIN_MARGIN.max(lifetime / 10).min(lifetime / 2);
        let expires_unix = self.clock.unix().saturating_add(lifetime.as_secs());
        if let Some(o) = &self.observer {
            o.token_expiry(&self.upstream, expires_unix);
        }
        info!(upstream = %self.upstream, expires_in = lifetime.as_secs(), "OAuth2 access token issued");
        let token = issued.access_token;
        cache.token = Some(Cached {
            token: token.clone(),
            refresh_at: now + (lifetime - margin),
            expires: now + lifetime,
        });
        Ok(token)
    }

    fn count(&self, result: TokenResult) {
        if let Some(o) = &self.observer {
            o.token_request(&self.upstream, result);
        }
    }

    /// The provider's error code and text go to the log (they explain the fix: a wrong
    /// secret, a missing consent); the request and the token never do.
    fn log_failure(&self, e: &TokenError) {
        let url = self.endpoint.url.as_str();
        match e {
            TokenError::Refused {
                status,
                error,
                description,
            } => warn!(
                upstream = %self.upstream,
                token_url = %url,
                status = *status,
                error = %error,
                error_description = %description,
                "OAuth2 token request refused"
            ),
            TokenError::Unavailable { detail } => warn!(
                upstream = %self.upstream,
                token_url = %url,
                error = %detail,
                "OAuth2 token request failed"
            ),
        }
    }
}

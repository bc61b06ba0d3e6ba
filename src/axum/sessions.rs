//! The layer's optional session capability: what it needs from a
//! [`KeyManager`] whose store is also a [`SessionStore`], behind a trait
//! object so that [`KeywardLayer<S>`](super::KeywardLayer) itself asks only
//! `S: KeyStore`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use crate::ids::Environment;
use crate::manager::KeyManager;
use crate::session::IssuedSession;
use crate::store::KeyStore;
use crate::store::SessionStore;
use crate::verify::Denial;
use crate::verify::{SessionError, VerifiedSession};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Session tokens for the layer: recognising, checking and issuing them.
pub(super) trait SessionAuth: Send + Sync + 'static {
    /// Whether `token` carries the session prefix.
    fn is_session_token(&self, token: &str) -> bool;

    /// [`KeyManager::authenticate_session`].
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        environment: &'a Environment,
        client_ip: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<VerifiedSession, Denial>>;

    /// [`KeyManager::exchange`], or [`KeyManager::exchange_pair`] when
    /// `pair_id` is the id of an imported key's id + secret pair.
    fn exchange<'a>(
        &'a self,
        secret: &'a str,
        pair_id: Option<&'a str>,
        environment: &'a Environment,
        ttl: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<IssuedSession, SessionError>>;
}

impl<S: KeyStore + SessionStore> SessionAuth for KeyManager<S> {
    fn is_session_token(&self, token: &str) -> bool {
        KeyManager::is_session_token(self, token)
    }

    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        environment: &'a Environment,
        client_ip: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<VerifiedSession, Denial>> {
        Box::pin(self.authenticate_session(token, environment, client_ip))
    }

    fn exchange<'a>(
        &'a self,
        secret: &'a str,
        pair_id: Option<&'a str>,
        environment: &'a Environment,
        ttl: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<IssuedSession, SessionError>> {
        match pair_id {
            Some(id) => Box::pin(self.exchange_pair(id, secret, environment, ttl, client_ip)),
            None => Box::pin(KeyManager::exchange(
                self,
                secret,
                environment,
                ttl,
                client_ip,
            )),
        }
    }
}

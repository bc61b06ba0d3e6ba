//! [`ResponseFuture`], the future of [`RequireKey`](super::RequireKey):
//! no allocation when the check ends without waiting (a cached key).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use ::axum::http::{HeaderName, HeaderValue, StatusCode};
use ::axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;

use crate::verify::RateLimitStatus;

/// A check that had to wait (a cold key, a session, a resolver or a
/// store lease), with the inner service's call after it.
pub(super) type SlowCheck<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

/// The headers added to a successful response: the expiry warning and the
/// `RateLimit` fields.
#[derive(Default)]
pub(super) struct Extra {
    pub(super) warning: Option<(HeaderName, HeaderValue)>,
    pub(super) rate: Option<RateLimitStatus>,
}

impl Extra {
    /// Adds the headers to `response` (once: they are taken).
    pub(super) fn apply(&mut self, response: &mut Response) {
        if let Some((name, value)) = self.warning.take() {
            response.headers_mut().insert(name, value);
        }
        if let Some(status) = self.rate.take() {
            super::rate_headers::insert(response.headers_mut(), &status);
        }
    }
}

pin_project! {
    /// The response future of [`RequireKey`](super::RequireKey): the inner
    /// service's call when the check ended at once (a cached key, the
    /// usual case), the refusal, or, when the check had to wait, a boxed
    /// future of the rest.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, E> {
        Inner {
            #[pin]
            fut: F,
            extra: Extra,
        },
        Ready {
            response: Option<Response>,
        },
        Slow {
            fut: SlowCheck<E>,
        },
    }
}

impl<F, E> ResponseFuture<F, E> {
    /// The inner service's call, then `extra` on its response.
    pub(super) fn inner(fut: F, extra: Extra) -> Self {
        Self {
            state: State::Inner { fut, extra },
        }
    }
    /// An answer already made (a refusal).
    pub(super) fn ready(response: Response) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
    /// A check that has to wait.
    pub(super) fn slow(fut: SlowCheck<E>) -> Self {
        Self {
            state: State::Slow { fut },
        }
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut, extra } => {
                let mut response = ready!(fut.poll(cx))?;
                extra.apply(&mut response);
                Poll::Ready(Ok(response))
            }
            // Polled again after it answered: a 500 rather than a panic.
            StateProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response()))),
            StateProj::Slow { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, E> std::fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Polls `fut` once without a task to wake: for futures that are ready at
/// once in the usual case (the path parameters; a resolver answering from
/// memory). A future left pending is polled again, with the request's
/// waker, by the boxed rest of the check.
pub(super) fn poll_now<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

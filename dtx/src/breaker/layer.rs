//! The breaker as `tower` middleware (feature `http`).

use super::CircuitBreaker;
use crate::error::BoxError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Which results of a service count as failures for its breaker.
///
/// [`Errors`] (the default) counts every `Err`; [`ServerErrors`] also counts HTTP responses
/// with a 5xx status; any `Fn(&Result<Response, Error>) -> bool` works too.
///
/// ```
/// use dtx::breaker::FailureClassifier;
///
/// let timeouts = |result: &Result<u16, String>| matches!(result, Err(e) if e.contains("timeout"));
/// assert!(timeouts.is_failure(&Err("timeout after 5 s".into())));
/// ```
pub trait FailureClassifier<Response, Error> {
    /// Whether `result` counts as a failure.
    fn is_failure(&self, result: &Result<Response, Error>) -> bool;
}

/// Every `Err` is a failure.
///
/// ```
/// use dtx::breaker::{Errors, FailureClassifier};
/// assert!(Errors.is_failure(&Err::<(), _>("down")));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors;

impl<R, E> FailureClassifier<R, E> for Errors {
    fn is_failure(&self, result: &Result<R, E>) -> bool {
        result.is_err()
    }
}

/// Every `Err`, and every HTTP response with a 5xx status, is a failure.
///
/// ```
/// use dtx::breaker::{FailureClassifier, ServerErrors};
/// let unavailable = http::Response::builder().status(503).body(()).unwrap();
/// assert!(ServerErrors.is_failure(&Ok::<_, String>(unavailable)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl<B, E> FailureClassifier<http::Response<B>, E> for ServerErrors {
    fn is_failure(&self, result: &Result<http::Response<B>, E>) -> bool {
        result
            .as_ref()
            .map_or(true, |response| response.status().is_server_error())
    }
}

impl<R, E, F: Fn(&Result<R, E>) -> bool> FailureClassifier<R, E> for F {
    fn is_failure(&self, result: &Result<R, E>) -> bool {
        self(result)
    }
}

/// A `tower` layer that calls the inner service through a [`CircuitBreaker`]: while the
/// breaker is open, requests fail fast with [`BreakerOpen`](super::BreakerOpen) (boxed, as the service's error is
/// a `BoxError`) and the inner service is not called.
///
/// ```
/// use dtx::breaker::{BreakerConfig, BreakerLayer, BreakerOpen, BreakerRegistry, ServerErrors};
/// use tower::{Layer, Service, service_fn};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let breaker = BreakerRegistry::new().breaker("docs.inventory", || BreakerConfig::new().consecutive_failures(1));
/// let layer = BreakerLayer::new(breaker).failures(ServerErrors);
/// let mut client = layer.layer(service_fn(|_: ()| async {
///     Ok::<_, std::convert::Infallible>(http::Response::builder().status(503).body(()).unwrap())
/// }));
/// assert_eq!(client.call(()).await.unwrap().status(), 503);
/// let refused = client.call(()).await.unwrap_err();
/// assert!(refused.downcast_ref::<BreakerOpen>().is_some());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct BreakerLayer<C = Errors> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl BreakerLayer {
    /// A layer over `breaker` that counts every `Err` as a failure.
    ///
    /// ```
    /// # use dtx::breaker::{BreakerLayer, BreakerRegistry};
    /// let layer = BreakerLayer::new(BreakerRegistry::global().breaker("docs.layer", Default::default));
    /// # let _ = layer;
    /// ```
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: Errors,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Counts as failures the results `classifier` picks ([`ServerErrors`], a closure).
    ///
    /// ```
    /// # use dtx::breaker::{BreakerLayer, BreakerRegistry, ServerErrors};
    /// let layer = BreakerLayer::new(BreakerRegistry::new().breaker("b", Default::default)).failures(ServerErrors);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn failures<D>(self, classifier: D) -> BreakerLayer<D> {
        BreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> tower::Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service [`BreakerLayer`] makes.
///
/// ```
/// # use dtx::breaker::{BreakerLayer, BreakerRegistry, BreakerService};
/// # use tower::Layer;
/// let service: BreakerService<_, _> = BreakerLayer::new(BreakerRegistry::new().breaker("b", Default::default))
///     .layer(tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct BreakerService<S, C = Errors> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C, Request> tower::Service<Request> for BreakerService<S, C>
where
    S: tower::Service<Request>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    C: FailureClassifier<S::Response, S::Error> + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => return Box::pin(std::future::ready(Err::<_, BoxError>(open.into()))),
        };
        let response = self.inner.call(request);
        let classifier = self.classifier.clone();
        Box::pin(async move {
            let result = response.await;
            if classifier.is_failure(&result) {
                permit.failure();
            } else {
                permit.success();
            }
            result.map_err(Into::into)
        })
    }
}

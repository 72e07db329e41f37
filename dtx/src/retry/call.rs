//! Retrying a user's call on the one [`Backoff`].

use super::Backoff;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

impl Backoff {
    /// The default of [`#[dtx::retry]`](macro@crate::retry) for calls to other services: from
    /// 100 ms up to 5 s, with [`Jitter::Full`](super::Jitter::Full) so that many clients retrying
    /// at once spread out.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(dtx::Backoff::CALLS.ceiling(1), Duration::from_millis(100));
    /// ```
    pub const CALLS: Self = Self::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
        super::Jitter::Full,
    );

    /// Retries a call on this backoff: at most `attempts` calls in all (the first included; 0
    /// counts as 1). Every error is retried unless [`Retry::when`] says otherwise; the pause
    /// before retry *n* is [`Backoff::delay`]`(n)`, or longer when [`Retry::retry_after`] asks.
    ///
    /// ```
    /// use dtx::{Backoff, Jitter};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    ///
    /// #[derive(Debug, PartialEq)]
    /// enum Error { Timeout, Declined }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(5), Jitter::Full);
    /// let calls = AtomicU32::new(0);
    /// let result = backoff
    ///     .retry(5)
    ///     .when(|e| *e == Error::Timeout)
    ///     .run(|| async {
    ///         if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(Error::Timeout) } else { Ok("paid") }
    ///     })
    ///     .await;
    /// assert_eq!(result, Ok("paid"));
    /// assert_eq!(calls.load(Ordering::SeqCst), 3);
    ///
    /// let declined = backoff.retry(5).when(|e| *e == Error::Timeout)
    ///     .run(|| async { Err::<(), _>(Error::Declined) }).await;
    /// assert_eq!(declined, Err(Error::Declined), "not retryable: returned at once");
    /// # });
    /// ```
    pub fn retry<E>(&self, attempts: u32) -> Retry<E> {
        Retry {
            backoff: *self,
            attempts,
            when: every_error::<E>,
            hint: no_hint::<E>,
            error: PhantomData,
        }
    }
}

fn every_error<E>(_: &E) -> bool {
    true
}

fn no_hint<E>(_: &E) -> Option<Duration> {
    None
}

/// No error asks for a longer pause than the backoff's.
#[doc(hidden)]
pub fn no_retry_after<E>(_: &E) -> Option<Duration> {
    None
}

/// A call to retry, made by [`Backoff::retry`]: which errors are retried, how long an error
/// asks to wait; then [`run`](Self::run).
///
/// ```
/// # use dtx::Backoff;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let answer = Backoff::CALLS.retry(3).run(|| async { Ok::<_, String>(42) }).await;
/// assert_eq!(answer, Ok(42));
/// # });
/// ```
#[must_use = "a retry does nothing until `run` is awaited"]
pub struct Retry<E, W = fn(&E) -> bool, A = fn(&E) -> Option<Duration>> {
    backoff: Backoff,
    attempts: u32,
    when: W,
    hint: A,
    error: PhantomData<fn(&E)>,
}

impl<E, W, A> std::fmt::Debug for Retry<E, W, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("backoff", &self.backoff)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<E, W, A> Retry<E, W, A>
where
    W: Fn(&E) -> bool,
    A: Fn(&E) -> Option<Duration>,
{
    /// Retries only the errors `retryable` accepts; any other is returned at once.
    ///
    /// ```
    /// # use dtx::Backoff;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let result = Backoff::CALLS.retry(5).when(|e: &&str| *e != "declined")
    ///     .run(|| async { Err::<(), _>("declined") }).await;
    /// assert_eq!(result, Err("declined"));
    /// # });
    /// ```
    pub fn when<W2: Fn(&E) -> bool>(self, retryable: W2) -> Retry<E, W2, A> {
        Retry {
            backoff: self.backoff,
            attempts: self.attempts,
            when: retryable,
            hint: self.hint,
            error: PhantomData,
        }
    }

    /// How long an error asks to wait (an open breaker's
    /// [`retry_after`](crate::breaker::BreakerOpen::retry_after), an HTTP `Retry-After`): the
    /// pause is the longer of that and the backoff's.
    ///
    /// ```
    /// use dtx::breaker::BreakerOpen;
    /// # use dtx::Backoff;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let result = Backoff::CALLS.retry(2)
    ///     .retry_after(|e: &BreakerOpen| Some(e.retry_after()))
    ///     .run(|| async { Err::<(), _>(BreakerOpen::from("payments")) }).await;
    /// assert!(result.is_err());
    /// # });
    /// ```
    pub fn retry_after<A2: Fn(&E) -> Option<Duration>>(self, hint: A2) -> Retry<E, W, A2> {
        Retry {
            backoff: self.backoff,
            attempts: self.attempts,
            when: self.when,
            hint,
            error: PhantomData,
        }
    }

    /// Calls `call` until it succeeds, returns an error that is not retried, or has been called
    /// `attempts` times; returns its last result. Pauses on tokio's timer.
    ///
    /// ```
    /// # use dtx::Backoff;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let result = Backoff::new(Default::default(), Default::default(), dtx::Jitter::Full)
    ///     .retry(3).run(|| async { Err::<(), _>("down") }).await;
    /// assert_eq!(result, Err("down"));
    /// # });
    /// ```
    pub async fn run<T, F, Fut>(self, mut call: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempts = Attempts::new("retry", self.backoff, self.attempts);
        loop {
            let result = call().await;
            match attempts.pause(&result, &self.when, &self.hint) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return result,
            }
        }
    }
}

/// The attempts of one retried call: whether, and after how long, to call again.
#[doc(hidden)]
#[derive(Debug)]
pub struct Attempts {
    function: &'static str,
    backoff: Backoff,
    limit: u32,
    made: u32,
}

impl Attempts {
    /// The first attempt of `function`, which may be made `limit` times in all.
    pub fn new(function: &'static str, backoff: Backoff, limit: u32) -> Self {
        Self {
            function,
            backoff,
            limit: limit.max(1),
            made: 0,
        }
    }

    /// After an attempt ended with `result`: the pause before the next one, or `None` to
    /// return `result`.
    pub fn pause<R: crate::breaker::__private::CallResult>(
        &mut self,
        result: &R,
        retryable: impl Fn(&R::Error) -> bool,
        retry_after: impl Fn(&R::Error) -> Option<Duration>,
    ) -> Option<Duration> {
        self.made += 1;
        let error = result.error()?;
        if self.made >= self.limit || !retryable(error) {
            return None;
        }
        let pause = self
            .backoff
            .delay(self.made)
            .max(retry_after(error).unwrap_or_default());
        tracing::debug!(
            target: "dtx::retry",
            function = self.function,
            attempt = self.made,
            of = self.limit,
            pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            "attempt failed, retrying",
        );
        Some(pause)
    }
}

//! Liveness and readiness endpoints for orchestrators (feature `http`), on the checks of
//! [`HealthCheck`].

use super::{HealthCheck, Problem, Thresholds};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::sync::Arc;

/// The thresholds of each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRoutes {
    /// `GET /health/live`: default [`Thresholds::none`], so it fails only when the database
    /// does not answer (a restart does not fix a dead letter, and must not be asked to).
    pub live: Thresholds,
    /// `GET /health/ready`: default [`Thresholds::default`].
    pub ready: Thresholds,
}

impl Default for HealthRoutes {
    fn default() -> Self {
        Self {
            live: Thresholds::none(),
            ready: Thresholds::default(),
        }
    }
}

/// The body of both endpoints.
#[derive(Serialize)]
struct Body<'a> {
    /// `"ok"` or `"fail"`.
    status: &'static str,
    problems: &'a [Problem],
    /// The whole report, or the error that stopped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<&'a super::HealthReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A router with `GET /health/live` and `GET /health/ready`: `200` with a JSON body when
/// `check` finds no problem under the endpoint's thresholds, `503` with the problems (or the
/// error that stopped the check) otherwise. Merge it into the service's own router.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) {
/// use dtx_postgres::health::{HealthCheck, HealthRoutes, Thresholds, router};
/// use std::time::Duration;
///
/// let routes = HealthRoutes {
///     ready: Thresholds { projection_lag: Some(50_000), ..Thresholds::default() },
///     ..HealthRoutes::default()
/// };
/// let app: axum::Router = router(HealthCheck::new(pool), routes);
/// # }
/// ```
pub fn router<S>(check: HealthCheck, routes: HealthRoutes) -> Router<S> {
    let state = Arc::new((check, routes));
    Router::new()
        .route(
            "/health/live",
            get(
                |State(state): State<Arc<(HealthCheck, HealthRoutes)>>| async move {
                    respond(&state.0, &state.1.live).await
                },
            ),
        )
        .route(
            "/health/ready",
            get(
                |State(state): State<Arc<(HealthCheck, HealthRoutes)>>| async move {
                    respond(&state.0, &state.1.ready).await
                },
            ),
        )
        .with_state(state)
}

async fn respond(check: &HealthCheck, thresholds: &Thresholds) -> Response {
    let (code, body) = match check.report().await {
        Ok(report) => {
            let problems = report.problems(thresholds);
            let code = if problems.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&Body {
                status: if problems.is_empty() { "ok" } else { "fail" },
                problems: &problems,
                report: Some(&report),
                error: None,
            });
            (code, body)
        }
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::to_string(&Body {
                status: "fail",
                problems: &[],
                report: None,
                error: Some(error.to_string()),
            }),
        ),
    };
    match body {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

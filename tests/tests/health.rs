//! The orchestrators' health endpoints (`dtx_postgres::health::router`, feature `http`) on the
//! checks `dtx status` prints: readiness fails while a transaction holds the feed back, and
//! liveness (no thresholds by default) does not.

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx_postgres::health::{HealthCheck, HealthRoutes, Thresholds, router};
use http_body_util::BodyExt as _;
use std::time::Duration;
use tower::Service as _;

async fn get(app: &mut axum::Router, path: &str) -> (http::StatusCode, serde_json::Value) {
    let request = http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.call(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn readiness_fails_while_a_transaction_holds_the_feed() {
    let pool = dtx_postgres::testing::fresh_database(4).await.unwrap();
    let routes = HealthRoutes {
        ready: Thresholds {
            transaction_age: Some(Duration::ZERO),
            ..Thresholds::default()
        },
        ..HealthRoutes::default()
    };
    let mut app = router(HealthCheck::new(pool.clone()), routes);

    let mut held = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *held)
        .await
        .unwrap();
    let (status, body) = get(&mut app, "/health/ready").await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "fail");
    assert_eq!(body["problems"][0]["area"], "feed", "{body}");
    let (status, body) = get(&mut app, "/health/live").await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    held.commit().await.unwrap();

    // An unreachable database fails both.
    let gone = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let mut app = router(HealthCheck::new(gone), HealthRoutes::default());
    let (status, body) = get(&mut app, "/health/live").await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].is_string(), "{body}");
}

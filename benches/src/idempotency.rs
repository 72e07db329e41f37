//! The idempotency rows: `idempotent_request_first` and `idempotent_request_replay`.
//!
//! An in-process axum service (`POST /orders`, a small JSON answer) called through
//! `tower::ServiceExt::oneshot`, with the `Idempotency-Key` layer on a PostgreSQL store, against
//! the same service without the layer. `first` sends a new key each time (claim + complete: two
//! statements, two commits); `replay` sends one key again and again (one read-only statement).

use crate::{BoxError, Options, pair, report};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use dtx::idempotency::Scope;
use dtx::idempotency::http::IdempotencyLayer;
use dtx_postgres::PgIdempotencyStore;
use http_body_util::BodyExt;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt;

const BODY: &str = r#"{"customer":"c-42","items":[{"sku":"book-1","qty":1}],"total":1999}"#;

fn app() -> Router {
    let orders = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/orders",
        post(move |body: String| {
            let orders = Arc::clone(&orders);
            async move {
                let order = orders.fetch_add(1, Ordering::Relaxed) + 1;
                (
                    StatusCode::CREATED,
                    [("content-type", "application/json")],
                    format!(r#"{{"order":{order},"bytes":{}}}"#, body.len()),
                )
            }
        }),
    )
}

async fn call(router: &Router, key: &str) {
    let request = Request::post("/orders")
        .header("x-principal", "bench-client")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(BODY))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = response.into_body().collect().await.expect("body");
    assert!(!body.to_bytes().is_empty());
}

/// `idempotent_request_first` and `idempotent_request_replay`.
pub(crate) async fn idempotency_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    let n = options.iterations;
    let layer = IdempotencyLayer::new(PgIdempotencyStore::new(pool.clone()), |parts| {
        Scope::new(parts.headers.get("x-principal")?.to_str().ok()?).ok()
    });
    let with_layer = app().layer(layer);
    let without = app();
    let run = uuid::Uuid::now_v7();

    if options.wants("idempotent_request_first") {
        let row = pair(
            n,
            async |i| call(&with_layer, &format!("first-{run}-{i}")).await,
            async |i| call(&without, &format!("first-{run}-{i}")).await,
        )
        .await;
        report(
            options,
            "idempotent_request_first",
            "same_service_no_layer",
            &row,
        );
    }

    if options.wants("idempotent_request_replay") {
        let key = format!("replay-{run}");
        call(&with_layer, &key).await;
        let row = pair(
            n,
            async |_| call(&with_layer, &key).await,
            async |_| call(&without, &key).await,
        )
        .await;
        report(
            options,
            "idempotent_request_replay",
            "same_service_no_layer",
            &row,
        );
    }
    Ok(())
}

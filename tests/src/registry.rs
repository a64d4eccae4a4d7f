//! A Confluent Schema Registry stand-in for end-to-end tests that can be taken down: the two
//! endpoints pgtrail uses (`POST /subjects/{subject}/versions`, `GET /schemas/ids/{id}`),
//! answering 503 while down (what a registry behind a load balancer answers when it is away).
//!
//! Owns [`FakeRegistry`]: an HTTP server on 127.0.0.1 on a thread of its own, alive as long as
//! the value. Must not: check schemas (ids are handed out per distinct schema text).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Inner {
    schemas: Mutex<Vec<String>>,
    up: AtomicBool,
    /// Requests answered 503.
    refused: AtomicU64,
}

type Shared = Arc<Inner>;

fn down(s: &Inner) -> Option<(StatusCode, Json<Value>)> {
    if s.up.load(Ordering::SeqCst) {
        return None;
    }
    s.refused.fetch_add(1, Ordering::SeqCst);
    Some((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error_code": 50301, "message": "registry unavailable"})),
    ))
}

async fn register(
    State(s): State<Shared>,
    Path(_subject): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(r) = down(&s) {
        return r;
    }
    let Some(schema) = body["schema"].as_str().map(str::to_owned) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201, "message": "no schema"})),
        );
    };
    let mut schemas = s.schemas.lock().unwrap_or_else(|e| e.into_inner());
    let id = match schemas.iter().position(|x| *x == schema) {
        Some(i) => i + 1,
        None => {
            schemas.push(schema);
            schemas.len()
        }
    };
    (StatusCode::OK, Json(json!({ "id": id })))
}

async fn by_id(State(s): State<Shared>, Path(id): Path<usize>) -> (StatusCode, Json<Value>) {
    if let Some(r) = down(&s) {
        return r;
    }
    let schemas = s.schemas.lock().unwrap_or_else(|e| e.into_inner());
    match id.checked_sub(1).and_then(|i| schemas.get(i)) {
        Some(schema) => (StatusCode::OK, Json(json!({ "schema": schema }))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40403, "message": "Schema not found"})),
        ),
    }
}

/// The registry stand-in.
pub struct FakeRegistry {
    url: String,
    inner: Shared,
}

impl FakeRegistry {
    /// Starts it, up.
    pub fn start() -> FakeRegistry {
        let inner: Shared = Arc::default();
        inner.up.store(true, Ordering::SeqCst);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind registry");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let app = axum::Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/schemas/ids/{id}", get(by_id))
            .with_state(inner.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        });
        FakeRegistry { url, inner }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Takes it down (every request answered 503) or brings it back.
    pub fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::SeqCst);
    }

    /// Requests answered 503 so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::SeqCst)
    }
}

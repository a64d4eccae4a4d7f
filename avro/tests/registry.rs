//! Schema Registry interaction against an in-process HTTP server implementing the endpoints
//! pgtrail uses: `POST /subjects/{subject}/versions` and `GET /schemas/ids/{id}`.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use pgtrail_avro::record::{KNOWN_SCHEMAS, RAW_RECORD_SCHEMA_V1};
use pgtrail_avro::wire::CONFLUENT_MAGIC;
use pgtrail_avro::{Decoder, Encoder, LogFormat, RawRecord, RecordSource, Registry};
use serde_json::{Value, json};

#[derive(Default)]
struct Fake {
    schemas: Vec<String>,
    subjects: HashMap<String, Vec<u32>>,
    calls: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

async fn register(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut f = s.lock().unwrap();
    f.calls.push(format!("POST {subject}"));
    let Some(schema) = body["schema"].as_str().map(str::to_owned) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201})),
        );
    };
    let id = match f.schemas.iter().position(|s| *s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            f.schemas.push(schema);
            f.schemas.len() as u32
        }
    };
    f.subjects.entry(subject).or_default().push(id);
    (StatusCode::OK, Json(json!({ "id": id })))
}

async fn by_id(State(s): State<Shared>, Path(id): Path<u32>) -> (StatusCode, Json<Value>) {
    let mut f = s.lock().unwrap();
    f.calls.push(format!("GET {id}"));
    match f.schemas.get(id as usize - 1) {
        Some(schema) => (StatusCode::OK, Json(json!({ "schema": schema }))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40403, "message": "Schema not found"})),
        ),
    }
}

async fn serve() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/subjects/{subject}/versions", post(register))
        .route("/schemas/ids/{id}", get(by_id))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

fn sample() -> RawRecord {
    RawRecord {
        source: RecordSource {
            server: "replica".into(),
            host: "db2".into(),
            shipper_version: "0.1.0".into(),
            format: LogFormat::Jsonlog,
            source_path: "/log/postgresql.json".into(),
            file_id: "1-2-3".into(),
            log_line_prefix: None,
            log_timezone: Some("UTC".into()),
            kind: pgtrail_avro::RecordKind::Log,
        },
        offset: 17,
        data: "{\"message\":\"AUDIT: SESSION,1,1,READ,SELECT,,,select 'é',<none>\"}\n".into(),
        read_at_micros: 1,
        truncated: true,
        original_length: Some(99_999),
    }
}

#[tokio::test]
async fn register_encode_decode_through_registry() {
    let (url, state) = serve().await;
    let registry = Registry::new(&url).unwrap();
    let id = registry
        .register_envelope("pgaudit.raw.replica")
        .await
        .unwrap();
    let again = registry
        .register_envelope("pgaudit.raw.replica")
        .await
        .unwrap();
    assert_eq!(
        id, again,
        "registering the same schema twice gives the same id"
    );

    assert_ne!(id.log, id.heartbeat, "versions 3 and 4 are two schemas");
    let msg = Encoder::confluent(id).encode_record(&sample());
    assert_eq!(msg[0], CONFLUENT_MAGIC);
    assert_eq!(
        u32::from_be_bytes(msg[1..5].try_into().unwrap()),
        id.log,
        "log records are written with version 3"
    );
    let decoder = Decoder::new(Some(registry));
    assert_eq!(decoder.decode(&msg).await.unwrap(), sample());
    assert_eq!(decoder.decode(&msg).await.unwrap(), sample());
    // A heartbeat is written with version 4, under its own id, and decodes as one.
    let mut beat = sample();
    beat.source.kind = pgtrail_avro::RecordKind::Heartbeat;
    let hb = Encoder::confluent(id).encode_record(&beat);
    assert_eq!(
        u32::from_be_bytes(hb[1..5].try_into().unwrap()),
        id.heartbeat
    );
    assert_eq!(decoder.decode(&hb).await.unwrap(), beat);
    // The decoder also still reads single-object messages.
    let so = Encoder::single_object().encode_record(&sample());
    assert_eq!(decoder.decode(&so).await.unwrap(), sample());

    let calls = state.lock().unwrap().calls.clone();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("GET")).count(),
        2,
        "schema ids are cached (one fetch per id: version 3 and version 4): {calls:?}"
    );
    assert!(
        calls.contains(&"POST pgaudit.raw.replica-value".to_string()),
        "{calls:?}"
    );
}

#[tokio::test]
async fn previous_schema_version_through_registry_resolves() {
    let (url, state) = serve().await;
    // Another (older) shipper registered version 1 of the schema.
    let v1_id = {
        let mut f = state.lock().unwrap();
        f.schemas.push(RAW_RECORD_SCHEMA_V1.to_owned());
        f.schemas.len() as u32
    };
    use apache_avro::types::Value as AV;
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&KNOWN_SCHEMAS[0])
        .build()
        .unwrap()
        .write_value_to_vec(AV::Record(vec![
            ("server".into(), AV::String("primary".into())),
            ("host".into(), AV::String("h".into())),
            ("shipper_version".into(), AV::String("0.0.1".into())),
            ("format".into(), AV::Enum(2, "STDERR".into())),
            ("source_path".into(), AV::String("/p.log".into())),
            ("file_id".into(), AV::String("x".into())),
            ("offset".into(), AV::Long(5)),
            ("data".into(), AV::Bytes(b"LOG:  x\n".to_vec())),
            ("read_at".into(), AV::TimestampMicros(9)),
        ]))
        .unwrap();
    let mut msg = vec![CONFLUENT_MAGIC];
    msg.extend_from_slice(&v1_id.to_be_bytes());
    msg.extend_from_slice(&datum);
    let decoder = Decoder::new(Some(Registry::new(&url).unwrap()));
    let r = decoder.decode(&msg).await.unwrap();
    assert_eq!(r.source.format, LogFormat::Stderr);
    assert_eq!(r.data, b"LOG:  x\n");
    assert!(!r.truncated);
    assert_eq!(
        r.source.log_line_prefix, None,
        "fields of later versions take their defaults"
    );
}

#[tokio::test]
async fn unknown_schema_id_is_an_error() {
    let (url, _state) = serve().await;
    let decoder = Decoder::new(Some(Registry::new(&url).unwrap()));
    let msg = Encoder::confluent(pgtrail_avro::registry::EnvelopeIds {
        log: 4242,
        heartbeat: 4243,
    })
    .encode_record(&sample());
    let err = decoder.decode(&msg).await.unwrap_err();
    assert!(err.to_string().contains("4242"), "{err}");
}

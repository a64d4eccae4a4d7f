//! The audit table on a local directory: schema and column order, partitioning, `txn`
//! versions committed atomically with the data and read back after reopening.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pgtrail_avro::LogFormat;
use processor::audit::outcome::OutcomeTracker;
use processor::audit::{AuditRow, Source};
use processor::delta::{AuditTable, KafkaCoords, LakeRow, arrow_schema, to_batch};
use processor::parse::csvlog::parse_csvlog;
use processor::state::offset_app_id;
use processor::topic_partition::TopicPartition;

fn rows(n: i64, partition: i32, first_offset: i64) -> Vec<LakeRow> {
    let mut tracker = OutcomeTracker::new(std::time::Duration::from_secs(60));
    let mut out: Vec<AuditRow> = Vec::new();
    for i in 0..n {
        let line = format!(
            "2026-11-23 09:10:56.{i:03} UTC,\"postgres\",\"postgres\",20761,\"[local]\",6b040320.5119,{},\"SELECT\",2026-11-23 09:10:56 UTC,5/{i},0,LOG,00000,\"AUDIT: SESSION,{},1,READ,SELECT,,,\"\"SELECT {i}\"\",<none>\",,,,,,,,,\"psql\",\"client backend\",,0\n",
            i + 3,
            i + 1
        );
        let rec = parse_csvlog(&line, None).unwrap();
        let src = Source {
            server: "primary".into(),
            host: "h".into(),
            format: LogFormat::Csvlog,
            path: "/l/a.csv".into(),
            file_id: "f".into(),
            offset: first_offset + i,
            origin: first_offset + i,
        };
        tracker.push(&rec, &src, &line, &mut out);
    }
    tracker.finish(&mut out);
    let ingest: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().unwrap();
    out.into_iter()
        .enumerate()
        .map(|(i, row)| LakeRow {
            row,
            ingest_ts: ingest,
            kafka: KafkaCoords {
                topic: "pgaudit.raw.primary".into(),
                partition,
                offset: first_offset + i as i64,
            },
        })
        .collect()
}

/// The `txn` application id of partition `p` of the primary's topic in group `g`.
fn app_id(p: i32) -> String {
    offset_app_id("g", &TopicPartition::new("pgaudit.raw.primary", p))
}

/// Uploads `batches` and commits them with `txns` as one version.
async fn commit(
    t: &mut AuditTable,
    batches: Vec<deltalake::arrow::record_batch::RecordBatch>,
    txns: &BTreeMap<String, i64>,
    metadata: serde_json::Value,
) -> u64 {
    let adds = t.upload(&batches).await.unwrap();
    t.commit_log(adds, txns, metadata).await.unwrap()
}

fn count_rows(table: &AuditTable) -> usize {
    table
        .file_uris()
        .unwrap()
        .iter()
        .map(|u| {
            let path = u.strip_prefix("file://").unwrap_or(u);
            let f = std::fs::File::open(path).unwrap();
            ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum::<usize>()
        })
        .sum()
}

#[tokio::test]
async fn commits_carry_txn_versions_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().join("pg_archive_sync/primary_postgresql_logs");
    std::fs::create_dir_all(&uri).unwrap();
    let uri = uri.to_string_lossy().into_owned();
    let mut t = AuditTable::open_or_create(&uri).await.unwrap();
    assert_eq!(t.version(), Some(0), "created");
    let p0 = app_id(0);
    let p1 = app_id(1);
    assert_eq!(t.txn_version(&p0).await.unwrap(), None);

    let batch = to_batch(&rows(3, 0, 39)).unwrap();
    assert_eq!(batch.schema(), arrow_schema());
    let v = commit(
        &mut t,
        vec![batch],
        &BTreeMap::from([(p0.clone(), 41)]),
        serde_json::json!({"group": "g", "n": 1}),
    )
    .await;
    assert_eq!(v, 1);
    let v = commit(
        &mut t,
        vec![to_batch(&rows(2, 1, 0)).unwrap()],
        &BTreeMap::from([(p1.clone(), 1)]),
        serde_json::json!({"group": "g", "n": 2}),
    )
    .await;
    assert_eq!(v, 2);

    // A fresh process sees the same versions and rows.
    let t = AuditTable::open_or_create(&uri).await.unwrap();
    assert_eq!(t.version(), Some(2));
    assert_eq!(t.row_count().unwrap(), 5);
    let meta = t.recent_metadata(10).await.unwrap();
    assert_eq!(meta.len(), 2, "newest first");
    assert_eq!(
        (&meta[0].1["group"], &meta[0].1["n"]),
        (&"g".into(), &2.into())
    );
    assert_eq!(t.txn_version(&p0).await.unwrap(), Some(41));
    assert_eq!(t.txn_version(&p1).await.unwrap(), Some(1));
    assert_eq!(count_rows(&t), 5);
    assert!(
        t.file_uris()
            .unwrap()
            .iter()
            .all(|u| u.contains("ingest_date=2026-11-23")),
        "partitioned by ingest_date"
    );
    let names: Vec<String> = arrow_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names.join(","),
        "event_time,db_name,user_name,client_addr,session_id,command_tag,object_type,object_name,statement,audit_class,result,error_code,extra,ingest_ts,src,raw,ingest_date,event_id,kafka_topic,kafka_partition,kafka_offset"
    );
}

#[tokio::test]
async fn one_file_per_ingest_date_plain_long_text_and_same_values_back() {
    use deltalake::arrow::array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use deltalake::parquet::basic::Encoding;
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().to_string_lossy().into_owned();
    let mut t = AuditTable::open_or_create(&uri).await.unwrap();
    // One batch across midnight (the generic, splitting path) and one of a single date.
    let mut rows = rows(4, 0, 0);
    rows[2].ingest_ts = "2026-11-24T00:00:01Z".parse().unwrap();
    rows[3].ingest_ts = rows[2].ingest_ts;
    let mixed = to_batch(&rows).unwrap();
    let single = to_batch(&rows[..2]).unwrap();
    let p0 = app_id(0);
    commit(
        &mut t,
        vec![mixed, single],
        &BTreeMap::from([(p0, 3)]),
        serde_json::json!({}),
    )
    .await;
    let files = t.file_uris().unwrap();
    let mut per_date = BTreeMap::<String, usize>::new();
    let mut raws = Vec::new();
    for u in &files {
        let date = u.split("ingest_date=").nth(1).unwrap()[..10].to_owned();
        let path = u.strip_prefix("file://").unwrap_or(u);
        let b =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
        let rg = b.metadata().row_group(0);
        for c in rg.columns() {
            let name = c.column_path().string();
            let plain = ["raw", "statement", "event_id"].contains(&name.as_str());
            let delta = ["event_time", "ingest_ts", "kafka_offset"].contains(&name.as_str());
            let no_dictionary = plain || delta || name == "extra.key_value.value";
            let no_statistics = plain || name.starts_with("extra.");
            assert_eq!(
                c.statistics().is_none(),
                no_statistics,
                "statistics of {name}"
            );
            assert_eq!(
                c.dictionary_page_offset().is_none(),
                no_dictionary,
                "dictionary of {name}"
            );
            assert_eq!(
                c.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED),
                delta,
                "encodings of {name}"
            );
        }
        for batch in b.build().unwrap() {
            let batch = batch.unwrap();
            *per_date.entry(date.clone()).or_default() += batch.num_rows();
            let raw = batch.column_by_name("raw").unwrap();
            let raw = raw.as_any().downcast_ref::<StringArray>().unwrap();
            let offsets = batch.column_by_name("kafka_offset").unwrap();
            let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
            let times = batch.column_by_name("event_time").unwrap();
            let times = times
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            raws.extend(
                (0..raw.len()).map(|i| (raw.value(i).to_owned(), offsets.value(i), times.value(i))),
            );
        }
    }
    assert_eq!(
        per_date,
        BTreeMap::from([("2026-11-23".to_owned(), 4), ("2026-11-24".to_owned(), 2)])
    );
    // Values back as written, the delta-encoded columns included.
    let written = |r: &LakeRow| {
        (
            r.row.raw().to_owned(),
            r.kafka.offset,
            r.row.event_time.unwrap().timestamp_micros(),
        )
    };
    let mut expected: Vec<_> = rows.iter().map(written).collect();
    expected.extend(rows[..2].iter().map(written));
    raws.sort();
    expected.sort();
    assert_eq!(raws, expected);
    assert_eq!(t.row_count().unwrap(), 6);
}

#[tokio::test]
async fn long_text_is_written_in_small_data_pages() {
    use deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions;
    use deltalake::parquet::file::metadata::PageIndexPolicy;
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().to_string_lossy().into_owned();
    let mut t = AuditTable::open_or_create(&uri).await.unwrap();
    let p0 = app_id(0);
    commit(
        &mut t,
        vec![to_batch(&rows(6000, 0, 0)).unwrap()],
        &BTreeMap::from([(p0, 5999)]),
        serde_json::json!({}),
    )
    .await;
    let files = t.file_uris().unwrap();
    assert_eq!(files.len(), 1);
    let path = files[0].strip_prefix("file://").unwrap_or(&files[0]);
    let b = ParquetRecordBatchReaderBuilder::try_new_with_options(
        std::fs::File::open(path).unwrap(),
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
    )
    .unwrap();
    let meta = b.metadata();
    let raw = meta
        .row_group(0)
        .columns()
        .iter()
        .position(|c| c.column_path().string() == "raw")
        .unwrap();
    let size = meta.row_group(0).column(raw).uncompressed_size() as usize;
    assert!(size > 1 << 20, "raw is {size} bytes: too little to tell");
    let pages = meta.offset_index().unwrap()[0][raw].page_locations().len();
    // Parquet's default (1 MiB pages) would give 1 or 2 pages here.
    assert!(
        pages >= size / (192 << 10),
        "raw: {size} bytes in {pages} pages, expected pages of at most about 128 KiB"
    );
}

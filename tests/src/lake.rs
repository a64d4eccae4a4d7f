//! Reads what the processor wrote, and works out independently (with the `csv` crate, not the
//! processor's parsers) what it should have written.
//!
//! Owns [`Row`], [`read_rows`], [`Expected`] / [`expected_rows`] and [`processor_args`].
//! Must not: use the processor's parsing or outcome code for expectations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use processor::delta::AuditTable;
use processor::status::{read_table, strings};

use crate::pglogs::expected_records;

/// The columns tests look at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// event_id.
    pub event_id: String,
    /// audit_class.
    pub audit_class: String,
    /// result.
    pub result: String,
    /// error_code.
    pub error_code: Option<String>,
    /// statement.
    pub statement: Option<String>,
    /// `extra.audit_logged` is `false`.
    pub unaudited: bool,
    /// src.
    pub src: String,
    /// kafka_partition, kafka_offset.
    pub kafka: (i32, i64),
}

/// A runtime for reading tables from a test's thread.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every row of the table at `uri` (panics when there is none).
pub fn read_rows(uri: &str) -> Vec<Row> {
    read_rows_with(uri, HashMap::new())
}

/// Every row of the table at `uri` opened with deltalake storage `options` (object stores).
pub fn read_rows_with(uri: &str, options: HashMap<String, String>) -> Vec<Row> {
    let rt = runtime();
    let table: AuditTable = rt
        .block_on(AuditTable::open_existing_with(uri, options))
        .expect("open table")
        .unwrap_or_else(|| panic!("no table at {uri}"));
    let batches = rt.block_on(read_table(&table)).expect("read table");
    let col = |n: &str| strings(&batches, n);
    let (ids, classes, results, codes, statements, srcs) = (
        col("event_id"),
        col("audit_class"),
        col("result"),
        col("error_code"),
        col("statement"),
        col("src"),
    );
    let raws = col("raw");
    let mut unaudited = Vec::new();
    let mut kafka = Vec::new();
    for b in &batches {
        use processor::delta::arrow::array::{Array, AsArray};
        use processor::delta::arrow::datatypes::{Int32Type, Int64Type};
        let ps = b
            .column_by_name("kafka_partition")
            .expect("partition")
            .as_primitive::<Int32Type>();
        let os = b
            .column_by_name("kafka_offset")
            .expect("offset")
            .as_primitive::<Int64Type>();
        kafka.extend((0..ps.len()).map(|i| (ps.value(i), os.value(i))));
        let extra = b.column_by_name("extra").expect("extra").as_map();
        for i in 0..extra.len() {
            let entries = extra.value(i);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_string::<i32>();
            unaudited.push(
                (0..keys.len())
                    .any(|j| keys.value(j) == "audit_logged" && values.value(j) == "false"),
            );
        }
    }
    assert_eq!(raws.len(), ids.len());
    (0..ids.len())
        .map(|i| Row {
            event_id: ids[i].clone().expect("event_id"),
            audit_class: classes[i].clone().unwrap_or_default(),
            result: results[i].clone().unwrap_or_default(),
            error_code: codes[i].clone(),
            statement: statements[i].clone(),
            unaudited: unaudited[i],
            src: srcs[i].clone().unwrap_or_default(),
            kafka: kafka[i],
        })
        .collect()
}

/// What a server's table should hold, derived from its csvlog files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Records whose message starts with `AUDIT: `.
    pub audit: usize,
    /// ERROR/FATAL/PANIC records with a statement that pgaudit did not log in that session
    /// and transaction.
    pub unaudited_failures: usize,
    /// SQLSTATEs of every ERROR/FATAL with a statement (audited or not), with counts.
    pub failure_codes: BTreeMap<String, usize>,
}

fn normalize(s: &str) -> String {
    let t = s.trim();
    t.strip_suffix(';').map_or(t, str::trim_end).to_owned()
}

/// The expectation from the csvlog files of `dir` (columns by the `csv` crate).
pub fn expected_rows(dir: &Path) -> Expected {
    let mut e = Expected::default();
    let mut audited: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut errors = Vec::new();
    for r in expected_records(dir) {
        if !r.path.ends_with(".csv") {
            continue;
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(r.data.as_slice());
        let Some(Ok(rec)) = reader.records().next() else {
            panic!("{}@{}: not CSV", r.path, r.offset)
        };
        let col = |i: usize| rec.get(i).unwrap_or("").to_owned();
        let (session, vxid, severity, message, state, query) =
            (col(5), col(9), col(11), col(13), col(12), col(19));
        if let Some(body) = message.strip_prefix("AUDIT: ") {
            e.audit += 1;
            let mut inner = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(body.as_bytes());
            let statement = inner
                .records()
                .next()
                .and_then(Result::ok)
                .and_then(|f| f.get(7).map(normalize))
                .unwrap_or_default();
            audited
                .entry((session, vxid))
                .or_default()
                .insert(statement);
        } else if matches!(severity.as_str(), "ERROR" | "FATAL" | "PANIC") && !query.is_empty() {
            *e.failure_codes.entry(state).or_default() += 1;
            errors.push(((session, vxid), normalize(&query)));
        }
    }
    e.unaudited_failures = errors
        .iter()
        .filter(|(k, q)| !audited.get(k).is_some_and(|s| s.contains(q)))
        .count();
    e
}

/// Statements the generator's workload makes fail: (server, statement, SQLSTATE, whether
/// pgaudit logged it).
pub const WORKLOAD_FAILURES: [(&str, &str, &str, bool); 10] = [
    (
        "primary",
        "INSERT INTO account VALUES (1, 'duplicate', 0)",
        "23505",
        true,
    ),
    // Constant folding fails at planning time, before pgaudit sees the statement.
    ("primary", "SELECT 1/0", "22012", false),
    ("primary", "SELECT * FROM no_such_table", "42P01", false),
    ("primary", "SELEC broken syntax", "42601", false),
    (
        "primary",
        "UPDATE account SET balance = balance / 0 WHERE id = 2",
        "22012",
        true,
    ),
    ("primary", "SELECT 1", "25P02", false),
    ("primary", "SELECT * FROM secret_notes", "42501", false),
    ("primary", "DELETE FROM account", "42501", false),
    (
        "replica",
        "INSERT INTO account VALUES (99, 'replica write', 0)",
        "25006",
        false,
    ),
    (
        "replica",
        "SELECT * FROM missing_on_replica",
        "42P01",
        false,
    ),
];

/// Asserts that the table at `uri` holds exactly the rows of the undisturbed run at
/// `reference` (same event ids, results and SQLSTATEs; no duplicate) and as many audited rows
/// and unaudited failures as the independent count. Prints what is missing per partition.
pub fn assert_exact(uri: &str, reference: &str, expected: &Expected) {
    assert_exact_with(uri, HashMap::new(), reference, expected);
}

/// [`assert_exact`] for a table at `uri` opened with deltalake storage `options` (object
/// stores); the reference is local.
pub fn assert_exact_with(
    uri: &str,
    options: HashMap<String, String>,
    reference: &str,
    expected: &Expected,
) {
    let rows = read_rows_with(uri, options);
    let reference = read_rows(reference);
    let ids: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let unaudited = rows.iter().filter(|r| r.unaudited).count();
    println!(
        "rows {} (unaudited {unaudited}), distinct {}, reference {}, expected {expected:?}",
        rows.len(),
        ids.len(),
        reference.len()
    );
    let mut missing: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &reference {
        if !ids.contains(r.event_id.as_str()) {
            missing.entry(r.kafka.0).or_default().push(r.kafka.1);
        }
    }
    for (p, offsets) in &mut missing {
        offsets.sort();
        println!(
            "missing in partition {p}: {} rows, offsets {:?}..{:?}",
            offsets.len(),
            offsets.first(),
            offsets.last()
        );
    }
    assert!(missing.is_empty(), "rows missing (see above)");
    assert_eq!(ids.len(), rows.len(), "no duplicate");
    assert_eq!(
        (rows.len() - unaudited, unaudited),
        (expected.audit, expected.unaudited_failures),
        "none missing (independent count)"
    );
    let by_id = |v: &[Row]| -> BTreeMap<String, (String, Option<String>)> {
        v.iter()
            .map(|r| (r.event_id.clone(), (r.result.clone(), r.error_code.clone())))
            .collect()
    };
    assert_eq!(
        by_id(&rows),
        by_id(&reference),
        "same rows and outcomes as an undisturbed run"
    );
}

/// Arguments of `pgtrail-processor run` for a test.
pub fn processor_args(brokers: &str, lake: &Path, group: &str, topics: &[&str]) -> Vec<String> {
    vec![
        "run".into(),
        "--brokers".into(),
        brokers.into(),
        "--lake".into(),
        lake.to_string_lossy().into_owned(),
        "--group".into(),
        group.into(),
        "--topics".into(),
        topics.join(","),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--flush-interval".into(),
        "1s".into(),
    ]
}

/// Table URI of `server` in `lake` (default naming).
pub fn table_uri(lake: &Path, server: &str) -> String {
    format!(
        "{}/pg_archive_sync/{server}_postgresql_logs",
        lake.to_string_lossy()
    )
}

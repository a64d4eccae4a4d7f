//! Secured Kafka, end to end with real PostgreSQL logs: the shipper and the processor (its
//! consumer, admin client and dead-letter producer) through a mutual-TLS listener (stunnel in
//! front of Tansu) and with SCRAM against a Tansu that checks credentials. Misconfigurations
//! (no client certificate, an untrusted broker certificate, plaintext to a TLS listener, a
//! wrong password) end with one clear error naming the broker and exit code 4 within seconds.
//! No secret appears in any log line, even with librdkafka's configuration dump turned on.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use pgtrail_tests::lake::{expected_rows, processor_args, read_rows, table_uri};
use pgtrail_tests::pglogs::PgLogs;
use pgtrail_tests::process::{Shipper, run_shipper_once, shipper_args};
use pgtrail_tests::secure::{Certs, ScramBroker, TlsBroker};
use pgtrail_tests::tempdir;

const PASSWORD: &str = "pgtrail-Sup3r-s3cret";
const WRONG: &str = "pgtrail-Wr0ng-guess";

fn with_config(mut args: Vec<String>, config: &Path) -> Vec<String> {
    args.extend(["--config".into(), config.to_string_lossy().into_owned()]);
    args
}

fn tls_toml(ca: &Path, client: Option<&(std::path::PathBuf, std::path::PathBuf)>) -> String {
    let mut t = format!("[kafka.security.tls]\nca_file = {ca:?}\n");
    if let Some((cert, key)) = client {
        t.push_str(&format!("cert_file = {cert:?}\nkey_file = {key:?}\n"));
    }
    t
}

/// Ships the primary's csvlog with `shipper_toml`, processes it with `processor_toml`, and
/// checks the table holds exactly the audit rows an independent count expects.
fn ship_and_process(
    work: &Path,
    logs: &PgLogs,
    brokers: &str,
    shipper_toml: &str,
    processor_toml: &str,
    env: &[(&str, &str)],
) {
    let shipper_cfg = work.join("shipper.toml");
    std::fs::write(&shipper_cfg, shipper_toml).unwrap();
    let args = shipper_args(
        "primary",
        &[format!("{}/*.csv", logs.server_dir("primary").display())],
        brokers,
        &work.join("state"),
        &logs.log_line_prefix(),
    );
    run_shipper_once(
        &with_config(args, &shipper_cfg),
        &work.join("shipper.log"),
        Duration::from_secs(120),
    );
    let processor_cfg = work.join("processor.toml");
    std::fs::write(&processor_cfg, processor_toml).unwrap();
    let lake = work.join("lake");
    let args = with_config(
        processor_args(brokers, &lake, "secure", &["pgaudit.raw.primary"]),
        &processor_cfg,
    );
    let mut a = args.clone();
    a.extend(["--exit-when-idle".into(), "5s".into()]);
    let status =
        Shipper::processor(&a, env, &work.join("processor.log")).wait(Duration::from_secs(300));
    let log = std::fs::read_to_string(work.join("processor.log")).unwrap();
    assert!(status.success(), "processor: {status}\n{log}");
    let expected = expected_rows(&logs.server_dir("primary"));
    let rows = read_rows(&table_uri(&lake, "primary"));
    let unaudited = rows.iter().filter(|r| r.unaudited).count();
    assert!(expected.audit > 10, "{expected:?}");
    assert_eq!(
        (rows.len() - unaudited, unaudited),
        (expected.audit, expected.unaudited_failures),
        "exactly the expected rows through the secured broker"
    );
}

/// Runs `bin` (`pgtrail-shipper` or `pgtrail-processor run`) until it exits; asserts exit
/// code 4 within 30 s with an error naming `broker` and `cause`, and few log lines.
fn refused(
    bin: &str,
    args: Vec<String>,
    env: &[(&str, &str)],
    log: &Path,
    broker: &str,
    cause: &str,
) {
    let started = Instant::now();
    let child = if bin == "pgtrail-shipper" {
        Shipper::spawn(&args, log)
    } else {
        Shipper::processor(&args, env, log)
    };
    let status = child.wait(Duration::from_secs(60));
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(4), "{bin}: exit code\n{text}");
    assert!(
        elapsed < Duration::from_secs(30),
        "{bin}: took {elapsed:?}\n{text}"
    );
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("ERROR"))
        .unwrap_or("");
    assert!(
        last.contains(broker) && last.contains(cause),
        "{bin}: the final error names the broker {broker} and the cause {cause:?}: {last}\n{text}"
    );
    assert!(
        text.lines().count() < 25,
        "{bin}: start-up problems reported once, not repeated:\n{text}"
    );
}

#[test]
fn mutual_tls_carries_records_and_tls_mistakes_exit_4() {
    let work = tempdir("kafka-tls");
    let certs = Certs::generate(&work.path().join("certs"));
    let broker = TlsBroker::start(work.path(), &certs, true);
    let logs = PgLogs::generate(10);
    let mtls = tls_toml(&certs.ca, Some(&certs.client));
    let run = work.path().join("ok");
    std::fs::create_dir_all(&run).unwrap();
    ship_and_process(&run, &logs, &broker.bootstrap, &mtls, &mtls, &[]);

    let case = |name: &str, toml: &str, cause: &str| {
        refused_both(work.path(), &logs, &broker.bootstrap, name, toml, cause);
    };
    case(
        "untrusted",
        &tls_toml(&certs.other_ca, Some(&certs.client)),
        "TLS failed",
    );
    case("no-client-cert", &tls_toml(&certs.ca, None), "TLS failed");
    case("plaintext", "", "another security protocol");
}

#[test]
fn scram_authenticates_wrong_passwords_exit_4_and_secrets_stay_out_of_logs() {
    let work = tempdir("kafka-scram");
    let broker = ScramBroker::start(work.path(), "pgtrail", PASSWORD);
    let logs = PgLogs::generate(10);
    let password_file = work.path().join("kafka-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let shipper_toml = format!(
        "[kafka.security.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"pgtrail\"\npassword_file = {password_file:?}\n"
    );
    // The processor: SCRAM-SHA-256, the password from an environment variable, and
    // librdkafka's configuration and security debug output on.
    let processor_toml = "[kafka]\ndebug = \"conf,security\"\n[kafka.security.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"pgtrail\"\npassword_env = \"PGTRAIL_TEST_KAFKA_PASSWORD\"\n";
    let env = [
        ("PGTRAIL_TEST_KAFKA_PASSWORD", PASSWORD),
        (
            "PGTRAIL_LOG",
            "debug,buoyant_kernel=off,deltalake_core=warn,h2=off,hyper=off",
        ),
    ];
    let run = work.path().join("ok");
    std::fs::create_dir_all(&run).unwrap();
    ship_and_process(
        &run,
        &logs,
        &broker.bootstrap,
        &shipper_toml,
        processor_toml,
        &env,
    );

    let wrong_file = work.path().join("wrong-password");
    std::fs::write(&wrong_file, WRONG).unwrap();
    let wrong = format!(
        "[kafka.security.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"pgtrail\"\npassword_file = {wrong_file:?}\n"
    );
    refused_both(
        work.path(),
        &logs,
        &broker.bootstrap,
        "wrong",
        &wrong,
        "authentication failed",
    );

    // Every log line of every run: neither password.
    let mut lines = 0;
    for entry in walk(work.path()) {
        if entry.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&entry).unwrap_or_default();
            lines += text.lines().count();
            for secret in [PASSWORD, WRONG] {
                assert!(!text.contains(secret), "{} holds a secret", entry.display());
            }
        }
    }
    assert!(lines > 100, "the logs were read ({lines} lines)");
    let processor_log = std::fs::read_to_string(run.join("processor.log")).unwrap();
    assert!(
        processor_log.contains("sasl.password"),
        "librdkafka's configuration dump was logged (with the value redacted)"
    );
}

/// The processor and then the shipper with config `toml` against `broker`: each refused
/// (exit 4, `cause`, in seconds).
fn refused_both(work: &Path, logs: &PgLogs, broker: &str, name: &str, toml: &str, cause: &str) {
    let cfg = work.join(format!("{name}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let lake = work.join("lake-refused");
    let args = processor_args(broker, &lake, name, &["pgaudit.raw.primary"]);
    let log = work.join(format!("{name}-processor.log"));
    refused(
        "pgtrail-processor",
        with_config(args, &cfg),
        &[],
        &log,
        broker,
        cause,
    );
    let args = shipper_args(
        "primary",
        &[format!("{}/*.csv", logs.server_dir("primary").display())],
        broker,
        &work.join(format!("{name}-state")),
        &logs.log_line_prefix(),
    );
    let log = work.join(format!("{name}-shipper.log"));
    refused(
        "pgtrail-shipper",
        with_config(args, &cfg),
        &[],
        &log,
        broker,
        cause,
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

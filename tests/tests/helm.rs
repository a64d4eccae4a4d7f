//! The Helm chart's pods, run here as the pods would run them (issue 21): `helm template` with
//! S3 and SASL/SCRAM values whose secrets come from existing Secrets, then the DaemonSet's
//! shipper, the processor Deployment, the lag monitor Deployment and the `helm test` pod, each
//! started from its rendered command, arguments and mounted files (config from the ConfigMap,
//! secret files where the Secrets are mounted) against a SCRAM Tansu and an S3 lake (moto),
//! with real PostgreSQL logs. Each runs as its security context says (`chart::Confined`): as
//! the image's numeric user, with its groups, no capabilities and a read-only root file
//! system but for its writable volumes; the logs are readable by the chart's
//! `supplementalGroups` alone, the state directory is the init container's `chown`'s. The
//! table must hold exactly the expected rows, the probes the
//! manifests name must answer, and SIGTERM must end each long-running container with 0. A
//! chart key the binary does not know, a secret path that is not mounted, or a probe path the
//! binary does not serve fails here.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pgtrail_tests::WorkDir;
use pgtrail_tests::broker::free_port;
use pgtrail_tests::chart::{Confined, Rendered, http_get, identity};
use pgtrail_tests::lake::{expected_rows, read_rows_with};
use pgtrail_tests::objstore::Moto;
use pgtrail_tests::pglogs::PgLogs;
use pgtrail_tests::process::Shipper;
use pgtrail_tests::secure::ScramBroker;

const PASSWORD: &str = "pgtrail-Ch4rt-s3cret";

fn values(
    scram: &str,
    s3: &str,
    logs: &PgLogs,
    state: &std::path::Path,
    ports: [u16; 3],
) -> String {
    format!(
        r#"kafka:
  brokers: "{scram}"
  sasl:
    enabled: true
    mechanism: SCRAM-SHA-512
    username: pgtrail
    existingSecret: pgtrail-kafka-sasl
lake:
  uri: s3://lake/pgtrail
  s3:
    region: us-east-1
    endpoint: "{s3}"
    allowHttp: true
    accessKeyId: testing
    existingSecret: pgtrail-s3
processor:
  metricsPort: {}
  config:
    flush_interval_ms: 1000
lag:
  metricsPort: {}
  config:
    interval: 2s
shipper:
  metricsPort: {}
  config:
    log_line_prefix: "{}"
    topic_partitions: 2
  daemonset:
    enabled: true
    server: primary
    logDir: "{}"
    logs: ["*.csv"]
    stateDir: "{}"
    supplementalGroups: [{LOG_GROUP}]
"#,
        ports[0],
        ports[1],
        ports[2],
        logs.log_line_prefix(),
        logs.server_dir("primary").display(),
        state.display(),
    )
}

/// The group that may read the PostgreSQL logs (the chart's `supplementalGroups`).
const LOG_GROUP: u32 = 4242;

/// What a node gives the pods: the logs readable by [`LOG_GROUP`] alone (PostgreSQL's
/// `log_file_mode = 0640`), the shipper's hostPath state directory handed to its user by the
/// DaemonSet's init container (its rendered command, run here), and the test's directory open
/// to every user (it stands for the node's file system, the image and the pods' mounts).
fn confine_like_a_node(work: &Path, logs: &PgLogs, state: &Path, rendered: &Rendered) {
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{program} {args:?}");
    };
    let root = logs.dir.path().to_str().unwrap();
    run("chgrp", &["-R", &LOG_GROUP.to_string(), root]);
    run("chmod", &["-R", "g+rX,o-rwx", root]);
    run("chmod", &["755", work.to_str().unwrap()]);
    let init = &rendered.get("DaemonSet", "pgtrail-shipper")["spec"]["template"]["spec"]["initContainers"]
        [0];
    let command: Vec<&str> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = init["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(command.last(), Some(&mount), "{command:?}");
    std::fs::create_dir_all(state).unwrap();
    let here: Vec<&str> = command[1..command.len() - 1]
        .iter()
        .copied()
        .chain([state.to_str().unwrap()])
        .collect();
    run(command[0], &here);
}

/// Waits up to `secs` for `probe` to answer 200 on `port`.
fn wait_ok(port: u16, probe: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if http_get(port, probe).is_some_and(|(code, _)| code == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{probe} on {port} did not answer 200"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_charts_pods_run_the_pipeline() {
    let work = WorkDir::new("helm");
    let logs = PgLogs::generate(30);
    let scram = ScramBroker::start(work.path(), "pgtrail", PASSWORD);
    let moto = Moto::start(&work.path().join("moto.log"));
    let ports = [free_port(), free_port(), free_port()];
    let values_file = work.path().join("values.yaml");
    let state = work.path().join("host-state");
    std::fs::write(
        &values_file,
        values(&scram.bootstrap, &moto.endpoint, &logs, &state, ports),
    )
    .unwrap();
    let rendered = Rendered::render(&values_file);
    // The Secrets an operator would have created (`kubectl create secret generic`).
    let secrets: HashMap<&str, HashMap<&str, &str>> = [
        ("pgtrail-kafka-sasl", [("password", PASSWORD)].into()),
        ("pgtrail-s3", [("secret-access-key", "testing")].into()),
    ]
    .into();
    confine_like_a_node(work.path(), &logs, &state, &rendered);
    let image = work.path().join("image");
    let start = |kind: &str, name: &str, container: &str| {
        let pod = rendered.pod(kind, name, container);
        let laid = pod.lay_out(
            &rendered,
            &work.path().join(format!("pod-{name}")),
            &secrets,
        );
        let log = work.path().join(format!("{name}.log"));
        let run_as = pod.run_as();
        assert!(
            run_as.uid != 0 && run_as.read_only_root && run_as.no_new_privs,
            "{name}: {run_as:?}"
        );
        let confined = Confined::new(&laid, &run_as, &image);
        // Without a passwd entry for the user, the kubelet sets HOME to /.
        let p = Shipper::spawn_program(&confined.program, &confined.args, &[("HOME", "/")], &log);
        (pod, p)
    };

    let (shipper_pod, shipper) = start("DaemonSet", "pgtrail-shipper", "pgtrail-shipper");
    let (processor_pod, processor) = start("Deployment", "pgtrail-processor", "processor");
    let (lag_pod, lag) = start("Deployment", "pgtrail-lag", "lag");
    let probes = |pod: &pgtrail_tests::chart::Pod| -> Vec<String> {
        ["livenessProbe", "readinessProbe", "startupProbe"]
            .iter()
            .filter_map(|p| {
                pod.container[*p]["httpGet"]["path"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    };
    let processor_port = processor_pod.port("metrics");
    for probe in probes(&processor_pod) {
        wait_ok(processor_port, &probe, 120);
    }
    for probe in probes(&shipper_pod) {
        wait_ok(shipper_pod.port("metrics"), &probe, 60);
    }

    // Each runs as the image's numeric user, its root file system read-only (checked once
    // its probes answer: the binary, not the wrapper that confines it).
    for (p, pod) in [
        (&shipper, &shipper_pod),
        (&processor, &processor_pod),
        (&lag, &lag_pod),
    ] {
        assert_eq!(identity(p.pid()), (pod.run_as().uid, true));
    }
    let table = "s3://lake/pgtrail/pg_archive_sync/primary_postgresql_logs";
    let expected = expected_rows(&logs.server_dir("primary"));
    assert!(expected.audit > 10, "{expected:?}");
    let deadline = Instant::now() + Duration::from_secs(240);
    let exists = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(processor::delta::AuditTable::open_existing_with(
            table,
            moto.options(),
        ))
        .is_ok_and(|t| t.is_some())
    };
    let rows = loop {
        if exists() {
            let rows = read_rows_with(table, moto.options());
            let unaudited = rows.iter().filter(|r| r.unaudited).count();
            if (rows.len() - unaudited, unaudited) == (expected.audit, expected.unaudited_failures)
            {
                break rows;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the table did not get the expected rows; processor log:\n{}",
            processor.log_text()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "no duplicate rows");

    // The lag monitor serves its metrics from the same config.
    let lag_port = lag_pod.port("metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(lag_port, "/metrics").is_some_and(|(_, b)| b.contains("pgtrail_lag_")) {
        assert!(
            Instant::now() < deadline,
            "lag metrics; log:\n{}",
            lag.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // `helm test`'s pod: status against the lake and the broker.
    let (_, status) = start("Pod", "pgtrail-test-status", "status");
    let code = status.wait(Duration::from_secs(120));
    assert!(code.success(), "helm test pod: {code}");

    for (what, p) in [("processor", processor), ("lag", lag), ("shipper", shipper)] {
        let log = p.log.clone();
        let code = p.terminate(Duration::from_secs(90));
        assert!(
            code.success(),
            "{what} on SIGTERM: {code}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

//! `pgtrail-mock-broker TOPIC:PARTITIONS...`: a librdkafka mock cluster (one broker) for tests
//! that need what Tansu cannot do: it keeps at most 5 MB per partition, dropping the oldest
//! records (the low watermark moves: retention on demand). Prints the bootstrap address, then
//! serves until its standard input closes or it is killed.

use std::io::{Read, Write};

fn main() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for t in std::env::args().skip(1) {
        let (name, partitions) = t.split_once(':').unwrap_or((&t, "1"));
        cluster
            .create_topic(name, partitions.parse().expect("partitions"), 1)
            .expect("create topic");
    }
    println!("{}", cluster.bootstrap_servers());
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

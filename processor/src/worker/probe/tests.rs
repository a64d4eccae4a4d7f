//! Unit tests of [`OffsetProbe`]: brokers that skip offsets or send them again, recreated
//! and truncated topics, the anchor.

use super::*;

fn tp() -> TopicPartition {
    TopicPartition::new("t", 0)
}

/// The hash of the bytes of the message at `offset` of the topic as it was read.
fn hash_of(offset: i64) -> u64 {
    offset as u64 * 31 + 7
}

fn anchor(offset: i64) -> Option<Anchor> {
    Some(Anchor {
        offset,
        hash: hash_of(offset),
    })
}

/// The message at `offset` of the topic as it was read, last handled `last`.
fn check(p: &mut OffsetProbe, offset: i64, last: Option<i64>) -> Verdict {
    p.check(
        &tp(),
        offset,
        || hash_of(offset),
        last,
        last.and_then(anchor),
    )
}

/// The message at `offset` of another topic of the same name.
fn check_other(p: &mut OffsetProbe, offset: i64, last: Option<i64>) -> Verdict {
    p.check(&tp(), offset, || 1234, last, last.and_then(anchor))
}

/// Kafka: positioned at the anchor (the version), which is verified and skipped.
#[test]
fn a_resume_reads_the_anchor_again_and_goes_on_after_it() {
    let (mut p, at) = OffsetProbe::resuming(Some(4999), anchor(4999));
    assert_eq!(at, 4999);
    assert_eq!(check(&mut p, 4999, Some(4999)), Verdict::Skip);
    assert_eq!(check(&mut p, 5000, Some(4999)), Verdict::Handle);
    assert_eq!(check(&mut p, 5001, Some(5000)), Verdict::Handle);
}

/// Item 10 of issue 17: a topic recreated and grown past the table's position: the message
/// at the anchor is another one.
#[test]
fn another_message_at_the_anchor_is_a_recreated_topic() {
    let (mut p, _) = OffsetProbe::resuming(Some(4999), anchor(4999));
    let v = check_other(&mut p, 4999, Some(4999));
    assert_eq!(v, Verdict::Reset { position: 5000 });
}

/// Item 10 of issue 17: a topic recreated or truncated below the table's position: the
/// broker moves the consumer back to its earliest offset on its own, and the topic ends
/// before the anchor.
#[test]
fn a_topic_that_ends_before_the_anchor_is_a_truncated_topic() {
    let (mut p, at) = OffsetProbe::resuming(Some(500), anchor(500));
    assert_eq!(at, 500);
    for o in 0..10 {
        assert_eq!(check_other(&mut p, o, Some(500)), Verdict::Skip);
    }
    assert_eq!(
        p.idle_after(10, Some(500), Duration::ZERO),
        Some(Verdict::Seek(9))
    );
    assert_eq!(check_other(&mut p, 9, Some(500)), Verdict::Skip);
    assert_eq!(
        p.idle_after(10, Some(500), Duration::ZERO),
        Some(Verdict::Reset { position: 501 })
    );
}

/// A message below where the partition stood (a broker sending a batch again, or moving the
/// position back on its own) makes the partition verify its last message.
#[test]
fn a_message_sent_again_is_skipped_and_the_topic_verified() {
    let (mut p, _) = OffsetProbe::resuming(None, None);
    for o in 0..5 {
        assert_eq!(check(&mut p, o, (o > 0).then(|| o - 1)), Verdict::Handle);
    }
    assert_eq!(check(&mut p, 2, Some(4)), Verdict::Skip, "sent again");
    assert_eq!(check(&mut p, 3, Some(4)), Verdict::Skip);
    assert_eq!(check(&mut p, 4, Some(4)), Verdict::Skip, "verified");
    assert_eq!(check(&mut p, 5, Some(4)), Verdict::Handle);
    // The same on a recreated topic: another message where the last one was.
    assert_eq!(check_other(&mut p, 0, Some(5)), Verdict::Skip);
    assert_eq!(
        check_other(&mut p, 5, Some(5)),
        Verdict::Reset { position: 6 }
    );
}

/// Tansu: positioned inside a batch, the next batch arrives: read again from earlier, skip
/// what was handled, verify the anchor, handle from the version on.
#[test]
fn a_resume_answered_with_the_next_batch_reads_again_from_earlier() {
    let (mut p, _) = OffsetProbe::resuming(Some(4999), anchor(4990));
    assert_eq!(check(&mut p, 5100, Some(4999)), Verdict::Seek(3990));
    assert_eq!(check(&mut p, 4000, Some(4999)), Verdict::Skip);
    assert_eq!(check(&mut p, 4990, Some(4999)), Verdict::Skip);
    assert_eq!(check(&mut p, 4999, Some(4999)), Verdict::Skip);
    assert_eq!(check(&mut p, 5000, Some(4999)), Verdict::Handle);
}

/// Each seek goes 8 times further back, down to 0; from there what comes is accepted (the
/// anchor cannot be verified, records were lost to retention).
#[test]
fn seeks_go_further_back_until_the_start() {
    let (mut p, _) = OffsetProbe::resuming(Some(19_999), anchor(19_999));
    assert_eq!(check(&mut p, 20_500, Some(19_999)), Verdict::Seek(18_999));
    assert_eq!(check(&mut p, 20_500, Some(19_999)), Verdict::Seek(11_999));
    assert_eq!(check(&mut p, 20_500, Some(19_999)), Verdict::Seek(0));
    assert_eq!(check(&mut p, 20_500, Some(19_999)), Verdict::Handle);
}

/// A gap mid-stream is probed once; still there after re-reading, it is accepted.
#[test]
fn a_gap_is_probed_once_then_accepted() {
    let (mut p, _) = OffsetProbe::resuming(None, None);
    assert_eq!(check(&mut p, 0, None), Verdict::Handle);
    assert_eq!(check(&mut p, 1, Some(0)), Verdict::Handle);
    assert_eq!(check(&mut p, 9, Some(1)), Verdict::Seek(0));
    assert_eq!(check(&mut p, 0, Some(1)), Verdict::Skip);
    assert_eq!(check(&mut p, 1, Some(1)), Verdict::Skip);
    assert_eq!(check(&mut p, 9, Some(1)), Verdict::Handle, "a real gap");
    assert_eq!(
        check(&mut p, 30, Some(9)),
        Verdict::Seek(0),
        "a new gap is probed"
    );
}

/// Tansu answers nothing from inside its last batch and reports the batch's first offset +
/// 1 as the high watermark: a partition that receives nothing is nudged there.
#[test]
fn a_partition_that_receives_nothing_is_nudged_to_the_reported_end() {
    let (mut p, at) = OffsetProbe::resuming(Some(250), anchor(250));
    assert_eq!(at, 250);
    assert!(p.waiting());
    assert_eq!(
        p.idle_after(201, Some(250), Duration::ZERO),
        Some(Verdict::Seek(200))
    );
    assert_eq!(check(&mut p, 200, Some(250)), Verdict::Skip);
    assert_eq!(check(&mut p, 250, Some(250)), Verdict::Skip);
    assert_eq!(check(&mut p, 251, Some(250)), Verdict::Handle);
    assert!(!p.waiting());
    assert_eq!(p.idle_after(201, Some(251), Duration::ZERO), None);
    // A broker reporting more than is wanted is only slow: no nudge.
    let (mut p, _) = OffsetProbe::resuming(Some(250), anchor(250));
    assert_eq!(p.idle_after(400, Some(250), Duration::ZERO), None);
    // Not before the nudge delay.
    let (mut p, _) = OffsetProbe::resuming(Some(250), anchor(250));
    assert_eq!(p.idle(201, Some(250)), None);
}

/// Review of issue 17: a partition paused while it is positioned (its table's commit in
/// flight, the Schema Registry away) receives nothing because it asks for nothing. It was
/// nudged to the broker's end all the same, and then, nothing arriving after the nudge either,
/// taken for a truncated topic: the processor stopped with exit 6 on a healthy topic.
#[test]
fn a_paused_partition_is_never_taken_for_a_truncated_topic() {
    let (mut p, _) = OffsetProbe::resuming(Some(250), anchor(250));
    p.set_paused(true);
    assert_eq!(p.idle_after(201, Some(250), Duration::ZERO), None);
    assert!(!p.nudge_due());
    p.set_paused(false);
    assert_eq!(p.idle(201, Some(250)), None, "the nudge delay starts again");
    assert_eq!(
        p.idle_after(201, Some(250), Duration::ZERO),
        Some(Verdict::Seek(200))
    );
    assert_eq!(check(&mut p, 200, Some(250)), Verdict::Skip);
    // Paused again before the anchor came: still no verdict on the topic.
    p.set_paused(true);
    assert_eq!(p.idle_after(201, Some(250), Duration::ZERO), None);
    p.set_paused(false);
    assert_eq!(check(&mut p, 250, Some(250)), Verdict::Skip);
    assert_eq!(check(&mut p, 251, Some(250)), Verdict::Handle);
}

/// Nothing at or below the last handled offset is handled twice; a fresh partition handles
/// what comes.
#[test]
fn nothing_is_handled_twice() {
    let (mut p, at) = OffsetProbe::resuming(None, None);
    assert_eq!(at, 0);
    assert_eq!(check(&mut p, 0, None), Verdict::Handle);
    assert_eq!(check(&mut p, 1, Some(0)), Verdict::Handle);
    assert_eq!(check(&mut p, 1, Some(1)), Verdict::Skip);
}

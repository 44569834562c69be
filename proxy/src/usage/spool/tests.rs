use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::*;

fn cfg(dir: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        max_bytes,
        fsync_interval_ms: 200,
    }
}

fn event(i: usize) -> (Vec<u8>, Vec<u8>) {
    (
        format!("acct_{}", i % 3).into_bytes(),
        format!("event-{i:05}-{}", "x".repeat(40)).into_bytes(),
    )
}

fn append_n(spool: &mut Spool, range: std::ops::Range<usize>) {
    for i in range {
        let (k, v) = event(i);
        spool.append(&k, &v).unwrap();
    }
}

fn values(batch: &Batch) -> Vec<String> {
    batch
        .events
        .iter()
        .map(|e| String::from_utf8(e.value[..11].to_vec()).unwrap())
        .collect()
}

fn segment_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn appends_read_back_in_order_and_ack_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
    append_n(&mut spool, 0..10);
    assert_eq!(spool.pending_events(), 10);

    let b = spool.read_batch(4).unwrap();
    assert_eq!(
        values(&b),
        ["event-00000", "event-00001", "event-00002", "event-00003"]
    );
    assert_eq!(b.events[1].key, b"acct_1");
    // Reading again without ack yields the same batch.
    assert_eq!(values(&spool.read_batch(4).unwrap()), values(&b));
    spool.ack(&b).unwrap();
    assert_eq!(spool.pending_events(), 6);

    let rest = spool.read_batch(100).unwrap();
    assert_eq!(rest.events.len(), 6);
    assert_eq!(values(&rest)[0], "event-00004");
    spool.ack(&rest).unwrap();
    assert_eq!(spool.pending_events(), 0);
    assert_eq!(spool.pending_bytes(), 0);
    assert!(spool.read_batch(10).unwrap().events.is_empty());

    // Appending after a full drain starts a fresh segment and keeps working.
    append_n(&mut spool, 10..12);
    assert_eq!(
        values(&spool.read_batch(10).unwrap()),
        ["event-00010", "event-00011"]
    );
}

#[test]
fn reopen_replays_what_was_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
        append_n(&mut spool, 0..5);
        let b = spool.read_batch(2).unwrap();
        spool.ack(&b).unwrap();
        // An unacknowledged read does not consume.
        let _ = spool.read_batch(2).unwrap();
    }
    let mut spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.pending_events(), 3);
    let b = spool.read_batch(10).unwrap();
    assert_eq!(values(&b), ["event-00002", "event-00003", "event-00004"]);
    append_n(&mut spool, 5..6);
    assert_eq!(spool.pending_events(), 4);
    spool.ack(&b).unwrap();
    assert_eq!(values(&spool.read_batch(10).unwrap()), ["event-00005"]);
}

#[test]
fn a_second_process_cannot_share_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
    let err = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap_err();
    assert!(matches!(err, SpoolError::Locked(_)), "{err}");
    drop(first);
    Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
}

#[test]
fn torn_tail_is_truncated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
        append_n(&mut spool, 0..3);
    }
    let seg = last_segment(dir.path());
    let good_len = fs::metadata(&seg).unwrap().len();
    // A crash mid-write: header promising 100 bytes, only 10 written.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&[0xAB; 14]).unwrap();
    drop(f);

    let mut spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.pending_events(), 3);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    append_n(&mut spool, 3..4);
    let b = spool.read_batch(10).unwrap();
    assert_eq!(
        values(&b),
        ["event-00000", "event-00001", "event-00002", "event-00003"]
    );
}

#[test]
fn corrupt_last_record_is_dropped_by_crc() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
        append_n(&mut spool, 0..3);
    }
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xFF;
    fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.pending_events(), 2);
    assert_eq!(
        values(&spool.read_batch(10).unwrap()),
        ["event-00000", "event-00001"]
    );
}

#[test]
fn size_limit_refuses_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&cfg(dir.path(), 2_000)).unwrap();
    let mut stored = 0;
    let mut refused = 0;
    for i in 0..100 {
        let (k, v) = event(i);
        match spool.append(&k, &v) {
            Ok(()) => stored += 1,
            Err(SpoolError::Full { max_bytes }) => {
                assert_eq!(max_bytes, 2_000);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        stored > 10 && refused > 50,
        "{stored} stored, {refused} refused"
    );
    assert!(spool.disk_bytes() <= 2_000);
    // Acknowledging frees room again.
    let b = spool.read_batch(1000).unwrap();
    assert_eq!(b.events.len(), stored);
    spool.ack(&b).unwrap();
    let (k, v) = event(0);
    spool.append(&k, &v).unwrap();
}

#[test]
fn segments_are_deleted_only_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    // 4096-byte segments (the minimum): ~66-byte records → ~62 per segment.
    let mut spool = Spool::open(&cfg(dir.path(), 32 * 1024)).unwrap();
    append_n(&mut spool, 0..300);
    let files = segment_files(dir.path());
    assert!(files >= 4, "{files} segments");

    let b = spool.read_batch(150).unwrap();
    assert_eq!(segment_files(dir.path()), files, "a read deletes nothing");
    spool.ack(&b).unwrap();
    let after = segment_files(dir.path());
    assert!(after < files && after > 0, "{files} -> {after}");
    assert_eq!(spool.pending_events(), 150);

    // Reopen: the cursor file keeps the position inside the partly consumed segment.
    drop(spool);
    let mut spool = Spool::open(&cfg(dir.path(), 32 * 1024)).unwrap();
    assert_eq!(spool.pending_events(), 150);
    let b = spool.read_batch(1000).unwrap();
    assert_eq!(values(&b)[0], "event-00150");
    spool.ack(&b).unwrap();
    assert_eq!(segment_files(dir.path()), 0);
    assert_eq!(spool.disk_bytes(), 0);
}

#[test]
fn skipping_a_corrupt_segment_reports_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&cfg(dir.path(), 1 << 20)).unwrap();
    append_n(&mut spool, 0..5);
    // Corrupt the second record on disk while the spool is open.
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let second = bytes.len() / 5 + 12;
    bytes[second] ^= 0xFF;
    fs::write(&seg, &bytes).unwrap();

    let err = spool.read_batch(10).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    assert_eq!(spool.skip_corrupt_segment().unwrap(), 5);
    assert_eq!(spool.pending_events(), 0);
    append_n(&mut spool, 5..6);
    assert_eq!(values(&spool.read_batch(10).unwrap()), ["event-00005"]);
}

#[test]
fn config_checks_name_the_spool_keys() {
    let yaml = |spool: &str| {
        format!(
            "models: [{{ name: m, base_url: 'http://127.0.0.1:1/v1' }}]\n\
             api_keys: [{{ id: k, secret: sk-test-123456, account_id: a }}]\n\
             kafka: {{ brokers: '127.0.0.1:9092', spool: {spool} }}\n"
        )
    };
    let check = |spool: &str| {
        crate::config::ProxyConfig::from_yaml(&yaml(spool), "t")
            .and_then(|c| c.validate())
            .map_err(|e| e.to_string())
    };
    check("{ dir: /tmp/x }").unwrap();
    let err = check("{ max_bytes: 1000 }").unwrap_err();
    assert!(err.contains("kafka.spool.max_bytes"), "{err}");
    let err = check("{ dir: '' }").unwrap_err();
    assert!(err.contains("kafka.spool.dir"), "{err}");
    let err = check("{ fsync_interval_ms: 600000 }").unwrap_err();
    assert!(err.contains("kafka.spool.fsync_interval_ms"), "{err}");
    check("{ enabled: false, dir: '' }").unwrap();
    let err = check("{ dirr: /tmp/x }").unwrap_err();
    assert!(err.contains("dirr"), "{err}");
}

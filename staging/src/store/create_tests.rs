//! Which sets may create new files under their names: only those that
//! skipped the journal (an open mirror's); a journaled set, a set replayed
//! from the journal and every replication set make them unnamed.

use std::sync::{Arc, Mutex};

use super::tests::{cs, whole};
use super::*;
use standin_link::message::MirrorMode;

/// A [`DirTarget`] that reports how it created files.
struct Counting {
    inner: DirTarget,
    created: Arc<Mutex<(u64, u64)>>,
}

impl ApplyTarget for Counting {
    fn apply(&mut self, record: &Record) -> Result<(), ApplyError> {
        self.apply_hashed(record, None)
    }
    fn apply_hashed(&mut self, r: &Record, sha: Option<&Digest32>) -> Result<(), ApplyError> {
        let res = self.inner.apply_hashed(r, sha);
        *self.created.lock().unwrap() = self.inner.files_created();
        res
    }
    fn content_digest(&mut self, path: &[u8]) -> Result<Option<Digest32>, ApplyError> {
        self.inner.content_digest(path)
    }
    fn sync(&mut self) -> Result<(), ApplyError> {
        self.inner.sync()
    }
    fn available(&mut self) -> Result<(u64, Option<u64>), ApplyError> {
        self.inner.available()
    }
    fn new_files_named(&mut self, on: bool) {
        self.inner.new_files_named(on)
    }
    fn record_applied(&mut self, on: bool) {
        self.inner.record_applied(on)
    }
    fn take_applied(&mut self) -> Option<Vec<crate::apply::applied::Applied>> {
        self.inner.take_applied()
    }
}

fn open(dir: &Path, created: &Arc<Mutex<(u64, u64)>>) -> Store {
    let created = created.clone();
    let factory: TargetFactory = Box::new(move |root: &Path| {
        let mut inner = DirTarget::open(root)?;
        inner.allow_named_create(true);
        Ok(Box::new(Counting {
            inner,
            created: created.clone(),
        }) as Box<dyn ApplyTarget>)
    });
    let mut s = Store::open_with(dir, factory).unwrap();
    s.bind_source("src", Fingerprint([0; 32])).unwrap();
    s
}

#[test]
fn only_sets_that_skipped_the_journal_create_new_files_under_their_names() {
    let d = tempfile::tempdir().unwrap();
    let created = Arc::new(Mutex::new((0, 0)));
    let mut s = open(d.path(), &created);
    let count = || *created.lock().unwrap();
    s.mirror_start(&MirrorStart {
        mirror_id: "m".into(),
        mode: MirrorMode::Full,
        total_entries: 6,
        total_bytes: 6,
        first_seq: 1,
    })
    .unwrap();
    // An open mirror's set of whole files: no journal, named.
    let (c, raw) = cs(1, vec![whole("a", b"1"), whole("b", b"2")]);
    assert!(s.unjournaled(&c));
    s.receive(&raw, &c).unwrap();
    assert_eq!(count(), (2, 0));
    // The same mirror's set with a `Link` record (replication's) is
    // journaled: unnamed.
    let (c, raw) = cs(
        2,
        vec![
            whole("c", b"3"),
            Record::Link {
                existing: b"a".to_vec(),
                new: b"d".to_vec(),
            },
        ],
    );
    assert!(!s.unjournaled(&c));
    s.receive(&raw, &c).unwrap();
    assert_eq!(count(), (2, 1));
    // A set of whole files found in the journal after a crash (journaled
    // before, say) is replayed from there: unnamed.
    let (c, raw) = cs(3, vec![whole("e", b"5")]);
    assert!(s.unjournaled(&c));
    drop(s);
    std::fs::write(d.path().join("journal").join(journal_name(3, "cs")), &raw).unwrap();
    let mut s = open(d.path(), &created);
    assert_eq!(s.state().last_applied_seq, 3);
    assert_eq!(count(), (0, 1), "the replayed set's file (a new target)");
    // After the mirror ends, replication sets are journaled: unnamed.
    s.mirror_end(&MirrorEnd {
        mirror_id: "m".into(),
        last_seq: 3,
        root_digest: None,
    })
    .unwrap();
    let (c, raw) = cs(4, vec![whole("f", b"6")]);
    assert!(!s.unjournaled(&c));
    s.receive(&raw, &c).unwrap();
    assert_eq!(count(), (0, 2));
    let root = s.staging_root("src");
    for (name, data) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "1"),
        ("e", "5"),
        ("f", "6"),
    ] {
        assert_eq!(
            std::fs::read_to_string(root.join(name)).unwrap(),
            data,
            "{name}"
        );
    }
}

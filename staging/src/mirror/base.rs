//! Whether the target accepts a source's sparse-mirror base
//! ([`MirrorBase`]): its replica must still be exactly what that mirror
//! left. The last proven ledger is tagged with the mirror that proved it
//! (`mirror-ledger.prev.base` beside it), so a ledger of another mirror is
//! never carried.
//!
//! [`MirrorBase`]: standin_link::message::MirrorBase

use std::path::{Path, PathBuf};

use standin_link::message::MirrorBase;

use crate::state::TargetState;

/// The tag of the last proven ledger of the replica at `staging_root`.
pub fn tag_path(staging_root: &Path) -> PathBuf {
    staging_root.with_file_name("mirror-ledger.prev.base")
}

fn tag_text(mirror_id: &str, root_digest: &str) -> String {
    format!("{mirror_id}\n{root_digest}\n")
}

/// The last proven ledger belongs to no mirror (a mirror's end is about
/// to replace or drop it).
pub fn forget(staging_root: &Path) {
    let _ = std::fs::remove_file(tag_path(staging_root));
}

/// The last proven ledger is the one of the complete mirror `mirror_id`
/// whose replica had `root_digest`.
pub fn remember(staging_root: &Path, mirror_id: &str, root_digest: &str) {
    if !super::ledger::prev_path_for(staging_root).exists() {
        return;
    }
    let tag = tag_path(staging_root);
    if let Err(e) =
        standin_builder::durable::write_atomic(&tag, tag_text(mirror_id, root_digest).as_bytes())
    {
        tracing::warn!(
            "saving {}: {e}; the next mirror compares the whole tree",
            tag.display()
        );
    }
}

/// `Ok` when the replica at `staging_root` is still what the mirror `b`
/// left: that mirror completed with that root digest, nothing was applied
/// since, and the last proven ledger is that mirror's. Otherwise why not.
pub fn accept(state: &TargetState, staging_root: &Path, b: &MirrorBase) -> Result<(), String> {
    let Some(m) = state.mirror.as_ref() else {
        return Err("no mirror is recorded".into());
    };
    if m.mirror_id != b.mirror_id {
        return Err(format!("the last mirror here is {}", m.mirror_id));
    }
    if !state.mirror_complete {
        return Err("that mirror is not complete here".into());
    }
    if m.root_digest.as_deref() != Some(b.root_digest.as_str()) {
        return Err("that mirror ended with another root digest".into());
    }
    if state.last_applied_seq != b.last_seq {
        return Err(format!(
            "change sets were applied since (last {}, the base's {})",
            state.last_applied_seq, b.last_seq
        ));
    }
    if !super::ledger::prev_path_for(staging_root).exists() {
        return Err("no proven ledger of that mirror is kept".into());
    }
    match std::fs::read_to_string(tag_path(staging_root)) {
        Ok(t) if t == tag_text(&b.mirror_id, &b.root_digest) => Ok(()),
        Ok(_) => Err("the proven ledger belongs to another mirror".into()),
        Err(_) => Err("the proven ledger is not tagged with its mirror".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MirrorState;
    use standin_link::message::MirrorMode;

    #[test]
    fn a_base_is_accepted_only_while_the_replica_is_what_it_left() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("staging/s/root");
        std::fs::create_dir_all(&root).unwrap();
        let b = MirrorBase {
            mirror_id: "m1".into(),
            root_digest: "d1".into(),
            last_seq: 7,
        };
        let mut st = TargetState {
            last_applied_seq: 7,
            mirror_complete: true,
            mirror: Some(MirrorState {
                mirror_id: "m1".into(),
                mode: MirrorMode::Checksum,
                total_entries: 0,
                total_bytes: 0,
                first_seq: 1,
                bytes_applied: 0,
                started_unix_ms: 0,
                last_seq: Some(7),
                root_digest: Some("d1".into()),
                root_verified: false,
                root_check: None,
            }),
            ..Default::default()
        };
        let why = |st: &TargetState| accept(st, &root, &b).unwrap_err();
        assert!(why(&st).contains("no proven ledger"));
        std::fs::write(super::super::ledger::prev_path_for(&root), b"SILG").unwrap();
        assert!(why(&st).contains("not tagged"));
        remember(&root, "m0", "d1");
        assert!(why(&st).contains("another mirror"));
        remember(&root, "m1", "d1");
        assert_eq!(accept(&st, &root, &b), Ok(()));
        st.last_applied_seq = 8;
        assert!(why(&st).contains("applied since"));
        st.last_applied_seq = 7;
        st.mirror_complete = false;
        assert!(why(&st).contains("not complete"));
        st.mirror_complete = true;
        st.mirror.as_mut().unwrap().root_digest = Some("d2".into());
        assert!(why(&st).contains("another root digest"));
        st.mirror.as_mut().unwrap().mirror_id = "m2".into();
        assert!(why(&st).contains("the last mirror here is m2"));
        st.mirror = None;
        assert!(why(&st).contains("no mirror"));
        forget(&root);
        assert!(!tag_path(&root).exists());
    }
}

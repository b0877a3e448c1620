//! Hard-link cases, each from a fresh replica: a new link written through,
//! links of links, renames and removals of names of one inode, rewriting
//! through one name, renaming over a name. Needs root.

mod replicate_support;
use replicate_support::common::require_root;
use replicate_support::*;
use standin_agent::replicate::ReplicateOptions;
use std::os::unix::fs::FileExt;

/// One step of a case, on paths relative to the source root.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// `ln FROM TO`.
    Link(&'static str, &'static str),
    /// Wait until the replica equals the source.
    Converge,
    Rename(&'static str, &'static str),
    Remove(&'static str),
    /// Write `patched` at offset 4000 through this name (in place).
    Patch(&'static str),
    /// Replace the content through this name (truncate and write).
    Rewrite(&'static str),
    /// A new one-byte file.
    Create(&'static str),
}

use Step::*;

/// Each case starts from `d/a` and `b0` (50000 bytes each), converged.
const CASES: &[(&str, &[Step])] = &[
    ("a", &[Link("d/a", "b"), Patch("b")]),
    ("b", &[Link("d/a", "b"), Converge, Patch("b")]),
    ("c", &[Link("d/a", "b"), Link("b", "d/c"), Patch("d/c")]),
    ("d", &[Link("d/a", "b"), Rename("d/a", "e"), Patch("b")]),
    (
        "e",
        &[
            Link("b0", "d/z"),
            Remove("b0"),
            Link("d/a", "b0"),
            Patch("b0"),
        ],
    ),
    ("f", &[Link("d/a", "b"), Converge, Rewrite("b")]),
    (
        "g",
        &[
            Link("d/a", "b"),
            Converge,
            Create("x"),
            Rename("x", "b"),
            Patch("d/a"),
        ],
    ),
    (
        "h",
        &[
            Link("d/a", "b"),
            Converge,
            Remove("d/a"),
            Link("b", "d/a2"),
            Patch("b"),
        ],
    ),
    (
        "i",
        &[Link("d/a", "b"), Converge, Rename("d", "dd"), Patch("b")],
    ),
];

fn case(steps: &[Step]) {
    let mut h = Harness::start(|_| {}, ReplicateOptions::default());
    let s = h.src.clone();
    std::fs::create_dir(s.join("d")).unwrap();
    std::fs::write(s.join("d/a"), vec![1u8; 50000]).unwrap();
    std::fs::write(s.join("b0"), vec![1u8; 50000]).unwrap();
    h.converge();
    for step in steps {
        match *step {
            Link(from, to) => std::fs::hard_link(s.join(from), s.join(to)).unwrap(),
            Converge => h.converge(),
            Rename(from, to) => std::fs::rename(s.join(from), s.join(to)).unwrap(),
            Remove(p) => std::fs::remove_file(s.join(p)).unwrap(),
            Patch(p) => std::fs::OpenOptions::new()
                .write(true)
                .open(s.join(p))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap(),
            Rewrite(p) => std::fs::write(s.join(p), vec![9u8; 30000]).unwrap(),
            Create(p) => std::fs::write(s.join(p), "x").unwrap(),
        }
    }
    h.converge();
}

#[test]
fn hard_link_cases_converge() {
    require_root();
    for (name, steps) in CASES {
        eprintln!("case {name}: {steps:?}");
        case(steps);
    }
}

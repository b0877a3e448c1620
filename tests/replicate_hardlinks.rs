//! Hard-link cases, each from a fresh replica: a new link written through,
//! links of links, renames and removals of names of one inode, rewriting
//! through one name, renaming over a name. Needs root.

mod replicate_support;
use replicate_support::common::require_root;
use replicate_support::*;
use standin_agent::replicate::ReplicateOptions;
use std::os::unix::fs::FileExt;

fn case(case: &str) {
    let mut h = Harness::start(|_| {}, ReplicateOptions::default());
    let s = h.src.clone();
    std::fs::create_dir(s.join("d")).unwrap();
    std::fs::write(s.join("d/a"), vec![1u8; 50000]).unwrap();
    std::fs::write(s.join("b0"), vec![1u8; 50000]).unwrap();
    h.converge();
    match case {
        "a" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("b"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
        "b" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            h.converge();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("b"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
        "c" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            std::fs::hard_link(s.join("b"), s.join("d/c")).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("d/c"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
        "d" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            std::fs::rename(s.join("d/a"), s.join("e")).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("b"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
        "f" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            h.converge();
            std::fs::write(s.join("b"), vec![9u8; 30000]).unwrap();
        }
        "g" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            h.converge();
            std::fs::write(s.join("x"), "x").unwrap();
            std::fs::rename(s.join("x"), s.join("b")).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("d/a"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
        "h" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            h.converge();
            std::fs::remove_file(s.join("d/a")).unwrap();
            std::fs::hard_link(s.join("b"), s.join("d/a2")).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("b"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
        "i" => {
            std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
            h.converge();
            std::fs::rename(s.join("d"), s.join("dd")).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("b"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
        _ => {
            std::fs::hard_link(s.join("b0"), s.join("d/z")).unwrap();
            std::fs::remove_file(s.join("b0")).unwrap();
            std::fs::hard_link(s.join("d/a"), s.join("b0")).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("b0"))
                .unwrap()
                .write_all_at(b"patched", 4000)
                .unwrap();
        }
    }
    h.converge();
}

#[test]
fn hard_link_cases_converge() {
    require_root();
    for c in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
        eprintln!("case {c}");
        case(c);
    }
}

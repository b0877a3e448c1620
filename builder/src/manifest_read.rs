//! Streaming manifest reader: a background thread parses the JSON with
//! serde (entries are visited one by one, never collected) and hands them
//! over through a bounded channel; the iterator recomputes the root digest
//! and checks it against the summary at the end.

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::entry::{path_cmp, Entry};
use crate::manifest::{ManifestSummary, RootDigest, FORMAT, VERSION};

enum Msg {
    Entry(Box<Entry>),
    Done(Box<ManifestSummary>),
    Err(String),
}

/// Iterator over a manifest's entries in tree order. After the last entry it
/// yields an error if the manifest is damaged or was edited (its root digest,
/// entry count or total no longer match its entries); [`summary`](Self::summary)
/// is available once the iterator is exhausted without error.
pub struct ManifestReader {
    path: PathBuf,
    rx: Receiver<Msg>,
    digest: Option<RootDigest>,
    last: Option<Vec<u8>>,
    summary: Option<ManifestSummary>,
    done: bool,
}

impl ManifestReader {
    /// Open a manifest file and start reading it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| {
            format!(
                "opening manifest {}; it is written beside the archive by `standin image build`",
                path.display()
            )
        })?;
        let (tx, rx) = bounded(1024);
        std::thread::Builder::new()
            .name("manifest-reader".into())
            .spawn(move || parse(BufReader::with_capacity(1 << 20, file), tx))
            .context("starting manifest reader")?;
        Ok(Self {
            path: path.to_path_buf(),
            rx,
            digest: Some(RootDigest::new()),
            last: None,
            summary: None,
            done: false,
        })
    }

    /// The verified summary, once every entry was read.
    pub fn summary(&self) -> Option<&ManifestSummary> {
        self.summary.as_ref()
    }

    /// Read to the end and return the verified summary.
    pub fn finish(mut self) -> Result<ManifestSummary> {
        for e in self.by_ref() {
            e?;
        }
        let path = self.path.display().to_string();
        self.summary
            .ok_or_else(|| anyhow!("manifest {path} could not be read to its end"))
    }

    fn fail(&mut self, msg: String) -> Option<Result<Entry>> {
        self.done = true;
        Some(Err(anyhow!("manifest {}: {msg}", self.path.display())))
    }
}

impl Iterator for ManifestReader {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(Msg::Entry(e)) => {
                if let Some(last) = &self.last {
                    if path_cmp(last, &e.path) != std::cmp::Ordering::Less {
                        let m = format!("entry {} is out of tree order", e.display_path());
                        return self.fail(m);
                    }
                }
                self.last = Some(e.path.clone());
                if let Some(d) = self.digest.as_mut() {
                    d.add(&e);
                }
                Some(Ok(*e))
            }
            Ok(Msg::Done(s)) => {
                self.done = true;
                let (digest, count, total) = self.digest.take().expect("digest").finish();
                if s.format != FORMAT || s.version != VERSION {
                    return self.fail(format!(
                        "unsupported format {:?} version {} (this build reads {FORMAT} version {VERSION})",
                        s.format, s.version
                    ));
                }
                if digest != s.root_digest || count != s.entry_count || total != s.total_bytes {
                    return self.fail(format!(
                        "was edited or damaged: its entries give root digest {digest} ({count} entries, {total} bytes) but it says {} ({} entries, {} bytes)",
                        s.root_digest, s.entry_count, s.total_bytes
                    ));
                }
                self.summary = Some(*s);
                None
            }
            Ok(Msg::Err(m)) => self.fail(format!("is damaged: {m}")),
            Err(_) => self.fail("reader stopped unexpectedly".into()),
        }
    }
}

/// Read a manifest through (verifying its root digest) and return its summary.
pub fn read_summary(path: &Path) -> Result<ManifestSummary> {
    let mut r = ManifestReader::open(path)?;
    for e in r.by_ref() {
        e?;
    }
    match r.summary {
        Some(s) => Ok(s),
        None => bail!("manifest {} has no summary", path.display()),
    }
}

fn parse(reader: BufReader<File>, tx: Sender<Msg>) {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let res = (&mut de)
        .deserialize_map(Top { tx: &tx })
        .and_then(|s| de.end().map(|_| s));
    let msg = match res {
        Ok(s) => Msg::Done(Box::new(s)),
        Err(e) => Msg::Err(e.to_string()),
    };
    let _ = tx.send(msg);
}

struct Top<'a> {
    tx: &'a Sender<Msg>,
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ManifestSummary;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a standin manifest object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ManifestSummary, A::Error> {
        use serde::de::Error;
        let mut s = ManifestSummary {
            format: String::new(),
            version: 0,
            tool: String::new(),
            entry_count: 0,
            total_bytes: 0,
            root_digest: String::new(),
        };
        let (mut saw_entries, mut saw_digest) = (false, false);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => s.format = map.next_value()?,
                "version" => s.version = map.next_value()?,
                "tool" => s.tool = map.next_value()?,
                "entry_count" => s.entry_count = map.next_value()?,
                "total_bytes" => s.total_bytes = map.next_value()?,
                "root_digest" => {
                    s.root_digest = map.next_value()?;
                    saw_digest = true;
                }
                "entries" => {
                    map.next_value_seed(Entries { tx: self.tx })?;
                    saw_entries = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !saw_entries || !saw_digest {
            return Err(A::Error::custom("missing \"entries\" or \"root_digest\""));
        }
        Ok(s)
    }
}

struct Entries<'a> {
    tx: &'a Sender<Msg>,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        while let Some(e) = seq.next_element::<Entry>()? {
            if self.tx.send(Msg::Entry(Box::new(e))).is_err() {
                return Err(A::Error::custom("reader closed"));
            }
        }
        Ok(())
    }
}

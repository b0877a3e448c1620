//! Self-signed identities: an ECDSA P-256 key and certificate as PEM in a
//! directory (`cert.pem`, `key.pem` with mode 0600).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Fingerprint;

/// File name of the certificate in an identity directory.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key in an identity directory.
pub const KEY_FILE: &str = "key.pem";

/// A loaded identity: certificate, private key and the certificate's fingerprint.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: Fingerprint,
    pub dir: PathBuf,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
            dir: self.dir.clone(),
        }
    }
}

/// Create a new identity in `dir` (created if missing) and return its
/// fingerprint. Refuses to replace an existing one unless `force`.
pub fn init(dir: &Path, force: bool) -> Result<Fingerprint> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !force && (cert_path.exists() || key_path.exists()) {
        bail!(
            "an identity already exists in {}; use it (`standin keys show --dir {}`) or replace it with --force (peers that pinned it must then trust the new fingerprint)",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating an ECDSA P-256 key")?;
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let mut params = rcgen::CertificateParams::new(vec!["standin".to_string()])
        .context("preparing the certificate")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("standin {host}"));
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Fingerprint::of_der(cert.der()))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Load the identity in `dir`.
pub fn load(dir: &Path) -> Result<Identity> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !cert_path.exists() {
        bail!(
            "no identity in {}: {} is missing; create one with `standin keys init --dir {}`",
            dir.display(),
            CERT_FILE,
            dir.display()
        );
    }
    let cert = CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading certificate {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading private key {}", key_path.display()))?;
    let meta =
        std::fs::metadata(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "private key {} is readable by group or others; run chmod 600 on it",
            key_path.display()
        );
    }
    let fingerprint = Fingerprint::of_der(&cert);
    Ok(Identity {
        cert,
        key,
        fingerprint,
        dir: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_load_and_refuse_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let f = init(d.path(), false).unwrap();
        let id = load(d.path()).unwrap();
        assert_eq!(id.fingerprint, f);
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = init(d.path(), false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        let g = init(d.path(), true).unwrap();
        assert_ne!(f, g);
        assert_eq!(load(d.path()).unwrap().fingerprint, g);
    }
}

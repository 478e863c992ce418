//! A throwaway self-signed certificate (rcgen) for `localhost` and `127.0.0.1`, written as
//! PEM files for `ferry proxy --tls-cert/--tls-key` and for clients' CA settings. Test files
//! include this with `#[path]`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// PEM files in a directory of their own.
pub struct Cert {
    /// The certificate (also the CA clients trust).
    pub cert: PathBuf,
    /// Its private key (mode 0600, as libpq-style tools like it).
    pub key: PathBuf,
    /// Another certificate, not the one the proxy shows (clients trusting it must fail).
    pub other_ca: PathBuf,
}

impl Cert {
    /// Make the certificate and key in `dir` (created).
    pub fn make(dir: &Path) -> Cert {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names.clone()).unwrap();
        let other = rcgen::generate_simple_self_signed(names).unwrap();
        let c = Cert {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            other_ca: dir.join("other.pem"),
        };
        std::fs::write(&c.cert, ck.cert.pem()).unwrap();
        std::fs::write(&c.key, ck.key_pair.serialize_pem()).unwrap();
        std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&c.other_ca, other.cert.pem()).unwrap();
        c
    }

    /// `--tls-cert CERT --tls-key KEY`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

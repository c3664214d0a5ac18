//! Certificates made for a test by the `openssl` command line: a private certificate authority
//! and server certificates it signs for `127.0.0.1` and `localhost`, as PEM files in a
//! temporary directory that lives as long as the [`TestPki`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A certificate authority of the test's own, with the files of what it signed.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The authority's certificate (PEM): what a client trusts (`curl --cacert`, `ca_file`).
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
    issued: usize,
}

/// A server certificate and its key, signed by a [`TestPki`].
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The leaf certificate followed by the authority's (a chain, as servers usually send).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf certificate alone.
    pub leaf: PathBuf,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_cert = dir.path().join("ca.pem");
        let ca_key = dir.path().join("ca-key.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=keygate test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path(&ca_key),
            "-out",
            path(&ca_cert),
        ]);
        Self {
            dir,
            ca_cert,
            ca_key,
            issued: 0,
        }
    }

    /// A server certificate for `127.0.0.1`, `localhost` and `names` (DNS names), signed by
    /// this authority.
    pub fn issue(&mut self, names: &[&str]) -> ServerCert {
        let mut san = String::from("subjectAltName=IP:127.0.0.1,DNS:localhost");
        for name in names {
            san.push_str(",DNS:");
            san.push_str(name);
        }
        self.issue_san(&san)
    }

    /// A server certificate for the DNS `names` only (not for `127.0.0.1` nor `localhost`):
    /// what a client connecting to this machine must refuse as made for another name.
    pub fn issue_only(&mut self, names: &[&str]) -> ServerCert {
        let names: Vec<String> = names.iter().map(|name| format!("DNS:{name}")).collect();
        self.issue_san(&format!("subjectAltName={}", names.join(",")))
    }

    fn issue_san(&mut self, san: &str) -> ServerCert {
        self.issued += 1;
        let base = self.dir.path().join(format!("server-{}", self.issued));
        let key = base.with_extension("key.pem");
        let csr = base.with_extension("csr");
        let leaf = base.with_extension("leaf.pem");
        let cert = base.with_extension("chain.pem");
        let ext = base.with_extension("ext");
        std::fs::write(
            &ext,
            format!(
                "{san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write the certificate's extensions");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            path(&key),
            "-out",
            path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.ca_cert),
            "-CAkey",
            path(&self.ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path(&ext),
            "-out",
            path(&leaf),
        ]);
        let mut chain = std::fs::read(&leaf).expect("read the leaf certificate");
        chain.extend(std::fs::read(&self.ca_cert).expect("read the CA certificate"));
        std::fs::write(&cert, chain).expect("write the certificate chain");
        ServerCert { cert, key, leaf }
    }

    /// The directory the files live in (removed with the [`TestPki`]).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (tests/run.sh installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

//! A throwaway PKI for the TLS tests, made with `rcgen` when a test starts and never committed:
//! certificate authorities, leaf certificates for the addresses the tests use (valid both as
//! server and as client certificates, as cluster nodes need), and token signing keys.
//!
//! Only the TLS tests and [`crate::secure`] call it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority: its certificate and the key it signs with.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A certificate and its private key, as PEM and DER.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The certificate, DER: what a TLS peer receives.
    pub der: Vec<u8>,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "IPCR cluster-tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Ca {
    /// A new self-signed CA named `common_name`, with a fresh P-256 key.
    pub fn new(common_name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert_pem = params.self_signed(&key).expect("self-signing the CA").pem();
        Ca {
            params,
            key,
            cert_pem,
        }
    }

    /// A leaf certificate for `names` (IP addresses or DNS names), usable as server and as
    /// client certificate, with a fresh key and a random serial number.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf parameters");
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signing the leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Write the CA certificate to `path` and return it.
    pub fn write(&self, path: &Path) -> PathBuf {
        write_atomically(path, self.cert_pem.as_bytes());
        path.to_path_buf()
    }
}

impl Leaf {
    /// Write the key to `key`, then the certificate to `cert`, each replaced atomically
    /// (written beside, then renamed over), as an operator's rotation tool would.
    pub fn write(&self, cert: &Path, key: &Path) {
        write_atomically(key, self.key_pem.as_bytes());
        write_atomically(cert, self.cert_pem.as_bytes());
    }

    /// The certificate followed by the key, in one PEM (what `reqwest::Identity` reads).
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

/// A new P-256 key in PKCS#8 PEM: what `auth.token.signingkey` takes.
pub fn signing_key_pem() -> String {
    KeyPair::generate().expect("signing key").serialize_pem()
}

/// Replace `path` with `bytes`: written to a temporary file beside it, then renamed over it, so
/// a reader sees the old content or the new one, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("a file in a directory");
    let tmp = tempfile::NamedTempFile::new_in(dir).expect("temporary file");
    std::fs::write(tmp.path(), bytes).expect("writing a temporary file");
    tmp.persist(path)
        .unwrap_or_else(|e| panic!("renaming over {}: {e}", path.display()));
}

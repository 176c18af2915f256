//! Bearer tokens (Docker's token authentication): verifying JWTs from an external token server
//! or from IPCR itself, and issuing IPCR's own.
//!
//! A token is trusted when its signature verifies with a key named by its `kid` (the libtrust
//! key id of a `rootcertbundle` certificate's key, a `jwks` key, or IPCR's signing key) or with
//! the leaf of its `x5c` chain, which must chain up to `rootcertbundle`. Only asymmetric
//! algorithms are accepted, and only the one matching the key's type: `alg: none` and HMAC
//! tokens (signed with a public key as secret) never verify. `iss`, `aud` (the service),
//! `exp`, `nbf` and `iat` are checked with [`LEEWAY`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Action;

/// Clock skew allowed between token server and registry, in seconds (distribution's).
pub const LEEWAY: u64 = 60;

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    /// `repository`, or `registry` for the catalog.
    #[serde(rename = "type")]
    pub kind: String,
    /// A repository name, or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, `*`.
    #[serde(default)]
    pub actions: Vec<String>,
}

impl ResourceActions {
    /// Whether this entry grants `action` on repository `repo`.
    pub fn grants(&self, repo: &str, action: Action) -> bool {
        self.kind == "repository"
            && self.name == repo
            && self.actions.iter().any(|a| a == "*" || a == action.as_str())
    }

    /// Whether this entry grants the catalog.
    pub fn grants_catalog(&self) -> bool {
        self.kind == "registry" && self.name == "catalog" && self.actions.iter().any(|a| a == "*")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    exp: u64,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    access: Vec<ResourceActions>,
}

/// A verified token.
#[derive(Clone, Debug)]
pub struct Verified {
    /// `sub`: the user it was issued to (may be empty).
    pub subject: String,
    /// What it grants.
    pub access: Vec<ResourceActions>,
    /// Issued by this registry (its subject is an htpasswd user the policies apply to).
    pub own: bool,
}

/// Why a token was refused; never shown in full to the client, logged at debug level.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or an algorithm that is not accepted.
    #[error("malformed token or unaccepted algorithm: {0}")]
    Malformed(String),
    /// No trusted key for it.
    #[error("no trusted key: {0}")]
    UntrustedKey(String),
    /// Signature, issuer, audience or time checks failed.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The libtrust key id of a public key (Docker's `kid`): the first 240 bits of the SHA-256 of
/// its DER SubjectPublicKeyInfo, in base32, in groups of four separated by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    // 30 bytes = 240 bits = 48 base32 characters, no padding.
    let mut out = String::with_capacity(59);
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut n = 0;
    for &b in &hash[..30] {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            if n > 0 && n % 4 == 0 {
                out.push(':');
            }
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
            n += 1;
        }
    }
    out
}

fn spki_pem(spki: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// The algorithms accepted, by key type: asymmetric only (no `none`, no HMAC).
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];
const ED: [Algorithm; 1] = [Algorithm::EdDSA];

fn accepted(alg: Algorithm) -> bool {
    RSA.contains(&alg) || EC.contains(&alg) || ED.contains(&alg)
}

/// A verification key from a DER SubjectPublicKeyInfo (RSA, EC or Ed25519), with the
/// algorithms of its type: a token's `alg` must be one of them.
fn decoding_key(spki: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), TokenError> {
    let pem = spki_pem(spki);
    let pem = pem.as_bytes();
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, RSA.to_vec()));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, EC.to_vec()));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, ED.to_vec()));
    }
    Err(TokenError::UntrustedKey("unsupported public key type".into()))
}

/// A verification key from a JWK; symmetric (`oct`) keys are refused.
fn jwk_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    let algs = match &jwk.algorithm {
        P::RSA(_) => RSA.to_vec(),
        P::EllipticCurve(_) => EC.to_vec(),
        P::OctetKeyPair(_) => ED.to_vec(),
        P::OctetKey(_) => return Err("symmetric (oct) keys are not accepted".into()),
    };
    Ok((DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?, algs))
}

fn spki_of(cert: &CertificateDer<'_>) -> Result<SubjectPublicKeyInfoDer<'static>, String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.subject_public_key_info())
        .map_err(|e| format!("not a certificate: {e}"))
}

/// Any extended key usage: token-signing certificates are not TLS certificates.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// IPCR's own signing key.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
}

/// Tokens verified lately, by the SHA-256 of the token, with their `exp`. A client sends the
/// same token with every request of a pull or push; a signature check costs tens of
/// microseconds, a lookup well under one.
type Verifications = HashMap<[u8; 32], (Arc<Verified>, u64)>;

/// At most this many verified tokens are remembered.
const REMEMBERED: usize = 10_000;

/// Everything needed to verify (and, with a signing key, issue) tokens.
pub struct Tokens {
    issuer: String,
    service: String,
    by_kid: HashMap<String, (DecodingKey, Vec<Algorithm>)>,
    roots: Vec<TrustAnchor<'static>>,
    signer: Option<Signer>,
    expiration: u64,
    verified: Mutex<Verifications>,
}

impl Tokens {
    /// Load the keys named by `auth.token`.
    pub fn load(c: &crate::config::TokenConfig) -> Result<Tokens, String> {
        let mut by_kid = HashMap::new();
        let mut roots = Vec::new();
        if let Some(path) = &c.rootcertbundle {
            let read =
                |e: &dyn std::fmt::Display| format!("auth.token.rootcertbundle: {}: {e}", path.display());
            let text = std::fs::read(path).map_err(|e| read(&e))?;
            for cert in CertificateDer::pem_slice_iter(&text) {
                let cert = cert.map_err(|e| read(&e))?;
                let spki = spki_of(&cert).map_err(|e| read(&e))?;
                by_kid.insert(libtrust_kid(&spki), decoding_key(&spki).map_err(|e| read(&e))?);
                let anchor = webpki::anchor_from_trusted_cert(&cert).map_err(|e| read(&e))?;
                roots.push(anchor.to_owned());
            }
            if roots.is_empty() {
                return Err(read(&"no PEM certificate in the file"));
            }
        }
        if let Some(path) = &c.jwks {
            let read = |e: &dyn std::fmt::Display| format!("auth.token.jwks: {}: {e}", path.display());
            let text = std::fs::read(path).map_err(|e| read(&e))?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| read(&e))?;
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .ok_or_else(|| read(&"a key without `kid`"))?;
                by_kid.insert(kid, jwk_key(jwk).map_err(|e| read(&e))?);
            }
        }
        let signer = match &c.signingkey {
            None => None,
            Some(path) => {
                let read =
                    |e: &dyn std::fmt::Display| format!("auth.token.signingkey: {}: {e}", path.display());
                let pem = std::fs::read_to_string(path).map_err(|e| read(&e))?;
                let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| read(&e))?;
                let (key, alg) = if pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
                    (EncodingKey::from_ec_pem(pem.as_bytes()), Algorithm::ES256)
                } else if pair.is_compatible(&rcgen::PKCS_RSA_SHA256) {
                    (EncodingKey::from_rsa_pem(pem.as_bytes()), Algorithm::RS256)
                } else {
                    return Err(read(&"a P-256 or RSA key (PKCS#8 PEM) is needed"));
                };
                let key = key.map_err(|e| read(&e))?;
                let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
                let kid = libtrust_kid(&spki);
                let (verify, _) = decoding_key(&spki).map_err(|e| read(&e))?;
                by_kid.insert(kid.clone(), (verify, vec![alg]));
                Some(Signer { key, alg, kid })
            }
        };
        Ok(Tokens {
            issuer: c.issuer.clone(),
            service: c.service.clone(),
            by_kid,
            roots,
            signer,
            expiration: c.expiration,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this registry issues tokens.
    pub fn issues(&self) -> bool {
        self.signer.is_some()
    }

    /// Verify a token (or find it verified lately and not expired since). Shared: a request
    /// costs no copy of the token's claims.
    pub fn verify(&self, token: &str) -> Result<Arc<Verified>, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        {
            let mut seen = self.verified.lock().expect("verified lock");
            match seen.get(&key) {
                Some((v, exp)) if now <= exp + LEEWAY => return Ok(v.clone()),
                Some(_) => {
                    seen.remove(&key);
                }
                None => {}
            }
        }
        let (verified, exp) = self.verify_signed(token)?;
        let verified = Arc::new(verified);
        let mut seen = self.verified.lock().expect("verified lock");
        if seen.len() >= REMEMBERED {
            seen.retain(|_, (_, exp)| now <= *exp + LEEWAY);
            if seen.len() >= REMEMBERED {
                seen.clear();
            }
        }
        seen.insert(key, (verified.clone(), exp));
        Ok(verified)
    }

    /// Check a token's signature and claims; its `exp` with it.
    fn verify_signed(&self, token: &str) -> Result<(Verified, u64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !accepted(header.alg) {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let chain_key;
        let (key, algs) = match header
            .x5c_der()
            .map_err(|e| TokenError::Malformed(e.to_string()))?
        {
            Some(chain) if !chain.is_empty() => {
                chain_key = self.chain_key(&chain)?;
                (&chain_key.0, &chain_key.1)
            }
            _ => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| TokenError::UntrustedKey("neither kid nor x5c".into()))?;
                let (k, a) = self
                    .by_kid
                    .get(kid)
                    .ok_or_else(|| TokenError::UntrustedKey(format!("unknown kid {kid}")))?;
                (k, a)
            }
        };
        if !algs.contains(&header.alg) {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?} does not fit the key",
                header.alg
            )));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY;
        v.validate_nbf = true;
        v.set_audience(&[&self.service]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if let Some(iat) = data.claims.iat
            && iat > jsonwebtoken::get_current_timestamp() + LEEWAY
        {
            return Err(TokenError::Invalid("issued in the future".into()));
        }
        let own = self
            .signer
            .as_ref()
            .is_some_and(|s| header.kid.as_deref() == Some(s.kid.as_str()))
            && header.x5c.is_none();
        Ok((
            Verified {
                subject: data.claims.sub,
                access: data.claims.access,
                own,
            },
            data.claims.exp,
        ))
    }

    /// The key of the leaf of an `x5c` chain that verifies up to a root.
    fn chain_key(&self, chain: &[Vec<u8>]) -> Result<(DecodingKey, Vec<Algorithm>), TokenError> {
        if self.roots.is_empty() {
            return Err(TokenError::UntrustedKey(
                "x5c without auth.token.rootcertbundle".into(),
            ));
        }
        let leaf = CertificateDer::from(chain[0].as_slice());
        let intermediates: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let cert = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| TokenError::UntrustedKey(format!("x5c: {e}")))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.roots,
            &intermediates,
            UnixTime::now(),
            AnyUsage,
            None,
            None,
        )
        .map_err(|e| TokenError::UntrustedKey(format!("x5c chain: {e}")))?;
        decoding_key(&cert.subject_public_key_info())
    }

    /// Sign a token for `subject` granting `access`; `None` without a signing key.
    pub fn issue(&self, subject: &str, access: Vec<ResourceActions>) -> Option<Issued> {
        let s = self.signer.as_ref()?;
        let now = jsonwebtoken::get_current_timestamp();
        #[derive(Serialize)]
        struct Out<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            exp: u64,
            nbf: u64,
            iat: u64,
            jti: String,
            access: Vec<ResourceActions>,
        }
        let claims = Out {
            iss: &self.issuer,
            sub: subject,
            aud: &self.service,
            exp: now + self.expiration,
            nbf: now,
            iat: now,
            jti: hex_id(),
            access,
        };
        let mut header = Header::new(s.alg);
        header.kid = Some(s.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &s.key).ok()?;
        Some(Issued {
            token,
            expires_in: self.expiration,
            issued_at: now,
        })
    }
}

fn hex_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token IPCR issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The JWT.
    pub token: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// Unix seconds.
    pub issued_at: u64,
}

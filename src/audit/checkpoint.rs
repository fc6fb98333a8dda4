//! Signed checkpoints: a statement "row `seq` of the log had hash `hash`
//! at time `at`", signed with an Ed25519 key that is not in the database.
//!
//! Owns: the key files (PKCS#8 private key and SPKI public key, both PEM,
//! so OpenSSL reads them too), the statement's file format, the exact bytes
//! that are signed, and checking a statement's signature. A checkpoint kept
//! off the host is what makes a rewrite of the whole chain detectable:
//! whoever can write the database can recompute every hash, but cannot sign
//! a statement for the rewritten chain with a key they do not hold, nor
//! change the statements already filed elsewhere.
//! Never: touch the database (that is `audit::review`), or write a key
//! anywhere but the file it was asked to create.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the
/// 32-byte key follows it. Fixed, so no ASN.1 parser is needed.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the
/// 32-byte seed follows it. v1 because OpenSSL reads it (ring's own
/// `generate_pkcs8` writes v2, which OpenSSL 3 refuses).
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Names the statement format inside the signed bytes, so a signature over
/// anything else (or a later format) can never pass for a checkpoint.
const FORMAT: &str = "readback audit checkpoint v1";

/// Why a key or a checkpoint file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file is missing, unreadable or not what it should be: a usage
    /// error, not evidence of tampering.
    #[error("{path}: {message}")]
    Unusable { path: String, message: String },
    /// The statement was not signed by this key, or was changed after it
    /// was signed.
    #[error("{path}: {message}")]
    Rejected { path: String, message: String },
}

fn unusable(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Unusable {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// An Ed25519 public key: what verifies checkpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// First 16 hex digits of SHA-256 over the raw key: short enough to
    /// print on a checkpoint, long enough that two keys never share it.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }

    fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        to_pem("PUBLIC KEY", der)
    }

    /// Reads a `PUBLIC KEY` PEM file written by `audit keygen` (or by
    /// `openssl pkey -pubout`).
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let block = read_pem(path, "PUBLIC KEY")?;
        let key = block
            .contents()
            .strip_prefix(&SPKI_PREFIX[..])
            .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
            .ok_or_else(|| unusable(path, "not an Ed25519 public key"))?;
        Ok(Self(key))
    }
}

/// The signing key, read from `audit.checkpoint_key_file`.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// Reads a `PRIVATE KEY` PEM file (PKCS#8, as `audit keygen` or
    /// `openssl genpkey -algorithm ed25519` write it).
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let block = read_pem(path, "PRIVATE KEY")?;
        // `maybe_unchecked` also takes PKCS#8 v1, which OpenSSL writes.
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents())
            .map(Self)
            .map_err(|e| unusable(path, format!("not an Ed25519 private key ({e})")))
    }

    pub fn public_key(&self) -> PublicKey {
        let raw = self.0.public_key().as_ref();
        PublicKey(raw.try_into().expect("Ed25519 public keys are 32 bytes"))
    }

    /// Signs "row `seq` had `hash`" as of `at`.
    pub fn sign(&self, seq: i64, hash: &str, at: Timestamp) -> Checkpoint {
        let key_id = self.public_key().id();
        let signature = self.0.sign(&signed_bytes(seq, hash, at, &key_id));
        Checkpoint {
            format: FORMAT.to_string(),
            seq,
            hash: hash.to_string(),
            at,
            key_id,
            signature: hex::encode(signature.as_ref()),
        }
    }
}

/// Creates a new key pair: the private key at `path` (mode 0600, never
/// overwriting a file, which would lose the key older checkpoints need)
/// and the public key at `path` + `.pub`. Returns the public key.
pub fn generate(path: &Path) -> Result<PublicKey, CheckpointError> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| unusable(path, "the system random generator failed"))?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are a seed");
    let public = SigningKey(pair).public_key();
    let mut pkcs8 = PKCS8_V1_PREFIX.to_vec();
    pkcs8.extend_from_slice(&seed);
    let public_path = public_path(path);
    let create = |path: &Path, mode: u32, text: String| {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|e| unusable(path, e.to_string()))
    };
    if public_path.exists() {
        return Err(unusable(&public_path, "already exists"));
    }
    create(path, 0o600, to_pem("PRIVATE KEY", pkcs8))?;
    create(&public_path, 0o644, public.to_pem())?;
    Ok(public)
}

/// Where `generate` puts the public half of the key at `path`.
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// PEM with Unix line endings (the crate's default is CRLF).
fn to_pem(label: &str, der: Vec<u8>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

fn read_pem(path: &Path, label: &str) -> Result<pem::Pem, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| unusable(path, e.to_string()))?;
    let block = pem::parse(text).map_err(|e| unusable(path, format!("not a PEM file ({e})")))?;
    if block.tag() != label {
        return Err(unusable(
            path,
            format!("holds a {}, expected a {label}", block.tag()),
        ));
    }
    Ok(block)
}

/// A signed statement, as filed off the host. `at` is when it was signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    pub format: String,
    pub seq: i64,
    pub hash: String,
    #[serde(with = "rfc3339")]
    pub at: Timestamp,
    pub key_id: String,
    /// Ed25519 over [`signed_bytes`], hex.
    pub signature: String,
}

/// Exactly what is signed: one `name: value` line per field, in this order.
/// Documented in docs/audit.md so a reviewer can check a checkpoint with
/// OpenSSL alone.
pub fn signed_bytes(seq: i64, hash: &str, at: Timestamp, key_id: &str) -> Vec<u8> {
    format!("{FORMAT}\nseq: {seq}\nhash: {hash}\nat: {at}\nkey: {key_id}\n").into_bytes()
}

impl Checkpoint {
    /// The file's text: one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable") + "\n"
    }

    /// Reads a checkpoint file and checks its signature with `key`.
    pub fn read_verified(path: &Path, key: &PublicKey) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|e| unusable(path, e.to_string()))?;
        let checkpoint: Checkpoint = serde_json::from_str(&text)
            .map_err(|e| unusable(path, format!("not a readback checkpoint ({e})")))?;
        let rejected = |message: String| CheckpointError::Rejected {
            path: path.display().to_string(),
            message,
        };
        if checkpoint.format != FORMAT {
            return Err(unusable(
                path,
                format!("unknown format `{}`", checkpoint.format),
            ));
        }
        if checkpoint.key_id != key.id() {
            return Err(rejected(format!(
                "signed with key {}, but the key given is {}",
                checkpoint.key_id,
                key.id()
            )));
        }
        let signature = hex::decode(&checkpoint.signature)
            .map_err(|_| rejected("the signature is not hex".into()))?;
        let bytes = signed_bytes(
            checkpoint.seq,
            &checkpoint.hash,
            checkpoint.at,
            &checkpoint.key_id,
        );
        UnparsedPublicKey::new(&ED25519, key.0)
            .verify(&bytes, &signature)
            .map_err(|_| {
                rejected(format!(
                    "the signature does not match (seq {}, hash {}): the file was edited or forged",
                    checkpoint.seq, checkpoint.hash
                ))
            })?;
        Ok(checkpoint)
    }
}

/// `at` as the RFC 3339 text that is also signed, so the file and the
/// signed bytes cannot disagree about it.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::clock::Timestamp;

    pub fn serialize<S: Serializer>(at: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(at)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom("`at` is not an RFC 3339 time"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k");
        let public = generate(&key_path).unwrap();
        assert!(generate(&key_path).is_err(), "never overwrites");
        let key = SigningKey::read(&key_path).unwrap();
        assert!(key.public_key() == public);
        assert!(PublicKey::read(&public_path(&key_path)).unwrap() == public);

        let at = Timestamp::from_millis(1_795_341_600_123);
        let signed = key.sign(7, &"ab".repeat(32), at);
        let file = dir.path().join("cp.json");
        std::fs::write(&file, signed.to_json()).unwrap();
        assert_eq!(Checkpoint::read_verified(&file, &public).unwrap(), signed);

        for edit in [
            signed.to_json().replace("\"seq\":7", "\"seq\":6"),
            signed.to_json().replace(&"ab".repeat(32), &"cd".repeat(32)),
            signed.to_json().replace(".123Z", ".124Z"),
        ] {
            assert_ne!(edit, signed.to_json());
            std::fs::write(&file, edit).unwrap();
            assert!(matches!(
                Checkpoint::read_verified(&file, &public),
                Err(CheckpointError::Rejected { .. })
            ));
        }
        let other = generate(&dir.path().join("other")).unwrap();
        std::fs::write(&file, signed.to_json()).unwrap();
        assert!(matches!(
            Checkpoint::read_verified(&file, &other),
            Err(CheckpointError::Rejected { .. })
        ));
    }
}

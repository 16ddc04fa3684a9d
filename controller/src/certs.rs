//! `flotilla-controller gen-certs`: the cluster's TLS material.
//!
//! One directory holds a cluster CA (`ca.pem`, `ca.key`: ECDSA P-256, ten years) and, signed by
//! it, one certificate + key per name:
//!
//! * `--node NAME` — a controller. CN=NAME; SANs NAME, `localhost`, `127.0.0.1`, `::1` and every
//!   `--san`; extended key usage serverAuth **and** clientAuth, because the same certificate
//!   serves the node's listeners and authenticates it to its peers (mTLS).
//! * `--client NAME` — an operator or tool. CN=NAME; clientAuth only.
//!
//! Re-running against a directory that already holds a CA reuses that CA, so nodes and clients
//! can be added later. An existing `NAME.pem`/`NAME.key` is never replaced without `--force`;
//! all such conflicts are found before anything is written. Every file is written to a temporary
//! name and then linked (or, with `--force`, renamed) into place, so a reader never sees half a
//! file; keys are created 0600 and the directory 0700.
//!
//! Only [`generate`] (the command's entry point) uses `anyhow`; [`write_certs`] returns a
//! [`CertError`] and the list of what it wrote.
use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// Common name of the cluster CA. A CA found in the directory must carry exactly this subject.
pub const CA_COMMON_NAME: &str = "Flotilla cluster CA";
/// File names of the CA inside the directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3653);
/// How long a node or client certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::days(730);
/// Certificates start being valid this long before "now", to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::hours(1);
/// Names every node certificate carries besides its own name and `--san`s.
const NODE_LOCAL_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Arguments of `flotilla-controller gen-certs`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GenCertsArgs {
    /// Directory for the CA, certificates and keys (created 0700). A CA already in it
    /// (ca.pem + ca.key) is reused.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A controller to issue NAME.pem/NAME.key for (server + client auth). Repeatable.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// A client (operator, tool) to issue NAME.pem/NAME.key for (client auth only). Repeatable.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// An extra DNS name or IP address put into every node certificate issued by this run,
    /// besides NAME, localhost, 127.0.0.1 and ::1. Repeatable.
    #[arg(long = "san", value_name = "HOST_OR_IP")]
    pub sans: Vec<String>,
    /// Replace NAME.pem/NAME.key that already exist (the CA itself is never replaced).
    #[arg(long)]
    pub force: bool,
}

/// Why `gen-certs` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "{name:?} is not a usable certificate name: use 1 to 64 letters, digits, '.', '-' or \
         '_', starting with a letter or digit"
    )]
    InvalidName { name: String },
    #[error("the name {name:?} is reserved for the cluster CA; choose another")]
    ReservedName { name: String },
    #[error("the name {name:?} is given more than once; each --node and --client must be unique")]
    DuplicateName { name: String },
    #[error("--san {san:?} is neither an IP address nor a DNS name")]
    InvalidSan { san: String },
    #[error("{} already exists; pass --force to replace it", path.display())]
    AlreadyExists { path: PathBuf },
    #[error(
        "{} holds only one of ca.pem and ca.key; restore the missing file, or move the other \
         away to create a new CA",
        dir.display()
    )]
    IncompleteCa { dir: PathBuf },
    #[error("the CA in {} cannot be used: {reason}", dir.display())]
    UnusableCa { dir: PathBuf, reason: String },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot generate the key or certificate for {name:?}")]
    Generate {
        name: String,
        #[source]
        source: rcgen::Error,
    },
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The cluster CA.
    Ca,
    /// A controller: server and client auth.
    Node,
    /// A client: client auth only.
    Client,
}

/// One certificate + key that [`write_certs`] created or reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub role: Role,
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Subject alternative names (nodes only).
    pub sans: Vec<String>,
    /// True if the file existed and was kept (only ever the CA).
    pub reused: bool,
    /// True if an existing certificate was replaced (`--force`).
    pub replaced: bool,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match (self.reused, self.replaced) {
            (true, _) => "reused",
            (false, true) => "replaced",
            (false, false) => "wrote",
        };
        let what = match self.role {
            Role::Ca => "CA".to_owned(),
            Role::Node => format!("node {}", self.name),
            Role::Client => format!("client {}", self.name),
        };
        write!(
            f,
            "{verb} {what}: {} {}",
            self.cert.display(),
            self.key.display()
        )?;
        if !self.sans.is_empty() {
            write!(f, " (SANs: {})", self.sans.join(", "))?;
        }
        Ok(())
    }
}

/// Entry point of `flotilla-controller gen-certs`: writes the files and prints what it did.
pub fn generate(args: &GenCertsArgs) -> anyhow::Result<()> {
    let written = write_certs(args)?;
    let mut out = io::stdout().lock();
    for w in &written {
        writeln!(out, "{w}")?;
    }
    if written.iter().all(|w| w.role == Role::Ca) {
        writeln!(out, "no --node or --client given: only the CA is in place")?;
    }
    Ok(())
}

/// Creates or reuses the CA in `args.dir` and issues every requested certificate. Checks all
/// names and conflicts before writing anything. Returns what it wrote, CA first.
pub fn write_certs(args: &GenCertsArgs) -> Result<Vec<Written>, CertError> {
    // 1. Check the request as a whole: names, SANs, existing files.
    let mut seen = BTreeSet::new();
    let requested = args
        .nodes
        .iter()
        .map(|n| (Role::Node, n))
        .chain(args.clients.iter().map(|n| (Role::Client, n)));
    let mut leaves = Vec::new();
    for (role, name) in requested {
        check_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(CertError::DuplicateName { name: name.clone() });
        }
        leaves.push((role, name.as_str()));
    }
    let extra_sans = args
        .sans
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = args.dir.as_path();
    let mut replacing = Vec::with_capacity(leaves.len());
    for (_, name) in &leaves {
        let (cert, key) = leaf_paths(dir, name);
        let existing = [&cert, &key].into_iter().find(|p| p.exists());
        match existing {
            Some(path) if !args.force => {
                return Err(CertError::AlreadyExists { path: path.clone() })
            }
            other => replacing.push(other.is_some()),
        }
    }

    // 2. The directory and the CA.
    ensure_dir(dir)?;
    let (issuer, mut written) = load_or_create_ca(dir)?;

    // 3. The leaves, each with a fresh key.
    let now = OffsetDateTime::now_utc();
    for ((role, name), replaced) in leaves.into_iter().zip(replacing) {
        let mut params = leaf_params(name, now);
        let mut sans = Vec::new();
        match role {
            Role::Node => {
                let own = parse_san(name)?;
                let local = NODE_LOCAL_SANS
                    .iter()
                    .map(|s| parse_san(s))
                    .collect::<Result<Vec<_>, _>>()?;
                for san in std::iter::once(own)
                    .chain(local)
                    .chain(extra_sans.iter().cloned())
                {
                    if !params.subject_alt_names.contains(&san) {
                        sans.push(san_text(&san));
                        params.subject_alt_names.push(san);
                    }
                }
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Role::Client | Role::Ca => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        let gen_err = |source| CertError::Generate {
            name: name.to_owned(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        let (cert_path, key_path) = leaf_paths(dir, name);
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600, args.force)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644, args.force)?;
        written.push(Written {
            role,
            name: name.to_owned(),
            cert: cert_path,
            key: key_path,
            sans,
            reused: false,
            replaced,
        });
    }
    sync_dir(dir)?;
    Ok(written)
}

fn leaf_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// Names become file names and DNS SANs: keep them to a safe, boring alphabet.
fn check_name(name: &str) -> Result<(), CertError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(ok_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(CertError::InvalidName {
            name: name.to_owned(),
        });
    }
    if name == "ca" {
        return Err(CertError::ReservedName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn parse_san(s: &str) -> Result<SanType, CertError> {
    let invalid = || CertError::InvalidSan { san: s.to_owned() };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // A leading "*." wildcard is allowed; everything else must be plain labels.
    let body = s.strip_prefix("*.").unwrap_or(s);
    if s.len() > 253 || !body.split('.').all(label_ok) {
        return Err(invalid());
    }
    let dns = s.to_owned().try_into().map_err(|_| invalid())?;
    Ok(SanType::DnsName(dns))
}

fn san_text(san: &SanType) -> String {
    match san {
        SanType::DnsName(d) => d.as_str().to_owned(),
        SanType::IpAddress(ip) => ip.to_string(),
        other => format!("{other:?}"),
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x40; // and exactly 16 bytes long
    SerialNumber::from_slice(&bytes)
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    // The CA signs only end-entity certificates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    params
}

fn leaf_params(name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params.serial_number = Some(random_serial());
    params
}

/// Reuses the CA in `dir` if both files are there, creates one if neither is.
fn load_or_create_ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, Vec<Written>), CertError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let now = OffsetDateTime::now_utc();
    let written = |reused| Written {
        role: Role::Ca,
        name: CA_COMMON_NAME.to_owned(),
        cert: cert_path.clone(),
        key: key_path.clone(),
        sans: Vec::new(),
        reused,
        replaced: false,
    };
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let unusable = |reason: String| CertError::UnusableCa {
                dir: dir.to_owned(),
                reason,
            };
            let key_pem = read_to_string(&key_path)?;
            let cert_pem = read_to_string(&cert_path)?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| unusable(format!("ca.key is not a PEM private key ({e})")))?;
            let cert_der = pem_decode(&cert_pem, "CERTIFICATE")
                .ok_or_else(|| unusable("ca.pem is not a PEM certificate".into()))?;
            let parts = der::cert_parts(&cert_der)
                .ok_or_else(|| unusable("ca.pem is not a well-formed X.509 certificate".into()))?;
            if parts.spki != key.subject_public_key_info().as_slice() {
                return Err(unusable("ca.pem and ca.key are not a pair".into()));
            }
            // Signing with a rebuilt issuer is only correct if the subject the children will
            // name as their issuer is byte-for-byte the CA's subject. Compare with what rcgen
            // encodes for our parameters.
            let params = ca_params(now);
            let probe = params
                .self_signed(&key)
                .map_err(|source| CertError::Generate {
                    name: CA_COMMON_NAME.to_owned(),
                    source,
                })?;
            let expected = der::cert_parts(probe.der())
                .ok_or_else(|| unusable("rcgen produced an unparsable certificate".into()))?;
            if parts.subject != expected.subject || parts.subject != parts.issuer {
                return Err(unusable(format!(
                    "ca.pem is not a self-signed CA with subject CN={CA_COMMON_NAME}; it was \
                     not made by gen-certs"
                )));
            }
            Ok((Issuer::new(params, key), vec![written(true)]))
        }
        (false, false) => {
            let params = ca_params(now);
            let gen_err = |source| CertError::Generate {
                name: CA_COMMON_NAME.to_owned(),
                source,
            };
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
            let cert = params.self_signed(&key).map_err(gen_err)?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600, false)?;
            write_file(&cert_path, cert.pem().as_bytes(), 0o644, false)?;
            Ok((Issuer::new(params, key), vec![written(false)]))
        }
        _ => Err(CertError::IncompleteCa {
            dir: dir.to_owned(),
        }),
    }
}

fn ensure_dir(dir: &Path) -> Result<(), CertError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: {} is accessible to other users; private keys belong in a 0700 \
                     directory",
                    dir.display()
                );
            }
            Ok(())
        }
        Ok(_) => Err(CertError::NotADirectory {
            path: dir.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CertError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
            // The umask may have taken bits away; make the mode exact.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                CertError::CreateDir {
                    path: dir.to_owned(),
                    source,
                }
            })
        }
        Err(source) => Err(CertError::Read {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to a temporary file created with `mode`, flushes it, then puts it in place:
/// with `replace`, by rename; otherwise by hard link, which fails rather than overwrite.
fn write_file(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), CertError> {
    let write_err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if replace {
            fs::rename(&tmp, path)
        } else {
            fs::hard_link(&tmp, path)
        }
    })();
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CertError::AlreadyExists {
            path: path.to_owned(),
        }),
        Err(e) => Err(write_err(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CertError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Decodes the first PEM block labelled `label`.
fn pem_decode(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    base64_decode(&text[start..stop])
}

/// Standard base64 with padding; whitespace is ignored.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let chars: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !chars.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(chars.len() / 4 * 3);
    for (i, quad) in chars.chunks(4).enumerate() {
        let last = i == chars.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &quad[..4 - pad] {
            acc = (acc << 6) | value(c)?;
        }
        acc <<= 6 * pad as u32;
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// Just enough DER to find the fields of an X.509 certificate that reusing a CA depends on.
mod der {
    /// Raw TLV encodings (tag and length included) of some `TBSCertificate` fields.
    pub(super) struct CertParts<'a> {
        pub issuer: &'a [u8],
        pub subject: &'a [u8],
        pub spki: &'a [u8],
    }

    /// One DER element.
    struct Tlv<'a> {
        tag: u8,
        /// The whole encoding: tag, length and content.
        whole: &'a [u8],
        /// What follows the element.
        rest: &'a [u8],
        content: &'a [u8],
    }

    /// Splits one element off `input`.
    fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            rest = &rest[n..];
            len
        };
        let header = input.len() - rest.len();
        if rest.len() < len {
            return None;
        }
        Some(Tlv {
            tag,
            whole: &input[..header + len],
            rest: &rest[len..],
            content: &rest[..len],
        })
    }

    const SEQUENCE: u8 = 0x30;

    pub(super) fn cert_parts(cert: &[u8]) -> Option<CertParts<'_>> {
        let cert = tlv(cert).filter(|t| t.tag == SEQUENCE)?;
        let tbs = tlv(cert.content).filter(|t| t.tag == SEQUENCE)?;
        let mut rest = tbs.content;
        let mut next = || {
            let t = tlv(rest)?;
            rest = t.rest;
            Some(t)
        };
        let mut field = next()?;
        if field.tag == 0xa0 {
            field = next()?; // skip [0] version
        }
        let _serial = Some(field).filter(|t| t.tag == 0x02)?;
        let _signature = next()?;
        let issuer = next().filter(|t| t.tag == SEQUENCE)?;
        let _validity = next()?;
        let subject = next().filter(|t| t.tag == SEQUENCE)?;
        let spki = next().filter(|t| t.tag == SEQUENCE)?;
        Some(CertParts {
            issuer: issuer.whole,
            subject: subject.whole,
            spki: spki.whole,
        })
    }
}

#[cfg(test)]
mod tests;

//! The cluster's mutual TLS: one CA, and a node certificate every gateway
//! and worker presents. Each side accepts only peers whose certificate the
//! cluster CA signed, so a process without the cluster's key cannot send a
//! worker requests nor pose as one.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name in every node certificate, and the one clients verify.
pub const SERVER_NAME: &str = "floe-cluster";
/// ALPN of the RPC; bumped when the framing changes incompatibly.
const ALPN: &[u8] = b"floe-rpc/1";

/// Writes `ca.pem`, `ca.key`, `node.pem` and `node.key` into `dir`. The
/// nodes need the last three but `ca.key`, which signs further node
/// certificates and is best kept offline.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in ["ca.pem", "ca.key", "node.pem", "node.key"] {
        anyhow::ensure!(
            !dir.join(name).exists(),
            "{} exists; not overwriting a cluster's certificates",
            dir.join(name).display()
        );
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "floe cluster CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let node_key = KeyPair::generate()?;
    let mut node = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    node.distinguished_name
        .push(DnType::CommonName, "floe node");
    let issuer = Issuer::new(ca, &ca_key);
    let node_cert = node.signed_by(&node_key, &issuer)?;
    write(dir, "ca.pem", ca_cert.pem(), false)?;
    write(dir, "ca.key", ca_key.serialize_pem(), true)?;
    write(dir, "node.pem", node_cert.pem(), false)?;
    write(dir, "node.key", node_key.serialize_pem(), true)?;
    Ok(())
}

fn write(dir: &Path, name: &str, body: String, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(body.as_bytes())?;
    Ok(())
}

/// A node's TLS material, loaded from a directory `init` wrote.
pub struct Identity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let certs = |name: &str| -> anyhow::Result<Vec<CertificateDer<'static>>> {
            let path = dir.join(name);
            CertificateDer::pem_file_iter(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {}", path.display()))
        };
        let key_path = dir.join("node.key");
        Ok(Self {
            ca: certs("ca.pem")?,
            chain: certs("node.pem")?,
            key: PrivateKeyDer::from_pem_file(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?,
        })
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).context("the cluster CA")?;
        }
        Ok(Arc::new(roots))
    }

    /// A worker's side: requires a client certificate the CA signed.
    pub fn server(&self) -> anyhow::Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .context("the client verifier")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("the node certificate and key do not fit")?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport());
        Ok(server)
    }

    /// A gateway's side: presents the node certificate, trusts only the CA.
    pub fn client(&self) -> anyhow::Result<quinn::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .context("the node certificate and key do not fit")?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(transport());
        Ok(client)
    }
}

/// Streams a peer may have open on one connection.
pub(crate) const MAX_STREAMS: u32 = if cfg!(test) { 8 } else { 4096 };

/// Both ends: keep-alives well inside the idle timeout, so a quiet link to
/// a live worker stays up and a dead one is noticed within seconds.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_secs(5)).expect("a valid timeout"),
    ));
    // One stream per (gateway, shard) plus subscriptions: plenty of room.
    // (A few in unit tests, to reach the limit.)
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    Arc::new(t)
}

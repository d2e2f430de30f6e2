//! `[server.tls]`: TLS termination with rustls, optionally requiring client certificates
//! signed by `client_ca` (mTLS). Certificates and keys are read and checked at config load, so
//! `check` reports an unreadable or mismatched file and a reload never half-applies.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::raw::RawTls;
use super::Problems;

fn certs(path: &str, at: &str, p: &mut Problems) -> Option<Vec<CertificateDer<'static>>> {
    let read = super::watch::read_file(std::path::Path::new(path));
    p.reads(path, read.as_deref().ok());
    let bytes = match read {
        Ok(b) => b,
        Err(e) => {
            p.error(at, format!("cannot read {path}: {e}"));
            return None;
        }
    };
    match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            p.error(at, format!("{path} holds no PEM certificate"));
            None
        }
        Err(e) => {
            p.error(at, format!("{path}: invalid PEM: {e}"));
            None
        }
    }
}

pub fn check(t: &RawTls, p: &mut Problems) -> Option<Arc<rustls::ServerConfig>> {
    let chain = certs(&t.cert, "server.tls.cert", p);
    let read = super::watch::read_file(std::path::Path::new(&t.key));
    p.reads(&t.key, read.as_deref().ok());
    let key = read
        .map_err(|e| e.to_string())
        .and_then(|b| PrivateKeyDer::from_pem_slice(&b).map_err(|e| e.to_string()));
    let key = match key {
        Ok(k) => Some(k),
        Err(e) => {
            p.error(
                "server.tls.key",
                format!("cannot read a PEM private key from {}: {e}", t.key),
            );
            None
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        Err(e) => {
            p.error("server.tls", e);
            return None;
        }
    };
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "server.tls.client_ca", p)? {
                if let Err(e) = roots.add(c) {
                    p.error("server.tls.client_ca", format!("{ca}: {e}"));
                    return None;
                }
            }
            match rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            {
                Ok(v) => builder.with_client_cert_verifier(v),
                Err(e) => {
                    p.error("server.tls.client_ca", format!("{ca}: {e}"));
                    return None;
                }
            }
        }
    };
    match builder.with_single_cert(chain?, key?) {
        Ok(mut cfg) => {
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(cfg))
        }
        Err(e) => {
            p.error(
                "server.tls.key",
                format!("does not match server.tls.cert: {e}"),
            );
            None
        }
    }
}

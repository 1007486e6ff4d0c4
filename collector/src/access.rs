//! Who may do what, once clients present certificates (mutual TLS).
//!
//! A certificate from the fleet CA proves a client belongs to the fleet; it
//! does not say it may retire hosts, nor which host it is. So:
//! - an agent's `host_id` must be one of its certificate's names (subject
//!   CN or DNS SAN), so a compromised host cannot report as another;
//! - the fleet service (list, acknowledge, retire, register images) is for
//!   the certificate names in `access.fleet_clients`, so an agent's
//!   certificate cannot retire hosts.
//!
//! Without client certificates (plaintext on loopback, or TLS without
//! `--tls-ca`) there is no identity to check and these rules do not apply.

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The access rules from the config file.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Certificate names allowed to call the fleet service; empty means any
    /// certificate from the CA.
    pub fleet_clients: Vec<String>,
    /// Require an agent's host id to be a name in its certificate.
    pub agent_host_id_from_certificate: bool,
}

/// The names a certificate vouches for: its subject CNs and DNS SANs.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    names.dedup();
    names
}

/// The client certificate's names, or `None` when the client presented no
/// certificate.
pub fn peer_names<T>(request: &Request<T>) -> Option<Vec<String>> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    Some(certificate_names(leaf.as_ref()))
}

impl Access {
    /// May this agent report as `host_id`?
    pub fn check_agent(&self, names: Option<&[String]>, host_id: &str) -> Result<(), Status> {
        match names {
            Some(names) if self.agent_host_id_from_certificate => {
                if names.iter().any(|n| n == host_id) {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "host_id {host_id:?} is not a name in the client certificate ({}); \
                         run the agent with --host-id set to its certificate's name",
                        list(names)
                    )))
                }
            }
            _ => Ok(()),
        }
    }

    /// May this client use the fleet service?
    pub fn check_fleet(&self, names: Option<&[String]>) -> Result<(), Status> {
        match names {
            Some(names) if !self.fleet_clients.is_empty() => {
                if names.iter().any(|n| self.fleet_clients.contains(n)) {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "certificate ({}) is not in access.fleet_clients",
                        list(names)
                    )))
                }
            }
            _ => Ok(()),
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no names".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let access = Access {
            fleet_clients: vec!["ops".into()],
            agent_host_id_from_certificate: true,
        };
        let web = vec!["web-1".to_string(), "web-1.prod".to_string()];
        assert!(access.check_agent(Some(&web), "web-1.prod").is_ok());
        let err = access.check_agent(Some(&web), "db-1").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("web-1, web-1.prod"),
            "{}",
            err.message()
        );
        assert!(
            access.check_agent(None, "db-1").is_ok(),
            "no certificate, no identity"
        );
        assert!(access.check_fleet(Some(&["ops".to_string()])).is_ok());
        assert!(access.check_fleet(Some(&web)).is_err());
        assert!(Access::default().check_fleet(Some(&web)).is_ok());
    }
}

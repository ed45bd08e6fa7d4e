//! `imagemap-certs`: writes a CA and a serving certificate for the webhook into a folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use imagemap_certs::{write_serving_set, CertificateAuthority, Sans};

/// Write ca.crt, tls.crt and tls.key for the imagemap webhook into a folder.
///
/// Example: imagemap-certs --out .dev/certs --service imagemap-webhook --namespace imagemap-system --host 127.0.0.1
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Folder to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Service name: adds its in-cluster DNS names (with --namespace).
    #[arg(long)]
    service: Option<String>,
    /// Namespace of the Service.
    #[arg(long, default_value = "imagemap-system")]
    namespace: String,
    /// Extra host names or IP addresses to cover (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Validity of both certificates, in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut sans = match &args.service {
        Some(service) => Sans::for_service(service, &args.namespace),
        None => Sans::default(),
    };
    for host in &args.hosts {
        sans.add_host(host);
    }
    if sans.dns.is_empty() && sans.ips.is_empty() {
        anyhow::bail!("no names to certify: pass --service NAME and/or --host HOST");
    }
    let ca = CertificateAuthority::new("imagemap webhook CA", args.days)?;
    let cn = sans.dns.first().cloned().unwrap_or_else(|| "imagemap-webhook".into());
    let leaf = ca.serving(&cn, &sans, args.days)?;
    write_serving_set(&args.out, &ca, &leaf)?;
    println!("wrote {}/ca.crt, tls.crt, tls.key", args.out.display());
    Ok(())
}

//! `driftwatch-collector`: the command line. Parsing, output and exit codes
//! live here; everything else is in the library.
//!
//! Exit codes (one policy for every subcommand):
//! - 0: success (for `serve`, a clean shutdown on SIGTERM or SIGINT).
//! - 2: error: bad config or arguments, unreadable files, a server that
//!   cannot be reached or refused the request, an unknown host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use driftwatch_collector::client::{self, error_chain};
use driftwatch_collector::config::Config;
use driftwatch_collector::output;
use driftwatch_collector::server::{self, ServeOptions, TlsFiles};
use driftwatch_proto::pb::v1 as pb;
use driftwatch_proto::{EntryKind, manifest::codec};

const EXIT_ERROR: u8 = 2;
const DEFAULT_SERVER: &str = "http://127.0.0.1:7707";

#[derive(Parser, Debug)]
#[command(
    name = "driftwatch-collector",
    version,
    about = "Collect drift from driftwatch agents; flag hosts for replacement"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the collector.
    Serve {
        /// Address to listen on. Plaintext is allowed only on loopback
        /// unless --insecure is given.
        #[arg(long, default_value = "127.0.0.1:7707")]
        listen: SocketAddr,
        /// Where the embedded database lives (created if missing).
        #[arg(long, default_value = "/var/lib/driftwatch-collector")]
        data_dir: PathBuf,
        /// Config file (TOML): replacement policy and limits.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
        /// Allow plaintext on a non-loopback address.
        #[arg(long)]
        insecure: bool,
        /// Serve the dashboard, the JSON API (/api/v1/) and Prometheus
        /// /metrics on this address (plaintext: loopback unless --insecure).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// File holding the bearer token that HTTP changes (ack, retire,
        /// drain, release, take) require; without it they are refused.
        #[arg(long)]
        http_token_file: Option<PathBuf>,
    },
    /// List every host with its drift, age and flags.
    Hosts(ClientArgs),
    /// One host's report: deviations with expected and actual values.
    Host {
        host_id: String,
        /// Show at most this many deviations (critical first; at most 10000).
        #[arg(long, default_value_t = 10_000)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hosts flagged for replacement, most urgent first, with reasons.
    Replacements(ClientArgs),
    /// Acknowledge a host's current reasons (a new reason re-flags it).
    Ack {
        host_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark a host retired (replaced): its flags clear.
    Retire {
        host_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The replacement queue: draining and flagged hosts by priority, and
    /// which the disruption budget holds back.
    Queue(ClientArgs),
    /// Take the most urgent host the budget allows (it becomes draining);
    /// prints nothing and exits 0 when there is none.
    Take {
        /// Who takes it (recorded with the host).
        #[arg(long, default_value = "")]
        by: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take a given flagged host, if the budget allows.
    Drain {
        host_id: String,
        #[arg(long, default_value = "")]
        by: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a draining host back to the queue.
    Release {
        host_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deviations shared by several hosts (hand-applied hot-fixes).
    Findings {
        /// Only deviations on at least this many hosts.
        #[arg(long, default_value_t = 2)]
        min_hosts: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Register or list images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ImagesCommand {
    /// Register a baked manifest (run by the image pipeline after bake).
    Register {
        manifest: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List registered images and how many hosts run each.
    List(ClientArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct TlsArgs {
    /// PEM certificate (the server's, or the client's for mTLS).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA: the server requires client certificates signed by it; a
    /// client verifies the server with it.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// The collector's URL (https:// for TLS).
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    tls: TlsArgs,
}

impl ClientArgs {
    /// The fleet service at `--server`, with the TLS flags given.
    async fn connect(
        &self,
    ) -> Result<
        pb::fleet_service_client::FleetServiceClient<tonic::transport::Channel>,
        client::ConnectError,
    > {
        client::fleet(&self.server, &self.tls.files()).await
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    /// Hosts lists only (hosts, replacements).
    Csv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    init_logging(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("driftwatch-collector: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(output) => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            // A reader that went away (`hosts | head`) is not an error.
            let _ = stdout.write_all(output.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("driftwatch-collector: {}", error_chain(e.as_ref()));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Runs a command; returns what to print on stdout.
async fn run(command: Command) -> anyhow::Result<String> {
    match command {
        Command::Serve {
            listen,
            data_dir,
            config,
            tls,
            insecure,
            http,
            http_token_file,
        } => {
            let config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let options = ServeOptions {
                listen,
                data_dir,
                config,
                tls: tls.files(),
                insecure,
                http,
                http_token_file,
            };
            server::serve(options, |_| {}, shutdown_signal()).await?;
            Ok(String::new())
        }
        Command::Hosts(c) => {
            let hosts = c
                .connect()
                .await?
                .list_hosts(pb::ListHostsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .hosts;
            Ok(match c.format {
                Format::Json => json(&output::hosts_json(&hosts)),
                Format::Csv => output::hosts_csv(&hosts),
                Format::Table => output::hosts_table(&hosts),
            })
        }
        Command::Host {
            host_id,
            limit,
            client: c,
        } => {
            let report = c
                .connect()
                .await?
                .get_host(pb::GetHostRequest {
                    host_id,
                    max_deviations: limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            Ok(match c.format {
                Format::Json => json(&output::report_json(&report)),
                Format::Table | Format::Csv => output::report_text(&report),
            })
        }
        Command::Replacements(c) => {
            let hosts = c
                .connect()
                .await?
                .list_replacements(pb::ListReplacementsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .hosts;
            Ok(match c.format {
                Format::Json => json(&output::hosts_json(&hosts)),
                Format::Csv => output::hosts_csv(&hosts),
                Format::Table => output::replacements_text(&hosts),
            })
        }
        Command::Ack { host_id, client: c } => {
            let host = c
                .connect()
                .await?
                .acknowledge_host(pb::HostRequest { host_id })
                .await
                .map_err(status)?
                .into_inner();
            Ok(host_line(&host, "acknowledged", c.format))
        }
        Command::Retire { host_id, client: c } => {
            let host = c
                .connect()
                .await?
                .retire_host(pb::HostRequest { host_id })
                .await
                .map_err(status)?
                .into_inner();
            Ok(host_line(&host, "retired", c.format))
        }
        Command::Images {
            command:
                ImagesCommand::Register {
                    manifest,
                    client: c,
                },
        } => {
            let request = registration(&manifest)?;
            let image = c
                .connect()
                .await?
                .register_image(request)
                .await
                .map_err(status)?
                .into_inner();
            Ok(match c.format {
                Format::Json => json(&output::image_json(&image)),
                Format::Table | Format::Csv => format!(
                    "registered {} {} (manifest {})\n",
                    image.image_id,
                    image.image_version,
                    driftwatch_proto::manifest::hex(&image.manifest_digest)
                ),
            })
        }
        Command::Images {
            command: ImagesCommand::List(c),
        } => {
            let images = c
                .connect()
                .await?
                .list_images(pb::ListImagesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .images;
            Ok(match c.format {
                Format::Json => json(&serde_json::Value::Array(
                    images.iter().map(output::image_json).collect(),
                )),
                Format::Table | Format::Csv => output::images_table(&images),
            })
        }
        Command::Queue(c) => {
            let queue = c
                .connect()
                .await?
                .get_queue(pb::GetQueueRequest {})
                .await
                .map_err(status)?
                .into_inner();
            Ok(match c.format {
                Format::Json => json(&output::queue_json(&queue)),
                Format::Csv => output::hosts_csv(
                    &queue
                        .entries
                        .into_iter()
                        .filter_map(|e| e.host)
                        .collect::<Vec<_>>(),
                ),
                Format::Table => output::queue_text(&queue),
            })
        }
        Command::Take { by, client: c } => {
            let taken = c
                .connect()
                .await?
                .take_next(pb::TakeNextRequest { by })
                .await
                .map_err(status)?
                .into_inner();
            match taken.host {
                Some(host) => Ok(host_line(&host, "draining", c.format)),
                None => {
                    eprintln!("driftwatch-collector: nothing to take: {}", taken.why_none);
                    Ok(match c.format {
                        Format::Json => "null\n".into(),
                        _ => String::new(),
                    })
                }
            }
        }
        Command::Drain {
            host_id,
            by,
            client: c,
        } => {
            let host = c
                .connect()
                .await?
                .drain_host(pb::DrainHostRequest { host_id, by })
                .await
                .map_err(status)?
                .into_inner();
            Ok(host_line(&host, "draining", c.format))
        }
        Command::Release { host_id, client: c } => {
            let host = c
                .connect()
                .await?
                .release_host(pb::HostRequest { host_id })
                .await
                .map_err(status)?
                .into_inner();
            Ok(host_line(&host, "released", c.format))
        }
        Command::Findings {
            min_hosts,
            client: c,
        } => {
            let findings = c
                .connect()
                .await?
                .list_findings(pb::ListFindingsRequest { min_hosts })
                .await
                .map_err(status)?
                .into_inner()
                .findings;
            Ok(match c.format {
                Format::Json => json(&output::findings_json(&findings)),
                Format::Table | Format::Csv => output::findings_table(&findings),
            })
        }
    }
}

fn host_line(host: &pb::HostSummary, what: &str, format: Format) -> String {
    match format {
        Format::Json => json(&output::host_json(host)),
        Format::Csv => output::hosts_csv(std::slice::from_ref(host)),
        Format::Table => format!("{} {what}\n", host.host_id),
    }
}

/// Reads and checks a manifest locally, so a corrupt file is caught in the
/// pipeline rather than registered.
fn registration(path: &std::path::Path) -> anyhow::Result<pb::RegisterImageRequest> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read manifest {}", path.display()))?;
    let decoded = codec::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    let m = &decoded.manifest;
    Ok(pb::RegisterImageRequest {
        manifest_digest: decoded.digest.0.to_vec(),
        image_id: m.provenance.image_id.clone(),
        image_version: m.provenance.image_version.clone(),
        source_commit: m.provenance.source_commit.clone(),
        build_time_unix: m.provenance.build_time_unix,
        entries: m.entries.len() as u64,
        files: m
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count() as u64,
        packages: m.packages.len() as u64,
    })
}

fn json(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    text
}

/// A gRPC status as an error people can read.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

//! `driftwatch-agent`: the command line. Parsing, output and exit codes
//! live here; everything else is in the library.
//!
//! Exit codes (one policy for every subcommand):
//! - 0: success; for `verify`, no drift and every entry verified.
//! - 1: `verify` found drift.
//! - 2: error: unusable manifest, root, policy or arguments (or a bug).
//! - 3: incomplete: `verify` found no drift but could not verify some
//!   entries, or `bake` wrote a manifest with entries it could not record.
//!
//! The verdict is decided before output is written, so a reader that goes
//! away (`verify | head`) does not turn "drift" into "error".

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use driftwatch_agent::bake::{self, read_manifest};
use driftwatch_agent::policy::Policy;
use driftwatch_agent::run::config::{self as run_config, Collector, TlsFiles};
use driftwatch_agent::scan::{ContentMode, ScanOptions, default_threads};
use driftwatch_agent::summary::Summary;
use driftwatch_agent::verify;
use driftwatch_proto::Provenance;

const EXIT_DRIFT: u8 = 1;
const EXIT_ERROR: u8 = 2;
const EXIT_INCOMPLETE: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "driftwatch-agent",
    version,
    about = "Bake an image manifest; verify a host against it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Record what an image contains (run as the last step of an image build).
    Bake {
        /// The image's root file system.
        #[arg(long)]
        root: PathBuf,
        /// Where to write the manifest.
        #[arg(long)]
        out: PathBuf,
        /// Policy file (TOML): exclusions and runtime zones.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long, default_value = "")]
        image_id: String,
        #[arg(long, default_value = "")]
        image_version: String,
        #[arg(long, default_value = "")]
        source_commit: String,
        #[command(flatten)]
        scan: ScanArgs,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Compare a live root and its packages with a manifest, both ways.
    Verify {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        /// Override the policy baked into the manifest (the report says so).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Compare metadata (type, mode, owner, size, mtime, ...) without
        /// hashing content. Faster, but blind to a change that keeps size and
        /// mtime.
        #[arg(long)]
        metadata_only: bool,
        #[command(flatten)]
        scan: ScanArgs,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run as the host's long-lived agent: verify at start and every
    /// interval, and stream the changes to the collector. Logs go to stderr.
    Run(RunArgs),
    /// Show a manifest's provenance, counts, policy and digest.
    Inspect {
        manifest: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The collector's URL: http://HOST:PORT, or https://HOST:PORT with --tls-ca.
    #[arg(long, value_name = "URL")]
    collector: String,
    /// The live root to verify (/ on a host).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The image's manifest.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// The host's identity [default: <root>/etc/machine-id, else the hostname].
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
    /// Time between scans (30s, 5m, 1h, ...).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = run_config::parse_duration)]
    interval: std::time::Duration,
    /// Where the spool and state live (created 0700).
    #[arg(long, value_name = "DIR", default_value = run_config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Time between heartbeats to the collector.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = run_config::parse_duration)]
    heartbeat: std::time::Duration,
    /// The collector's CA certificate (PEM); turns TLS on.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// This agent's client certificate (PEM), with --tls-key.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// This agent's private key (PEM), with --tls-cert.
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Scan worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Cap on bytes hashed per second, for all threads (1048576, 50M, 64MiB) [default: unlimited].
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = run_config::parse_bytes)]
    max_read_rate: Option<u64>,
    /// Bound on the spool of undelivered reports; the oldest are dropped past it.
    #[arg(long, value_name = "N", default_value = "64MiB", value_parser = run_config::parse_bytes)]
    spool_max_bytes: u64,
    /// Do not descend into other file systems mounted below the root.
    #[arg(long)]
    one_file_system: bool,
    /// Scan once, wait until the collector has acknowledged every report, exit.
    #[arg(long)]
    once: bool,
}

impl RunArgs {
    fn config(self) -> anyhow::Result<run_config::Config> {
        let tls = TlsFiles {
            ca: self.tls_ca,
            cert: self.tls_cert,
            key: self.tls_key,
        };
        let config = run_config::Config {
            collector: Collector::new(&self.collector, &tls)?,
            root: self.root,
            manifest: self.manifest,
            host_id: self.host_id,
            interval: self.interval,
            state_dir: self.state_dir,
            heartbeat: self.heartbeat,
            threads: usize::from(self.threads),
            max_read_rate: self.max_read_rate,
            spool_max_bytes: self.spool_max_bytes,
            one_file_system: self.one_file_system,
            once: self.once,
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(clap::Args, Debug)]
struct ScanArgs {
    /// Worker threads [default: 4 per core, at most 32].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Do not descend into other file systems mounted below the root.
    #[arg(long)]
    one_file_system: bool,
}

impl ScanArgs {
    fn options(&self, content: ContentMode) -> ScanOptions {
        ScanOptions {
            threads: self.threads.map_or_else(default_threads, usize::from),
            content,
            one_file_system: self.one_file_system,
            ..ScanOptions::default()
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_file_limit();
    // A panic is a bug; it still exits with the documented error code.
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(Outcome { code, output })) => match emit(&output) {
            // A reader that went away (`| head`) keeps the verdict.
            Err(e) if is_broken_pipe(&e) => ExitCode::from(code),
            Err(e) => {
                eprintln!("driftwatch-agent: error: {e:#}");
                ExitCode::from(EXIT_ERROR)
            }
            Ok(()) => ExitCode::from(code),
        },
        Ok(Err(e)) => {
            eprintln!("driftwatch-agent: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(_) => ExitCode::from(EXIT_ERROR),
    }
}

/// What a command decided and what it prints.
struct Outcome {
    code: u8,
    output: String,
}

/// The scan keeps a descriptor open per directory being worked on, which
/// on deep trees with many threads can pass a soft limit of 1024; the hard
/// limit is ours to use.
fn raise_open_file_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised);
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Bake {
            root,
            out,
            policy,
            image_id,
            image_version,
            source_commit,
            scan,
            format,
        } => {
            let policy = load_policy(policy.as_deref())?.unwrap_or_else(Policy::builtin);
            let provenance = Provenance {
                image_id,
                image_version,
                source_commit,
                build_time_unix: build_time()?,
                tool_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let baked = bake::bake(&root, &policy, provenance, &scan.options(ContentMode::Hash))?;
            bake::write_manifest(&out, &baked.encoded.bytes)?;
            warn_if_manifest_inside_root(&root, &out, &policy);
            let summary = Summary::new(
                &baked.manifest,
                baked.encoded.digest,
                baked.encoded.bytes.len(),
            );
            let output = match format {
                Format::Json => {
                    let mut json_out = summary.to_json();
                    json_out["out"] = out.display().to_string().into();
                    json_out["files_hashed"] = baked.files_hashed.into();
                    json_out["bytes_hashed"] = baked.bytes_hashed.into();
                    json(&json_out)?
                }
                Format::Text => format!("wrote {}\n{}", out.display(), summary.to_text()),
            };
            // Entries bake could not record stay unverified for the life of
            // the image: the image pipeline should know now.
            let code = if baked.manifest.unverified.is_empty() {
                0
            } else {
                EXIT_INCOMPLETE
            };
            Ok(Outcome { code, output })
        }
        Command::Verify {
            root,
            manifest,
            policy,
            metadata_only,
            scan,
            format,
        } => {
            let policy = load_policy(policy.as_deref())?;
            let manifest = read_manifest(&manifest)?;
            let content = if metadata_only {
                ContentMode::MetadataOnly
            } else {
                ContentMode::Hash
            };
            let report = verify::verify(&root, &manifest, policy.as_ref(), &scan.options(content))?;
            let output = match format {
                Format::Json => json(&report.to_json())?,
                Format::Text => report.to_text(),
            };
            let code = if report.has_drift() {
                EXIT_DRIFT
            } else if !report.is_complete() {
                EXIT_INCOMPLETE
            } else {
                0
            };
            Ok(Outcome { code, output })
        }
        Command::Run(args) => {
            run_agent(args.config()?)?;
            Ok(Outcome {
                code: 0,
                output: String::new(),
            })
        }
        Command::Inspect { manifest, format } => {
            let decoded = read_manifest(&manifest)?;
            let summary = Summary::new(&decoded.manifest, decoded.digest, decoded.encoded_len);
            let output = match format {
                Format::Json => json(&summary.to_json())?,
                Format::Text => summary.to_text(),
            };
            Ok(Outcome { code: 0, output })
        }
    }
}

/// Runs the long-lived agent until SIGTERM or SIGINT (or, with `--once`,
/// until its scan is delivered). Priorities are lowered before the runtime
/// starts, so every thread inherits them.
fn run_agent(config: run_config::Config) -> anyhow::Result<()> {
    use driftwatch_agent::run;
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    let lowered = run::priority::lower();
    if let Err(e) = lowered.nice {
        tracing::warn!(error = %e, "cannot lower the CPU priority; running at normal priority");
    }
    if let Err(e) = lowered.io_idle {
        tracing::warn!(error = %e, "cannot set the idle IO class; use --max-read-rate to limit reading");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("driftwatch-rt")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = run::shutdown_signal().context("cannot install signal handlers")?;
        run::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    // An abandoned scan's threads stop at their next file; exit does not
    // wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

/// Writes command output, surfacing a closed pipe as an error instead of
/// the panic `println!` gives.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn json(value: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

fn load_policy(path: Option<&Path>) -> anyhow::Result<Option<Policy>> {
    Ok(path.map(Policy::load).transpose()?)
}

/// The build time: `SOURCE_DATE_EPOCH` when set (the reproducible-builds
/// convention, which makes two bakes of one tree byte-identical), else now.
fn build_time() -> anyhow::Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)),
    }
}

/// A manifest written inside the root it describes shows up as an added
/// file at verify time unless the policy expects it there.
fn warn_if_manifest_inside_root(root: &Path, out: &Path, policy: &Policy) {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(root), Some(parent)) = (std::fs::canonicalize(root), out.parent()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(dir) = std::fs::canonicalize(parent) else {
        return;
    };
    let Ok(rel) = dir
        .join(out.file_name().unwrap_or_default())
        .strip_prefix(&root)
        .map(Path::to_path_buf)
    else {
        return;
    };
    let rel = rel.as_os_str().as_bytes();
    if !policy.is_excluded(rel) && !policy.in_runtime_zone(rel) {
        eprintln!(
            "driftwatch-agent: warning: the manifest was written inside the root at {} and will be reported as added; \
             keep it under var/lib/driftwatch (a runtime zone by default) or outside the root",
            String::from_utf8_lossy(rel)
        );
    }
}

//! `sparsewatch`: parse the command line, load the configuration (exit 2 when it is bad), set
//! up logging, and hand over to the library. Exit 1 on a runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sparsewatch::config::{self, Source, ValidSettings};
use sparsewatch::{checkpoint, eval, replay, service};
use sparsewatch_dsp::DetectorKind;

#[derive(Parser)]
#[command(
    name = "sparsewatch",
    version,
    about = "Anomaly detection on MQTT sensor streams, at the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// TOML configuration file (keys not given take their defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print what a checkpoint holds: streams, sizes, age, dictionary and memory statistics.
    /// Exit 1 when a file is unusable (the reason is printed).
    Inspect {
        /// A state directory (both generations are shown) or one checkpoint file.
        state: PathBuf,
    },
    /// Check a configuration file (and SPARSEWATCH__* overrides) and print the result.
    /// Exit 2 and the key at fault when it is wrong.
    CheckConfig {
        /// TOML configuration file (keys not given take their defaults; the password, CA and
        /// client certificate files it names are read too).
        file: PathBuf,
    },
    /// Print the default configuration, with a comment on every key.
    PrintDefaultConfig,
    /// A first look: embedded broker, the daemon, a recorded fixture replayed onto it.
    /// Needs the `demo` feature (default; device builds leave it out).
    Demo {
        /// Fixture to replay (JSONL of MQTT messages).
        #[arg(long, default_value = "fixtures/pump-bearing.jsonl")]
        fixture: PathBuf,
        /// Replay speed as a multiple of real time; 0 replays as fast as possible.
        #[arg(long, default_value_t = 600.0)]
        speed: f64,
    },
    /// Replay recordings (JSONL of MQTT messages, or CSV) offline through the pipeline, or
    /// onto a broker as live traffic.
    Replay(replay::ReplayArgs),
    /// Score the pipeline on labelled benchmarks (NAB, SKAB) and print the results.
    Eval {
        /// NAB folder: data/<category>/*.csv, combined_windows.json, profiles.json.
        #[arg(long)]
        nab: Option<PathBuf>,
        /// SKAB folder: ;-separated CSVs with `anomaly` labels (e.g. valve1/*.csv).
        #[arg(long)]
        skab: Option<PathBuf>,
        /// SKAB file fed through the pipeline before each scored file (not scored).
        #[arg(long)]
        skab_warmup: Option<PathBuf>,
        /// TOML configuration whose [pipeline] is evaluated (default: compiled-in).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Detectors to compare, comma-separated (default: the configured one).
        #[arg(long, value_delimiter = ',', value_parser = eval::parse_detector)]
        detector: Vec<DetectorKind>,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write per-row scores in NAB's results layout under this folder: `<detector>/` has
        /// the detection rows' likelihoods (0 elsewhere: the events, for NAB's scorer),
        /// `<detector>_likelihood/` every row's likelihood.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Write a figure per file (and detector) under this folder.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// Format of the --plots figures.
        #[arg(long, default_value = "svg", value_parser = ["svg", "png"])]
        plot_format: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match config::load(Source::File(&file)) {
            Ok(v) => {
                println!(
                    "{}: ok (node {}, broker {}:{}, detector {})",
                    file.display(),
                    v.settings.node.id,
                    v.settings.mqtt.host,
                    v.settings.mqtt.port,
                    v.settings.pipeline.detector.name()
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Run { config } => {
            let source = config.as_deref().map_or(Source::Default, Source::File);
            let settings = match config::load(source) {
                Ok(v) => v,
                Err(e) => return config_error(&e),
            };
            init_tracing(&settings.settings.log.level);
            runtime_result(run_daemon(settings, config))
        }
        Command::Inspect { state } => inspect(&state),
        Command::Demo { fixture, speed } => demo(fixture, speed),
        Command::Eval {
            nab,
            skab,
            skab_warmup,
            config,
            detector,
            json,
            results,
            plots,
            plot_format,
        } => {
            let source = config.as_deref().map_or(Source::Default, Source::File);
            let settings = match config::load(source) {
                Ok(v) => v,
                Err(e) => return config_error(&e),
            };
            let opts = eval::EvalOptions {
                nab,
                skab,
                skab_warmup,
                detectors: detector,
                json,
                results,
                plots: plots.map(|dir| (dir, plot_format)),
            };
            runtime_result(eval::run_cli(&opts, &settings.pipeline))
        }
        Command::Replay(args) => {
            let source = args.config.as_deref().map_or(Source::Default, Source::File);
            let settings = match config::load(source) {
                Ok(v) => v,
                Err(e) => return config_error(&e),
            };
            runtime_result(replay::run_cli(&args.into_options(), &settings))
        }
    }
}

#[cfg(feature = "demo")]
fn demo(fixture: PathBuf, speed: f64) -> ExitCode {
    use sparsewatch::demo;
    init_tracing("warn,rumqttd=off,sparsewatch::mqtt=error");
    let opts = demo::DemoOptions { fixture, speed };
    runtime_result(tokio_runtime().and_then(|rt| rt.block_on(demo::run(opts)).map(|_| ())))
}

/// Device builds (`--no-default-features`, the .deb) leave the embedded broker out; the
/// subcommand stays, so `sparsewatch demo` says why it cannot run instead of "unknown command".
#[cfg(not(feature = "demo"))]
fn demo(_fixture: PathBuf, _speed: f64) -> ExitCode {
    runtime_result(Err(anyhow::anyhow!(
        "this build has no demo: it was built without the `demo` feature (device builds leave \
         out the embedded broker). Build it with the default features \
         (`cargo build --release -p sparsewatch`) to get `sparsewatch demo`"
    )))
}

fn config_error(e: &config::ConfigError) -> ExitCode {
    eprintln!("sparsewatch: {e}");
    ExitCode::from(2)
}

fn runtime_result(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sparsewatch: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sparsewatch-io")
        .enable_all()
        .build()?)
}

fn run_daemon(settings: ValidSettings, config: Option<PathBuf>) -> anyhow::Result<()> {
    tokio_runtime()?.block_on(async move {
        let reload = reload_requests()?;
        let life = service::Lifecycle::from_env(config, reload);
        let metrics = std::sync::Arc::new(sparsewatch::metrics::Metrics::default());
        service::run_service(settings, metrics, shutdown_signal(), life).await?;
        Ok(())
    })
}

/// One message per SIGHUP (systemd's `ExecReload=kill -HUP $MAINPID`). Installed before the
/// service starts, so an early SIGHUP is a reload request, not the default "terminate".
fn reload_requests() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    // Capacity: SIGHUPs that arrive while a reload runs fold into one more reload.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

fn inspect(state: &std::path::Path) -> ExitCode {
    match checkpoint::inspect_path(state) {
        Ok(reports) => {
            let mut ok = true;
            for r in &reports {
                print!("{}", r.render());
                ok &= r.result.is_ok();
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("sparsewatch: {}: {e}", state.display());
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM (systemd's stop signal).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// Logs to stdout, one line per event, without colours when stdout is not a terminal
/// (journald). RUST_LOG overrides the configured level.
fn init_tracing(level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .init();
}

//! The `myelin` binary's glue: command line, start-up sequence, listeners, shutdown.
//!
//! A custom build with extra Rust modules is a tiny crate whose `main` calls
//! [`main_with_modules`] with its own [`NativeModule`]s added to the built-in ones.
//!
//! Start-up order (each step must succeed before the next; any failure exits 1 before a port
//! is opened): config (modules' `parse_config` included), logging, storage and migrations,
//! signing key, services, module constructors, freeze registrations, listeners.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use myelin_core::config::{Config, Database, generate_config};
use myelin_core::events::SigningKey;
use myelin_core::modules::{LoadedModule, NativeModule, NativeModules};
use myelin_core::{Homeserver, modules};
use myelin_storage::Storage;
use myelin_storage::pg::PostgresStore;
use myelin_storage::sqlite::{SqliteStore, Synchronous};

pub use myelin_core::modules::NativeModule as Module;

mod import_synapse;

#[derive(Parser)]
#[command(name = "myelin", version, about = "A Matrix homeserver with Synapse's module system")]
struct Cli {
    /// Path to homeserver.yaml (default: ./homeserver.yaml, generated on first run). Given
    /// several times, the files are read as one, later top-level keys winning (a worker's file
    /// after the shared one).
    #[arg(short = 'c', long = "config-path", global = true)]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver (the default).
    Serve,
    /// Write a commented homeserver.yaml and a signing key, then exit.
    GenerateConfig {
        /// The server name.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Where data lives, relative to the config file.
        #[arg(long, default_value = "data")]
        data_dir: String,
        /// The address the listener binds (`0.0.0.0` in a container).
        #[arg(long, default_value = "127.0.0.1")]
        bind_address: std::net::IpAddr,
    },
    /// Validate the whole config (module configs included); exit 0 if valid, 1 if not.
    CheckConfig,
    /// Import a stopped Synapse's database, media and signing key into Myelin's (empty)
    /// database: its users, sessions, rooms and keys carry on (docs/migrating-from-synapse.md).
    ImportSynapse {
        /// Synapse's homeserver.yaml (its database, media store and signing key are read from
        /// the paths it names; nothing of Synapse's is written).
        #[arg(long)]
        synapse_config: PathBuf,
        /// Empty Myelin's database first (a second run refuses without it).
        #[arg(long, conflicts_with = "resume")]
        start_over: bool,
        /// Carry on an import that was interrupted (what it finished is not done again).
        #[arg(long)]
        resume: bool,
    },
    /// Create a local user in the database.
    RegisterUser {
        /// Localpart of the new user.
        #[arg(long, short = 'u')]
        user: String,
        /// Password.
        #[arg(long, short = 'p')]
        password: String,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
}

/// The modules every Myelin build knows.
pub fn builtin_modules() -> Vec<NativeModule> {
    vec![NativeModule::of::<myelin_demo_module::DemoModule>(), NativeModule::of::<myelin_http_antispam::HttpAntispam>()]
}

/// Runs the command line with the built-in modules plus `extra`.
pub fn main_with_modules(extra: Vec<NativeModule>) -> ExitCode {
    let cli = Cli::parse();
    let mut all = builtin_modules();
    all.extend(extra);
    let natives = NativeModules::new(all);
    // Names that are not native are imported as Python dotted paths, as Synapse does.
    #[cfg(feature = "python")]
    let natives = natives.with_foreign(myelin_python::PythonModules::new());
    let default_path = PathBuf::from("homeserver.yaml");
    match cli.command.unwrap_or(Command::Serve) {
        Command::GenerateConfig { server_name, data_dir, bind_address } => {
            let path = cli.config.into_iter().next().unwrap_or(default_path);
            match write_new_config(&path, &server_name, &data_dir, &bind_address.to_string()) {
                Ok(()) => {
                    println!("Wrote {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => {
            let paths = if cli.config.is_empty() { vec![default_path] } else { cli.config };
            match load_config(&paths, &natives) {
                Ok((config, _)) => {
                    for w in &config.warnings {
                        eprintln!("warning: {w}");
                    }
                    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                    println!("Config is valid: {}", shown.join(", "));
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::ImportSynapse { synapse_config, start_over, resume } => {
            let paths = if cli.config.is_empty() { vec![default_path] } else { cli.config };
            let (config, _) = match load_config(&paths, &natives) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match run_import(&synapse_config, config, start_over, resume) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("import-synapse: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RegisterUser { user, password, admin } => {
            let paths = if cli.config.is_empty() { vec![default_path] } else { cli.config };
            let (config, _) = match load_config(&paths, &natives) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime().block_on(async move {
                let hs = match open_services_off_runtime(config).await {
                    Ok(hs) => hs,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                hs.modules.freeze();
                match hs.register_local_user(&user, &password, admin).await {
                    Ok(id) => {
                        println!("Created user {id}{}", if admin { " (admin)" } else { "" });
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("Could not create user: {}", e.message);
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Serve => {
            let paths = if cli.config.is_empty() {
                if !default_path.exists() {
                    if let Err(e) = write_new_config(&default_path, "localhost", "data", "127.0.0.1") {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                    eprintln!("Generated {} for server_name 'localhost'", default_path.display());
                }
                vec![default_path]
            } else {
                cli.config
            };
            let (config, modules) = match load_config(&paths, &natives) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = init_logging(&config.log_level, &config.log) {
                eprintln!("Error during startup:\n{e}");
                return ExitCode::FAILURE;
            }
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            runtime().block_on(serve(config, modules))
        }
    }
}

/// The Tokio runtime. Storage calls run inline on the workers; the blocking pool only hashes
/// passwords and makes thumbnails, so a small pool suffices, and it keeps memory flat under load
/// (each blocking thread grows its own allocator arena).
fn runtime() -> tokio::runtime::Runtime {
    // glibc raises its mmap threshold after large blocks are freed, and then keeps later large
    // blocks (argon2's 19 MiB per password hash, upload buffers) in per-thread arenas for good:
    // a few hundred registrations left 350 MB resident. A fixed threshold returns them.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(16).build().expect("tokio runtime")
}

/// File descriptors kept back from HTTP connections: the database, its WAL, media files,
/// outbound federation and push connections, logs.
const RESERVED_FILE_DESCRIPTORS: u64 = 256;

/// Below this many file descriptors an admin is told to raise the limit.
const LOW_FILE_DESCRIPTOR_LIMIT: u64 = 4096;

/// Raises the soft open-files limit to the hard one (as Synapse does at start-up) and says how
/// many HTTP connections the process can then serve at once.
fn connection_capacity() -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                if limit.rlim_cur < limit.rlim_max {
                    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                        limit.rlim_cur = limit.rlim_max;
                    }
                }
                limit.rlim_cur
            } else {
                1024
            }
        };
        if soft < LOW_FILE_DESCRIPTOR_LIMIT {
            tracing::warn!(
                limit = soft,
                "the open-files limit (ulimit -n) is low: at most {} connections will be served at once; \
                 raise it (e.g. LimitNOFILE=65536 for systemd)",
                soft.saturating_sub(RESERVED_FILE_DESCRIPTORS).max(16)
            );
        }
        soft.saturating_sub(RESERVED_FILE_DESCRIPTORS).clamp(16, 1 << 20) as usize
    }
    #[cfg(not(unix))]
    {
        10_000
    }
}

fn write_new_config(path: &Path, server_name: &str, data_dir: &str, bind_address: &str) -> Result<(), String> {
    if path.exists() {
        return Err(format!("{} already exists; not overwriting it", path.display()));
    }
    let text = generate_config(server_name, data_dir, bind_address);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let key = base.join(data_dir).join(format!("{server_name}.signing.key"));
    if !key.exists() {
        SigningKey::generate(&key)?;
    }
    Ok(())
}

/// Loads the config, printing Synapse's error format (a blank line, then the error) on failure.
fn load_config(paths: &[PathBuf], natives: &NativeModules) -> Result<(Config, Vec<LoadedModule>), ExitCode> {
    Config::load_all(paths, natives).map_err(|e| {
        eprintln!();
        eprint!("{e}");
        ExitCode::FAILURE
    })
}

/// The log: to stderr, or appended to `log_config`'s file; text (coloured only on a terminal,
/// as a redirected log is read by tools) or JSON lines. Every line within a request carries the
/// request's span (its ID, route, user).
fn init_logging(level: &str, settings: &myelin_core::log_config::LogSettings) -> Result<(), String> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("MYELIN_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},hyper=warn,ruma_state_res=warn")))
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter());
    let _ = match (&settings.file, settings.json) {
        (Some(path), json) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("Could not open the log file {}: {e}", path.display()))?;
            let writer = std::sync::Mutex::new(file);
            if json {
                builder.json().with_writer(writer).try_init()
            } else {
                builder.with_ansi(false).with_writer(writer).try_init()
            }
        }
        (None, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (None, false) => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).with_writer(std::io::stderr).try_init()
        }
    };
    Ok(())
}

fn open_storage(database: &Database) -> Result<Arc<dyn Storage>, String> {
    Ok(match database {
        Database::Sqlite(options) => {
            Arc::new(SqliteStore::open_with(options).map_err(|e| format!("Could not open the database: {e}"))?)
        }
        Database::Postgres(options) => {
            Arc::new(PostgresStore::open(options).map_err(|e| format!("Could not open the database: {e}"))?)
        }
    })
}

/// `myelin import-synapse`: checks everything it can before writing anything (Synapse's
/// schema, the server name, an empty target), then rows, then push rules and pushers through
/// the homeserver's handlers, then prints the summary.
fn run_import(synapse_config: &Path, config: Config, start_over: bool, resume: bool) -> Result<(), String> {
    use import_synapse as import;
    let synapse = import::SynapseConfig::load(synapse_config)?;
    import::check_server_name(&synapse, &config)?;
    import::check_paths(&synapse, &config)?;
    let db = import::open_synapse(&synapse)?;
    import::check_media_store(&db, &synapse)?;
    if start_over {
        import::remove_target(&config)?;
    }
    // Nothing is acknowledged to anyone during an import (a failed one starts over), so SQLite
    // need not fsync each batch; the checkpoint at the end syncs the whole database.
    let mut database = config.database.clone();
    if let Database::Sqlite(options) = &mut database {
        options.synchronous = Synchronous::Normal;
    }
    let store = open_storage(&database)?;
    import::claim_target(store.as_ref(), resume)?;
    eprintln!("Importing {} into Myelin's database:", synapse_config.display());
    let started = std::time::Instant::now();
    let mut summary = import::import_rows(&db, &synapse, &config, store.as_ref())?;
    import::copy_signing_key(&synapse, &config)?;
    let rules = import::push_rules(&db)?;
    let pushers = import::pushers(&db)?;
    let key = SigningKey::load(&config.signing_key_path)?;
    let hs = Homeserver::new(config, store.clone(), key).map_err(|e| format!("Could not start: {e}"))?;
    let (rule_count, pusher_count) = runtime().block_on(import::through_handlers(&hs, rules, pushers));
    summary.imported.push(("push rules (set by users)", rule_count));
    summary.imported.push(("pushers", pusher_count));
    import::finish(store.as_ref())?;
    let _ = store.shutdown();
    println!("Imported in {:.1} s:", started.elapsed().as_secs_f64());
    for (what, n) in &summary.imported {
        println!("  {what}: {n}");
    }
    if !summary.skipped.is_empty() {
        println!("Not imported:");
        for (what, n, why) in &summary.skipped {
            println!("  {what}: {n} ({why})");
        }
    }
    println!("Synapse's signing key is now Myelin's ({}).", hs.config.signing_key_path.display());
    Ok(())
}

fn open_services(config: Config) -> Result<Arc<Homeserver>, String> {
    let store = open_storage(&config.database)?;
    if !config.signing_key_path.exists() {
        SigningKey::generate(&config.signing_key_path)?;
        tracing::info!(path = %config.signing_key_path.display(), "generated a new signing key");
    }
    let key = SigningKey::load(&config.signing_key_path)?;
    Homeserver::new(config, store, key).map_err(|e| format!("Could not start: {e}"))
}

/// [`open_services`] on the blocking pool: opening a networked database blocks (and the
/// `postgres` client must not run on a runtime worker).
async fn open_services_off_runtime(config: Config) -> Result<Arc<Homeserver>, String> {
    tokio::task::spawn_blocking(move || open_services(config)).await.map_err(|e| format!("Could not start: {e}"))?
}

async fn serve(config: Config, loaded: Vec<LoadedModule>) -> ExitCode {
    let hs = match open_services_off_runtime(config).await {
        Ok(hs) => hs,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = modules::instantiate(&hs, loaded) {
        eprintln!("Error during startup:");
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    hs.modules.freeze();

    // Bind every listener before serving any, so a bad address fails start-up cleanly.
    let mut bound = Vec::new();
    for listener in &hs.config.listeners {
        for addr in &listener.bind_addresses {
            let socket =
                format!("{}:{}", if addr.contains(':') { format!("[{addr}]") } else { addr.clone() }, listener.port);
            match tokio::net::TcpListener::bind(&socket).await {
                Ok(l) => bound.push((l, listener.clone(), listener.tls)),
                Err(e) => {
                    eprintln!("Error during startup:\nCould not listen on {socket}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let tls = if bound.iter().any(|(_, _, tls)| *tls) {
        let (Some(cert), Some(key)) = (&hs.config.tls_certificate_path, &hs.config.tls_private_key_path) else {
            unreachable!("the config requires both paths for a TLS listener");
        };
        match myelin_http::tls_acceptor(cert, key) {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                eprintln!("Error during startup:\nCould not load the TLS certificate: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if let Err(e) = hs.start_bus().await {
        // The cause, not the 500 message a client would get.
        eprintln!(
            "Error during startup:\nCould not join the other processes: {}",
            e.cause.as_deref().unwrap_or(&e.message)
        );
        return ExitCode::FAILURE;
    }
    hs.start_federation_sender();
    if let Err(e) = hs.ensure_appservice_senders().await {
        eprintln!(
            "Error during startup:\nCould not create the application services' users: {}",
            e.cause.as_deref().unwrap_or(&e.message)
        );
        return ExitCode::FAILURE;
    }
    for registration in hs.appservices() {
        tracing::info!(appservice = %registration.id, sender = %registration.sender, url = ?registration.url, "loaded application service");
    }
    // Push notifications and appservice transactions go out from one process
    // (`run_background_tasks_on`), or each event would be sent once per process.
    if hs.config.instance.runs_background_tasks() {
        hs.start_push_gateway_sender();
        hs.start_appservice_senders();
        hs.start_account_validity_tasks();
    }
    // `pid_file`: written before the listeners announce themselves, gone again after a clean exit.
    if let Some(path) = &hs.config.pid_file
        && let Err(e) = std::fs::write(path, format!("{}\n", std::process::id()))
    {
        eprintln!("Error during startup:\nCould not write the pid_file {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let stop_signal = shutdown_signal();
    let connections = myelin_http::Connections::new(connection_capacity(), hs.config.request_header_timeout);
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for (listener, spec, is_tls) in bound {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let scheme = if is_tls { "https" } else { "http" };
        // Tests read this line to find the port.
        eprintln!("myelin: listening on {scheme}://{addr}");
        tracing::info!("Listening on {scheme}://{addr}");
        let app = myelin_http::router(hs.clone(), &spec);
        let mut stop = stop_tx.subscribe();
        let stopped = async move {
            let _ = stop.recv().await;
        };
        match (&tls, is_tls) {
            (Some(acceptor), true) => tasks.push(tokio::spawn(myelin_http::serve_tls(
                listener,
                acceptor.clone(),
                app,
                connections.clone(),
                stopped,
            ))),
            _ => tasks.push(tokio::spawn(myelin_http::serve(listener, app, connections.clone(), stopped))),
        }
    }
    stop_signal.await;
    tracing::info!("Shutting down: finishing in-flight requests");
    hs.begin_shutdown();
    let _ = stop_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
    // The database last: a clean stop leaves no WAL to replay.
    if let Err(e) = hs.close_storage().await {
        tracing::warn!(error = %e, "the database did not close cleanly");
    }
    if let Some(path) = &hs.config.pid_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("Stopped");
    ExitCode::SUCCESS
}

/// Installs the SIGTERM and Ctrl-C handlers now (before the listeners announce themselves: a
/// SIGTERM arriving before would kill the process uncleanly) and completes when either arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
}

//! The `cadre` binary: `serve`, `migrate`, `export`, `import`, `runtime`, `image build`.

use anyhow::Context;
use cadre::config::Config;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cadre",
    version,
    about = "Run AI agents as employees of an organization"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane (API, dashboard, actors) on the configured database.
    Serve {
        /// A TOML file layered over the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply the database's migrations (SQLite, PostgreSQL or MySQL /
    /// MariaDB, by the URL's scheme), print what was applied, and exit.
    Migrate {
        /// A TOML file layered over the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write the whole database (every table, as JSON lines) into a new or
    /// empty directory, from one consistent snapshot; Cadre may be serving.
    Export {
        /// A TOML file layered over the defaults (for `database.url`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The directory to write (created when missing; must be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Load an export into the configured database, which must hold no
    /// rows (its migrations are applied first); all or nothing.
    Import {
        /// A TOML file layered over the defaults (for `database.url`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The directory `cadre export` wrote.
        #[arg(long)]
        from: PathBuf,
    },
    /// Run an agent runtime (started by a deployer).
    Runtime {
        /// The runtime.json written at deploy time (without it, the JSON in
        /// the environment variable CADRE_RUNTIME_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Runtime images for the Docker target.
    Image {
        #[command(subcommand)]
        command: ImageCmd,
    },
    /// The knowledge index.
    Knowledge {
        #[command(subcommand)]
        command: KnowledgeCmd,
    },
    /// Lift every login lock of an email (for an owner locked out of their
    /// own account; `POST /api/v1/admin/unlock` does the same for an
    /// instance admin who is signed in). Works while Cadre is serving.
    Unlock {
        /// A TOML file layered over the defaults (for `database.url`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The email whose locks are lifted.
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum KnowledgeCmd {
    /// Empty the search index in the data directory and index every
    /// document and memory of the database again (Cadre must not be
    /// serving on this data directory; `POST /api/v1/knowledge/rebuild`
    /// does the same while it is).
    Rebuild {
        /// A TOML file layered over the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build the runtime image from this binary on the configured Docker
    /// engine: the binary alone `FROM scratch` when it is static, else the
    /// binary with the shared libraries it runs with. No registry is needed.
    Build {
        /// A TOML file layered over the defaults (for `[deploy.docker]`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Image name and tag (default: `[deploy.docker] image`).
        #[arg(long)]
        tag: Option<String>,
    },
}

/// The data directory, where the default SQLite file lives, when no
/// `database.url` names another place.
fn ensure_data_dir(config: &Config) -> anyhow::Result<()> {
    if config.database.url.is_empty() {
        cadre::files::secure_data_dir(&config.data_dir, config.sqlite_file().as_deref())
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    }
    Ok(())
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.json() {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Everything Cadre writes (the database and its WAL, the search index,
    // exports, runtime logs) is its owner's only: see `cadre::files`.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // `cadre serve --help` lists the environment variables and defaults.
    let help = cadre::config::env_help();
    let command = Cli::command().mut_subcommand("serve", |s| s.after_help(help));
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Cmd::Serve { config } => {
            let config = Config::from_env(config.as_deref())?;
            init_tracing(&config);
            let config_log = config.log.clone();
            let mut running = cadre::app::start(config).await?;
            cadre::config::notice(
                &config_log,
                &format!("listening on http://{}", running.addr),
            );
            tokio::select! {
                _ = shutdown_signal() => {}
                r = running.wait() => return r,
            }
            tracing::info!("shutting down");
            running.shutdown().await;
            Ok(())
        }
        Cmd::Migrate { config } => {
            let config = Config::from_env(config.as_deref())?;
            init_tracing(&config);
            let url = config.database_url();
            ensure_data_dir(&config)?;
            let report = cadre::store::backend::migrate(&url).await?;
            println!("{report}");
            Ok(())
        }
        Cmd::Export { config, out } => {
            let config = Config::from_env(config.as_deref())?;
            init_tracing(&config);
            let url = config.database_url();
            let manifest = cadre::store::transfer::export(&url, &out).await?;
            println!(
                "{}: exported {} rows of {} tables at schema {:04} to {}",
                manifest.source,
                manifest.rows(),
                manifest.tables.len(),
                manifest.schema,
                out.display()
            );
            Ok(())
        }
        Cmd::Import { config, from } => {
            let config = Config::from_env(config.as_deref())?;
            init_tracing(&config);
            let url = config.database_url();
            ensure_data_dir(&config)?;
            let report = cadre::store::transfer::import(&url, &from).await?;
            println!("{report}");
            Ok(())
        }
        Cmd::Knowledge {
            command: KnowledgeCmd::Rebuild { config },
        } => {
            let config = Config::from_env(config.as_deref())?;
            init_tracing(&config);
            ensure_data_dir(&config)?;
            let store = std::sync::Arc::new(cadre::app::open_store(&config).await?);
            let chunker = cadre::knowledge::chunk::Chunker::new(
                config.knowledge.chunk_tokens,
                config.knowledge.overlap_tokens,
            )
            .map_err(anyhow::Error::msg)?;
            let (knowledge, writer) = cadre::knowledge::Knowledge::start(
                store.clone(),
                &config.data_dir.join("knowledge"),
                chunker,
                None,
                cadre::knowledge::VectorOptions {
                    index: config.knowledge.vector_index,
                    snapshot_every: std::time::Duration::from_secs(
                        config.knowledge.vector_snapshot_seconds.max(1),
                    ),
                },
            )
            .await
            .context("opening the knowledge index (is Cadre serving on this data directory?)")?;
            let r = knowledge.rebuild(None).await?;
            println!(
                "rebuilt the knowledge index: {} documents ({} chunks), {} memories",
                r.documents, r.chunks, r.memories
            );
            writer.abort();
            let _ = writer.await;
            knowledge.save_vectors().await?;
            store.close().await;
            Ok(())
        }
        Cmd::Unlock { config, email } => {
            let config = Config::from_env(config.as_deref())?;
            init_tracing(&config);
            let email = cadre::identity::normalize_email(&email)
                .map_err(|why| anyhow::anyhow!("--email: {why}"))?;
            ensure_data_dir(&config)?;
            let store = cadre::app::open_store(&config).await?;
            let tables = store.tables();
            let org = match tables.user_record_by_email(&email).await? {
                Some(user) => user.org_id,
                None => String::new(),
            };
            let now = cadre_actors::ports::Clock::now_ms(&cadre_actors::ports::SystemClock);
            let audit = cadre_actors::audit::AuditEntry::new(
                &cadre_actors::domain::OrgId(org),
                &cadre_actors::domain::Who::system(),
                "auth.unlock",
                format!("login:{email}"),
                serde_json::json!({ "email": email, "via": "cli" }),
                now,
            );
            let was = tables.unlock_login(&email, now, &audit).await?;
            println!(
                "{email}: {}",
                if was { "unlocked" } else { "was not locked" }
            );
            store.close().await;
            Ok(())
        }
        Cmd::Runtime { config } => cadre::runtime::run(config.as_deref())
            .await
            .context("runtime"),
        Cmd::Image {
            command: ImageCmd::Build { config, tag },
        } => {
            let config = Config::from_env(config.as_deref())?;
            let tag = tag.unwrap_or_else(|| config.deploy.docker.image.clone());
            let docker = cadre::deploy::docker::connect(&config.deploy.docker)
                .await
                .map_err(anyhow::Error::msg)
                .context("connecting to the Docker engine")?;
            let id = cadre::deploy::image::build(&docker, &tag)
                .await
                .context("building the runtime image")?;
            println!("{tag} {id}");
            Ok(())
        }
    }
}

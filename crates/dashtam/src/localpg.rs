//! A throwaway PostgreSQL cluster for `dashtam demo` on a machine whose
//! PostgreSQL server is not running: if nothing answers at the configured
//! URL and `initdb`/`pg_ctl` are installed (on `PATH`, or in the versioned
//! directories Debian, Ubuntu and others install them in), the demo runs
//! against a cluster in a temporary directory, on a free port, and removes
//! it afterwards. PostgreSQL refuses to run as root: as root, the cluster
//! belongs to the `postgres` user (`runuser`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// What to install when there is no PostgreSQL at all.
const INSTALL: &str = "install PostgreSQL (Debian/Ubuntu: `apt install postgresql`; \
     macOS: `brew install postgresql`) and start it, or point --database-url / \
     DATABASE_URL at a running server";

pub struct LocalPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run PostgreSQL's tools as this user (we are root).
    run_as: Option<&'static str>,
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, else the
/// newest of the versioned directories packages install them in.
fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut found: Vec<PathBuf> = [
        "/usr/lib/postgresql",
        "/usr/local/pgsql",
        "/opt/homebrew/opt",
    ]
    .iter()
    .filter_map(|root| std::fs::read_dir(root).ok())
    .flatten()
    .flatten()
    .map(|e| e.path().join("bin"))
    .filter(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    .collect();
    // Versions as numbers: 16 sorts after 9.6.
    found.sort_by_key(|d| {
        d.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl LocalPostgres {
    /// Creates and starts the cluster, or says what to install. `durable`:
    /// PostgreSQL's defaults as they are (benchmarks that must see what
    /// production sees); otherwise without fsync (a demo's data is
    /// throwaway).
    pub fn start(durable: bool) -> anyhow::Result<Self> {
        let Some(bin) = find_bin() else {
            bail!("no PostgreSQL server answers and PostgreSQL is not installed: {INSTALL}");
        };
        let run_as = is_root().then_some("postgres");
        let dir = std::env::temp_dir().join(format!("dashtam-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pg = Self {
            dir,
            bin,
            port,
            run_as,
        };
        if let Some(user) = run_as {
            run(Command::new("chown").arg(user).arg(&pg.dir))
                .context("PostgreSQL refuses to run as root, and the directory could not be given to the postgres user")?;
        }
        pg.tool(
            "initdb",
            &["-A", "trust", "-U", "postgres", "--no-sync", "-D"],
        )
        .context("initdb")?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1{}",
            pg.port,
            pg.dir.display(),
            if durable { "" } else { " -c fsync=off" }
        );
        let log = pg.dir.join("server.log");
        pg.tool(
            "pg_ctl",
            &[
                "-w",
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "start",
                "-D",
            ],
        )
        .with_context(|| format!("starting PostgreSQL (its log: {})", log.display()))?;
        Ok(pg)
    }

    /// The URL of database `db` on it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// `tool args… <dir>`.
    fn tool(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut c = self.command(tool);
        c.args(args).arg(&self.dir);
        run(&mut c)
    }
}

/// Runs `c`; its standard error is the error when it fails.
fn run(c: &mut Command) -> anyhow::Result<()> {
    let out = c.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Drop for LocalPostgres {
    /// Stops the cluster and removes its directory.
    fn drop(&mut self) {
        let mut c = self.command("pg_ctl");
        c.args(["-m", "immediate", "-w", "stop", "-D"])
            .arg(&self.dir);
        let _ = run(&mut c);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

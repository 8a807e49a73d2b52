//! What the integration-test binaries share: the one way tests wait
//! ([`wait_for`]), and private PostgreSQL and Redis servers for tests that
//! stop, crash or restart them (the shared servers, and the tests running on
//! them, are never disturbed).
//!
//! Tests never assert on elapsed time and never sleep then assert: they
//! wait for a condition, with a generous limit that only decides when to
//! give up.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod browser;

/// Polls `check` until it returns `Ok(value)` and returns the value. Past
/// `limit` the test fails with `what` and the last `Err` (what was seen).
pub async fn wait_for<T, E, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => {
                if tokio::time::Instant::now() >= deadline {
                    panic!("gave up after {limit:?} waiting for {what}; last seen: {seen:?}");
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// [`wait_for`] for synchronous checks outside a runtime.
pub fn wait_for_blocking<T, E: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) => {
                if std::time::Instant::now() >= deadline {
                    panic!("gave up after {limit:?} waiting for {what}; last seen: {seen:?}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// A private PostgreSQL server (initdb in a temporary directory, on an
/// ephemeral port), removed on drop.
pub struct PrivatePg {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn pg_bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().expect("a PostgreSQL bin directory")
}

impl PrivatePg {
    /// A PostgreSQL binary, run as the `postgres` user when we are root
    /// (the server refuses to run as root).
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let status = self
            .command(tool)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run a PostgreSQL tool");
        assert!(status.success(), "{tool} {args:?} failed");
    }

    /// initdb and start. Durable settings (fsync on), as production runs,
    /// so a crash loses exactly what an unflushed asynchronous commit loses.
    pub fn start_new() -> Self {
        let dir = std::env::temp_dir().join(format!("dashtam-pg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let pg = Self {
            dir,
            bin: pg_bindir(),
            port: free_port(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.start();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn opts(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        )
    }

    pub fn start(&self) {
        let (data, opts, log) = (self.data(), self.opts(), self.log());
        self.run(
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// A clean restart (`-m fast`).
    pub fn restart(&self) {
        let (data, opts, log) = (self.data(), self.opts(), self.log());
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &opts, "-l", &log, "-m", "fast", "-w", "restart",
            ],
        );
    }

    /// A crash: `-m immediate` stops every server process at once, without
    /// a checkpoint; what was not flushed to the WAL is lost.
    pub fn crash(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    fn log(&self) -> String {
        self.dir.join("server.log").display().to_string()
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private PgBouncer (Debian's `pgbouncer`) in transaction pooling mode
/// in front of the PostgreSQL server at `upstream_port` on 127.0.0.1, with
/// at most `pool_size` server connections per database; stopped on drop.
pub struct PrivatePgBouncer {
    dir: PathBuf,
    child: Child,
    pub port: u16,
}

impl PrivatePgBouncer {
    pub fn start(upstream_port: u16, pool_size: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("dashtam-pgbouncer-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("create PgBouncer's directory");
        let port = free_port();
        let users = dir.join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").expect("write the auth file");
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
                 admin_users = postgres\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits\n",
                users.display()
            ),
        )
        .expect("write pgbouncer.ini");
        // PgBouncer refuses to run as root; setpriv execs it as `postgres`
        // (no process in between, so killing the child kills PgBouncer).
        let mut command = if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success());
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "/usr/sbin/pgbouncer",
            ]);
            c
        } else {
            Command::new("/usr/sbin/pgbouncer")
        };
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pgbouncer.log")).expect("log file"))
            .spawn()
            .expect("start /usr/sbin/pgbouncer (Debian package pgbouncer)");
        wait_for_blocking("pgbouncer to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).map(drop)
        });
        Self { dir, child, port }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Its log (connections, errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis server (nothing kept on disk), stopped on drop.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut r = Self {
            child: None,
            port: free_port(),
        };
        r.start_again();
        r
    }

    /// Starts the server again on the same port.
    pub fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_for_blocking("redis-server to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).map(drop)
        });
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

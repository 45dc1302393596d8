//! A PostgreSQL server of the test's own, from the system's binaries
//! (`/usr/lib/postgresql/*/bin`, Debian's `postgresql` package; scripts/pg.sh
//! installs it when missing), on a free port and a throw-away data
//! directory, so a test can crash and restart it without touching the
//! shared server the other tests use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct PgCluster {
    pub port: u16,
    bindir: PathBuf,
    dir: tempfile::TempDir,
    /// PostgreSQL refuses to run as root: the commands run as `postgres`.
    as_postgres: bool,
    /// More `-c name=value` server settings (e.g. TLS).
    settings: Vec<String>,
}

fn bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries under /usr/lib/postgresql: apt-get install postgresql (scripts/pg.sh does)")
    })
}

impl PgCluster {
    /// Initialises a cluster (trust auth, user `postgres`) and starts it.
    pub fn start() -> PgCluster {
        Self::start_with(|_| Vec::new())
    }

    /// [`start`](Self::start) with more server settings, which `settings`
    /// makes from the cluster's directory (to put files such as TLS keys
    /// in it first; they are handed to `postgres` before the start).
    pub fn start_with(settings: impl FnOnce(&Path) -> Vec<String>) -> PgCluster {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("klines-pgcluster-")
            .tempdir()
            .unwrap();
        let settings = settings(dir.path());
        let cluster = PgCluster {
            port: super::free_port(),
            bindir: bindir(),
            dir,
            as_postgres,
            settings,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown the cluster's directory to postgres");
        }
        let data = cluster.data();
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.resume();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let bin = self.bindir.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/{db}`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the server (again) on the same port and data.
    pub fn resume(&self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        for setting in &self.settings {
            opts.push_str(" -c ");
            opts.push_str(setting);
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// Stops the server like a crash (`pg_ctl stop -m immediate`: every
    /// session is cut, the next start recovers from the WAL).
    pub fn crash(&self) {
        self.stop_mode("immediate");
    }

    fn stop_mode(&self, mode: &str) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", mode, "stop"])
            .output();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the server accepts connections.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let url = self.url("postgres");
        super::wait_until(timeout, || {
            let url = url.clone();
            async move {
                match sqlx::PgPool::connect(&url).await {
                    Ok(pool) => {
                        pool.close().await;
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .await
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_mode("fast");
    }
}

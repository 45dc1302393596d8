//! A real S3-compatible server for the tests: `s3s-fs` (crates.io), which
//! keeps objects as files, checks SigV4 signatures and survives restarts on
//! the same directory, so a test can stop "S3" and bring it back. `make
//! test` installs it (scripts/tools.sh); `KLINES_S3S_FS` may name the
//! binary.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

pub const S3_BUCKET: &str = "klines-test";
pub const S3_ACCESS_KEY: &str = "klines-test-key";
pub const S3_SECRET_KEY: &str = "klines-test-secret";

static ENV: Once = Once::new();

/// The credentials the AWS chain of the code under test finds (the same
/// values in every test, so setting them twice is harmless), and no
/// instance-metadata probing.
pub fn s3_env() -> [(&'static str, &'static str); 3] {
    [
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// Where scripts/tools.sh installs the test tools (`KLINES_TOOLS`).
pub fn tools_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KLINES_TOOLS") {
        return Some(PathBuf::from(d));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("klines-tools"))
}

/// The tools venv's Python (DuckDB, openapi-spec-validator): `KLINES_PYTHON`
/// or the one scripts/tools.sh installs.
pub fn tools_python() -> PathBuf {
    std::env::var_os("KLINES_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let venv = tools_dir()?.join("venv/bin/python");
            venv.is_file().then_some(venv)
        })
        .unwrap_or_else(|| {
            panic!("no tools venv: run `make test` (scripts/tools.sh installs it) or set KLINES_PYTHON")
        })
}

/// A program the tests run: from the tools venv, else from `PATH`;
/// `hint` says how to install it.
pub fn find_tool(name: &str, hint: &str) -> PathBuf {
    tools_dir()
        .map(|d| d.join("venv/bin"))
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: {hint}"))
}

fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("KLINES_S3S_FS") {
        return PathBuf::from(p);
    }
    let on_path = tools_dir()
        .map(|d| d.join("bin"))
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "s3s-fs not found: run `make test` (it installs it) or \
             `cargo install s3s-fs --version 0.14.1 --locked --features binary`"
        )
    })
}

/// One `s3s-fs` on a free port of 127.0.0.1 with one bucket.
pub struct S3Server {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    pub async fn start() -> S3Server {
        ENV.call_once(|| {
            for (k, v) in s3_env() {
                // SAFETY of intent: every test sets the same values before
                // its first S3 client; std's env lock serialises access.
                std::env::set_var(k, v);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(S3_BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = S3Server {
            port,
            dir,
            child: None,
        };
        s.resume().await;
        s
    }

    /// Starts the server (again) on the same port and directory.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("s3s-fs did not listen on {addr} within 10 s");
    }

    /// Stops the server (SIGKILL): connections are refused until
    /// [`resume`](Self::resume).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `[lake]` keys sending the lake to this server's bucket.
    pub fn lake_toml(&self) -> String {
        format!(
            "bucket = \"{S3_BUCKET}\"\nendpoint = \"{}\"\npath_style = true\nregion = \"us-east-1\"\nrequest_timeout = \"2s\"\n",
            self.endpoint()
        )
    }

    /// Where the server keeps the bucket's objects as files (for DuckDB).
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join(S3_BUCKET)
    }

    /// A store client of this bucket, as the service builds it.
    pub async fn store(&self) -> klines::lake::store::Store {
        let toml = format!("[lake]\n{}", self.lake_toml());
        let mut table: toml::Table = toml::from_str(&toml).unwrap();
        let lake: klines::config::LakeConfig = table.remove("lake").unwrap().try_into().unwrap();
        klines::lake::store::Store::from_config(&lake).await
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

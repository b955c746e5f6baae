//! Helpers shared by the broker-specific test files: unique channels, waiting on a
//! condition with a deadline, and broker servers of a test's own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anybroker::{handler_fn, Channel, MessageContext, MessageRouter, RouterConfig};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A channel name no other test or run uses.
pub fn unique_channel<M>(case: &str) -> Channel<M> {
    let name = format!("test.{case}.{}", uuid::Uuid::new_v4().simple());
    Channel::named(name)
}

/// How often waits look at their condition again.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `condition` holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_until_async(what, timeout, || std::future::ready(condition())).await
}

/// Like [`wait_until`] for an async condition (e.g. one that asks a broker).
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        holds_within_async(timeout, condition).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

/// Whether `condition` comes to hold within `timeout`, looked at as [`wait_until`]
/// does, for a wait whose running out is not a failure.
pub async fn holds_within(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    holds_within_async(timeout, || std::future::ready(condition())).await
}

/// [`holds_within`] with an async condition.
#[allow(dead_code)]
pub async fn holds_within_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut ticks = tokio::time::interval(POLL);
    while !condition().await {
        if Instant::now() >= deadline {
            return false;
        }
        ticks.tick().await;
    }
    true
}

/// Blocks until a server of the test's own takes connections on `port` (polled every
/// 20 ms), failing the test after `timeout`.
fn wait_for_port(port: u16, timeout: Duration, server: &str) {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "own {server} did not start within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command-line arguments of a server, given its port and data dir.
type ServerArgs = dyn Fn(u16, &Path) -> Vec<String> + Send + Sync;

/// A broker server of the test's own, on a free port with a temp data dir, that the
/// test can stop and start again (the shared servers are never touched).
pub struct OwnServer {
    pub port: u16,
    dir: PathBuf,
    program: &'static str,
    args: Box<ServerArgs>,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts `program` with `args(port, dir)` and waits until it accepts connections.
    pub fn start(
        program: &'static str,
        args: impl Fn(u16, &Path) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "anybroker-{program}-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = OwnServer {
            port,
            dir,
            program,
            args: Box::new(args),
            child: None,
        };
        server.up();
        server
    }

    /// Starts the server again, on the same port and data dir.
    pub fn up(&mut self) {
        let child = Command::new(self.program)
            .args((self.args)(self.port, &self.dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} is installed: {e}", self.program));
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(20), self.program);
    }

    /// Stops the server with `signal` ("TERM" to shut down, "KILL" to crash) and waits
    /// for it to exit.
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop("KILL");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with the
/// openssl command in `dir`: returns (ca.pem, server.pem, server.key).
pub fn make_tls_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=anybroker test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// The `[brokers.x]` body for tansu on 127.0.0.1:9092, with the settings tansu 0.6
/// needs and a real Kafka does not: it answers a fetch only after `fetch.wait.max.ms`,
/// hence the short wait (fine for the tests' shallow topics: tansu answers a fetch with
/// nothing when reading takes longer than the wait, so a topic tens of thousands of
/// records deep needs a longer one, as the soak bench sets); a member's group join only after half its
/// `session.timeout.ms`, hence 6 s (a 3 s join, not 22.5 s); and it reports a partition's high watermark as its last
/// batch's first offset + 1, so a fetch that starts inside a multi-record last batch (a
/// partition resumed after a due-time pause) gets nothing until another record
/// arrives, hence one record per produced batch.
pub const KAFKA_TANSU_TABLE: &str = concat!(kafka_tansu_settings!(), "partitions = 2\n");

/// `KAFKA_TANSU_TABLE` without `partitions`: the backend's default applies.
#[allow(dead_code)]
pub const KAFKA_TANSU_DEFAULT_PARTITIONS_TABLE: &str = kafka_tansu_settings!();

macro_rules! kafka_tansu_settings {
    () => {
        "kind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n\
         consumer_properties = { \"fetch.wait.max.ms\" = \"10\", \"session.timeout.ms\" = \"6000\" }\n\
         producer_properties = { \"batch.num.messages\" = \"1\" }\n"
    };
}
use kafka_tansu_settings;

/// The `[brokers.x]` body for librdkafka's mock cluster at `servers`. It has no
/// CreateTopics API, so topics are created on first use, as a cluster with
/// `auto.create.topics.enable` does. When a member joins a non-empty group, its
/// coordinator waits the session timeout less a second for the others to rejoin (a
/// real broker ends the round once they have), so the session is short.
pub fn kafka_mock_table(servers: &str) -> String {
    format!(
        "kind = \"kafka\"\nbootstrap_servers = \"{servers}\"\ncreate_topics = false\n\
         consumer_properties = {{ \"fetch.wait.max.ms\" = \"10\", \"session.timeout.ms\" = \"6000\", \
         \"heartbeat.interval.ms\" = \"500\" }}\n"
    )
}

/// Stops `server` with `signal`, waits a moment (the outage itself), starts it again.
#[allow(dead_code)]
pub async fn restart(server: &mut OwnServer, signal: &str) {
    server.stop(signal);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.up();
}

/// A payload that only carries its sequence number.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Numbered {
    pub seq: u64,
}

/// Publishes 10,000 messages while consuming, with `outage` (a server restart, or
/// its connections cut) twice mid-stream (at 25% and 60% handled); asserts every
/// message was handled at least once and prints the duplicates.
pub async fn restart_under_load(label: &str, config: RouterConfig, mut outage: impl AsyncFnMut()) {
    const N: u64 = 10_000;
    let ch = unique_channel::<Numbered>("restart");
    let seen: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (seen, handled) = (seen.clone(), handled.clone());
        handler_fn(move |m: Numbered, _cx: MessageContext| {
            *seen.lock().unwrap().entry(m.seq).or_insert(0) += 1;
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
    };
    let router = MessageRouter::builder(config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    let publish_errors = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (router, publish_errors) = (router.clone(), publish_errors.clone());
        tokio::spawn(async move {
            for seq in 0..N {
                // A failed publish is reported, never silent: the application retries
                // after a pause.
                while router.publish(ch, &Numbered { seq }).await.is_err() {
                    publish_errors.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if seq % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // On a timeout, what came through and what did not: a lost message and a stalled
    // consumer read differently.
    let report = |what: &str| {
        let seen = seen.lock().unwrap();
        let missing: Vec<u64> = (0..N).filter(|s| !seen.contains_key(s)).collect();
        format!(
            "{label}: timed out waiting for {what}: {} handled, {} distinct, {} publish errors \
             retried, publisher finished: {}; {} missing, the first: {:?}",
            handled.load(Ordering::SeqCst),
            seen.len(),
            publish_errors.load(Ordering::SeqCst),
            publisher.is_finished(),
            missing.len(),
            &missing[..missing.len().min(20)],
        )
    };
    for threshold in [N / 4, N * 3 / 5] {
        let progressed = holds_within(Duration::from_secs(120), || {
            handled.load(Ordering::SeqCst) as u64 >= threshold
        })
        .await;
        assert!(progressed, "{}", report("progress before the restart"));
        outage().await;
    }
    let all = holds_within(Duration::from_secs(180), || {
        publisher.is_finished() && seen.lock().unwrap().len() as u64 == N
    })
    .await;
    assert!(all, "{}", report("every message handled"));
    publisher.await.unwrap();
    router.shutdown().await.unwrap();
    let seen = seen.lock().unwrap();
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!(
        "{label} restart: {N} published, {} handled, {} distinct, {duplicates} duplicates, {} publish errors retried",
        handled.load(Ordering::SeqCst),
        seen.len(),
        publish_errors.load(Ordering::SeqCst)
    );
    assert!((0..N).all(|s| seen.contains_key(&s)), "a message was lost");
}

/// A TCP proxy to `127.0.0.1:upstream` that holds what clients send for `delay` before
/// passing it on (in order); replies pass at once. It stands for a network between a
/// client and its server: what the client wrote is not yet what the server read.
pub struct DelayProxy {
    pub port: u16,
    accept: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(upstream: u16, delay: Duration) -> Self {
        let (port, accept) = accept_relayed(upstream, move |client, server| {
            proxy_connection(client, server, delay)
        })
        .await;
        DelayProxy { port, accept }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Listens on a free loopback port; each client accepted is connected to `upstream`
/// and the pair handed to `relay`, on a task of its own. Returns the port and the
/// accepting task.
async fn accept_relayed<F, Fut>(upstream: u16, relay: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream, tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            tokio::spawn(relay(client, server));
        }
    });
    (port, accept)
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let upstream_reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let upstream_writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if server_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::join!(upstream_reader, upstream_writer, downstream);
}

/// A TCP proxy to a local server whose connections can be made to lose everything the
/// server sends (`lose_replies`) and then be cut (`cut`), as a network that fails
/// mid-reply does: the server has run the commands, the client never hears.
#[allow(dead_code)]
pub struct CutProxy {
    pub port: u16,
    losing: Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

#[allow(dead_code)]
impl CutProxy {
    pub async fn start(upstream: u16) -> Self {
        let losing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (port, accept) = {
            let (losing, cuts) = (losing.clone(), cuts.clone());
            accept_relayed(upstream, move |client, server| {
                let mut cut = cuts.subscribe();
                let relay = relay_unless_losing(client, server, losing.clone());
                async move {
                    tokio::select! {
                        _ = relay => {}
                        _ = cut.changed() => {}
                    }
                }
            })
            .await
        };
        CutProxy {
            port,
            losing,
            cuts,
            accept,
        }
    }

    /// From now on, what the server sends is dropped.
    pub fn lose_replies(&self) {
        self.losing.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every open connection; new ones are relayed in full.
    pub fn cut(&self) {
        self.losing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay_unless_losing(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    losing: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if losing.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(upstream, downstream);
}

#[allow(dead_code)]
/// A redis-server of the test's own, persisting every write (AOF, fsync always).
pub fn own_redis() -> OwnServer {
    OwnServer::start("redis-server", |port, dir| {
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "--port".into(),
            port.to_string(),
            "--dir".into(),
            dir.display().to_string(),
        ]);
        args
    })
}

#[allow(dead_code)]
/// A nats-server with JetStream of the test's own, storing in a temp dir.
pub fn own_nats() -> OwnServer {
    own_nats_with(Vec::new())
}

/// `own_nats` with `extra` arguments (TLS settings, say).
#[allow(dead_code)]
pub fn own_nats_with(extra: Vec<String>) -> OwnServer {
    OwnServer::start("nats-server", move |port, dir| {
        let mut args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        args
    })
}

/// A RabbitMQ node of the test's own beside the machine's (its own name, AMQP and
/// distribution ports, data and config dir), run as the `rabbitmq` user as the
/// machine's is; stopped by the pid it wrote, and started again on the same data.
#[allow(dead_code)]
pub struct OwnRabbitMq {
    pub port: u16,
    dir: PathBuf,
    dist_port: u16,
}

/// How many ready messages RabbitMQ holds in `queue`, asked without declaring it.
#[allow(dead_code)]
pub async fn rabbitmq_queue_length(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count()
}

#[allow(dead_code)]
impl OwnRabbitMq {
    pub fn start() -> Self {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, dist_port) = (free(), free());
        let dir = std::env::temp_dir().join(format!(
            "anybroker-rabbitmq-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        let owned = Command::new("chown")
            .args(["-R", "rabbitmq"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(owned.success(), "chown the node's dir to the rabbitmq user");
        let mut node = OwnRabbitMq {
            port,
            dir,
            dist_port,
        };
        node.up();
        node
    }

    /// Starts the node (again, on the same data) and waits until it takes connections.
    pub fn up(&mut self) {
        let d = self.dir.display();
        let script = format!(
            "cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq \
             RABBITMQ_NODENAME=anybroker-{port}@localhost RABBITMQ_CONFIG_FILE={d}/rabbitmq \
             RABBITMQ_DIST_PORT={dist} RABBITMQ_MNESIA_BASE={d}/mnesia RABBITMQ_LOG_BASE={d}/log \
             RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins RABBITMQ_PID_FILE={d}/pid \
             /usr/lib/rabbitmq/bin/rabbitmq-server -detached",
            port = self.port,
            dist = self.dist_port,
        );
        let started = Command::new("su")
            .args(["rabbitmq", "-s", "/bin/sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(started.success(), "own rabbitmq-server starts");
        wait_for_port(
            self.port,
            Duration::from_secs(60),
            &format!("rabbitmq-server (log in {d}/log)"),
        );
    }

    /// Shuts the node down (TERM to the pid it wrote: a clean stop) and waits for it.
    pub fn stop(&mut self) {
        let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) else {
            return;
        };
        let pid = pid.trim().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for OwnRabbitMq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(dead_code)]
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes, on the server, every connection whose client named itself `name`; returns
/// how many. Other tests' connections are left alone.
#[allow(dead_code)]
pub fn close_connections_named(name: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for pid in &pids {
        rabbitmqctl(&["close_connection", pid, "anybroker restart test"]);
    }
    pids.len()
}

#[allow(dead_code)]
/// How many times each message (by `seq`) was handled.
pub type HandledCounts = Arc<Mutex<HashMap<u64, usize>>>;

/// A handler that takes `pause` per message (simulated work, none if zero), then counts
/// it in `seen`.
#[allow(dead_code)]
pub fn counting_handler(
    seen: &HandledCounts,
    pause: Duration,
) -> impl anybroker::MessageHandler<Numbered> {
    let seen = seen.clone();
    handler_fn(move |m: Numbered, _cx: MessageContext| {
        let seen = seen.clone();
        async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            *seen.lock().unwrap().entry(m.seq).or_insert(0) += 1;
            Ok(())
        }
    })
}

//! The same work with the raw `redis` crate: XADD with the same fields (id, publish
//! time, JSON payload) and MAXLEN cap, `window` in flight; one consumer in a group
//! reading XREADGROUP COUNT window, decoding each payload, one XACK per batch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alarm_domain::{sample_alarm_to_log, AlarmToLog};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::{percentile, Args, Figures};

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn xadd(key: &str, m: &AlarmToLog) -> redis::Cmd {
    let payload = serde_json::to_vec(m).unwrap();
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(1_000_000)
        .arg("*")
        .arg("id")
        .arg(id)
        .arg("ts")
        .arg(micros_now())
        .arg("p")
        .arg(payload);
    cmd
}

async fn publish_all(
    conn: &MultiplexedConnection,
    key: &str,
    messages: &[AlarmToLog],
    window: usize,
    batch: bool,
) {
    if batch {
        let mut conn = conn.clone();
        for chunk in messages.chunks(window) {
            let mut pipe = redis::pipe();
            for m in chunk {
                pipe.add_command(xadd(key, m));
            }
            pipe.query_async::<Vec<Value>>(&mut conn)
                .await
                .expect("XADD");
        }
        return;
    }
    futures::stream::iter(messages)
        .map(|m| {
            let mut conn = conn.clone();
            async move { xadd(key, m).query_async::<Value>(&mut conn).await }
        })
        .buffer_unordered(window)
        .for_each(|r| {
            r.expect("XADD");
            async {}
        })
        .await;
}

fn bulk(v: &Value) -> &[u8] {
    match v {
        Value::BulkString(b) => b,
        _ => &[],
    }
}

/// Entries of one XREADGROUP reply: (id, ts, payload).
fn entries(reply: &Value) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(items)) = parts.get(1) else {
            continue;
        };
        for item in items {
            let Value::Array(e) = item else { continue };
            let id = bulk(&e[0]).to_vec();
            let Some(Value::Array(fields)) = e.get(1) else {
                continue;
            };
            let (mut ts, mut payload) = (0, Vec::new());
            for pair in fields.chunks(2) {
                match bulk(&pair[0]) {
                    b"ts" => {
                        ts = std::str::from_utf8(bulk(&pair[1]))
                            .unwrap()
                            .parse()
                            .unwrap()
                    }
                    b"p" => payload = bulk(&pair[1]).to_vec(),
                    _ => {}
                }
            }
            out.push((id, ts, payload));
        }
    }
    out
}

pub async fn round(url: &str, args: &Args) -> Figures {
    let n = args.messages;
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();

    let key = format!("bench.raw.{}", uuid::Uuid::new_v4().simple());
    let start = Instant::now();
    publish_all(&conn, &key, &messages, args.window, args.batch).await;
    let publish = n as f64 / start.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn.clone())
        .await
        .unwrap();

    let key = format!("bench.raw.{}", uuid::Uuid::new_v4().simple());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (handled, latencies, stop, key) = (
            handled.clone(),
            latencies.clone(),
            stop.clone(),
            key.clone(),
        );
        let mut reader = client.get_multiplexed_async_connection().await.unwrap();
        let mut acker = conn.clone();
        let window = args.window;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(window)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut reader)
                    .await
                    .unwrap();
                let batch = entries(&reply);
                if batch.is_empty() {
                    continue;
                }
                let mut ids = Vec::with_capacity(batch.len());
                {
                    let mut l = latencies.lock().unwrap();
                    for (id, ts, payload) in batch {
                        let _alarm: AlarmToLog = serde_json::from_slice(&payload).unwrap();
                        l.push(Duration::from_micros(micros_now().saturating_sub(ts)));
                        ids.push(id);
                    }
                }
                let count = ids.len();
                let _: i64 = redis::cmd("XACK")
                    .arg(&key)
                    .arg("g")
                    .arg(ids)
                    .query_async(&mut acker)
                    .await
                    .unwrap();
                handled.fetch_add(count, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    publish_all(&conn, &key, &messages, args.window, args.batch).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while handled.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "raw consumer did not finish");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let end_to_end = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    consumer.await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort();
    Figures {
        publish,
        end_to_end,
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
        ..Default::default()
    }
}

/// Deletes the keys anybroker's rounds created (their channels start with `bench.`).
pub async fn delete_bench_keys(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("bench.alarm.to.log.*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

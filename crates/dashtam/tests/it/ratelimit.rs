//! Per-user rate limits on writes, in Redis: 429 with the right headers
//! past the burst, and fail-open when Redis is down (a private Redis server
//! that the test stops and starts again).

use dashtam_testkit::wait_for;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dashtam::app::Role;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, sample, spawn_app_with, test_config};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        dashtam_testkit::wait_for_blocking(
            "redis-server to listen",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).map(drop),
        );
        Self { child, port }
    }

    fn stop(mut self) -> u16 {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn app_with_limits(pool: PgPool, redis_url: &str, burst: u32) -> TestApp {
    let mut config = test_config();
    config.rate_limit.redis_url = redis_url.to_owned();
    config.rate_limit.enqueue_burst = burst;
    config.rate_limit.enqueue_per_sec = 0.2;
    spawn_app_with(pool, &[Role::Api], config).await
}

#[sqlx::test(migrations = "../../migrations")]
async fn enqueues_past_the_burst_get_a_429_problem_with_rate_limit_headers(pool: PgPool) {
    let app = app_with_limits(pool, "redis://127.0.0.1:6379", 3).await;
    let conn = app.connect("alice", 1, 1).await;
    for remaining in [2, 1, 0] {
        let resp = app.enqueue_sync("alice", &conn).await;
        assert!(resp.status().is_success(), "{}", resp.status());
        assert_eq!(resp.headers()["ratelimit-limit"], "3");
        assert_eq!(
            resp.headers()["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let resp = app.enqueue_sync("alice", &conn).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "retry-after {retry}");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 429);
    assert!(
        problem["type"].as_str().unwrap().ends_with("rate-limited"),
        "{problem}"
    );
    // Reads are not limited; other users have buckets of their own.
    assert_eq!(
        app.get("alice", &format!("/api/v1/connections/{conn}"))
            .await
            .status(),
        200
    );
    let other = app.connect("bob", 1, 1).await;
    assert_eq!(app.enqueue_sync("bob", &other).await.status(), 202);
    assert_eq!(
        sample(
            &app.scrape().await,
            r#"dashtam_rate_limit_decisions_total{class="enqueue",decision="limited"}"#
        ),
        1.0
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn with_redis_down_the_api_keeps_serving_and_counts_it(pool: PgPool) {
    let redis = Redis::start(free_port());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let app = app_with_limits(pool, &url, 2).await;
    let conn = app.connect("carol", 1, 1).await;
    let enqueue = async || app.enqueue_sync("carol", &conn).await.status().as_u16();
    assert_eq!(enqueue().await, 202);
    assert_eq!(enqueue().await, 200);
    assert_eq!(enqueue().await, 429);

    let port = redis.stop();
    for _ in 0..5 {
        assert_eq!(enqueue().await, 200, "fail-open while Redis is down");
    }
    let open = r#"dashtam_rate_limit_decisions_total{class="enqueue",decision="fail_open"}"#;
    assert!(sample(&app.scrape().await, open) >= 5.0);
    let ready: Value = app
        .http
        .get(format!("{}/readyz", app.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["redis"], "unavailable");

    // Redis is back (empty): limits apply again after a reconnect.
    let _redis = Redis::start(port);
    wait_for(
        "the limits to apply again",
        Duration::from_secs(30),
        || async {
            match enqueue().await {
                429 => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    app.stop().await;
}

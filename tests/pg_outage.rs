//! PostgreSQL going away and coming back: callers get typed errors, nothing
//! panics or hangs, jobs end in a terminal state, and the service recovers
//! by itself. The database is reached through a TCP proxy on 127.0.0.1 that
//! the test cuts and restores. Needs `ASYNC_QUERY_TEST_POSTGRES_URL`.
#![cfg(feature = "postgres")]

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_query::dao::PostgresDao;
use async_query::testing::ScriptedExecutor;
use async_query::{AsyncQueryService, Config, Error, QueryStatus, SubmitRequest};
use common::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards 127.0.0.1:<port> to the PostgreSQL server while `up`; cutting it
/// drops every open connection and refuses new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.subscribe());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let target = target.clone();
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// A proxy to the database at `url`, and a pool that goes through it.
    async fn pool_for(url: &str) -> (Proxy, sqlx::PgPool) {
        let direct = PgConnectOptions::from_str(url).unwrap();
        let proxy = Proxy::start((direct.get_host().to_string(), direct.get_port())).await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_millis(500))
            .connect_with(direct.host("127.0.0.1").port(proxy.port))
            .await
            .unwrap();
        (proxy, pool)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_gives_typed_errors_and_the_service_recovers_by_itself() {
    let Some(db) = pg::fresh().await else { return };
    let (proxy, pool) = Proxy::pool_for(&db.url).await;
    let service = AsyncQueryService::builder()
        .config(Config {
            pool_size: 2,
            lease: Duration::from_secs(2),
            cleaner_interval: Duration::from_millis(300),
            poll_interval: Duration::from_millis(50),
            ..Config::default()
        })
        .dao(Arc::new(PostgresDao::from_pool(pool)))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();

    let before = service
        .submit(&alice(), SubmitRequest::query("before"))
        .await
        .unwrap();
    assert_eq!(before.status, QueryStatus::Complete);
    let running = service
        .submit(
            &alice(),
            SubmitRequest::query("sleep 1000").with_async_after(Duration::ZERO),
        )
        .await
        .unwrap();

    let outage_started_at = (chrono::Utc::now() - running.created_on)
        .to_std()
        .unwrap_or_default();
    proxy.down();
    let outage = std::time::Instant::now();
    // Every call fails fast with a typed error; nothing hangs.
    let err = service.get(&alice(), before.id).await.unwrap_err();
    assert!(matches!(err, Error::Dao { .. }), "{err:?}");
    let err = service
        .submit(&alice(), SubmitRequest::query("during"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Dao { .. }), "{err:?}");
    let err = service
        .wait(&alice(), before.id, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Dao { .. }), "{err:?}");
    assert!(
        outage.elapsed() < Duration::from_secs(5),
        "calls during the outage took {:?}",
        outage.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // the running job finishes meanwhile
    proxy.restore();

    // Back without a restart: new work completes, and the job that finished
    // during the outage reaches a terminal state that says what happened.
    let mut after = None;
    for _ in 0..50 {
        match service
            .submit(&alice(), SubmitRequest::query("after"))
            .await
        {
            Ok(job) => {
                after = Some(job);
                break;
            }
            Err(Error::Dao { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("unexpected error after the outage: {e:?}"),
        }
    }
    let after = after.expect("the service did not recover within 5 s");
    assert_eq!(after.status, QueryStatus::Complete);
    let settled = service
        .wait(&alice(), running.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(settled.status.is_terminal(), "still {}", settled.status);
    let message = settled.result.and_then(|r| r.message).unwrap_or_default();
    println!(
        "outage from +{outage_started_at:?} for 3 s; the running job ended {}: {message:?}",
        settled.status
    );
    db.drop_db().await;
}

/// After an outage the LISTEN stream is opened again, so a job cancelled
/// through another instance stops at once, although this instance polls
/// and checks cancellations only every two minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_recovers_after_an_outage() {
    let Some(db) = pg::fresh().await else { return };
    let (proxy, pool) = Proxy::pool_for(&db.url).await;
    let slow = Config {
        pool_size: 1,
        // The heartbeat (a third of the lease), polling and the cleaner's
        // cancellation check are all far slower than the bound below.
        lease: Duration::from_secs(360),
        poll_interval: Duration::from_secs(120),
        cancellation_check_interval: Duration::from_secs(120),
        cleaner_interval: Duration::from_secs(120),
        ..Config::default()
    };
    let worker = AsyncQueryService::builder()
        .config(slow.clone())
        .dao(Arc::new(PostgresDao::from_pool(pool)))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    let other = AsyncQueryService::builder()
        .config(Config {
            pool_size: 0,
            // Another instance: with the same id, its start-up recovery
            // would end the worker's job.
            instance_id: uuid::Uuid::new_v4(),
            ..slow
        })
        .dao(Arc::new(db.dao.clone()))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();

    let job = worker
        .submit(
            &alice(),
            SubmitRequest::query("block").with_async_after(Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(job.status, QueryStatus::Processing);

    proxy.down();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();

    // Cancelled at once, perhaps before the listener is back (it tries
    // again after 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5 … s): then the look at
    // its jobs' statuses it takes on coming back finds the cancellation.
    let cancelled_at = std::time::Instant::now();
    other.cancel(&alice(), job.id).await.unwrap();
    let ended = worker
        .wait(&alice(), job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let took = cancelled_at.elapsed();
    assert_eq!(ended.status, QueryStatus::CancelComplete, "{ended:?}");
    println!("a remote cancel after the outage stopped the job in {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "the cancel took {took:?}: only polling saw it, so the listener did not come back"
    );
    let _ = worker.shutdown(Duration::from_secs(1)).await;
    let _ = other.shutdown(Duration::from_secs(1)).await;
    db.drop_db().await;
}

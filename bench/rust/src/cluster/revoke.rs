//! The `cluster-revoke` case: how long after `cmdop admin revoke-key`
//! starts each replica refuses a key every replica had cached, and how
//! long revoke-key itself takes (it returns once every replica has applied
//! the revocation). Calls run on every replica throughout; a call begun
//! after revoke-key returned that still succeeds is counted as an error.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::process::Command;

use crate::{
    args::Args,
    record::{emit, round_us, timed_true},
    setup::{admin, open_client, Setup, REPLICAS},
};

/// Revocations measured.
const TRIALS: usize = 5;
/// A replica still accepting the key this long after revoke-key began
/// fails the case.
const GIVE_UP: Duration = Duration::from_secs(20);

pub async fn revoke(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let c = &setup.cluster;
    let mut refusal_us = Vec::new();
    let mut revoke_us = Vec::new();
    let mut late_accepts = 0usize;
    let mut acks = Vec::new();
    for trial in 0..TRIALS {
        let label = format!("revoke-{trial}");
        let key = admin(
            &args.cmdop,
            &c.db,
            &["create-key", "--workspace", "bench", "--label", &label],
        )
        .await?;
        let mut clients = Vec::new();
        for i in 0..REPLICAS {
            let (client, _) = open_client(c, i, &key, &args.hostname).await?;
            for _ in 0..3 {
                timed_true(&client, args.timeout)
                    .await
                    .map_err(|e| anyhow::anyhow!("warm-up on replica {i}: {e}"))?;
            }
            clients.push(client);
        }
        let returned: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let t0 = Instant::now();
        let revoking = {
            let (cmdop, db, key, returned) = (
                args.cmdop.clone(),
                c.db.clone(),
                key.clone(),
                returned.clone(),
            );
            tokio::spawn(async move {
                let mut cmd = Command::new(&cmdop);
                cmd.arg("admin");
                db.name_to(&mut cmd);
                // The key on stdin (`-`), never on a command line.
                let mut child = cmd
                    .args(["revoke-key", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("cannot run cmdop admin revoke-key")?;
                if let Some(mut stdin) = child.stdin.take() {
                    use tokio::io::AsyncWriteExt;
                    stdin
                        .write_all(format!("{key}\n").as_bytes())
                        .await
                        .context("cannot give revoke-key the key")?;
                }
                let out = child
                    .wait_with_output()
                    .await
                    .context("cannot run cmdop admin revoke-key")?;
                *returned.lock().expect("lock") = Some(Instant::now());
                if !out.status.success() {
                    bail!(
                        "revoke-key failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
            })
        };
        let watch = |i: usize| {
            let returned = returned.clone();
            let client = &clients[i];
            async move {
                let mut late = 0usize;
                loop {
                    let began = Instant::now();
                    let after_return = returned.lock().expect("lock").is_some_and(|r| r <= began);
                    match timed_true(client, args.timeout).await {
                        Err(_) => return Ok::<_, anyhow::Error>((t0.elapsed(), late)),
                        Ok(_) if after_return => late += 1,
                        Ok(_) => {}
                    }
                    if t0.elapsed() > GIVE_UP {
                        bail!("a replica still accepted a revoked key after {GIVE_UP:?}");
                    }
                }
            }
        };
        // One watcher per replica (REPLICAS is 3).
        let (r0, r1, r2) = tokio::join!(watch(0), watch(1), watch(2));
        let results = [r0, r1, r2];
        let stderr = revoking.await.context("revoke-key task")??;
        let wall = returned
            .lock()
            .expect("lock")
            .map(|r| r - t0)
            .unwrap_or_default();
        revoke_us.push(wall.as_secs_f64() * 1e6);
        for r in results {
            let (at, late) = r?;
            refusal_us.push(at.as_secs_f64() * 1e6);
            late_accepts += late;
        }
        acks.push(stderr);
        for client in clients {
            client.close().await;
        }
    }
    eprintln!(
        "cmdop-bench-cluster: revoke: refusal after {:?} µs; revoke-key took {:?} µs; {late_accepts} \
         calls begun after it returned were accepted",
        round_us(&refusal_us),
        round_us(&revoke_us)
    );
    emit(serde_json::json!({
        "case": "cluster-revoke",
        "subject": "revoke-to-refusal",
        "label": "revoke-key start to the first refused call, each replica (key cached everywhere)",
        "runs": refusal_us.len(),
        "concurrency": REPLICAS,
        "errors": late_accepts,
        "bytes": 0,
        "revoke_key_us": round_us(&revoke_us),
        "acknowledgements": acks,
        "samples_us": round_us(&refusal_us),
    }));
    Ok(())
}

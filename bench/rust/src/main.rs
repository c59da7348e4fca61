//! `cmdop-bench-rust`: `execute("true")` through the Rust client core,
//! without the C ABI, so that bench/run can show what the boundary costs.
//!
//! Same command line and output as `bench/c/cmdop_bench exec` (one JSON
//! record on stdout, format in `bench/c/bench_common.h`):
//!
//! ```text
//! cmdop-bench-rust exec --server HOST:PORT --machine HOSTNAME --subject ID
//!     [--case NAME] [--label TEXT] [--runs N] [--warmup N] [--concurrency N] [--command CMD]
//!     [--timeout-ms N]
//! ```
//!
//! The API key comes from `CMDOP_API_KEY`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cmdop::client::{Client, ClientOptions, Credentials};

/// How long one execute may take before the run counts as failed, unless
/// `--timeout-ms` says otherwise.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to keep retrying machine selection while the agent comes up.
const MACHINE_WAIT: Duration = Duration::from_secs(20);

struct Args {
    host: String,
    port: u16,
    machine: String,
    case: Option<String>,
    subject: String,
    label: Option<String>,
    runs: usize,
    warmup: usize,
    concurrency: usize,
    command: String,
    timeout: Duration,
}

const USAGE: &str = "usage: cmdop-bench-rust exec --server HOST:PORT --machine HOSTNAME --subject ID \
[--case NAME] [--label TEXT] [--runs N] [--warmup N] [--concurrency N] [--command CMD] [--timeout-ms N]";

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    match it.next().as_deref() {
        Some("exec") => {}
        _ => bail!("{USAGE}"),
    }
    let mut server = None;
    let mut args = Args {
        host: String::new(),
        port: 0,
        machine: String::new(),
        case: None,
        subject: String::new(),
        label: None,
        runs: 100,
        warmup: 5,
        concurrency: 1,
        command: "true".into(),
        timeout: DEFAULT_EXEC_TIMEOUT,
    };
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        let count = |v: &str| {
            v.parse::<usize>()
                .with_context(|| format!("{flag}: '{v}' is not a count"))
        };
        match flag.as_str() {
            "--server" => server = Some(value),
            "--machine" => args.machine = value,
            "--case" => args.case = Some(value),
            "--subject" => args.subject = value,
            "--label" => args.label = Some(value),
            "--runs" => args.runs = count(&value)?,
            "--warmup" => args.warmup = count(&value)?,
            "--concurrency" => args.concurrency = count(&value)?,
            "--command" => args.command = value,
            "--timeout-ms" => args.timeout = Duration::from_millis(count(&value)?.max(1) as u64),
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    let server = server.with_context(|| format!("--server is required; {USAGE}"))?;
    let (host, port) = server
        .rsplit_once(':')
        .with_context(|| format!("--server wants HOST:PORT, got '{server}'"))?;
    args.host = host.to_string();
    args.port = port
        .parse()
        .with_context(|| format!("--server port '{port}' is not a port number"))?;
    if args.machine.is_empty() || args.subject.is_empty() {
        bail!("--machine and --subject are required; {USAGE}");
    }
    if args.runs == 0 || !(1..=1024).contains(&args.concurrency) {
        bail!("--runs must be > 0 and --concurrency 1..1024");
    }
    Ok(args)
}

async fn open_client(args: &Args) -> anyhow::Result<Client> {
    let key = std::env::var("CMDOP_API_KEY")
        .context("set CMDOP_API_KEY to the control plane's API key")?;
    let mut opts = ClientOptions::local(&args.host, args.port);
    opts.credentials = Credentials::ApiKey(key);
    let client = Client::connect(opts).await.context("cannot connect")?;
    let deadline = Instant::now() + MACHINE_WAIT;
    loop {
        match client.set_machine(&args.machine).await {
            Ok(_) => return Ok(client),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("machine '{}' not available", args.machine))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs `runs` executes on `concurrency` tasks; returns (samples in µs, errors, wall time).
async fn run_all(
    client: &Client,
    command: &str,
    timeout: Duration,
    runs: usize,
    concurrency: usize,
) -> (Vec<f64>, usize, Duration) {
    let remaining = std::sync::Arc::new(std::sync::atomic::AtomicIsize::new(runs as isize));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = client.clone();
        let command = command.to_string();
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0usize;
            while remaining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0 {
                let t0 = Instant::now();
                match client.execute(&command, Some(timeout)).await {
                    Ok(out) if out.exit_code == 0 => samples.push(t0.elapsed().as_secs_f64() * 1e6),
                    Ok(out) => {
                        if errors == 0 {
                            eprintln!(
                                "cmdop-bench-rust: '{command}' exited with {}",
                                out.exit_code
                            );
                        }
                        errors += 1;
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("cmdop-bench-rust: execute failed: {e}");
                        }
                        errors += 1;
                    }
                }
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::with_capacity(runs);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((s, e)) => {
                samples.extend(s);
                errors += e;
            }
            Err(e) => {
                eprintln!("cmdop-bench-rust: worker task failed: {e}");
                errors += 1;
            }
        }
    }
    (samples, errors, started.elapsed())
}

fn peak_rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let client = open_client(&args).await?;
    if args.warmup > 0 {
        run_all(
            &client,
            &args.command,
            args.timeout,
            args.warmup,
            args.concurrency.min(args.warmup),
        )
        .await;
    }
    let (samples, errors, wall) = run_all(
        &client,
        &args.command,
        args.timeout,
        args.runs,
        args.concurrency,
    )
    .await;
    client.close().await;
    let wall_s = wall.as_secs_f64();
    let case = args.case.unwrap_or_else(|| {
        if args.concurrency == 1 {
            "latency"
        } else {
            "throughput"
        }
        .into()
    });
    let record = serde_json::json!({
        "case": case,
        "subject": args.subject,
        "label": args.label.unwrap_or_else(|| args.subject.clone()),
        "runs": args.runs,
        "concurrency": args.concurrency,
        "wall_s": wall_s,
        "ops_per_s": if wall_s > 0.0 { (args.runs - errors) as f64 / wall_s } else { 0.0 },
        "errors": errors,
        "bytes": 0,
        "rss_kb": { "client": peak_rss_kb() },
        "samples_us": samples.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
    });
    println!("{record}");
    Ok(errors < args.runs)
}

fn main() -> std::process::ExitCode {
    let result = parse_args().and_then(|args| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        rt.block_on(run(args))
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cmdop-bench-rust: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

//! `tidewatch cluster`: a user's first multi-process run without writing a hostfile. It
//! starts `-n` processes of `tidewatch serve` on this machine, each with `-p i`, the same
//! `-w`, and a generated hostfile of free loopback ports; by default every process takes
//! HTTP frames (`--ingest every-process`, process p on `APP_PORT + p`). SIGINT and SIGTERM
//! are passed on to every process, so the cluster drains as one; if a process fails, the
//! others are stopped too.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

/// `tidewatch cluster` flags; everything after `--` goes to every `serve`.
#[derive(clap::Args, Debug)]
pub struct ClusterRunArgs {
    /// Processes to start.
    #[arg(short = 'n', long = "processes", default_value_t = 2)]
    pub processes: usize,
    /// Worker threads per process.
    #[arg(short = 'w', long = "threads", default_value_t = 1)]
    pub threads: usize,
    /// Write the hostfile here (kept afterwards) instead of a temporary file.
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// Pin process p to CPU p (`taskset`-like, with sched_setaffinity), for measuring how
    /// ingest scales with processes on one machine.
    #[arg(long)]
    pub pin: bool,
    /// Arguments for `tidewatch serve` (after `--`), e.g. `--model default --port 9000`.
    #[arg(last = true)]
    pub serve: Vec<String>,
}

/// The first signal seen (0: none yet), for the forwarding loop.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// Catches SIGINT and SIGTERM from now on (they no longer end this process), noting each
/// in [`SIGNALLED`] for [`wait_all`] to pass on.
fn catch_signals() -> anyhow::Result<()> {
    super::on_signals(|why| {
        let signal = if why == "SIGINT" {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        SIGNALLED.store(signal, Ordering::SeqCst);
        true
    })
}

/// Starts the cluster and waits for all of it.
pub fn run(args: &ClusterRunArgs) -> anyhow::Result<()> {
    if args.processes == 0 {
        bail!("-n must be at least 1");
    }
    for flag in [
        "-n",
        "-p",
        "-h",
        "-w",
        "--processes",
        "--process",
        "--hostfile",
        "--threads",
    ] {
        if args
            .serve
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        {
            bail!("{flag} is set by `tidewatch cluster` itself; give -n/-w before `--`");
        }
    }
    let (hostfile, temporary) = match &args.hostfile {
        Some(path) => (path.clone(), false),
        None => (
            std::env::temp_dir().join(format!("tidewatch-cluster-{}.hosts", std::process::id())),
            true,
        ),
    };
    write_hostfile(&hostfile, args.processes)?;
    let exe = std::env::current_exe().context("finding the tidewatch binary")?;
    let ingest_given = args
        .serve
        .iter()
        .any(|a| a == "--ingest" || a.starts_with("--ingest="));
    catch_signals()?;
    let mut children: Vec<Child> = Vec::new();
    for p in 0..args.processes {
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["-n", &args.processes.to_string(), "-p", &p.to_string()])
            .args(["-w", &args.threads.to_string(), "-h"])
            .arg(&hostfile);
        if !ingest_given {
            cmd.args(["--ingest", "every-process"]);
        }
        cmd.args(&args.serve);
        if args.pin {
            pin_to_cpu(&mut cmd, p);
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_all(&mut children, libc::SIGTERM);
                return Err(e).context(format!("starting process {p}"));
            }
        }
    }
    eprintln!(
        "tidewatch cluster: {} processes × {} threads, hostfile {} (SIGINT/SIGTERM stop them all)",
        args.processes,
        args.threads,
        hostfile.display()
    );
    let failed = wait_all(&mut children);
    if temporary {
        let _ = std::fs::remove_file(&hostfile);
    }
    match failed {
        None => Ok(()),
        Some((p, status)) => bail!("process {p} of {} ended with {status}", args.processes),
    }
}

/// One free loopback port per process, in process order.
fn write_hostfile(path: &std::path::Path, processes: usize) -> anyhow::Result<()> {
    // All bound at once, so no two are the same; released just before the processes bind.
    let listeners: Vec<_> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("finding free ports")?;
    let mut file = std::fs::File::create(path)
        .with_context(|| format!("writing the hostfile {}", path.display()))?;
    for l in &listeners {
        writeln!(file, "{}", l.local_addr()?)?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn pin_to_cpu(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu % cpus;
    // SAFETY: runs in the child between fork and exec, calling only sched_setaffinity.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to_cpu(_cmd: &mut Command, _cpu: usize) {
    tracing::warn!("--pin works on Linux only; processes are not pinned");
}

fn stop_all(children: &mut [Child], signal: libc::c_int) {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            // SAFETY: kill with a pid of our own live child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, signal);
            }
        }
    }
}

/// Waits for every process, passing signals on; the first process that failed, if any.
fn wait_all(children: &mut [Child]) -> Option<(usize, ExitStatus)> {
    let mut failed: Option<(usize, ExitStatus)> = None;
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        let signal = SIGNALLED.swap(0, Ordering::SeqCst);
        if signal != 0 {
            // A second signal is passed on too: serve then stops draining at once.
            stop_all(children, signal);
        }
        for (p, c) in children.iter_mut().enumerate() {
            if done[p] {
                continue;
            }
            match c.try_wait() {
                Ok(Some(status)) => {
                    done[p] = true;
                    if !status.success() && failed.is_none() {
                        failed = Some((p, status));
                        // the others cannot go on without it
                        stop_all(children, libc::SIGTERM);
                        break;
                    }
                }
                Ok(None) => {}
                Err(_) => done[p] = true,
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    failed
}

//! `jepsen`: the linearizability test of `tests/cluster_linearizable.rs`, as long and as often
//! as asked. Needs root (network namespaces) and a built `ipcr-node`.
//!
//! ```text
//! cargo build -p ipcr-node -p cluster-tests
//! sudo ./target/debug/jepsen --secs 300 --runs 10 [--seed N]
//! ```
//!
//! Each run prints its counts and what the nemesis did; a run whose history is not
//! linearizable also prints the violation, saves the history under the temporary directory and
//! keeps the nodes' logs and data. The exit status is the number of such runs (0: all passed).

use std::time::Duration;

use cluster_tests::jepsen::{self, Config};

fn arg(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v}"))
        })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = arg(&args, "--secs").unwrap_or(120);
    let runs = arg(&args, "--runs").unwrap_or(1);
    let first_seed = arg(&args, "--seed").unwrap_or_else(jepsen::clock_seed);
    let mut failed = 0;
    for run in 0..runs {
        let seed = first_seed.wrapping_add(run);
        println!("== run {} of {runs}: seed {seed}, {secs} s ==", run + 1);
        let outcome = jepsen::run(&Config::standard(Duration::from_secs(secs), seed));
        println!("{}", outcome.report());
        if outcome.violations.is_empty() {
            println!("run {}: linearizable", run + 1);
        } else {
            failed += 1;
            let path = std::env::temp_dir().join(format!("ipcr-jepsen-{seed}.jsonl"));
            match outcome.save(&path) {
                Ok(()) => println!("run {}: NOT linearizable; history in {}", run + 1, path.display()),
                Err(e) => println!(
                    "run {}: NOT linearizable; saving the history failed: {e}",
                    run + 1
                ),
            }
        }
    }
    println!("{failed} of {runs} runs not linearizable");
    std::process::exit(failed);
}

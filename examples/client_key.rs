//! Times the Cloud SQL connector's client key: `ClientKey::new` (its primes looked for on up to
//! one thread a core) against `rsa::RsaPrivateKey::new` (one thread), taking turns, N keys
//! each (the first argument, 40 unless given). Prints the mean, median, 90th percentile and
//! extremes of each in milliseconds. `scripts/bench-client-key.sh` runs it; BENCHMARKS.md keeps
//! the numbers.

use std::time::Instant;

fn main() -> Result<(), String> {
    let rounds = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|e| format!("rounds {n:?}: {e}"))?,
        None => 40,
    };
    let (mut one_thread, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| e.to_string())?;
        one_thread.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        db_migrate::cloudsql::ClientKey::new()?;
        ours.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{rounds} keys each; available parallelism: {cores}");
    for (name, mut times) in [
        ("rsa::RsaPrivateKey::new", one_thread),
        ("ClientKey::new", ours),
    ] {
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let at = |share: f64| times[((times.len() - 1) as f64 * share).round() as usize];
        println!(
            "{name:>24}: mean {mean:.0} ms, median {:.0}, p90 {:.0}, min {:.0}, max {:.0}",
            at(0.5),
            at(0.9),
            at(0.0),
            at(1.0)
        );
    }
    Ok(())
}

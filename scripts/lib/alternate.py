#!/usr/bin/env python3
"""Times shell commands run by run in turn, not each in a block of its own.

    alternate.py --runs N [--warmup W] --export-json FILE \
        -n NAME [--prepare CMD] COMMAND  -n NAME [--prepare CMD] COMMAND ...

Round r runs every command once, starting with command r (mod their number), so neither a noisy
minute on a shared machine nor a place in the order lands on one program. Each command's
--prepare runs untimed just before it. A command runs as `sh -c COMMAND`, and the median time
`sh -c ''` takes is subtracted, as hyperfine does. The JSON has hyperfine's shape (results:
command, mean, stddev, median, min, max, times) so the report reads either. A failing command
ends the run with its output.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def parse(argv):
    top = argparse.ArgumentParser()
    top.add_argument("--runs", type=int, required=True)
    top.add_argument("--warmup", type=int, default=0)
    top.add_argument("--export-json", required=True)
    known, rest = top.parse_known_args(argv)
    commands = []  # [name, prepare, command]
    i = 0
    while i < len(rest):
        if rest[i] != "-n":
            sys.exit(f"alternate.py: expected -n NAME, found {rest[i]!r}")
        name, i = rest[i + 1], i + 2
        prepare = None
        if rest[i] == "--prepare":
            prepare, i = rest[i + 1], i + 2
        commands.append((name, prepare, rest[i]))
        i += 1
    if not commands:
        sys.exit("alternate.py: no command given")
    return known, commands


def run(command, timed):
    start = time.perf_counter()
    done = subprocess.run(["sh", "-c", command], capture_output=True)
    took = time.perf_counter() - start
    if done.returncode != 0 and timed:
        sys.exit(
            f"alternate.py: {command!r} exited with {done.returncode}:\n"
            f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
        )
    return took


def main():
    options, commands = parse(sys.argv[1:])
    shell = statistics.median(run("", True) for _ in range(20))
    times = {name: [] for name, _, _ in commands}
    for round_ in range(options.warmup + options.runs):
        first = round_ % len(commands)
        for name, prepare, command in commands[first:] + commands[:first]:
            if prepare:
                run(prepare, True)
            took = max(run(command, True) - shell, 0.0)
            if round_ >= options.warmup:
                times[name].append(took)
    results = []
    for name, _, _ in commands:
        t = times[name]
        results.append(
            {
                "command": name,
                "mean": statistics.mean(t),
                "stddev": statistics.stdev(t) if len(t) > 1 else 0.0,
                "median": statistics.median(t),
                "min": min(t),
                "max": max(t),
                "times": t,
            }
        )
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        print(
            f"  {name:<20} median {statistics.median(t) * 1000:9.1f} ms"
            f"  p25-p75 {q[0] * 1000:.1f}-{q[2] * 1000:.1f} ms  ({len(t)} runs)",
            file=sys.stderr,
        )
    with open(options.export_json, "w") as out:
        json.dump({"results": results, "shell_s": shell}, out)


if __name__ == "__main__":
    main()

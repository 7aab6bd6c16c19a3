#!/usr/bin/env python3
"""kbatch's CPU per item in instructions (valgrind --tool=callgrind), the
figure that stays put on a shared, noisy machine; and its heap profile
(valgrind --tool=massif) with many items in flight.

    BENCH_BOOTSTRAP=127.0.0.1:PORT build/bench-venv/bin/python \
        tests/bench/cgprofile.py [N1 N2] [--keep DIR]
    ... tests/bench/cgprofile.py --massif [--scenario lat500] [N] [--keep DIR]

Callgrind: runs `kbatch worker` under callgrind twice over fresh items
topics of N1 and N2 items (default 500 and 2,500; the overhead scenario's
items, 256 in flight, fake model at 0 ms), each until the group's offsets
are committed to the end, and prints the instructions of each run and
(I2 - I1) / (N2 - N1): the per-item instructions without the start-up and
shutdown.

--massif: one run under massif over N items (default 8,000) of a bench.py
scenario (default lat500: 2,000 in flight, 500 ms), then ms_print's peak.

--keep DIR keeps the output files (callgrind_annotate / ms_print them).
Uses bench.py's item, configuration and fake model code.
"""
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from confluent_kafka import TopicPartition  # noqa: E402

SCN = dict(next(s for s in bench.SCENARIOS if s["name"] == "overhead"))


def run(kafka, n, outdir, tag, tool="callgrind"):
    run_id = f"cg{uuid.uuid4().hex[:6]}"
    prefix = f"{run_id}.{tag}."
    items = prefix + "items"
    kafka.create(items, bench.PARTITIONS)
    bench.preload(kafka, items, run_id, SCN["name"], n, "json")
    results = prefix + "results.kbatch"
    kafka.create(results, bench.PARTITIONS, {"message.timestamp.type": "LogAppendTime"})
    fake = bench.Fake(outdir, f"{tag}", SCN["latency"], 0.0, log_responses=False)
    conf = bench.kbatch_conf(os.path.join(outdir, f"{tag}.conf"), kafka.bootstrap, prefix,
                             "items", "results.kbatch", prefix + "kbatch", fake.url, SCN,
                             None)
    r = subprocess.run([bench.KBATCH, "topics", "create", "-c", conf], capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"cgprofile: topics create: {r.stderr}")
    kafka.wait_topics([l.split()[-1] for l in r.stdout.splitlines() if l.strip()])
    out = os.path.join(outdir, f"{tool}.out.{tag}")
    logf = open(os.path.join(outdir, f"{tag}.log"), "wb")
    p = subprocess.Popen(["valgrind", f"--tool={tool}", f"--{tool}-out-file={out}",
                          bench.KBATCH, "worker", "-c", conf], stdout=logf, stderr=logf,
                         stdin=subprocess.DEVNULL)
    probe = kafka.committed_probe(prefix + "kbatch")
    ends = kafka.end_offsets(items, bench.PARTITIONS)
    tps = [TopicPartition(items, i) for i in range(bench.PARTITIONS)]
    t0 = time.time()
    try:
        while time.time() - t0 < 900:
            time.sleep(0.5)
            if p.poll() is not None:
                sys.exit(f"cgprofile: kbatch exited with {p.returncode} (see {logf.name})")
            got = probe.committed(tps, timeout=10)
            if all(tp.offset >= ends[tp.partition] for tp in got):
                break
        else:
            sys.exit("cgprofile: not committed to the end in 900 s")
    finally:
        probe.close()
        bench.stop_process(p, timeout=120)
        logf.close()
        fake.stop()
    if tool != "callgrind":
        return None, out
    with open(out) as f:
        text = f.read()
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    return int(m.group(1)), out


def main():
    args = [a for a in sys.argv[1:]]
    keep = None
    if "--keep" in args:
        i = args.index("--keep")
        keep = args[i + 1]
        del args[i:i + 2]
    massif = "--massif" in args
    if massif:
        args.remove("--massif")
    if "--scenario" in args:
        i = args.index("--scenario")
        SCN.clear()
        SCN.update(next(s for s in bench.SCENARIOS if s["name"] == args[i + 1]))
        del args[i:i + 2]
    elif massif:
        SCN.clear()
        SCN.update(next(s for s in bench.SCENARIOS if s["name"] == "lat500"))
    n1, n2 = (int(args[0]), int(args[1])) if len(args) == 2 else (500, 2500)
    bootstrap = os.environ.get("BENCH_BOOTSTRAP")
    if not bootstrap:
        sys.exit("cgprofile: BENCH_BOOTSTRAP is not set")
    outdir = keep or os.path.join(bench.ROOT, "build", "bench", "cgprofile")
    os.makedirs(outdir, exist_ok=True)
    # One copy of the binary for both runs: others may rebuild build/.
    kb = os.path.join(outdir, "kbatch")
    shutil.copy2(bench.KBATCH, kb)
    bench.KBATCH = kb
    kafka = bench.Kafka(bootstrap)
    if massif:
        n = int(args[0]) if args else 8000
        _, f = run(kafka, n, outdir, f"{SCN['name']}.n{n}", tool="massif")
        print(subprocess.run(["ms_print", f], capture_output=True, text=True).stdout[:6000])
        print(f"massif output: {f}")
        return
    i1, f1 = run(kafka, n1, outdir, f"n{n1}")
    i2, f2 = run(kafka, n2, outdir, f"n{n2}")
    per = (i2 - i1) / (n2 - n1)
    print(f"{n1} items: {i1:,} instructions ({f1})")
    print(f"{n2} items: {i2:,} instructions ({f2})")
    print(f"per item: {per:,.0f} instructions")


if __name__ == "__main__":
    main()

"""The machinery of the chaos scenarios: a supervisor for worker processes,
a reader that follows every output topic while the scenario runs, a sampler
that checks committed offsets against what was already published, and the
final invariants (docs/reliability.md):

1. every item has at least one result;
2. each batch has exactly one batch.completed, with exact counts (those of
   the first result of each item, in the order the aggregator reads them);
3. no offset is committed past an unfinished item: whenever a committed
   offset (or the done-bitmap of its metadata) covers an item, that item's
   result, retry copy or DLQ copy is already on the broker;
4. duplicates (items with more than one result) are counted and reported.
"""
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from e2e_conftest import decode_meta


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- producing

def produce_items(env, items):
    """Produces BatchItems keyed <batch_id>:<item_index> (murmur2, as
    `kbatch submit`); returns {(batch_id, item_index): (partition, offset)}."""
    p = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 20, "log_level": 3,
                  "enable.idempotence": True, "partitioner": "murmur2_random"})
    where, errs = {}, []

    def dr(err, msg, key):
        if err:
            errs.append(err)
        else:
            where[key] = (msg.partition(), msg.offset())
    topic = env.topic("items")
    for i, it in enumerate(items):
        key = (it["batch_id"], it["item_index"])
        p.produce(topic, value=json.dumps(it).encode(),
                  key=f"{key[0]}:{key[1]}".encode(),
                  on_delivery=lambda err, msg, key=key: dr(err, msg, key))
        if i % 1000 == 999:
            p.poll(0)
    assert p.flush(60) == 0
    assert not errs, errs[:3]
    assert len(where) == len(items)
    return where


# ---------------------------------------------------------------- workers

class Supervisor:
    """Worker processes in named slots (each slot keeps its instance id, as
    a StatefulSet pod would: a restarted aggregator then fences its own
    predecessor's transaction at once). Like Kubernetes, it restarts a
    worker that exits on its own, and counts those exits."""

    def __init__(self, env, conf, roles="items,aggregator", static=False):
        self.env, self.conf, self.roles = env, conf, roles
        self.static = static
        self.slots = {}
        self.kills = 0
        self.stops = 0
        self.deaths = []           # (slot, time.time()) of every SIGKILL or own exit
        self.unexpected = []       # (slot, exit code, fatal errors or log tail)
        self._lock = threading.Lock()
        self._watch = True
        self._thread = threading.Thread(target=self._watcher, daemon=True)
        self._thread.start()

    def start(self, slot):
        # instance ids (and so the aggregators' transactional ids) are
        # cluster-wide: unique per test, stable per slot
        e = {"KBATCH_WORKER_ROLES": self.roles,
             "KBATCH_WORKER_INSTANCE_ID": f"{self.env.id}-{slot}"}
        if self.static:
            # static group membership: a restarted slot takes its
            # partitions back without a rebalance
            e["KBATCH_KAFKA_PROPERTIES_GROUP_INSTANCE_ID"] = f"{self.env.id}-{slot}"
        w = self.env.worker(self.conf, env=e, name=slot)
        with self._lock:
            self.slots[slot] = w
        return w

    def kill(self, slot):
        """SIGKILL, then start the slot again at once."""
        with self._lock:
            w = self.slots.pop(slot)
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait()
        self.kills += 1
        self.deaths.append((slot, time.time()))
        return self.start(slot)

    def stop(self, slot, timeout=60):
        """SIGTERM (a scale-down): drain, commit, leave; must exit 0."""
        with self._lock:
            w = self.slots.pop(slot)
        rc = w.stop(timeout=timeout)
        self.stops += 1
        assert rc == 0, f"{slot} exited {rc} on SIGTERM: {w.tail()}"

    def running(self):
        with self._lock:
            return sorted(self.slots)

    def _watcher(self):
        while self._watch:
            with self._lock:
                dead = [(s, w) for s, w in self.slots.items() if w.proc.poll() is not None]
            for s, w in dead:
                with self._lock:
                    if self.slots.get(s) is not w:
                        continue
                    del self.slots[s]
                fatal = [l["msg"] for l in w.logs()
                         if l.get("level") == "error" and "fatal" in l.get("msg", "")]
                self.unexpected.append((s, w.proc.returncode, fatal[:3] or w.tail(15)))
                self.deaths.append((s, time.time()))
                log(f"worker {s} exited on its own ({w.proc.returncode}); restarting it")
                self.start(s)
            time.sleep(0.2)

    def close(self):
        """Stops every worker with SIGTERM (each must exit 0)."""
        self._watch = False
        self._thread.join(2)
        for s in self.running():
            self.stop(s)

    def abort(self):
        """Teardown after a failure: no more restarts, SIGKILL the rest."""
        self._watch = False
        self._thread.join(2)
        with self._lock:
            ws = list(self.slots.values())
            self.slots.clear()
        for w in ws:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()

    def diagnose(self):
        """For a failure message: each running worker's readiness and the
        gauges of its /metrics (admin.listen "127.0.0.1:0")."""
        import re
        import urllib.request
        out = []
        for s in self.running():
            w = self.slots.get(s)
            port = None
            for l in w.logs():
                m = re.search(r"admin server listening on [^ ]*:(\d+) ", l.get("msg", ""))
                if m:
                    port = int(m.group(1))
            if not port:
                out.append(f"{s}: no admin port")
                continue
            try:
                base = f"http://127.0.0.1:{port}"
                try:
                    ready = urllib.request.urlopen(base + "/readyz", timeout=5).read().decode()
                except urllib.error.HTTPError as e:
                    ready = e.read().decode()
                met = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
                keep = [l for l in met.splitlines() if not l.startswith("#") and
                        re.match(r"kbatch_(inflight|consumer_lag|items_consumed_total|"
                                 r"items_completed_total|partitions|paused|route)", l)]
                out.append(f"{s}: {ready.strip()}; " + "; ".join(keep[:25]))
            except Exception as e:
                out.append(f"{s}: {e!r}")
        return "\n".join(out)

    def logs(self):
        """Every log line of every process so far."""
        out = []
        for w in self.env.workers:
            out += w.logs()
        return out


# ---------------------------------------------------------------- reading

class Outputs:
    """Follows the results, retry-tier, DLQ and batches topics from the
    beginning, in background threads, until closed."""

    def __init__(self, env, retry_tiers):
        self.env = env
        self.lock = threading.Lock()
        self.results = []          # (partition, offset, result dict)
        self.copies = set()        # (original partition, original offset)
        self.copy_count = {}       # topic -> count
        self.events = []
        self.pos = {}              # (topic, partition) -> next offset read
        self.items_topic = env.topic("items")
        self.out_topics = [env.topic("results"), env.topic("items.dlq")] + \
            [env.topic(f"items.retry.{n}") for n in range(1, retry_tiers + 1)]
        self._run = True
        self._threads = [
            threading.Thread(target=self._follow, args=(self.out_topics, "read_uncommitted"),
                             daemon=True),
            threading.Thread(target=self._follow, args=([env.topic("batches")], "read_committed"),
                             daemon=True)]
        for t in self._threads:
            t.start()

    def _follow(self, topics, isolation):
        c = Consumer({"bootstrap.servers": self.env.bootstrap,
                      "group.id": f"chaos-{uuid.uuid4().hex[:8]}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "isolation.level": isolation,
                      # keep following through a broker restart, quietly
                      "reconnect.backoff.max.ms": 1000, "log_level": 2})
        c.subscribe(topics)
        results_t, batches_t = self.env.topic("results"), self.env.topic("batches")
        try:
            while self._run:
                msgs = c.consume(500, 0.2)
                with self.lock:
                    for m in msgs:
                        if m.error():
                            continue
                        t, p, o = m.topic(), m.partition(), m.offset()
                        if o < self.pos.get((t, p), 0):
                            # read again (this reader lost its assignment in
                            # an outage and went back to the beginning): the
                            # same message, not a duplicate
                            continue
                        self.pos[(t, p)] = o + 1
                        if t == results_t:
                            self.results.append((p, o, json.loads(m.value())))
                        elif t == batches_t:
                            self.events.append(json.loads(m.value()))
                        else:
                            h = {k: v.decode() for k, v in (m.headers() or [])}
                            self.copy_count[t] = self.copy_count.get(t, 0) + 1
                            if h.get("kbatch-original-topic") == self.items_topic:
                                self.copies.add((int(h["kbatch-original-partition"]),
                                                 int(h["kbatch-original-offset"])))
        finally:
            c.close()

    def caught_up(self, ends):
        """ends: {(topic, partition): high watermark}."""
        with self.lock:
            return all(self.pos.get(k, 0) >= v for k, v in ends.items() if v > 0)

    def done_keys(self):
        with self.lock:
            return {(r["batch_id"], r["item_index"]) for _, _, r in self.results}

    def close(self):
        self._run = False
        for t in self._threads:
            if t.is_alive():
                t.join(10)


def end_offsets(env, topics, partitions):
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": "probe", "log_level": 2})
    try:
        out = {}
        for t in topics:
            for p in range(partitions):
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


def committed_items(env, conf):
    """{partition: (committed offset or None, done-above set)} of the items
    topic for the workers' group (`kbatch topics describe`)."""
    r = env.kbatch("topics", "describe", "--json", conf=conf, check=False, timeout=60)
    if r.returncode != 0:
        return None
    out = json.loads(r.stdout)
    for t in out.get("topics", []):
        if t.get("name") == env.topic("items") and "partition_offsets" in t:
            return {po["partition"]: (po.get("committed"), decode_meta(po.get("metadata") or ""))
                    for po in t["partition_offsets"]}
    return None


class Sampler:
    """Every few seconds: read the committed offsets of the items topic,
    then wait until the Outputs reader has caught up with everything
    published by then, and check that every committed item has an output
    (invariant 3). Runs in the background; violations are collected."""

    def __init__(self, env, conf, outs, where, partitions, period=3.0):
        self.env, self.conf, self.outs, self.where = env, conf, outs, where
        self.partitions = partitions
        self.by_offset = {v: k for k, v in where.items()}
        self.period = period
        self.samples = 0
        self.covered = 0           # committed item offsets checked, last sample
        self.violations = []
        self._run = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while self._run:
            try:
                self.sample()
            except Exception as e:       # a broker outage: try again later
                log(f"sampler: {e!r}")
            t = time.time() + self.period
            while self._run and time.time() < t:
                time.sleep(0.1)

    def sample(self):
        com = committed_items(self.env, self.conf)
        if com is None:
            return
        ends = end_offsets(self.env, self.outs.out_topics, self.partitions)
        deadline = time.time() + 60
        while not self.outs.caught_up(ends):
            if time.time() > deadline or not self._run:
                return
            time.sleep(0.1)
        done = self.outs.done_keys()
        with self.outs.lock:
            copies = set(self.outs.copies)
        covered = 0
        for p, (off, above) in com.items():
            if off is None:
                continue
            offsets = [o for (pp, o) in self.by_offset if pp == p and o < off]
            offsets += [off + i for i in above]
            for o in offsets:
                key = self.by_offset.get((p, o))
                if key is None:
                    continue
                covered += 1
                if key not in done and (p, o) not in copies:
                    self.violations.append((p, o, key, off, sorted(above)[:10]))
        self.covered = covered
        self.samples += 1

    def close(self):
        self._run = False
        if self._thread.is_alive():
            self._thread.join(120)


# ---------------------------------------------------------------- the end

def wait_all_results(outs, keys, timeout):
    deadline = time.time() + timeout
    last, last_t = -1, time.time()
    while time.time() < deadline:
        missing = keys - outs.done_keys()
        if not missing:
            return set()
        if len(missing) != last:
            last, last_t = len(missing), time.time()
        time.sleep(0.5)
    return keys - outs.done_keys()


def wait_committed_to_end(env, conf, where, partitions, timeout=60):
    """Waits until the workers' committed offsets reach the end of the
    items topic (every item finished and committed); returns the last
    view."""
    ends = end_offsets(env, [env.topic("items")], partitions)
    deadline = time.time() + timeout
    com = None
    while time.time() < deadline:
        com = committed_items(env, conf)
        if com and all((com[p][0] or 0) >= ends[(env.topic("items"), p)]
                       for p in range(partitions)):
            return True, com
        time.sleep(0.5)
    return False, com


def check_invariants(name, outs, items, where, supervisor, report_path, extra=None):
    """Invariants 1, 2 and 4 (3 is the Sampler's); writes one report line.
    items: the list of BatchItems produced. Returns the report dict."""
    keys = set(where)
    with outs.lock:
        results = list(outs.results)
        events = list(outs.events)
    # 1. every item has at least one result
    got = {(r["batch_id"], r["item_index"]) for _, _, r in results}
    missing = keys - got
    assert not missing, f"{name}: {len(missing)} items without a result, e.g. {sorted(missing)[:5]}"
    # 4. duplicates
    per = {}
    for _, _, r in results:
        k = (r["batch_id"], r["item_index"])
        per[k] = per.get(k, 0) + 1
    dup_items = sum(1 for n in per.values() if n > 1)
    dup_results = sum(n - 1 for n in per.values())
    # 2. exactly one batch.completed per batch, with the counts of the first
    # result of each item in results-partition order (the aggregator's view)
    first = {}
    for p, o, r in sorted(results, key=lambda x: (x[0], x[1])):
        first.setdefault((r["batch_id"], r["item_index"]), r)
    totals = {}
    for it in items:
        totals[it["batch_id"]] = it["items_total"]
    statuses = {}
    for (b, i), r in first.items():
        st = statuses.setdefault(b, {"succeeded": 0, "failed": 0, "cancelled": 0, "expired": 0})
        st[r["status"]] += 1
    for b, total in totals.items():
        completed = [e for e in events if e["batch_id"] == b and e["type"] == "batch.completed"]
        assert len(completed) == 1, f"{name}: batch {b}: {len(completed)} batch.completed events"
        e = completed[0]
        st = statuses[b]
        got_counts = (e["items_total"], e["items_succeeded"], e["items_failed"],
                      e["items_cancelled"], e["items_expired"])
        want = (total, st["succeeded"], st["failed"], st["cancelled"], st["expired"])
        assert got_counts == want, f"{name}: batch {b}: event counts {got_counts}, results say {want}"
        updated = [e for e in events if e["batch_id"] == b and e["type"] != "batch.completed"]
        assert not updated, f"{name}: batch {b}: unexpected {updated[:2]}"
    per_death, survivors = duplicates_by_death(results, per, supervisor)
    rep = {"scenario": name, "items": len(keys), "results": len(results),
           "duplicate_items": dup_items, "duplicate_results": dup_results,
           "duplicate_rate": round(dup_results / len(keys), 5),
           "batches": len(totals), "status_counts": {
               s: sum(st[s] for st in statuses.values())
               for s in ("succeeded", "failed", "cancelled", "expired")},
           "kills": supervisor.kills, "sigterms": supervisor.stops,
           "unexpected_exits": len(supervisor.unexpected),
           # duplicate results attributed to each process death (the dead
           # process had published the item's first result and died before
           # committing it), and those of items whose first result came
           # from a process that lived on (work a survivor redid or lost)
           "duplicates_per_death": per_death,
           "duplicates_per_kill_max": max(per_death, default=0),
           "duplicates_per_kill_mean": round(sum(per_death) / len(per_death), 1)
           if per_death else 0,
           "survivor_duplicates": survivors}
    rep.update(extra or {})
    log(f"{name}: " + json.dumps(rep))
    if report_path:
        with open(report_path, "a") as f:
            f.write(json.dumps(rep) + "\n")
    return rep


def duplicates_by_death(results, per, supervisor):
    """Splits the duplicate results (per: item -> number of results) by
    cause. An item's duplicates belong to the first death (SIGKILL or own
    exit) of the slot that published its first result after that result's
    finished_at; when that slot never died afterwards, to the survivors.
    Returns ([duplicates of each death, in order], survivors' duplicates)."""
    first = {}
    for _, _, r in results:
        k = (r["batch_id"], r["item_index"])
        if k not in first or (r.get("finished_at") or 0) < (first[k].get("finished_at") or 0):
            first[k] = r
    prefix = supervisor.env.id + "-"
    deaths = sorted(supervisor.deaths, key=lambda d: d[1])
    counts = [0] * len(deaths)
    survivors = 0
    for k, n in per.items():
        if n < 2:
            continue
        r = first[k]
        slot = (r.get("worker") or "")[len(prefix):]
        t = (r.get("finished_at") or 0) / 1000.0
        for i, (s, when) in enumerate(deaths):
            if s == slot and when >= t:
                counts[i] += n - 1
                break
        else:
            survivors += n - 1
    return counts, survivors


def report_path():
    return os.path.join(os.environ.get("KBATCH_BUILD", "build"), "chaos-report.jsonl")

"""The job kbatch does, as a good Python engineer writes it by hand: asyncio
on uvloop, aiokafka and aiohttp, orjson for JSON.

Per item: decode the BatchItem (JSON), POST its input to the model API with
the headers kbatch sends, build an ItemResult of the same shape as kbatch's,
produce it keyed by batch_id (acks=all, idempotent) and wait for the broker's
acknowledgement. A semaphore bounds the items in flight; HTTP 429/5xx and
connection errors are retried in process with exponential backoff and full
jitter until the attempts run out, then a failed result is produced.

Commits are out-of-order safe: per partition the worker tracks the offsets in
flight and commits the lowest unfinished one (or the next to consume when none
is in flight), every BENCH_COMMIT_MS, so an item's offset is committed only
after its result was acknowledged. On revocation it waits for the revoked
partitions' items (bounded) and commits them before letting go.

Configured by environment variables (tests/bench/README.md): BENCH_BOOTSTRAP,
BENCH_ITEMS_TOPIC, BENCH_RESULTS_TOPIC, BENCH_GROUP, BENCH_MODEL_URL,
BENCH_CONCURRENCY, BENCH_COMMIT_MS, BENCH_MAX_ATTEMPTS, BENCH_RETRY_BASE_MS,
BENCH_REQUEST_TIMEOUT_MS, BENCH_FORMAT (json or avro), BENCH_SCHEMA_REGISTRY_URL,
BENCH_RESULT_SCHEMA, BENCH_WORKER_ID.

With BENCH_FORMAT=avro, items and results are Avro in Confluent's wire format
(magic byte, 4-byte schema id, Avro binary): the item's writer schema is
fetched from the Schema Registry by id (cached), the ItemResult schema
(schemas/ItemResult.avsc) is registered under "<results topic>-value".
"""
import asyncio
import datetime
import io
import json
import struct
import os
import random
import signal
import sys
import time

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
import fastavro
import orjson
import uvloop

PATHS = {
    "chat.completions": "/v1/chat/completions",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
    "completions": "/v1/completions",
}


def env(name, default=None):
    v = os.environ.get(name)
    if not v:
        if default is None:
            raise SystemExit(f"py-worker: {name} is not set")
        return default
    return v


def now_ms():
    return int(time.time() * 1000)


class Partition:
    """The offsets in flight of one assigned partition."""

    def __init__(self):
        self.inflight = set()
        self.next = None        # offset after the last one taken
        self.committed = None   # last offset committed
        self.idle = asyncio.Event()
        self.idle.set()

    def take(self, offset):
        self.inflight.add(offset)
        self.next = offset + 1
        self.idle.clear()

    def done(self, offset):
        self.inflight.discard(offset)
        if not self.inflight:
            self.idle.set()

    def committable(self):
        """The lowest unfinished offset: everything below it has a result."""
        if self.inflight:
            return min(self.inflight)
        return self.next


class Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker):
        self.w = worker

    async def on_partitions_revoked(self, revoked):
        parts = [(tp, self.w.parts[tp]) for tp in revoked if tp in self.w.parts]
        if parts:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(p.idle.wait() for _, p in parts)), 10)
            except asyncio.TimeoutError:
                pass
            await self.w.commit([tp for tp, _ in parts])
        for tp in revoked:
            self.w.parts.pop(tp, None)

    async def on_partitions_assigned(self, assigned):
        for tp in assigned:
            self.w.parts.setdefault(tp, Partition())
        print(f"py-worker: assigned {len(assigned)} partitions", file=sys.stderr,
              flush=True)


class Worker:
    def __init__(self):
        self.bootstrap = env("BENCH_BOOTSTRAP")
        self.items_topic = env("BENCH_ITEMS_TOPIC")
        self.results_topic = env("BENCH_RESULTS_TOPIC")
        self.group = env("BENCH_GROUP")
        self.base_url = env("BENCH_MODEL_URL", "http://127.0.0.1:8000")
        self.concurrency = int(env("BENCH_CONCURRENCY", "256"))
        self.commit_s = int(env("BENCH_COMMIT_MS", "1000")) / 1000
        self.max_attempts = int(env("BENCH_MAX_ATTEMPTS", "5"))
        self.retry_base_s = int(env("BENCH_RETRY_BASE_MS", "100")) / 1000
        self.timeout_s = int(env("BENCH_REQUEST_TIMEOUT_MS", "600000")) / 1000
        self.worker_id = env("BENCH_WORKER_ID", f"py-{os.getpid()}")
        self.avro = env("BENCH_FORMAT", "json") == "avro"
        self.writer_schemas = {}    # schema id -> parsed schema
        self.parts = {}
        self.tasks = set()
        self.stopping = asyncio.Event()

    # -- formats ---------------------------------------------------------

    async def registry(self, method, path, body=None):
        url = env("BENCH_SCHEMA_REGISTRY_URL") + path
        async with self.session.request(method, url, json=body) as r:
            r.raise_for_status()
            return await r.json(content_type=None)

    async def avro_setup(self):
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
        path = env("BENCH_RESULT_SCHEMA", os.path.join(root, "schemas", "ItemResult.avsc"))
        with open(path) as f:
            text = f.read()
        self.result_schema = fastavro.parse_schema(json.loads(text))
        reg = await self.registry("POST", f"/subjects/{self.results_topic}-value/versions",
                                  {"schema": text})
        self.result_header = b"\x00" + struct.pack(">I", reg["id"])

    async def decode(self, value):
        """The BatchItem as a dict with "input" a JSON object; ValueError
        when it cannot be decoded."""
        if not self.avro:
            item = orjson.loads(value)
            if not isinstance(item, dict):
                raise ValueError("not an object")
            return item
        if len(value) < 5 or value[0] != 0:
            raise ValueError("not Confluent wire format")
        sid = struct.unpack(">I", value[1:5])[0]
        schema = self.writer_schemas.get(sid)
        if schema is None:
            got = await self.registry("GET", f"/schemas/ids/{sid}")
            schema = self.writer_schemas[sid] = fastavro.parse_schema(json.loads(got["schema"]))
        item = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema)
        item["input"] = orjson.loads(item["input"])
        for k in ("deadline", "submitted_at"):
            if isinstance(item.get(k), datetime.datetime):
                item[k] = int(item[k].timestamp() * 1000)
        return item

    def encode(self, res, raw):
        """The ItemResult's bytes; raw is the response body (the output)."""
        if not self.avro:
            return orjson.dumps(res)
        res = dict(res)
        res["output"] = raw.decode() if res["output"] is not None else None
        buf = io.BytesIO()
        buf.write(self.result_header)
        fastavro.schemaless_writer(buf, self.result_schema, res)
        return buf.getvalue()

    # -- the item --------------------------------------------------------

    async def call(self, url, body, headers):
        """POSTs with retries. Returns (attempts, status, raw body, error)."""
        attempt = 0
        while True:
            attempt += 1
            headers["kbatch-attempt"] = str(attempt)
            err = None
            try:
                async with self.session.post(url, data=body, headers=headers) as r:
                    raw = await r.read()
                    status = r.status
            except asyncio.TimeoutError:
                err, status, raw = "timeout", None, None
            except aiohttp.ClientError as e:
                err, status, raw = f"connection_error: {e}", None, None
            else:
                if status != 429 and status < 500:
                    return attempt, status, raw, None
                err = f"HTTP {status}"
            if attempt >= self.max_attempts:
                return attempt, status, raw, err
            cap = min(30.0, self.retry_base_s * (2 ** (attempt - 1)))
            await asyncio.sleep(random.uniform(0, cap))

    def result(self, item, started, attempts, status, output, code, message):
        fin = now_ms()
        usage = output.get("usage") if isinstance(output, dict) else None
        if isinstance(usage, dict):
            usage = {"input_tokens": usage.get("prompt_tokens", usage.get("input_tokens", 0)),
                     "output_tokens": usage.get("completion_tokens", usage.get("output_tokens", 0)),
                     "total_tokens": usage.get("total_tokens", 0)}
        else:
            usage = None
        return {
            "batch_id": item.get("batch_id"), "item_id": item.get("item_id"),
            "item_index": item.get("item_index"), "items_total": item.get("items_total"),
            "model": item.get("model"),
            "operation": item.get("operation") or "chat.completions",
            "status": "succeeded" if code is None else "failed",
            "http_status": status, "output": output,
            "error": None if code is None else {"code": code, "message": message},
            "attempts": attempts, "usage": usage,
            "started_at": started, "finished_at": fin, "latency_ms": fin - started,
            "worker": self.worker_id, "callback_url": item.get("callback_url"),
            "deadline": item.get("deadline"), "metadata": item.get("metadata"),
        }

    async def process(self, msg):
        started = now_ms()
        raw = None
        try:
            item = await self.decode(msg.value)
        except (ValueError, KeyError, EOFError, TypeError):
            # Not addressable: kbatch dead-letters it; here it is skipped.
            print(f"py-worker: undecodable item at {msg.offset}", file=sys.stderr)
            return
        batch_id, item_id, model = item.get("batch_id"), item.get("item_id"), item.get("model")
        inp = item.get("input")
        path = PATHS.get(item.get("operation") or "chat.completions")
        if not (isinstance(batch_id, str) and isinstance(item_id, str)
                and isinstance(model, str) and isinstance(inp, dict) and path):
            res = self.result(item, started, 0, None, None, "invalid_item",
                              "missing or ill-typed field")
        else:
            inp.setdefault("model", model)
            headers = {"Content-Type": "application/json",
                       "Accept": "application/json",
                       "Idempotency-Key": f"{batch_id}:{item_id}",
                       "kbatch-batch-id": batch_id, "kbatch-item-id": item_id}
            attempts, status, raw, err = await self.call(
                self.base_url + path, orjson.dumps(inp), headers)
            output, code, message = None, None, None
            if err is not None:
                code, message = "max_attempts_exceeded", err
            elif 200 <= status < 300:
                try:
                    output = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    code, message = "invalid_response", "response is not JSON"
            else:
                code, message = "client_error", f"HTTP {status}"
            res = self.result(item, started, attempts, status, output, code, message)
        value = self.encode(res, raw)
        key = batch_id.encode() if isinstance(batch_id, str) else None
        while True:
            try:
                fut = await self.producer.send(self.results_topic, value, key=key)
                await fut
                return
            except KafkaError as e:
                print(f"py-worker: produce failed: {e} (will retry)", file=sys.stderr)
                await asyncio.sleep(1)

    async def run_one(self, part, msg, sem):
        try:
            await self.process(msg)
            part.done(msg.offset)   # only now: the result is acknowledged
        finally:
            sem.release()

    # -- commits ---------------------------------------------------------

    async def commit(self, only=None):
        offsets = {}
        for tp, p in list(self.parts.items()):
            if only is not None and tp not in only:
                continue
            off = p.committable()
            if off is not None and off != p.committed:
                offsets[tp] = OffsetAndMetadata(off, "")
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as e:
            print(f"py-worker: commit failed: {e}", file=sys.stderr)
            return
        for tp, om in offsets.items():
            if tp in self.parts:
                self.parts[tp].committed = om.offset

    async def commit_loop(self):
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), self.commit_s)
            except asyncio.TimeoutError:
                pass
            await self.commit()

    # -- the loop --------------------------------------------------------

    async def run(self):
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, self.stopping.set)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency,
                                           ttl_dns_cache=None),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s, connect=10))
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all",
            enable_idempotence=True, linger_ms=5)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest")
        self.consumer.subscribe([self.items_topic], listener=Rebalance(self))
        if self.avro:
            await self.avro_setup()
        await self.producer.start()
        await self.consumer.start()
        committer = asyncio.create_task(self.commit_loop())
        sem = asyncio.Semaphore(self.concurrency)
        try:
            while not self.stopping.is_set():
                batches = await self.consumer.getmany(timeout_ms=200,
                                                      max_records=self.concurrency)
                for tp, msgs in batches.items():
                    for m in msgs:
                        await sem.acquire()
                        part = self.parts.get(tp)
                        if part is None:    # revoked meanwhile
                            sem.release()
                            continue
                        part.take(m.offset)
                        t = asyncio.create_task(self.run_one(part, m, sem))
                        self.tasks.add(t)
                        t.add_done_callback(self.tasks.discard)
        finally:
            self.stopping.set()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=10)
            await committer
            await self.commit()
            await self.consumer.stop()
            await self.producer.stop()
            await self.session.close()


if __name__ == "__main__":
    uvloop.run(Worker().run())

"""Publishes an OpenAI Batch input file (JSONL: custom_id, method, url, body)
as native BatchItems to the items topic. Used by the demo; `kbatch submit`
is the real tool for this."""
import json
import sys
import time
import uuid

from confluent_kafka import Producer

bootstrap, topic, path = sys.argv[1:4]
lines = [json.loads(l) for l in open(path) if l.strip()]
batch_id = "demo-" + time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
ops = {"/v1/chat/completions": "chat.completions", "/v1/embeddings": "embeddings",
       "/v1/completions": "completions", "/v1/responses": "responses"}
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
              "partitioner": "murmur2_random"})
for i, l in enumerate(lines):
    item = {"batch_id": batch_id, "item_id": l["custom_id"], "item_index": i,
            "items_total": len(lines), "model": l["body"]["model"],
            "operation": ops[l["url"]], "input": l["body"],
            "submitted_at": int(time.time() * 1000)}
    p.produce(topic, key=f"{batch_id}:{i}", value=json.dumps(item))
p.flush(30)
print(batch_id)

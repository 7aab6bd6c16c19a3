-- wrk script for the fake model's ceiling: the request kbatch sends for a
-- benchmark item (same body size, same headers, so the fake does the same work).
wrk.method = "POST"
wrk.body = '{"messages":[{"role":"system","content":"You are a helpful assistant."},' ..
           '{"role":"user","content":"Summarise item 1 of batch 1 in one sentence."}],' ..
           '"max_tokens":64,"model":"gpt-bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Idempotency-Key"] = "wrk:req-1"
wrk.headers["kbatch-batch-id"] = "wrk"
wrk.headers["kbatch-item-id"] = "req-1"
wrk.headers["kbatch-attempt"] = "1"

package main

import (
	"encoding/json"
	"testing"
)

// The result has kbatch's fields in kbatch's order, nulls where the item
// has nothing, and the model's response embedded as it came.
func TestResultShape(t *testing.T) {
	var it batchItem
	in := `{"batch_id":"b1","item_id":"i1","item_index":3,"items_total":10,"model":"m",` +
		`"input":{"x":1},"metadata":{"team":"t"}}`
	if err := json.Unmarshal([]byte(in), &it); err != nil {
		t.Fatal(err)
	}
	st := 200
	res := itemResult{itemHead: it.itemHead, Operation: "chat.completions", Status: "succeeded",
		HTTPStatus: &st, Output: json.RawMessage(`{"usage":{"total_tokens":5}}`), Attempts: 1,
		Usage: &resultUsage{1, 4, 5}, StartedAt: 1, FinishedAt: 2, LatencyMs: 1, Worker: "w",
		CallbackURL: it.CallbackURL, Deadline: it.Deadline, Metadata: it.Metadata}
	b, err := json.Marshal(&res)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"batch_id":"b1","item_id":"i1","item_index":3,"items_total":10,"model":"m",` +
		`"operation":"chat.completions","status":"succeeded","http_status":200,` +
		`"output":{"usage":{"total_tokens":5}},"error":null,"attempts":1,` +
		`"usage":{"input_tokens":1,"output_tokens":4,"total_tokens":5},"started_at":1,` +
		`"finished_at":2,"latency_ms":1,"worker":"w","callback_url":null,"deadline":null,` +
		`"metadata":{"team":"t"}}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

// committable: the lowest unfinished offset, or the next one when none is
// in flight.
func TestCommittable(t *testing.T) {
	tr := tracker{parts: map[int32]*partition{0: {next: -1, committed: -1}}}
	if got := tr.parts[0].committable(); got != -1 {
		t.Fatalf("empty: %d", got)
	}
	a, b, c := tr.take(0, 10), tr.take(0, 11), tr.take(0, 12)
	tr.done(b)
	if got := tr.parts[0].committable(); got != 10 {
		t.Fatalf("10 in flight: %d", got)
	}
	tr.done(a)
	if got := tr.parts[0].committable(); got != 12 {
		t.Fatalf("12 in flight: %d", got)
	}
	tr.done(c)
	if got := tr.parts[0].committable(); got != 13 {
		t.Fatalf("none in flight: %d", got)
	}
	if tr.take(1, 5) != nil {
		t.Fatal("an unassigned partition was taken")
	}
}

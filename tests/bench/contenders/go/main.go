// The job kbatch does, as a Go engineer would write it by hand: franz-go
// (github.com/twmb/franz-go) for Kafka, net/http with a Transport sized to
// the in-flight limit, encoding/json.
//
// Per item: decode the BatchItem (JSON), POST its input to the model API
// with the headers kbatch sends, build an ItemResult of the same shape as
// kbatch's, produce it keyed by batch_id (acks=all, idempotent: franz-go's
// defaults, linger 5 ms) and wait for the broker's acknowledgement. One
// goroutine per item; a semaphore bounds the items in flight. HTTP 429/5xx,
// timeouts and connection errors are retried in process with exponential
// backoff and full jitter until the attempts run out, then a failed result
// is produced.
//
// Commits are out-of-order safe: per partition the worker keeps the offsets
// it took in order and commits the lowest unfinished one (or the next to
// consume when none is in flight) every BENCH_COMMIT_MS, so an offset is
// committed only after its item's result was acknowledged. On revocation it
// waits for the revoked partitions' items (at most 10 s) and commits them
// before letting go.
//
// Configured by environment variables (tests/bench/README.md): BENCH_BOOTSTRAP,
// BENCH_ITEMS_TOPIC, BENCH_RESULTS_TOPIC, BENCH_GROUP, BENCH_MODEL_URL,
// BENCH_CONCURRENCY, BENCH_COMMIT_MS, BENCH_MAX_ATTEMPTS, BENCH_RETRY_BASE_MS,
// BENCH_REQUEST_TIMEOUT_MS, BENCH_FORMAT, BENCH_WORKER_ID. Only
// BENCH_FORMAT=json: with avro it exits with status 3 (the harness reports
// the contender as not implementing the format).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var paths = map[string]string{
	"chat.completions": "/v1/chat/completions",
	"responses":        "/v1/responses",
	"embeddings":       "/v1/embeddings",
	"completions":      "/v1/completions",
}

func env(name, dflt string) string {
	v := os.Getenv(name)
	if v == "" {
		if dflt == "" {
			fmt.Fprintf(os.Stderr, "go-worker: %s is not set\n", name)
			os.Exit(2)
		}
		return dflt
	}
	return v
}

func envInt(name, dflt string) int {
	n, err := strconv.Atoi(env(name, dflt))
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-worker: %s: %v\n", name, err)
		os.Exit(2)
	}
	return n
}

func nowMs() int64 { return time.Now().UnixMilli() }

// ---------------------------------------------------------------- offsets

type entry struct {
	off  int64
	done bool
}

// partition holds the offsets in flight of one assigned partition, in the
// order they were taken.
type partition struct {
	q         []*entry
	next      int64 // offset after the last one taken, -1 before the first
	committed int64 // last offset committed, -1 none
}

// committable is the lowest unfinished offset: everything below has a result.
func (p *partition) committable() int64 {
	i := 0
	for i < len(p.q) && p.q[i].done {
		i++
	}
	p.q = p.q[i:]
	if len(p.q) > 0 {
		return p.q[0].off
	}
	return p.next
}

type tracker struct {
	mu    sync.Mutex
	parts map[int32]*partition
}

func (t *tracker) take(part int32, off int64) *entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.parts[part]
	if p == nil { // revoked meanwhile
		return nil
	}
	e := &entry{off: off}
	p.q = append(p.q, e)
	p.next = off + 1
	return e
}

func (t *tracker) done(e *entry) {
	t.mu.Lock()
	e.done = true
	t.mu.Unlock()
}

// ---------------------------------------------------------------- worker

type worker struct {
	cl          *kgo.Client
	http        *http.Client
	itemsTopic  string
	results     string
	baseURL     string
	workerID    string
	maxAttempts int
	retryBase   time.Duration
	tr          tracker
	wg          sync.WaitGroup
}

// commit commits the committable offset of every partition (or of only's).
func (w *worker) commit(ctx context.Context, only []int32) {
	w.tr.mu.Lock()
	offs := map[int32]kgo.EpochOffset{}
	want := func(p int32) bool {
		if only == nil {
			return true
		}
		for _, o := range only {
			if o == p {
				return true
			}
		}
		return false
	}
	for id, p := range w.tr.parts {
		if !want(id) {
			continue
		}
		if off := p.committable(); off >= 0 && off != p.committed {
			offs[id] = kgo.EpochOffset{Epoch: -1, Offset: off}
		}
	}
	w.tr.mu.Unlock()
	if len(offs) == 0 {
		return
	}
	var failed error
	w.cl.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{w.itemsTopic: offs},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				failed = err
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if p.ErrorCode != 0 && failed == nil {
						failed = fmt.Errorf("partition %d: error code %d", p.Partition, p.ErrorCode)
					}
				}
			}
		})
	if failed != nil {
		fmt.Fprintf(os.Stderr, "go-worker: commit failed: %v\n", failed)
		return
	}
	w.tr.mu.Lock()
	for id, eo := range offs {
		if p := w.tr.parts[id]; p != nil {
			p.committed = eo.Offset
		}
	}
	w.tr.mu.Unlock()
}

// onRevoked waits (at most 10 s) for the revoked partitions' items, commits
// them and forgets the partitions.
func (w *worker) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	parts := revoked[w.itemsTopic]
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		busy := false
		w.tr.mu.Lock()
		for _, id := range parts {
			if p := w.tr.parts[id]; p != nil {
				p.committable()
				busy = busy || len(p.q) > 0
			}
		}
		w.tr.mu.Unlock()
		if !busy {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.commit(ctx, parts)
	w.tr.mu.Lock()
	for _, id := range parts {
		delete(w.tr.parts, id)
	}
	w.tr.mu.Unlock()
}

func (w *worker) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	w.tr.mu.Lock()
	for _, id := range assigned[w.itemsTopic] {
		if w.tr.parts[id] == nil {
			w.tr.parts[id] = &partition{next: -1, committed: -1}
		}
	}
	w.tr.mu.Unlock()
	fmt.Fprintf(os.Stderr, "go-worker: assigned %d partitions\n", len(assigned[w.itemsTopic]))
}

// ---------------------------------------------------------------- the item

// The fields a result copies from its item first, as raw JSON.
type itemHead struct {
	BatchID    json.RawMessage `json:"batch_id"`
	ItemID     json.RawMessage `json:"item_id"`
	ItemIndex  json.RawMessage `json:"item_index"`
	ItemsTotal json.RawMessage `json:"items_total"`
	Model      json.RawMessage `json:"model"`
}

// The BatchItem's fields; the ones the result copies stay raw JSON.
type batchItem struct {
	itemHead
	Operation   json.RawMessage `json:"operation"`
	Input       json.RawMessage `json:"input"`
	CallbackURL json.RawMessage `json:"callback_url"`
	Deadline    json.RawMessage `json:"deadline"`
	Metadata    json.RawMessage `json:"metadata"`
}

type resultError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type resultUsage struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
	TotalTokens  int64 `json:"total_tokens"`
}

// The ItemResult, in kbatch's field order.
type itemResult struct {
	itemHead
	Operation   string          `json:"operation"`
	Status      string          `json:"status"`
	HTTPStatus  *int            `json:"http_status"`
	Output      json.RawMessage `json:"output"`
	Error       *resultError    `json:"error"`
	Attempts    int             `json:"attempts"`
	Usage       *resultUsage    `json:"usage"`
	StartedAt   int64           `json:"started_at"`
	FinishedAt  int64           `json:"finished_at"`
	LatencyMs   int64           `json:"latency_ms"`
	Worker      string          `json:"worker"`
	CallbackURL json.RawMessage `json:"callback_url"`
	Deadline    json.RawMessage `json:"deadline"`
	Metadata    json.RawMessage `json:"metadata"`
}

// What the result takes from the model's response.
type modelResponse struct {
	Usage json.RawMessage `json:"usage"`
}

type modelUsage struct {
	PromptTokens     *int64 `json:"prompt_tokens"`
	CompletionTokens *int64 `json:"completion_tokens"`
	InputTokens      *int64 `json:"input_tokens"`
	OutputTokens     *int64 `json:"output_tokens"`
	TotalTokens      *int64 `json:"total_tokens"`
}

func first(a, b *int64) int64 {
	if a != nil {
		return *a
	}
	if b != nil {
		return *b
	}
	return 0
}

// str is raw's value when it is a JSON string.
func str(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

type callResult struct {
	attempts int
	status   int // 0: no response
	body     []byte
	err      string // non-empty: the attempts ran out
}

// call POSTs body with retries on 429, 5xx, timeouts and connection errors.
func (w *worker) call(ctx context.Context, url string, body []byte, batchID, itemID string) callResult {
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return callResult{attempts: attempt, err: "invalid request: " + err.Error()}
		}
		h := req.Header
		h.Set("Content-Type", "application/json")
		h.Set("Accept", "application/json")
		h.Set("Idempotency-Key", batchID+":"+itemID)
		h.Set("kbatch-batch-id", batchID)
		h.Set("kbatch-item-id", itemID)
		h.Set("kbatch-attempt", strconv.Itoa(attempt))
		resp, err := w.http.Do(req)
		var why string
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				why = "timeout"
			} else {
				why = "connection_error: " + err.Error()
			}
			if ctx.Err() != nil {
				return callResult{attempts: attempt, err: why}
			}
		} else {
			raw, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case rerr != nil:
				why = "connection_error: " + rerr.Error()
			case resp.StatusCode != 429 && resp.StatusCode < 500:
				return callResult{attempts: attempt, status: resp.StatusCode, body: raw}
			default:
				why = "HTTP " + strconv.Itoa(resp.StatusCode)
				if attempt >= w.maxAttempts {
					return callResult{attempts: attempt, status: resp.StatusCode, body: raw, err: why}
				}
			}
		}
		if attempt >= w.maxAttempts {
			return callResult{attempts: attempt, err: why}
		}
		limit := w.retryBase << min(attempt-1, 20)
		if limit > 30*time.Second {
			limit = 30 * time.Second
		}
		select {
		case <-time.After(time.Duration(rand.Int64N(int64(limit) + 1))):
		case <-ctx.Done():
			return callResult{attempts: attempt, err: why}
		}
	}
}

// process turns one record into its result's bytes and key; ok false when
// the record cannot be addressed (kbatch dead-letters it; here it is skipped).
func (w *worker) process(ctx context.Context, rec *kgo.Record) (value, key []byte, ok bool) {
	started := nowMs()
	var it batchItem
	if err := json.Unmarshal(rec.Value, &it); err != nil {
		fmt.Fprintf(os.Stderr, "go-worker: undecodable item at %d: %v\n", rec.Offset, err)
		return nil, nil, false
	}
	res := itemResult{
		itemHead: it.itemHead, Operation: "chat.completions",
		Worker: w.workerID, CallbackURL: it.CallbackURL, Deadline: it.Deadline,
		Metadata: it.Metadata, StartedAt: started,
	}
	if op, isStr := str(it.Operation); isStr && op != "" {
		res.Operation = op
	}
	batchID, okB := str(it.BatchID)
	itemID, okI := str(it.ItemID)
	_, okM := str(it.Model)
	path := paths[res.Operation]
	var input map[string]json.RawMessage
	okIn := len(it.Input) > 0 && it.Input[0] == '{' && json.Unmarshal(it.Input, &input) == nil
	if okB {
		key = []byte(batchID)
	}
	fail := func(code, msg string) {
		res.Status = "failed"
		res.Error = &resultError{Code: code, Message: msg}
	}
	if !okB || !okI || !okM || !okIn || path == "" {
		fail("invalid_item", "missing or ill-typed field")
	} else {
		if _, has := input["model"]; !has {
			input["model"] = it.Model
		}
		body, _ := json.Marshal(input)
		r := w.call(ctx, w.baseURL+path, body, batchID, itemID)
		res.Attempts = r.attempts
		if r.status != 0 {
			res.HTTPStatus = &r.status
		}
		switch {
		case r.err != "":
			fail("max_attempts_exceeded", r.err)
		case r.status >= 200 && r.status < 300:
			var mr modelResponse
			if err := json.Unmarshal(r.body, &mr); err != nil {
				fail("invalid_response", "response is not JSON")
				break
			}
			res.Status = "succeeded"
			res.Output = r.body
			if len(mr.Usage) > 0 && mr.Usage[0] == '{' {
				var u modelUsage
				if json.Unmarshal(mr.Usage, &u) == nil {
					res.Usage = &resultUsage{
						InputTokens:  first(u.PromptTokens, u.InputTokens),
						OutputTokens: first(u.CompletionTokens, u.OutputTokens),
						TotalTokens:  first(u.TotalTokens, nil),
					}
				}
			}
		default:
			fail("client_error", "HTTP "+strconv.Itoa(r.status))
		}
	}
	res.FinishedAt = nowMs()
	res.LatencyMs = res.FinishedAt - started
	value, err := json.Marshal(&res)
	if err != nil { // the model's body was not JSON after all
		res.Output, res.Usage = nil, nil
		fail("invalid_response", "response is not JSON")
		value, _ = json.Marshal(&res)
	}
	return value, key, true
}

// produce produces the result and returns once the broker acknowledged it
// (franz-go retries on its own; a failure that surfaces is retried here).
func (w *worker) produce(ctx context.Context, key, value []byte) {
	for {
		r := &kgo.Record{Topic: w.results, Key: key, Value: value}
		err := w.cl.ProduceSync(ctx, r).FirstErr()
		if err == nil {
			return
		}
		fmt.Fprintf(os.Stderr, "go-worker: produce failed: %v (will retry)\n", err)
		if ctx.Err() != nil {
			return
		}
		time.Sleep(time.Second)
	}
}

func main() {
	if env("BENCH_FORMAT", "json") != "json" {
		fmt.Fprintln(os.Stderr, "go-worker: only BENCH_FORMAT=json is implemented")
		os.Exit(3)
	}
	conc := envInt("BENCH_CONCURRENCY", "256")
	commitEvery := time.Duration(envInt("BENCH_COMMIT_MS", "1000")) * time.Millisecond
	timeout := time.Duration(envInt("BENCH_REQUEST_TIMEOUT_MS", "600000")) * time.Millisecond
	w := &worker{
		itemsTopic:  env("BENCH_ITEMS_TOPIC", ""),
		results:     env("BENCH_RESULTS_TOPIC", ""),
		baseURL:     strings.TrimRight(env("BENCH_MODEL_URL", "http://127.0.0.1:8000"), "/"),
		workerID:    env("BENCH_WORKER_ID", fmt.Sprintf("go-%d", os.Getpid())),
		maxAttempts: envInt("BENCH_MAX_ATTEMPTS", "5"),
		retryBase:   time.Duration(envInt("BENCH_RETRY_BASE_MS", "100")) * time.Millisecond,
		tr:          tracker{parts: map[int32]*partition{}},
	}
	// One keep-alive connection per item in flight, no proxy lookup, no gzip.
	w.http = &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          conc,
			MaxIdleConnsPerHost:   conc,
			MaxConnsPerHost:       conc,
			IdleConnTimeout:       90 * time.Second,
			DisableCompression:    true,
			ResponseHeaderTimeout: timeout,
		},
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(env("BENCH_BOOTSTRAP", ""), ",")...),
		kgo.ConsumerGroup(env("BENCH_GROUP", "")),
		kgo.ConsumeTopics(w.itemsTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.OnPartitionsAssigned(w.onAssigned),
		kgo.OnPartitionsRevoked(w.onRevoked),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
			w.tr.mu.Lock()
			for _, id := range lost[w.itemsTopic] {
				delete(w.tr.parts, id)
			}
			w.tr.mu.Unlock()
		}),
		kgo.RequiredAcks(kgo.AllISRAcks()), // with idempotence: franz-go's default
		kgo.ProducerLinger(5*time.Millisecond),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-worker: %v\n", err)
		os.Exit(1)
	}
	w.cl = cl

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Items finish on their own context: SIGTERM stops taking new ones only.
	work, cancelWork := context.WithCancel(context.Background())
	defer cancelWork()

	committerDone := make(chan struct{})
	go func() {
		defer close(committerDone)
		t := time.NewTicker(commitEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				w.commit(work, nil)
			}
		}
	}()

	sem := make(chan struct{}, conc)
	for ctx.Err() == nil {
		fetches := cl.PollRecords(ctx, conc)
		if ctx.Err() != nil {
			break
		}
		fetches.EachError(func(t string, p int32, err error) {
			fmt.Fprintf(os.Stderr, "go-worker: fetch %s[%d]: %v\n", t, p, err)
		})
		fetches.EachRecord(func(rec *kgo.Record) {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			e := w.tr.take(rec.Partition, rec.Offset)
			if e == nil {
				<-sem
				return
			}
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				defer func() { <-sem }()
				if value, key, ok := w.process(work, rec); ok {
					w.produce(work, key, value)
				}
				w.tr.done(e) // only now: the result is acknowledged
			}()
		})
	}
	// Shutdown: let the items in flight finish (at most 10 s), commit, leave.
	idle := make(chan struct{})
	go func() { w.wg.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-time.After(10 * time.Second):
		cancelWork()
	}
	<-committerDone
	w.commit(context.Background(), nil)
	cl.Close()
}

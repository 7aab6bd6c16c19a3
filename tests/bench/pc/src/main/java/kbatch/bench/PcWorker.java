package kbatch.bench;

import static org.apache.kafka.clients.consumer.ConsumerConfig.*;
import static org.apache.kafka.clients.producer.ProducerConfig.ACKS_CONFIG;
import static org.apache.kafka.clients.producer.ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG;
import static org.apache.kafka.clients.producer.ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG;
import static org.apache.kafka.clients.producer.ProducerConfig.LINGER_MS_CONFIG;
import static org.apache.kafka.clients.producer.ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.CommitMode;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.PollContext;
import io.confluent.parallelconsumer.RecordContext;
import io.confluent.parallelconsumer.vertx.VertxParallelEoSStreamProcessor;
import io.vertx.core.Future;
import io.vertx.core.Promise;
import io.vertx.core.Vertx;
import io.vertx.core.VertxOptions;
import io.vertx.core.buffer.Buffer;
import io.vertx.ext.web.client.HttpRequest;
import io.vertx.ext.web.client.HttpResponse;
import io.vertx.ext.web.client.WebClient;
import io.vertx.ext.web.client.WebClientOptions;
import java.io.ByteArrayOutputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest.BodyPublishers;
import java.net.http.HttpResponse.BodyHandlers;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.concurrent.ConcurrentHashMap;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeoutException;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The job kbatch does, written on Confluent's Parallel Consumer with its Vert.x module, as its
 * documentation shows: UNORDERED processing, the Vert.x WebClient for the HTTP call, and a
 * Vert.x Future per record that completes only when the record's result has been acknowledged
 * by the broker, so the offset PC commits (lowest unfinished, plus its own encoded map of the
 * finished ones above it) never passes an item without a result.
 *
 * <p>Per item: decode the BatchItem (JSON), POST its input to the model API with the same
 * headers kbatch sends, build an ItemResult of the same shape as kbatch's, produce it keyed by
 * batch_id (acks=all, idempotent). HTTP 429/5xx and connection errors fail the Future, and PC
 * retries the record after the retry delay (exponential with full jitter) until the attempts
 * run out; then a failed result is produced.
 *
 * <p>Configured by environment variables (see tests/bench/README.md): BENCH_BOOTSTRAP,
 * BENCH_ITEMS_TOPIC, BENCH_RESULTS_TOPIC, BENCH_GROUP, BENCH_MODEL_URL, BENCH_CONCURRENCY,
 * BENCH_COMMIT_MS, BENCH_MAX_ATTEMPTS, BENCH_RETRY_BASE_MS, BENCH_REQUEST_TIMEOUT_MS,
 * BENCH_FORMAT (json or avro), BENCH_SCHEMA_REGISTRY_URL, BENCH_RESULT_SCHEMA, BENCH_WORKER_ID.
 *
 * <p>With BENCH_FORMAT=avro, items and results are Avro in Confluent's wire format (magic byte,
 * 4-byte schema id, Avro binary): the item's writer schema is fetched from the Schema Registry by
 * id (cached), the ItemResult schema (schemas/ItemResult.avsc) is registered under
 * "&lt;results topic&gt;-value" at start.
 */
public final class PcWorker {
    private static final ObjectMapper M = new ObjectMapper();
    private static final Map<String, String> PATHS = Map.of(
            "chat.completions", "/v1/chat/completions",
            "responses", "/v1/responses",
            "embeddings", "/v1/embeddings",
            "completions", "/v1/completions");

    private final String resultsTopic;
    private final String baseUrl;
    private final String workerId;
    private final int maxAttempts;
    private final int timeoutMs;
    private final WebClient web;
    private final KafkaProducer<byte[], byte[]> producer;
    private final boolean avro;
    private final HttpClient registry = HttpClient.newHttpClient();
    private final Map<Integer, GenericDatumReader<GenericRecord>> readers = new ConcurrentHashMap<>();
    private Schema resultSchema;
    private byte[] resultHeader;

    private PcWorker(WebClient web, KafkaProducer<byte[], byte[]> producer) {
        this.web = web;
        this.producer = producer;
        this.resultsTopic = env("BENCH_RESULTS_TOPIC", null);
        this.baseUrl = env("BENCH_MODEL_URL", "http://127.0.0.1:8000");
        this.workerId = env("BENCH_WORKER_ID", "pc-" + ProcessHandle.current().pid());
        this.maxAttempts = Integer.parseInt(env("BENCH_MAX_ATTEMPTS", "5"));
        this.timeoutMs = Integer.parseInt(env("BENCH_REQUEST_TIMEOUT_MS", "600000"));
        this.avro = env("BENCH_FORMAT", "json").equals("avro");
    }

    // ---- formats --------------------------------------------------------

    private JsonNode registryCall(String path, String body) throws Exception {
        var b = java.net.http.HttpRequest.newBuilder(URI.create(env("BENCH_SCHEMA_REGISTRY_URL", null) + path))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        var req = body == null ? b.GET().build() : b.POST(BodyPublishers.ofString(body)).build();
        var resp = registry.send(req, BodyHandlers.ofByteArray());
        if (resp.statusCode() != 200)
            throw new IllegalStateException("registry " + path + ": HTTP " + resp.statusCode());
        return M.readTree(resp.body());
    }

    /** Registers the ItemResult schema under the results topic's subject. */
    private void avroSetup() throws Exception {
        String path = env("BENCH_RESULT_SCHEMA", "schemas/ItemResult.avsc");
        String text = Files.readString(Path.of(path));
        resultSchema = new Schema.Parser().parse(text);
        ObjectNode body = M.createObjectNode().put("schema", text);
        int id = registryCall("/subjects/" + resultsTopic + "-value/versions",
                M.writeValueAsString(body)).get("id").asInt();
        resultHeader = ByteBuffer.allocate(5).put((byte) 0).putInt(id).array();
    }

    private GenericDatumReader<GenericRecord> reader(int id) {
        return readers.computeIfAbsent(id, i -> {
            try {
                String text = registryCall("/schemas/ids/" + i, null).get("schema").asText();
                return new GenericDatumReader<>(new Schema.Parser().parse(text));
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        });
    }

    /** The BatchItem as a JSON object ("input" an object), from JSON or Avro. */
    private ObjectNode decode(byte[] v) throws Exception {
        if (!avro) {
            JsonNode n = M.readTree(v);
            if (!(n instanceof ObjectNode))
                throw new IllegalArgumentException("not an object");
            return (ObjectNode) n;
        }
        if (v.length < 5 || v[0] != 0)
            throw new IllegalArgumentException("not Confluent wire format");
        int id = ByteBuffer.wrap(v, 1, 4).getInt();
        GenericRecord rec = reader(id).read(null,
                DecoderFactory.get().binaryDecoder(v, 5, v.length - 5, null));
        ObjectNode o = M.createObjectNode();
        for (Schema.Field f : rec.getSchema().getFields()) {
            Object x = rec.get(f.pos());
            if (x == null)
                o.putNull(f.name());
            else if (x instanceof Integer)
                o.put(f.name(), (Integer) x);
            else if (x instanceof Long)
                o.put(f.name(), (Long) x);
            else if (x instanceof Map) {
                ObjectNode m = o.putObject(f.name());
                ((Map<?, ?>) x).forEach((k, val) -> m.put(k.toString(), val.toString()));
            } else
                o.put(f.name(), x.toString());
        }
        o.set("input", M.readTree(o.path("input").asText()));
        return o;
    }

    /** The ItemResult's bytes; raw is the response body (the output), or null. */
    private byte[] encode(ObjectNode res, byte[] raw) {
        try {
            if (!avro)
                return M.writeValueAsBytes(res);
            GenericRecord r = new GenericData.Record(resultSchema);
            for (Schema.Field f : resultSchema.getFields()) {
                JsonNode n = res.get(f.name());
                if (f.name().equals("output"))
                    r.put(f.pos(), n == null || n.isNull() || raw == null ? null
                            : new String(raw, StandardCharsets.UTF_8));
                else
                    r.put(f.pos(), toAvro(f.schema(), n));
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream(1024);
            out.write(resultHeader);
            BinaryEncoder enc = EncoderFactory.get().binaryEncoder(out, null);
            new GenericDatumWriter<GenericRecord>(resultSchema).write(r, enc);
            enc.flush();
            return out.toByteArray();
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    private static Object toAvro(Schema s, JsonNode n) {
        if (n == null || n.isNull())
            return null;
        switch (s.getType()) {
            case UNION:
                for (Schema b : s.getTypes())
                    if (b.getType() != Schema.Type.NULL)
                        return toAvro(b, n);
                return null;
            case STRING:
                return n.asText();
            case INT:
                return n.asInt();
            case LONG:
                return n.asLong();
            case BOOLEAN:
                return n.asBoolean();
            case MAP: {
                Map<String, String> m = new HashMap<>();
                n.fields().forEachRemaining(e -> m.put(e.getKey(), e.getValue().asText()));
                return m;
            }
            case RECORD: {
                GenericRecord r = new GenericData.Record(s);
                for (Schema.Field f : s.getFields())
                    r.put(f.pos(), toAvro(f.schema(), n.get(f.name())));
                return r;
            }
            default:
                return n.asText();
        }
    }

    private static String env(String name, String dflt) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            if (dflt == null)
                throw new IllegalArgumentException(name + " is not set");
            return dflt;
        }
        return v;
    }

    public static void main(String[] args) {
        int concurrency = Integer.parseInt(env("BENCH_CONCURRENCY", "256"));
        int commitMs = Integer.parseInt(env("BENCH_COMMIT_MS", "1000"));
        int retryBaseMs = Integer.parseInt(env("BENCH_RETRY_BASE_MS", "100"));

        Properties cp = new Properties();
        cp.put(BOOTSTRAP_SERVERS_CONFIG, env("BENCH_BOOTSTRAP", null));
        cp.put(GROUP_ID_CONFIG, env("BENCH_GROUP", null));
        cp.put(ENABLE_AUTO_COMMIT_CONFIG, false); // PC commits, and insists on this
        cp.put(AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        cp.put(VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(cp);

        Properties pp = new Properties();
        pp.put(BOOTSTRAP_SERVERS_CONFIG, env("BENCH_BOOTSTRAP", null));
        pp.put(ACKS_CONFIG, "all");
        pp.put(ENABLE_IDEMPOTENCE_CONFIG, true);
        pp.put(LINGER_MS_CONFIG, 5); // as kbatch's producer
        pp.put(KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        pp.put(VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp);

        // What PC builds itself when given no WebClient, plus the request's keep-alive pool
        // sized to the concurrency (PC's docs: "By default Vert.x's WebClient uses quite small
        // connection limits ... PC overrides this to maxConcurrency").
        int cores = Runtime.getRuntime().availableProcessors();
        Vertx vertx = Vertx.vertx(new VertxOptions().setWorkerPoolSize(cores));
        WebClient web = WebClient.create(vertx, new WebClientOptions()
                .setMaxPoolSize(concurrency)
                .setHttp2MaxPoolSize(concurrency)
                .setKeepAlive(true)
                .setConnectTimeout(10_000));

        ParallelConsumerOptions<byte[], byte[]> options = ParallelConsumerOptions.<byte[], byte[]>builder()
                .ordering(ProcessingOrder.UNORDERED)
                .maxConcurrency(concurrency)
                .consumer(consumer)
                .commitMode(CommitMode.PERIODIC_CONSUMER_ASYNCHRONOUS)
                .commitInterval(Duration.ofMillis(commitMs))
                .retryDelayProvider(rc -> backoff(retryBaseMs, rc.getNumberOfFailedAttempts()))
                .build();
        VertxParallelEoSStreamProcessor<byte[], byte[]> pc =
                new VertxParallelEoSStreamProcessor<>(vertx, web, options);
        pc.subscribe(List.of(env("BENCH_ITEMS_TOPIC", null)));

        PcWorker w = new PcWorker(web, producer);
        if (w.avro) {
            try {
                w.avroSetup();
            } catch (Exception e) {
                System.err.println("pc-worker: registering the result schema: " + e);
                System.exit(1);
            }
        }
        pc.vertxFuture(w::handle);
        System.err.println("pc-worker: started");

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                pc.close(Duration.ofSeconds(10), io.confluent.parallelconsumer.internal.DrainingCloseable.DrainingMode.DONT_DRAIN);
            } catch (Exception e) {
                System.err.println("pc-worker: close: " + e);
            }
            producer.close(Duration.ofSeconds(5));
        }));
    }

    /** Exponential backoff with full jitter: uniform in [0, base * 2^(failures-1)], max 30 s. */
    private static Duration backoff(int baseMs, int failures) {
        long cap = Math.min(30_000L, (long) baseMs << Math.min(20, Math.max(0, failures - 1)));
        return Duration.ofMillis(ThreadLocalRandom.current().nextLong(cap + 1));
    }

    /** One record: call, produce the result, complete when the broker acknowledged it. */
    private Future<Void> handle(PollContext<byte[], byte[]> ctx) {
        RecordContext<byte[], byte[]> rc = ctx.getSingleRecord();
        int attempt = rc.getNumberOfFailedAttempts() + 1;
        long startedAt = System.currentTimeMillis();
        ObjectNode item;
        try {
            item = decode(rc.value());
        } catch (Exception e) {
            // Not addressable: kbatch dead-letters it; here it is only skipped.
            System.err.println("pc-worker: undecodable item at offset " + rc.offset());
            return Future.succeededFuture();
        }
        String batchId = item.path("batch_id").asText(null);
        String itemId = item.path("item_id").asText(null);
        JsonNode input = item.get("input");
        String model = item.path("model").asText(null);
        String op = item.path("operation").asText("chat.completions");
        String path = PATHS.get(op);
        if (batchId == null || itemId == null || model == null || input == null
                || !input.isObject() || path == null)
            return produce(batchId, encode(result(item, startedAt, attempt, null, null,
                    "invalid_item", "missing or ill-typed field"), null));

        ObjectNode body = (ObjectNode) input;
        if (!body.has("model"))
            body.put("model", model);
        byte[] bytes;
        try {
            bytes = M.writeValueAsBytes(body);
        } catch (Exception e) {
            return Future.failedFuture(e);
        }
        HttpRequest<Buffer> req = web.postAbs(baseUrl + path)
                .timeout(timeoutMs)
                .putHeader("Content-Type", "application/json")
                .putHeader("Accept", "application/json")
                .putHeader("Idempotency-Key", batchId + ":" + itemId)
                .putHeader("kbatch-batch-id", batchId)
                .putHeader("kbatch-item-id", itemId)
                .putHeader("kbatch-attempt", Integer.toString(attempt));
        return req.sendBuffer(Buffer.buffer(bytes)).transform(ar -> {
            if (ar.failed()) {
                String code = ar.cause() instanceof TimeoutException ? "timeout" : "connection_error";
                if (attempt < maxAttempts)
                    return Future.failedFuture(ar.cause()); // PC retries after the delay
                return produce(batchId, encode(result(item, startedAt, attempt, null, null,
                        "max_attempts_exceeded", code + ": " + ar.cause().getMessage()), null));
            }
            HttpResponse<Buffer> r = ar.result();
            int sc = r.statusCode();
            boolean retryable = sc == 429 || sc >= 500;
            if (retryable && attempt < maxAttempts)
                return Future.failedFuture("HTTP " + sc);
            JsonNode out = null;
            String code = null;
            String msg = null;
            byte[] raw = r.body() == null ? new byte[0] : r.body().getBytes();
            if (sc >= 200 && sc < 300) {
                try {
                    out = M.readTree(raw);
                } catch (Exception e) {
                    code = "invalid_response";
                    msg = "response is not JSON";
                }
            } else {
                code = retryable ? "max_attempts_exceeded" : "client_error";
                msg = "HTTP " + sc;
            }
            return produce(batchId, encode(result(item, startedAt, attempt, sc, out, code, msg), raw));
        });
    }

    /** An ItemResult of the shape kbatch publishes. */
    private ObjectNode result(ObjectNode item, long startedAt, int attempts, Integer httpStatus,
                          JsonNode output, String errCode, String errMsg) {
        long now = System.currentTimeMillis();
        ObjectNode o = M.createObjectNode();
        o.set("batch_id", item.get("batch_id"));
        o.set("item_id", item.get("item_id"));
        o.set("item_index", item.get("item_index"));
        o.set("items_total", item.get("items_total"));
        o.set("model", item.get("model"));
        o.put("operation", item.path("operation").asText("chat.completions"));
        o.put("status", errCode == null ? "succeeded" : "failed");
        if (httpStatus == null)
            o.putNull("http_status");
        else
            o.put("http_status", httpStatus);
        o.set("output", output);
        if (errCode == null) {
            o.putNull("error");
        } else {
            ObjectNode e = o.putObject("error");
            e.put("code", errCode);
            e.put("message", errMsg);
        }
        o.put("attempts", attempts);
        JsonNode u = output == null ? null : output.get("usage");
        if (u != null && u.isObject()) {
            ObjectNode uo = o.putObject("usage");
            uo.put("input_tokens", u.path("prompt_tokens").asLong(u.path("input_tokens").asLong()));
            uo.put("output_tokens", u.path("completion_tokens").asLong(u.path("output_tokens").asLong()));
            uo.put("total_tokens", u.path("total_tokens").asLong());
        } else {
            o.putNull("usage");
        }
        o.put("started_at", startedAt);
        o.put("finished_at", now);
        o.put("latency_ms", now - startedAt);
        o.put("worker", workerId);
        o.set("callback_url", item.get("callback_url"));
        o.set("deadline", item.get("deadline"));
        o.set("metadata", item.get("metadata"));
        return o;
    }

    /** Produces a result keyed by batch; the Future completes on the broker's acknowledgement. */
    private Future<Void> produce(String batchId, byte[] value) {
        Promise<Void> p = Promise.promise();
        byte[] key = batchId == null ? null : batchId.getBytes(StandardCharsets.UTF_8);
        producer.send(new ProducerRecord<>(resultsTopic, key, value), (md, ex) -> {
            if (ex != null)
                p.fail(ex);
            else
                p.complete();
        });
        return p.future();
    }
}

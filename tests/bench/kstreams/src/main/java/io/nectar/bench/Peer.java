package io.nectar.bench;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Stream;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;

/**
 * Kafka Streams peer for the pipeline bench: stateless byte copies under exactly_once_v2.
 *
 * <pre>
 *   passthrough BOOTSTRAP APP_ID IN OUT
 *   fanout      BOOTSTRAP APP_ID IN OUT1 ... OUTN
 *   chain       BOOTSTRAP APP_ID_PREFIX T0 T1 T2 T3 T4   (4 instances: PREFIX-1 .. PREFIX-4)
 * </pre>
 *
 * Prints "peer running" once every instance is RUNNING; SIGTERM/SIGINT close and exit 0;
 * an uncaught stream exception exits 1.
 */
public final class Peer {
    private static final Duration CLOSE_TIMEOUT = Duration.ofSeconds(30);

    public static void main(String[] args) throws Exception {
        // slf4j-simple: keep Kafka quiet but let warnings and errors reach stderr (override with -D).
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel",
                System.getProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn"));
        // Its only warning is advice about a global-thread exception handler; there is no global thread.
        System.setProperty("org.slf4j.simpleLogger.log.org.apache.kafka.streams.StreamsConfig",
                System.getProperty("org.slf4j.simpleLogger.log.org.apache.kafka.streams.StreamsConfig", "error"));
        if (args.length < 5) usage();
        String mode = args[0], bootstrap = args[1], appId = args[2];
        List<String> topics = List.of(args).subList(3, args.length);

        Map<String, Topology> apps = new LinkedHashMap<>();
        switch (mode) {
            case "passthrough" -> {
                if (topics.size() != 2) usage();
                apps.put(appId, copy(topics.get(0), topics.subList(1, 2)));
            }
            case "fanout" -> apps.put(appId, copy(topics.get(0), topics.subList(1, topics.size())));
            case "chain" -> {
                if (topics.size() != 5) usage();
                for (int i = 0; i < 4; i++) {
                    apps.put(appId + "-" + (i + 1), copy(topics.get(i), List.of(topics.get(i + 1))));
                }
            }
            default -> usage();
        }

        int threads = Integer.parseInt(System.getenv().getOrDefault("NECTAR_PEER_THREADS", "1"));
        Path stateRoot = Files.createTempDirectory("nectar-kstreams-");
        AtomicInteger exitCode = new AtomicInteger(0);
        CountDownLatch allRunning = new CountDownLatch(apps.size());
        List<KafkaStreams> instances = new ArrayList<>();

        for (Map.Entry<String, Topology> app : apps.entrySet()) {
            KafkaStreams streams = new KafkaStreams(app.getValue(), config(bootstrap, app.getKey(), threads, stateRoot));
            String name = app.getKey();
            streams.setStateListener(new KafkaStreams.StateListener() {
                private boolean seen;

                @Override
                public synchronized void onChange(KafkaStreams.State now, KafkaStreams.State before) {
                    if (now == KafkaStreams.State.RUNNING && !seen) {
                        seen = true;
                        allRunning.countDown();
                    }
                }
            });
            streams.setUncaughtExceptionHandler(e -> {
                System.err.println("peer: " + name + ": uncaught streams exception:");
                e.printStackTrace();
                exitCode.set(1);
                // Not System.exit here: that would block this stream thread while the hook closes it.
                new Thread(() -> System.exit(1), "peer-exit").start();
                return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
            });
            instances.add(streams);
        }

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            instances.parallelStream().forEach(s -> s.close(CLOSE_TIMEOUT));
            deleteTree(stateRoot);
            System.out.flush();
            // A signal would otherwise exit 143/130; SIGTERM is the normal way to stop the peer.
            Runtime.getRuntime().halt(exitCode.get());
        }, "peer-shutdown"));

        instances.forEach(KafkaStreams::start);
        allRunning.await();
        System.out.println("peer running");
        System.out.flush();
        Thread.currentThread().join(); // until a signal or a failure ends the JVM
    }

    /** Every record of {@code in} to each of {@code outs}: key, value, headers and timestamp as they are. */
    private static Topology copy(String in, List<String> outs) {
        StreamsBuilder builder = new StreamsBuilder();
        KStream<byte[], byte[]> stream = builder.stream(in, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()));
        for (String out : outs) stream.to(out, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
        return builder.build();
    }

    private static Properties config(String bootstrap, String appId, int threads, Path stateRoot) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateRoot.toString());
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "lz4");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        return p;
    }

    private static void deleteTree(Path root) {
        try (Stream<Path> paths = Files.walk(root)) {
            paths.sorted(Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
        } catch (IOException e) {
            System.err.println("peer: could not delete " + root + ": " + e);
        }
    }

    private static void usage() {
        System.err.println("""
                usage: Peer passthrough BOOTSTRAP APP_ID IN OUT
                       Peer fanout      BOOTSTRAP APP_ID IN OUT1 [OUT2 ...]
                       Peer chain       BOOTSTRAP APP_ID_PREFIX T0 T1 T2 T3 T4
                env:   NECTAR_PEER_THREADS  stream threads per instance (default 1)""");
        System.exit(2);
    }
}

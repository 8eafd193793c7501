#!/usr/bin/env bash
# create-topics.sh TOPICS_CONF: create the topics of a topics.conf (deploy/local/topics.conf's
# format: `<name> <partitions> [key=value,...]`, `#` comments, replication factor 1) that do
# not exist yet, then check that every one exists. The one-shot `topics` service of
# docker-compose.yml runs it in the apache/kafka image; existing topics are left as they are
# (their partition count is never changed).
#
# Environment: KAFKA_BOOTSTRAP (kafka:9092), KAFKA_TOPICS_CMD (/opt/kafka/bin/kafka-topics.sh),
# TOPICS_PARALLEL (4: each call starts a JVM, so a few run at once).
set -euo pipefail

conf=${1:?usage: create-topics.sh TOPICS_CONF}
bootstrap=${KAFKA_BOOTSTRAP:-kafka:9092}
kafka_topics=${KAFKA_TOPICS_CMD:-/opt/kafka/bin/kafka-topics.sh}
parallel=${TOPICS_PARALLEL:-4}

log() { printf '[topics] %s\n' "$*" >&2; }

[[ -r $conf ]] || { log "cannot read $conf"; exit 1; }

existing=$("$kafka_topics" --bootstrap-server "$bootstrap" --list)
wanted=()
pids=()
failed=0
lineno=0
# Waits for every creation started; a failure is reported by kafka-topics.sh itself.
flush() {
    local pid
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    pids=()
}
while read -r name partitions configs extra || [[ -n ${name:-} ]]; do
    lineno=$((lineno + 1))
    [[ -z ${name:-} || $name == \#* ]] && continue
    if [[ ! ${partitions:-} =~ ^[1-9][0-9]*$ || -n ${extra:-} ]]; then
        log "$conf:$lineno: expected '<name> <partitions> [key=value,...]', got: $name ${partitions:-} ${configs:-} ${extra:-}"
        exit 1
    fi
    wanted+=("$name")
    if grep -qxF -- "$name" <<<"$existing"; then
        continue
    fi
    args=(--bootstrap-server "$bootstrap" --create --if-not-exists --topic "$name"
        --partitions "$partitions" --replication-factor 1)
    if [[ -n ${configs:-} ]]; then
        IFS=, read -ra kvs <<<"$configs"
        for kv in "${kvs[@]}"; do
            args+=(--config "$kv")
        done
    fi
    log "creating $name ($partitions partitions${configs:+, $configs})"
    "$kafka_topics" "${args[@]}" </dev/null >/dev/null &
    pids+=("$!")
    if ((${#pids[@]} >= parallel)); then
        flush
    fi
done <"$conf"
flush
((failed == 0)) || { log "creating a topic failed (see above)"; exit 1; }

existing=$("$kafka_topics" --bootstrap-server "$bootstrap" --list)
missing=()
for name in "${wanted[@]}"; do
    grep -qxF -- "$name" <<<"$existing" || missing+=("$name")
done
if ((${#missing[@]} > 0)); then
    log "still missing: ${missing[*]}"
    exit 1
fi
log "all ${#wanted[@]} topics of $conf exist"

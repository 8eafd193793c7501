#!/usr/bin/env bash
# create-topics.sh TOPICS_CONF: create the topics of a topics.conf (deploy/local/topics.conf's
# format: `<name> <partitions> [key=value,...]`, `#` comments) that do not exist yet, then check
# that every one exists. Existing topics are left as they are (neither their partitions nor
# their configs are changed), so it can run again at any time. It runs in the apache/kafka
# image: the one-shot `topics` service of docker-compose.yml runs it with the defaults, and the
# Helm chart's topics Job with the replication factor and client settings of a production
# cluster. It lives in the chart because a chart can only read its own files.
#
# Environment:
#   KAFKA_BOOTSTRAP            kafka:9092
#   KAFKA_TOPICS_CMD           /opt/kafka/bin/kafka-topics.sh
#   TOPICS_REPLICATION_FACTOR  1: replicas of every topic created (at most the broker count)
#   KAFKA_COMMAND_CONFIG       optional: a client.properties (SASL/TLS brokers) passed as
#                              --command-config to every kafka-topics.sh call
#   TOPICS_PARALLEL            4: creations at a time (each kafka-topics.sh call starts a JVM)
# A failing kafka-topics.sh call is reported with what it printed (on stdout and stderr) and
# the topic; the client settings are named by their path only. Exits non-zero on any problem.
set -euo pipefail

conf=${1:?usage: create-topics.sh TOPICS_CONF}
bootstrap=${KAFKA_BOOTSTRAP:-kafka:9092}
kafka_topics=${KAFKA_TOPICS_CMD:-/opt/kafka/bin/kafka-topics.sh}
replication_factor=${TOPICS_REPLICATION_FACTOR:-1}
command_config=${KAFKA_COMMAND_CONFIG:-}
parallel=${TOPICS_PARALLEL:-4}

log() { printf '[topics] %s\n' "$*" >&2; }
# Shows what a failed kafka-topics.sh call printed, each line naming its subject.
show() { # subject, output
    local line
    [[ -n $2 ]] || { log "$1: (kafka-topics.sh printed nothing)"; return; }
    while IFS= read -r line; do
        [[ -z $line ]] || log "$1: $line"
    done <<<"$2"
}

[[ -r $conf ]] || { log "cannot read $conf"; exit 1; }
[[ $replication_factor =~ ^[1-9][0-9]*$ ]] \
    || { log "TOPICS_REPLICATION_FACTOR must be a positive integer, got '$replication_factor'"; exit 1; }
[[ $parallel =~ ^[1-9][0-9]*$ ]] || { log "TOPICS_PARALLEL must be a positive integer, got '$parallel'"; exit 1; }
# Arguments of every call: the broker and, for SASL/TLS, the client settings.
common=(--bootstrap-server "$bootstrap")
if [[ -n $command_config ]]; then
    [[ -f $command_config && -r $command_config ]] \
        || { log "cannot read the client settings KAFKA_COMMAND_CONFIG=$command_config"; exit 1; }
    common+=(--command-config "$command_config")
fi

# The names of the existing topics, in $existing. kafka-topics.sh prints its errors on stdout
# (and a stack trace on stderr): on failure both are shown.
list_errors=$(mktemp)
trap 'rm -f "$list_errors"' EXIT
list_topics() {
    local out status=0
    out=$("$kafka_topics" "${common[@]}" --list 2>"$list_errors" </dev/null) || status=$?
    if ((status != 0)); then
        show "listing the topics" "$out${out:+$'\n'}$(<"$list_errors")"
        log "cannot list the topics at $bootstrap (kafka-topics.sh exit $status)"
        exit 1
    fi
    existing=$out
}
# Creates one topic (in the background); on failure shows kafka-topics.sh's output, stdout
# and stderr together, each line naming the topic.
create_topic() { # name, kafka-topics.sh arguments...
    local name=$1 out status=0
    shift
    out=$("$kafka_topics" "$@" 2>&1 </dev/null) || status=$?
    if ((status != 0)); then
        show "$name" "$out"
        log "creating $name failed (kafka-topics.sh exit $status)"
        return 1
    fi
}

list_topics
wanted=()
pids=()
names=()
failed=()
lineno=0
# Waits for every creation started.
flush() {
    local i
    for i in "${!pids[@]}"; do
        wait "${pids[i]}" || failed+=("${names[i]}")
    done
    pids=()
    names=()
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
    args=("${common[@]}" --create --if-not-exists --topic "$name"
        --partitions "$partitions" --replication-factor "$replication_factor")
    if [[ -n ${configs:-} ]]; then
        IFS=, read -ra kvs <<<"$configs"
        for kv in "${kvs[@]}"; do
            args+=(--config "$kv")
        done
    fi
    log "creating $name ($partitions partitions, replication factor $replication_factor${configs:+, $configs})"
    create_topic "$name" "${args[@]}" &
    pids+=("$!")
    names+=("$name")
    if ((${#pids[@]} >= parallel)); then
        flush
    fi
done <"$conf"
flush
if ((${#failed[@]} > 0)); then
    log "creating ${#failed[@]} topic(s) failed (see above): ${failed[*]}"
    exit 1
fi

list_topics
missing=()
for name in "${wanted[@]}"; do
    grep -qxF -- "$name" <<<"$existing" || missing+=("$name")
done
if ((${#missing[@]} > 0)); then
    log "still missing: ${missing[*]}"
    exit 1
fi
log "all ${#wanted[@]} topics of $conf exist"

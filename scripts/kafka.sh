#!/usr/bin/env bash
# Fetch and run a single-node Apache Kafka (KRaft) broker from the Maven Central jars.
#
#   scripts/kafka.sh fetch
#       Resolve the broker jars (cached) and print the libs directory.
#   scripts/kafka.sh start --dir DIR --port PORT [--controller-port CPORT] [--sasl-port SPORT]
#       Write DIR/server.properties, format DIR/data on first use, start the broker in the
#       background (log DIR/kafka.log, pid DIR/kafka.pid) and wait until it serves requests.
#       --sasl-port (opt-in) adds a SASL_PLAINTEXT listener, mechanism PLAIN, on 127.0.0.1:SPORT
#       for the users in KAFKA_SASL_USERS; the PLAINTEXT listener stays as it is.
#   scripts/kafka.sh stop --dir DIR
#       SIGTERM the broker, wait, then SIGKILL.
#
# Environment:
#   KAFKA_VERSION        kafka_2.13 version (default: the pinned 4.1.x below)
#   DRIFTLINE_CACHE_DIR  cache root (default: $HOME/.cache/driftline)
#   KAFKA_HEAP_OPTS      JVM heap flags (default: -Xmx512m -Xms256m)
#   KAFKA_OPTS           extra JVM flags
#   KAFKA_LOG_LEVEL      broker log level: trace|debug|info|warn|error (default: warn)
#   KAFKA_START_TIMEOUT  seconds to wait for the broker to come up (default: 90)
#   KAFKA_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default: 30)
#   KAFKA_SASL_USERS     with --sasl-port: "user:password[,user:password...]" (letters, digits,
#                        '.', '_', '-'), written to DIR/server.properties (mode 600)
set -euo pipefail

# Newest 4.1.x on Maven Central (mvn resolves the range [4.1.0,4.2.0) to it).
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"
# Kafka 4.1 logs through the SLF4J 1.7 API (slf4j-api 1.7.36 is its declared dependency):
# slf4j-simple of that line is the smallest backend and is configured by system properties.
SLF4J_VERSION="1.7.36"
DEPENDENCY_PLUGIN_VERSION="3.8.1"
CACHE_ROOT="${DRIFTLINE_CACHE_DIR:-$HOME/.cache/driftline}"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
MARKER="$KAFKA_HOME/.complete"   # written last: its presence means libs/ is complete

die() { echo "kafka.sh: error: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }

need() {  # need CMD WHAT-TO-INSTALL
  command -v "$1" >/dev/null 2>&1 ||
    die "'$1' not found on PATH; install $2 (Debian/Ubuntu: run scripts/install-test-deps.sh as root)"
}

java_major() {  # major version of `java` on PATH ("1.8.0" -> 8, "17.0.15" -> 17)
  java -version 2>&1 | sed -n 's/.*version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -n1
}

usage() {
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

resolve() {  # download the jars into $LIBS, then write $MARKER
  local tmp
  tmp="$(mktemp -d "$KAFKA_HOME/.fetch.XXXXXX")"
  cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>driftline</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>$SLF4J_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>$DEPENDENCY_PLUGIN_VERSION</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central into $LIBS"
  if ! mvn -B -q -f "$tmp/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
    tail -n 40 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    die "mvn could not resolve kafka_2.13:$KAFKA_VERSION (network to Maven Central? KAFKA_VERSION valid?)"
  fi
  ls "$tmp/libs"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "no kafka_2.13 jar resolved"; }
  rm -rf "$LIBS"
  mv "$tmp/libs" "$LIBS"
  rm -rf "$tmp"
  date -u +%FT%TZ >"$MARKER"
}

fetch() {
  if [[ ! -f "$MARKER" ]]; then
    need java "a Java 17+ runtime (apt-get install default-jre-headless)"
    need mvn "Maven (apt-get install maven)"
    mkdir -p "$KAFKA_HOME"
    # Serialise concurrent fetches (e.g. parallel test workers) on the same cache. The
    # subshell confines the lock's fd, so a broker started afterwards does not inherit it.
    (
      if command -v flock >/dev/null 2>&1; then flock 9; fi
      [[ -f "$MARKER" ]] || resolve
    ) 9>"$KAFKA_HOME/.lock"
  fi
  echo "$LIBS"
}

# Parsed options (start/stop).
DIR="" PORT="" CPORT="" SPORT=""
parse_opts() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
      --port) PORT="${2:?--port needs a value}"; shift 2 ;;
      --controller-port) CPORT="${2:?--controller-port needs a value}"; shift 2 ;;
      --sasl-port) SPORT="${2:?--sasl-port needs a value}"; shift 2 ;;
      *) die "unknown option '$1'" ;;
    esac
  done
  [[ -n "$DIR" ]] || die "--dir is required"
}

pid_alive() { [[ -f "$DIR/kafka.pid" ]] && kill -0 "$(cat "$DIR/kafka.pid")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {  # ask the kernel; only used when --controller-port is not given
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

java_cmd() {  # sets JAVA_CMD: the JVM command line shared by the storage tool and the broker
  local -a heap extra
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
  read -r -a extra <<<"${KAFKA_OPTS:-}"
  # SerialGC + C1-only JIT: much faster start-up and far less CPU on small CI machines;
  # throughput is irrelevant for tests.
  JAVA_CMD=(java "${heap[@]}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1
    -Djava.awt.headless=true
    -Dorg.slf4j.simpleLogger.defaultLogLevel="${KAFKA_LOG_LEVEL:-warn}"
    -Dorg.slf4j.simpleLogger.showDateTime=true
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS"
    -Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info
    "${extra[@]}" -cp "$LIBS/*")
}

start() {
  parse_opts "$@"
  [[ -n "$PORT" ]] || die "--port is required"
  need java "a Java 17+ runtime (apt-get install default-jre-headless)"
  local jv
  jv="$(java_major)"
  (( ${jv:-0} >= 17 )) || die "Kafka $KAFKA_VERSION needs Java 17+, but 'java' is version ${jv:-unknown}"
  LIBS="$(fetch)"
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  if pid_alive; then die "broker already running in $DIR (pid $(cat "$DIR/kafka.pid")); stop it first"; fi
  port_open "$PORT" && die "port $PORT on 127.0.0.1 is already in use"
  [[ -n "$CPORT" ]] || CPORT="$(free_port)"
  # Opt-in SASL_PLAINTEXT listener: empty strings (the default) leave the file unchanged.
  local sasl_listener="" sasl_advertised="" sasl_map="" jaas_users=""
  if [[ -n "$SPORT" ]]; then
    port_open "$SPORT" && die "port $SPORT on 127.0.0.1 is already in use"
    [[ -n "${KAFKA_SASL_USERS:-}" ]] || die "--sasl-port needs KAFKA_SASL_USERS=user:password[,...]"
    local pair user password
    local -a pairs
    IFS=',' read -r -a pairs <<<"$KAFKA_SASL_USERS"
    for pair in "${pairs[@]}"; do
      user="${pair%%:*}" password="${pair#*:}"
      [[ "$pair" == *:* && "$user" =~ ^[A-Za-z0-9._-]+$ && "$password" =~ ^[A-Za-z0-9._-]+$ ]] ||
        die "KAFKA_SASL_USERS: each entry must be user:password of letters, digits, '.', '_', '-'"
      jaas_users+=" user_$user=\"$password\""
    done
    sasl_listener=",SASL_PLAINTEXT://127.0.0.1:$SPORT"
    sasl_advertised=",SASL_PLAINTEXT://127.0.0.1:$SPORT"
    sasl_map=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi

  # Static quorum (controller.quorum.voters): the voter set lives in the config, not in the
  # metadata log, so formatting needs no --standalone/--initial-controllers and restarts are
  # trivially consistent.
  cat >"$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT$sasl_listener
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT$sasl_advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$sasl_map
log.dirs=$DIR/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
# 1 instead of 50 partitions: the first consumer-group join creates this topic, make it cheap.
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Few threads: this broker shares 2 cores with the test run.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
EOF
  if [[ -n "$SPORT" ]]; then
    chmod 600 "$DIR/server.properties"  # it holds the users' passwords
    cat >>"$DIR/server.properties" <<EOF
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$jaas_users;
EOF
  fi

  java_cmd
  if [[ ! -f "$DIR/data/meta.properties" ]]; then
    local cluster_id
    # A Kafka cluster id is a 16-byte UUID in URL-safe base64 without padding (22 chars).
    # One in 64 starts with '-', which the tool's argument parser takes for an option.
    cluster_id="-"
    while [[ "$cluster_id" == -* ]]; do
        cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    if ! "${JAVA_CMD[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$DIR/server.properties" >"$DIR/format.log" 2>&1; then
      cat "$DIR/format.log" >&2
      die "formatting Kafka storage in $DIR/data failed"
    fi
  fi

  # kafka.log is appended to across restarts: only look at what this start writes.
  local log_offset=0
  [[ -f "$DIR/kafka.log" ]] && log_offset="$(wc -c <"$DIR/kafka.log")"
  # setsid: own session/process group, so the broker survives this script and can be
  # signalled as a group.
  setsid "${JAVA_CMD[@]}" kafka.Kafka "$DIR/server.properties" >>"$DIR/kafka.log" 2>&1 </dev/null &
  echo $! >"$DIR/kafka.pid"

  local timeout="${KAFKA_START_TIMEOUT:-90}" start_s=$SECONDS
  # The listening socket is bound early in start-up; requests are only served once the
  # server logs "Kafka Server started", so wait for both.
  while ! { port_open "$PORT" &&
      grep -q "Kafka Server started" <(tail -c +"$((log_offset + 1))" "$DIR/kafka.log"); }; do
    if ! pid_alive; then
      tail -n 40 "$DIR/kafka.log" >&2
      die "Kafka exited during start-up (log: $DIR/kafka.log)"
    fi
    if (( SECONDS - start_s >= timeout )); then
      tail -n 40 "$DIR/kafka.log" >&2
      stop_broker
      die "Kafka did not come up on 127.0.0.1:$PORT within ${timeout}s (log: $DIR/kafka.log)"
    fi
    sleep 0.2
  done
  log "broker pid $(cat "$DIR/kafka.pid") listening on 127.0.0.1:$PORT (up in $((SECONDS - start_s))s)"
}

stop_broker() {
  pid_alive || { rm -f "$DIR/kafka.pid"; return 0; }
  local pid timeout="${KAFKA_STOP_TIMEOUT:-30}" i
  pid="$(cat "$DIR/kafka.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$DIR/kafka.pid"; return 0; }
    sleep 0.1
  done
  log "broker pid $pid ignored SIGTERM for ${timeout}s; sending SIGKILL"
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$DIR/kafka.pid"
}

stop() {
  parse_opts "$@"
  [[ -d "$DIR" ]] || die "no such directory: $DIR"
  DIR="$(cd "$DIR" && pwd)"
  stop_broker
}

case "${1:-}" in
  fetch) shift; [[ $# -eq 0 ]] || die "fetch takes no arguments"; fetch ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac

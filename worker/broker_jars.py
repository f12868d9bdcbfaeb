"""The local broker's jars: a pinned list from Maven Central, fetched and verified without Maven.

:data:`JARS` is every jar on the broker's classpath: ``org.apache.kafka:kafka_2.13`` 4.1.1 with its
runtime dependencies, plus ``org.slf4j:slf4j-api`` 2.0.17 and
``org.apache.logging.log4j:log4j-slf4j2-impl`` 2.24.3 (Kafka 4 logs through SLF4J 2; without a
binding it would log nothing). The list is what Maven resolved from Maven Central for those three
(``mvn dependency:copy-dependencies``, runtime scope: the POM in :mod:`worker.broker`); the group
of each jar is the folder Maven put it in under ``~/.m2/repository`` and its sha256 was computed
from the resolved file (and matched the ``.sha1`` that Maven Central served for every one of them).

:func:`fetch` downloads each jar from ``<base>/<group as path>/<artifact>/<version>/
<artifact>-<version>.jar``, checks its sha256, and moves it into place (temp file + rename); the
folder gets its ``.complete`` marker only once every jar is there, so an interrupted fetch is
never used, and the next fetch keeps the jars already verified.

To regenerate it (a new Kafka, SLF4J or Log4j version: change them in :mod:`worker.broker`)::

    export SCANSTREAM_CACHE=$(mktemp -d)
    SCANSTREAM_BROKER_FETCH=maven scanstream broker fetch   # needs Maven and a Java
    python -m worker.broker_jars $SCANSTREAM_CACHE/kafka-<version> ~/.m2/repository

and paste what the last command prints over ``_PINNED`` below.

>>> [jar.url() for jar in JARS if jar.artifact == "kafka_2.13"]
['https://repo1.maven.org/maven2/org/apache/kafka/kafka_2.13/4.1.1/kafka_2.13-4.1.1.jar']
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

from worker.errors import BrokerError

MAVEN_CENTRAL: Final = "https://repo1.maven.org/maven2"
MAX_JAR_BYTES: Final = 64 * 1024 * 1024  # the largest pinned jar is under 10 MiB
COMPLETE: Final = ".complete"


class Jar(NamedTuple):
    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def coordinates(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    def url(self, base_url: str = MAVEN_CENTRAL) -> str:
        group = self.group.replace(".", "/")
        return f"{base_url.rstrip('/')}/{group}/{self.artifact}/{self.version}/{self.filename}"


# group:artifact:version, then its sha256 (two lines each: one would not fit 100 columns).
_PINNED: Final = """
com.dynatrace.hash4j:hash4j:0.22.0
    23028a3fd006e530bf495f551083208187cafd8f80624d048eba56442f16a50e
com.fasterxml.jackson.core:jackson-annotations:2.19.0
    ead60e9cac0e42b57092b9e2d087ff43536e9477d4486ba393037a8cc156cda7
com.fasterxml.jackson.core:jackson-core:2.19.0
    da8e859bac94874528116a25f20c68560e4287acbf27628711b8a4f96b028430
com.fasterxml.jackson.core:jackson-databind:2.19.0
    ceda311f476c3b18e1d2b240c94e2dcb9c8d44e70f8afa9facab88bac4ddc03a
com.fasterxml.jackson.dataformat:jackson-dataformat-csv:2.19.0
    bec1150426b0616bb488149b952b45a0dcb16d9416b017c38f6455ad9389bc68
com.fasterxml.jackson.dataformat:jackson-dataformat-yaml:2.19.0
    46e54dcbd39d4d12cda18ec9276e7b888e08fc765ea0c77e71662306f0d4abc4
com.fasterxml.jackson.datatype:jackson-datatype-jdk8:2.19.0
    04f1a3f9da8155995dd00098d6847cdb9b7af67f4a3028c94031eff017c8e3e5
com.github.ben-manes.caffeine:caffeine:3.2.0
    ec411dfdf0c03f25218648ce89861630b71680e5858a9a7278ebac8e55cab3d7
com.github.luben:zstd-jni:1.5.6-10
    b6c3237e24b8252a5a9c3a0e1ae30ef8f323412e74bd358548b7a9e527d676df
com.google.re2j:re2j:1.8
    7b52c72156dd7f98b3237a5b35c1d34fba381b21048c89208913ad80a45dfbd7
com.typesafe.scala-logging:scala-logging_2.13:3.9.5
    87a3017d3f43e6ace7566fe4c3d615134c6914ff871c8d64bb32ca1d996d0545
com.yammer.metrics:metrics-core:2.2.0
    6b7a14a6f34c10f8683f7b5e2f39df0f07b58c7dff0e468ebbc713905c46979c
commons-beanutils:commons-beanutils:1.9.4
    7d938c81789028045c08c065e94be75fc280527620d5bd62b519d5838532368a
commons-collections:commons-collections:3.2.2
    eeeae917917144a68a741d4c0dff66aa5c5c5fd85593ff217bced3fc8ca783b8
commons-digester:commons-digester:2.1
    e0b2b980a84fc6533c5ce291f1917b32c507f62bcad64198fff44368c2196a3d
commons-logging:commons-logging:1.3.2
    6b858424f518015f32bfcd1183a373f4a827d72d026b6031da0c91cf0e8f3489
commons-validator:commons-validator:1.9.0
    c3c14748e2d78db58df88808740711bd643b32c45ffa7b8a739f00fb467cd7d7
net.sf.jopt-simple:jopt-simple:5.0.4
    df26cc58f235f477db07f753ba5a3ab243ebe5789d9f89ecf68dd62ea9a66c28
net.sourceforge.argparse4j:argparse4j:0.7.0
    65ceb669d88f63306c680f8088bbf765bbca72d288a61a03703000076c3d3f56
org.apache.kafka:kafka-clients:4.1.1
    00247122a572c3d3ae4eb60a50192a5811bc0181f51923d13018600f892e821d
org.apache.kafka:kafka-coordinator-common:4.1.1
    2072fc1ce7e0505149bba22a463a5909a899c6235c4fa696f15c21194a7baf60
org.apache.kafka:kafka-group-coordinator-api:4.1.1
    3d1801d2329dcf7d273796a034d61e6c7e0f851f384d0afbdd3a2e6cbd17a968
org.apache.kafka:kafka-group-coordinator:4.1.1
    3eb5a673b69d5992cfa86c5436f39adbf4ce284046a4c999ec6af0a8e31c5589
org.apache.kafka:kafka-metadata:4.1.1
    a689665751415b6456de1ecb013042cb7ba99ac68fd8c3e8bf28e098feb43218
org.apache.kafka:kafka-raft:4.1.1
    4810c93d93d1935dd54de61c5ba130f501c7fe11bc49ccd3ee05ec857818a72a
org.apache.kafka:kafka-server-common:4.1.1
    207edecd8322cf6c13d76d84addea7fd0ec441dc8d698cf69df43210ccdc0a94
org.apache.kafka:kafka-server:4.1.1
    9f6aff422855491aad54326eca8d604163d6d3a6507cc48ffe3ce6de73caf79a
org.apache.kafka:kafka-share-coordinator:4.1.1
    e6bec53428c77bf6579321836d482542a93575f7c08e860a26c9f2c7f6059dac
org.apache.kafka:kafka-storage-api:4.1.1
    8c0a712472185d706c6bf5ae24bf5d84a8e396fd4745c708e6146a415f7fa7f7
org.apache.kafka:kafka-storage:4.1.1
    1f85b82853eaec0143efbef7e3a4d4be8929ff83a386326431e0c2d0a557e58c
org.apache.kafka:kafka-tools-api:4.1.1
    542b08fe20cf872a2d866acdff61ea338b469219dc2ebfae727a1d9ea5737e1a
org.apache.kafka:kafka-transaction-coordinator:4.1.1
    a261b5730ac9e3205df7af5d45180d851e9d5f729ce1275c67511a6f51f73755
org.apache.kafka:kafka_2.13:4.1.1
    e89428126cc7630a802123ba27aac4442816840b66d60670226feaff65f24fd1
org.apache.logging.log4j:log4j-api:2.24.3
    5b4a0a0cd0e751ded431c162442bdbdd53328d1f8bb2bae5fc1bbeee0f66d80f
org.apache.logging.log4j:log4j-core:2.24.3
    7eb4084596ae25bd3c61698e48e8d0ab65a9260758884ed5cbb9c6e55c44a56a
org.apache.logging.log4j:log4j-slf4j2-impl:2.24.3
    cdaac22e40ec30c4096e1ebe8c454c8826c0d1c378d7db5d7b3ad166354b0bd3
org.bitbucket.b_c:jose4j:0.9.6
    7314af50cde9c99e8eaf43eee617a23edcc6bb43036221064355094999d837ef
org.hdrhistogram:HdrHistogram:2.2.2
    22d1d4316c4ec13a68b559e98c8256d69071593731da96136640f864fa14fad8
org.jspecify:jspecify:1.0.0
    1fad6e6be7557781e4d33729d49ae1cdc8fdda6fe477bb0cc68ce351eafdfbab
org.lz4:lz4-java:1.8.0
    d74a3334fb35195009b338a951f918203d6bbca3d1d359033dc33edd1cadc9ef
org.pcollections:pcollections:4.0.2
    2bbeef5797a241300c4f7513cd546239629ed7deda4fc0c31df90bb95f5f13ef
org.scala-lang:scala-library:2.13.16
    1ebb2b6f9e4eb4022497c19b1e1e825019c08514f962aaac197145f88ed730f1
org.scala-lang:scala-reflect:2.13.16
    fb49ccd9cac7464486ab993cda20a3c1569d8ef26f052e897577ad2a4970fb1d
org.slf4j:slf4j-api:2.0.17
    7b751d952061954d5abfed7181c1f645d336091b679891591d63329c622eb832
org.xerial.snappy:snappy-java:1.1.10.7
    4c766cb3f855415ee734b2392949a0b6f12a60879334a74518deaf6270d32e36
org.yaml:snakeyaml:2.4
    ef779af5d29a9dde8cc70ce0341f5c6f7735e23edff9685ceaa9d35359b7bb7f
"""


def _parse(table: str) -> tuple[Jar, ...]:
    words = table.split()
    jars = []
    for coordinates, sha256 in zip(words[0::2], words[1::2], strict=True):
        group, artifact, version = coordinates.split(":")
        jars.append(Jar(group, artifact, version, sha256))
    return tuple(jars)


#: The pinned jars, as (group, artifact, version, sha256).
JARS: Final[tuple[Jar, ...]] = _parse(_PINNED)


class _Refused(Exception):
    """The server answered, but not with the pinned jar (checksum, size)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, jar: Jar, dest: Path, timeout_s: float) -> None:
    """Fetch ``url`` into ``dest`` atomically if its sha256 is the pinned one."""
    fd, name = tempfile.mkstemp(prefix=f".{jar.filename}.", suffix=".part", dir=dest.parent)
    tmp = Path(name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            while chunk := resp.read(1 << 16):
                size += len(chunk)
                if size > MAX_JAR_BYTES:
                    raise _Refused(f"larger than {MAX_JAR_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != jar.sha256:
            raise _Refused(
                f"checksum mismatch: expected sha256 {jar.sha256}, got {digest.hexdigest()}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    target: Path,
    base_url: str = MAVEN_CENTRAL,
    jars: Sequence[Jar] = JARS,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``jars`` from ``base_url`` into ``target`` once; later calls return ``target``.

    Raises BrokerError naming the jar, its URL and the cause when one cannot be fetched.
    """
    if (target / COMPLETE).exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for jar in jars:
        dest = target / jar.filename
        if dest.exists() and _sha256(dest) == jar.sha256:
            continue  # verified by an earlier, interrupted fetch
        url = jar.url(base_url)
        try:
            _download(url, jar, dest, timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            cause = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            cause = f"no connection: {exc.reason}"
        except _Refused as exc:
            cause = str(exc)
        except (OSError, http.client.HTTPException) as exc:
            cause = f"{type(exc).__name__}: {exc}"
        else:
            continue
        raise BrokerError(
            f"could not fetch the broker jar {jar.coordinates} from {url} ({cause}). "
            f"The local broker's jars come from {base_url}, which must be reachable from this "
            "machine (HTTPS_PROXY is honoured); or set SCANSTREAM_BROKER_FETCH=maven to fetch "
            "them with Maven instead."
        )
    # Jars of another list (an older cache, an interrupted Maven fetch) must not join the classpath.
    wanted = {jar.filename for jar in jars}
    for stale in target.glob("*.jar"):
        if stale.name not in wanted:
            stale.unlink()
    fd, name = tempfile.mkstemp(prefix=f"{COMPLETE}.", dir=target)
    with os.fdopen(fd, "w") as marker:
        marker.write(f"{len(wanted)} jars from {base_url}\n")
    os.replace(name, target / COMPLETE)
    return target


def pinned_table(jars_dir: Path, m2_repository: Path) -> str:
    """The ``_PINNED`` table of the jars in ``jars_dir``, each found in Maven's local repository."""
    found: dict[str, list[Path]] = {}
    for path in m2_repository.rglob("*.jar"):
        found.setdefault(path.name, []).append(path)
    rows = []
    for jar in sorted(jars_dir.glob("*.jar")):
        places = found.get(jar.name, [])
        if len(places) != 1:
            raise BrokerError(f"{jar.name}: {len(places)} copies under {m2_repository}")
        version_dir = places[0].parent
        group = ".".join(version_dir.parent.parent.relative_to(m2_repository).parts)
        rows.append((f"{group}:{version_dir.parent.name}:{version_dir.name}", _sha256(jar)))
    return "".join(f"{coordinates}\n    {sha256}\n" for coordinates, sha256 in sorted(rows))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m worker.broker_jars JARS_DIR M2_REPOSITORY")
    print(pinned_table(Path(sys.argv[1]), Path(sys.argv[2])), end="")

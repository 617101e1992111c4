"""Cluster mode on Postgres: several server processes on one schema (``TRADE_CANVAS_CLUSTER=1``).

Each server is its own ``python -m trade_canvas serve`` process (as on separate hosts), all on
the same DSN and a fresh schema shared by the scenario's servers (``ServerProcess(schema=...)``).
Needs ``--store postgres``. Six scenarios:

- **takeover**: the replay exchange at 60x (``--synthesize-listed``) and three servers following
  the same whitelist of N spot 1m series (30; 10 in --quick). When every series has a live
  owner, the node owning the most series is killed with SIGKILL (master and worker, ``kill -9``)
  and a survivor's ``GET /api/runtime/cluster`` is polled every 50 ms until every series the
  killed node owned has another owner with an unexpired lease: ``takeover_s`` runs from the
  kill to that poll. A replacement server joins before the next cycle. After the cycles, the
  newest (up to 1000) stored candles of a few series (read back with ``/api/market/candles``
  from a survivor) are checked against the exchange's klines of their span (``store_missing`` =
  klines absent from the store, so a recording's own holes do not count; ``store_duplicates`` =
  times stored twice or out of order; ``store_mismatched`` = candles unlike the exchange's).
- **freeze and partition**: the replay exchange at 60x, three servers following N series (30;
  6 in --quick), each reaching Postgres through its own ``TcpRelay`` (tests/fakes), default
  lease timings (tick 0.5 s, TTL 3 s), one subscriber socket per series on every server. Each
  cycle (3; 1 in --quick) hits the biggest owner three times in turn: SIGSTOP (``freeze``),
  a relay cut (connections closed, new ones refused) and a blackhole (no byte moves, nothing
  is closed), each held until every series it owned has another live owner plus 1 s, then
  SIGCONT / restore and wait until it is ready. ``freeze_takeover_*`` and
  ``partition_takeover_*`` (cut and blackhole) run from the fault to that poll. Throughout,
  ``/_replay/state`` is sampled every 100 ms: ``faults_double_upstream_samples`` counts samples
  with a stream on two upstream connections (a frozen process's connections are left out
  while it is stopped: it can neither unsubscribe nor receive), also by the fault running
  (``faults_double_upstream_by_fault``: from the fault until its victim is ready again).
  ``faults_missing``: exchange klines missing from what a socket received between its first
  and last candle, plus those missing from the store (takeover's store check over all N
  series); ``faults_duplicates``: candles received or stored twice or out of order.
- **minute boundary**: on the fan-out cluster, S series (1000; 200 in --quick) with one
  subscriber each on P2 and on P3 (10 series a socket); a warm-up minute, then one closed
  candle of every series posted at once to the process holding the series' lease, as the
  owners' feeds write them at a real boundary (16 connections in all, spread over the owners).
  ``boundary_p99_s``: from the first post to the arrival on a socket of another process than
  the writer, over all such (series, node); ``boundary_from_ack_*``: from each candle's own
  acknowledgement; ``boundary_write_s``: how long the writers took to acknowledge them all.
  ``boundary_p1_*``: the earlier shape, every candle posted to P1 (one process writes all).
- **fan-out across processes**: three servers, HTTP ingest on P1 only. One series gets S
  subscribers on P1 (``local``, the baseline), a second one S subscribers split over P2 and P3
  (``remote``: every candle crosses Postgres NOTIFY), a third one S subscribers on P2 alone
  (``remote1``: as many sockets on one event loop as the baseline). Each series holds 500 real
  candles first; the driver posts the real candles continuing it at 10/s, one at a time (as
  ``fanout.py``: latencies from send and from ack, loss counted per socket).
  ``added_p99_ms`` = remote from-send p99 - local from-send p99 (``_one_remote``: remote1's).
- **throughput**: 100 series with one subscriber each on P2 and on P3; the driver posts real
  candles to P1 through the batch endpoint, 50 candles a request (they travel inline in one
  notification: ~2.5 kB of the 7.9 kB limit), round-robin over the series, one connection.
  ``remote_candles_per_s`` = closed candles that reached a remote node / (its last receipt -
  the first send), the smaller of the two nodes; ``ingest_candles_per_s`` is the driver's rate.
- **ingest**: ``ingest.py``'s driver (sequential ``candle_closed``, then 5000-candle batches)
  against one cluster-mode server, then against a plain Postgres server (``ingest_plain_*``):
  what cluster mode's write sequence and notifications cost on the Postgres store.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import orjson
import psycopg

from benchmarks import feeds, ingest
from benchmarks.client import Http, aligned_past, candle, ingest_batches, percentile
from benchmarks.fanout import _drive, _score, _wait_green
from benchmarks.processes import Context, ReplayProcess, ServerProcess
from benchmarks.realdata import real_candles
from benchmarks.subscribers import Subscribers, wait_subscribed
from tests.fakes.replay import UpstreamSampler
from tests.fakes.tcp_relay import TcpRelay
from trade_canvas.exchanges import binance
from trade_canvas.series import parse_series_id

TARGETS = [
    ("takeover_p50_s", "<=", 1.5),
    ("takeover_max_s", "<=", 2.5),
    ("store_missing", "<", 1),
    ("store_duplicates", "<", 1),
    ("fanout_added_p99_ms", "<=", 10.0),
    ("fanout_added_p99_ms_one_remote", "<=", 10.0),
    ("fanout_remote_p99_ms", "<=", 30.0),
    ("fanout_remote_lost", "<", 1),
    ("fanout_remote1_lost", "<", 1),
    ("fanout_local_lost", "<", 1),
    ("throughput_remote_candles_per_s", ">=", 5000),
    ("throughput_lost", "<", 1),
    ("freeze_takeover_max_s", "<=", 4.0),
    ("partition_takeover_max_s", "<=", 4.0),
    ("faults_double_upstream_samples", "<", 1),
    ("faults_missing", "<", 1),
    ("faults_duplicates", "<", 1),
    ("boundary_p99_s", "<=", 1.0),
    ("boundary_lost", "<", 1),
    ("ingest_single_candles_per_s", ">=", 600),
    ("ingest_batch_candles_per_s", ">=", 60_000),
]
CLUSTER_ENV = {"TRADE_CANVAS_CLUSTER": "1"}
POLL_S = 0.05
REPLAY_SPEED = 60.0
BATCH_PATH = "/api/market/ingest/candles_closed_batch"
CLOSED_PATH = "/api/market/ingest/candle_closed"
THROUGHPUT_BATCH = 50  # candles per request: one notification payload (~7.9 kB) each


class Cluster:
    """N servers on one shared schema; the schema is dropped by ``close()``."""

    def __init__(self, ctx: Context, name: str, env: dict[str, str]) -> None:
        self.ctx, self.name = ctx, name
        self.env = {**CLUSTER_ENV, **env}
        self.schema = ctx.store.new_schema()
        self.servers: list[ServerProcess] = []
        self.dead: list[ServerProcess] = []
        self.node_of: dict[ServerProcess, str] = {}  # server -> its node name
        self.started = 0

    def add(self, env: dict[str, str] | None = None) -> ServerProcess:
        """Start one more server (node name ``<name>-<k>``) and wait until it is ready."""
        label = f"{self.name}-{self.started}"
        self.started += 1
        server = ServerProcess(self.ctx.workdir / self.name, self.ctx.store,
                               {**self.env, "TRADE_CANVAS_CLUSTER_NODE_NAME": label,
                                **(env or {})}, label, schema=self.schema)
        self.node_of[server] = label
        self.servers.append(server)
        return server

    def kill(self, server: ServerProcess) -> None:
        """kill -9 a server (its whole process group)."""
        server.kill()
        self.servers.remove(server)
        self.dead.append(server)

    def view(self, server: ServerProcess | None = None) -> dict[str, Any]:
        """Return ``/api/runtime/cluster`` of a server (the first one by default); retried for
        up to 10 s while it answers 503 (a node just reconnected after a fault)."""
        deadline = time.monotonic() + 10.0
        while True:
            try:
                return (server or self.servers[0]).get_json("/api/runtime/cluster", timeout=10)  # type: ignore[no-any-return]
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_nodes(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until every running server is an alive node; return node_id -> node name."""
        deadline = time.monotonic() + timeout_s
        names = {self.node_of[s] for s in self.servers}
        while True:
            view = self.view()
            alive = {n["node_id"]: n["name"] for n in view["nodes"] if n["alive"]}
            if names <= set(alive.values()):
                return alive
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: nodes {sorted(names)} not all alive: {view['nodes']}")
            time.sleep(0.2)

    def close(self) -> None:
        """Stop every server (recording one that died unasked) and drop the schema."""
        try:
            for server in self.servers:
                if not server.alive():
                    self.ctx.problems.append(
                        f"{self.name}: {self.node_of[server]} died during the benchmark:\n"
                        f"{server.log_tail()}")
                server.stop()
            for server in self.dead:
                server.stop()
        finally:
            self.ctx.store.drop(self.schema)


# --- takeover ----------------------------------------------------------------------------------


def _owners(view: dict[str, Any], series: set[str]) -> dict[str, str | None]:
    """Return series -> owner node id (None: no owner, or its lease has expired)."""
    found: dict[str, str | None] = {sid: None for sid in series}
    for row in view["series"]:
        if row["series_id"] in series and row["owner"] and row["expires_in_s"] > 0:
            found[row["series_id"]] = row["owner"]
    return found


def _wait_owned(cluster: Cluster, series: set[str], timeout_s: float) -> dict[str, str]:
    """Wait until every series has a live owner among the running nodes and ownership holds
    still for 2 s (a joining node takes its share first); return series -> owner node id."""
    deadline = time.monotonic() + timeout_s
    stable_since, last = time.monotonic(), None
    while True:
        alive = cluster.wait_nodes()
        owners = _owners(cluster.view(), series)
        if all(o in alive for o in owners.values()):
            if owners != last:
                stable_since, last = time.monotonic(), owners
            elif time.monotonic() - stable_since >= 2.0:
                return owners  # type: ignore[return-value]
        else:
            last = None
        if time.monotonic() > deadline:
            raise RuntimeError(f"series not all owned by live nodes in {timeout_s} s: {owners}")
        time.sleep(0.2)


def _biggest_owner(
    cluster: Cluster, series: set[str]
) -> tuple[ServerProcess, str, set[str], ServerProcess, dict[str, int]]:
    """Wait until every series has a live owner; return the node owning the most (its server,
    node id and series), another server, and the series count per node."""
    owners = _wait_owned(cluster, series, 90.0)
    alive = cluster.wait_nodes()
    counts: dict[str, int] = {}
    for node in owners.values():
        counts[node] = counts.get(node, 0) + 1
    victim_id = max(counts, key=lambda n: counts[n])
    victim = next(s for s in cluster.servers if cluster.node_of[s] == alive[victim_id])
    orphans = {sid for sid, node in owners.items() if node == victim_id}
    survivor = next(s for s in cluster.servers if s is not victim)
    return victim, victim_id, orphans, survivor, counts


def _takeover_cycle(cluster: Cluster, series: set[str]) -> dict[str, Any]:
    victim, victim_id, orphans, survivor, counts = _biggest_owner(cluster, series)
    cluster.kill(victim)
    killed_at = time.monotonic()
    polls = 0
    while True:
        polls += 1
        now = _owners(cluster.view(survivor), orphans)
        if all(node is not None and node != victim_id for node in now.values()):
            took = time.monotonic() - killed_at
            break
        if time.monotonic() - killed_at > 30.0:
            raise RuntimeError(f"no takeover 30 s after the kill: {now}")
        time.sleep(POLL_S)
    return {"takeover_s": took, "orphans": len(orphans), "polls": polls,
            "spread": sorted(counts.values(), reverse=True)}


def _exchange_klines(replay: ReplayProcess, series_id: str, first: int,
                     last: int) -> dict[int, tuple[float, ...]]:
    """Return the exchange's 1m klines of a series from ``first`` to ``last`` (<= 1000)."""
    market, symbol = series_id.split(":")[1:3]
    symbol = symbol.replace("/", "")
    path = "/spot/api/v3/klines" if market == "spot" else "/futures/fapi/v1/klines"
    rows = replay.get_json(f"{path}?symbol={symbol}&interval=1m&startTime={first * 1000}"
                           f"&endTime={last * 1000}&limit=1000")
    return {r[0] // 1000: (float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]))
            for r in rows}


def _stored_vs_exchange(server: ServerProcess, replay: ReplayProcess, series_id: str) -> dict[str, int]:
    """Compare the newest (up to 1000) stored candles with the exchange's klines of their span:
    ``missing`` counts klines the store lacks (a recording's own holes are not missing)."""
    stored = server.get_json(f"/api/market/candles?series_id={series_id}&limit=1000")["candles"]
    times = [c["candle_time"] for c in stored]
    duplicates = sum(1 for prev, cur in zip(times, times[1:]) if cur <= prev)
    missing = mismatched = 0
    if stored:
        exchange = _exchange_klines(replay, series_id, times[0], times[-1])
        missing = len(set(exchange) - set(times))
        for c in stored:
            mine = (c["open"], c["high"], c["low"], c["close"], c["volume"])
            if exchange.get(c["candle_time"]) != mine:
                mismatched += 1
    return {"stored": len(times), "missing": missing, "duplicates": duplicates,
            "mismatched": mismatched}


def _followed(ctx: Context, replay: ReplayProcess, name: str,
              count: int) -> tuple[list[str], dict[str, str]]:
    """Return ``count`` spot 1m series of the replay exchange, and the server settings that
    follow them as a whitelist."""
    series = [sid for sid in feeds.series_ids(replay, count * 2) if sid.endswith(":1m")
              and ":spot:" in sid][:count]
    whitelist = ctx.workdir / f"{name}-whitelist.json"
    whitelist.parent.mkdir(parents=True, exist_ok=True)
    whitelist.write_text(orjson.dumps({"series_ids": series}).decode())
    env = {**replay.env(), "TRADE_CANVAS_ENABLE_WHITELIST_INGEST": "1",
           "TRADE_CANVAS_WHITELIST_PATH": str(whitelist),
           "TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES": "100",
           "TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE": "4"}
    return series, env


def _takeover(ctx: Context, count: int, cycles: int, checked: int) -> dict[str, Any]:
    replay = ReplayProcess(ctx.workdir / "replay", "--speed", str(REPLAY_SPEED),
                           "--synthesize-listed")
    try:
        series, env = _followed(ctx, replay, "takeover", count)
        cluster = Cluster(ctx, "takeover", env)
        try:
            for _ in range(3):
                cluster.add()
            results = []
            for cycle in range(cycles):
                results.append(_takeover_cycle(cluster, set(series)))
                print(f"   takeover cycle {cycle + 1}: {results[-1]['takeover_s']:.2f} s "
                      f"({results[-1]['orphans']} series; owned per node "
                      f"{results[-1]['spread']})", flush=True)
                cluster.add()  # the replacement: three nodes again
            # the new owners' REST tail fill closes the gap; then compare with the exchange
            _wait_owned(cluster, set(series), 90.0)
            time.sleep(3.0)
            checks = _check_store(cluster.servers[0], replay, series[:checked])
            return _takeover_figures(results, checks, len(series))
        finally:
            cluster.close()
    finally:
        replay.stop()


def _check_store(server: ServerProcess, replay: ReplayProcess, series: list[str]) -> dict[str, int]:
    """Sum the store checks; retry for up to 20 s while a tail fill may still be running."""
    deadline = time.monotonic() + 20.0
    while True:
        total = {"series": len(series), "stored": 0, "missing": 0, "duplicates": 0,
                 "mismatched": 0}
        for sid in series:
            for key, value in _stored_vs_exchange(server, replay, sid).items():
                total[key] += value
        if not (total["missing"] or total["duplicates"] or total["mismatched"]) \
                or time.monotonic() > deadline:
            return total
        time.sleep(1.0)


def _takeover_figures(results: list[dict[str, Any]], checks: dict[str, int], count: int) -> dict[str, Any]:
    took = sorted(r["takeover_s"] for r in results)
    return {
        "takeover_series": count,
        "takeover_cycles": len(results),
        "takeover_s_each": [round(t, 3) for t in (r["takeover_s"] for r in results)],
        "takeover_p50_s": round(percentile(took, 0.5), 3),
        "takeover_max_s": round(took[-1], 3),
        "takeover_orphans_per_kill": round(sum(r["orphans"] for r in results) / len(results), 1),
        "takeover_owned_per_node_each": [r["spread"] for r in results],
        "store_series_checked": checks["series"],
        "store_candles_checked": checks["stored"],
        "store_missing": checks["missing"],
        "store_duplicates": checks["duplicates"],
        "store_mismatched": checks["mismatched"],
    }


# --- freeze and partition ---------------------------------------------------------------------


def _ready(server: ServerProcess) -> bool:
    try:
        with urllib.request.urlopen(server.base + "/api/ready", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _fault_cycle(cluster: Cluster, series: set[str], relays: dict[ServerProcess, TcpRelay],
                 sampler: UpstreamSampler, kind: str) -> dict[str, Any]:
    """Freeze (SIGSTOP) or cut off (relay cut / blackhole) the biggest owner until its series
    moved, plus a second; then wake or reconnect it and wait until it is ready again."""
    victim, victim_id, orphans, survivor, counts = _biggest_owner(cluster, series)
    sampler.phase = kind
    if kind == "freeze":
        streams = {binance.series_stream(parse_series_id(sid)) for sid in orphans}
        sampler.ignored = {c["id"] for c in sampler.connections() if set(c["streams"]) & streams}
        os.killpg(victim.proc.pid, signal.SIGSTOP)
    elif kind == "cut":
        relays[victim].cut()
    else:
        relays[victim].blackhole()
    started = time.monotonic()
    print(f"   {kind} of {cluster.node_of[victim]} at monotonic {started:.2f} "
          f"(wall {time.strftime('%H:%M:%S')})", flush=True)
    try:
        while True:
            now = _owners(cluster.view(survivor), orphans)
            if all(node is not None and node != victim_id for node in now.values()):
                took = time.monotonic() - started
                break
            if time.monotonic() - started > 30.0:
                raise RuntimeError(f"{kind}: no takeover 30 s after the fault: {now}")
            time.sleep(POLL_S)
        time.sleep(1.0)
    finally:
        if kind == "freeze":
            os.killpg(victim.proc.pid, signal.SIGCONT)
            sampler.ignored = set()
        else:
            relays[victim].restore()
    deadline = time.monotonic() + 60.0
    while not _ready(victim):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}: {cluster.node_of[victim]} not ready 60 s after the fault")
        time.sleep(0.2)
    sampler.phase = "between faults"
    return {"kind": kind, "takeover_s": took, "orphans": len(orphans)}


def _socket_faults(logs: list[Any], replay: ReplayProcess) -> dict[str, Any]:
    """Missing closed candles (exchange klines between a socket's first and last candle that it
    did not get; the recordings' own holes are not missing) and duplicates (a time again or
    out of order)."""
    per_socket: list[dict[str, list[int]]] = []
    spans: dict[str, tuple[int, int]] = {}
    for log in logs:
        per_series: dict[str, list[int]] = {}
        for sid, t, _ in log.closed_candles:
            per_series.setdefault(sid, []).append(t)
        per_socket.append(per_series)
        for sid, times in per_series.items():
            lo, hi = spans.get(sid, (times[0], times[-1]))
            spans[sid] = (min(lo, min(times)), max(hi, max(times)))
    exchange = {sid: set(_exchange_klines(replay, sid, lo, hi)) for sid, (lo, hi) in spans.items()}
    missing = duplicates = 0
    examples: list[tuple[str, int]] = []
    for per_series in per_socket:
        for sid, times in per_series.items():
            duplicates += sum(1 for prev, cur in zip(times, times[1:]) if cur <= prev)
            lost = sorted(t for t in exchange[sid] if times[0] <= t <= times[-1]
                          and t not in set(times))
            missing += len(lost)
            examples += [(sid, t) for t in lost[:10 - len(examples)]]
    return {"missing": missing, "duplicates": duplicates, "examples": examples,
            "gap_frames": sum(log.errors["gap"] for log in logs),
            "sockets_closed": sum(log.closed_by_server for log in logs)}


def _faults(ctx: Context, count: int, cycles: int) -> dict[str, Any]:
    """Freeze and partition cycles on three servers, each reaching Postgres through a relay."""
    params = psycopg.conninfo.conninfo_to_dict(ctx.store.dsn)
    host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
    replay = ReplayProcess(ctx.workdir / "faults-replay", "--speed", str(REPLAY_SPEED),
                           "--synthesize-listed")
    relays: dict[ServerProcess, TcpRelay] = {}
    try:
        series, env = _followed(ctx, replay, "faults", count)
        env["TRADE_CANVAS_POSTGRES_CONNECT_TIMEOUT_S"] = "1"
        cluster = Cluster(ctx, "faults", env)
        groups: list[Subscribers] = []
        sampler = UpstreamSampler(lambda: replay.get_json("/_replay/state"))
        sampler.phase = "between faults"
        try:
            for _ in range(3):
                relay = TcpRelay(host, port)
                dsn = psycopg.conninfo.make_conninfo(ctx.store.dsn, host="127.0.0.1",
                                                     port=relay.port)
                relays[cluster.add({"TRADE_CANVAS_POSTGRES_DSN": dsn})] = relay
            _wait_owned(cluster, set(series), 90.0)
            for server in cluster.servers:
                groups.append(Subscribers(server.port, [(sid,) for sid in series], processes=1))
            results = []
            for cycle in range(cycles):
                for kind in ("freeze", "cut", "blackhole"):
                    results.append(_fault_cycle(cluster, set(series), relays, sampler, kind))
                    print(f"   {kind} {cycle + 1}: takeover {results[-1]['takeover_s']:.2f} s "
                          f"({results[-1]['orphans']} series)", flush=True)
            _wait_owned(cluster, set(series), 90.0)
            time.sleep(3.0)  # the last tail fills and a resync period
            logs = []
            for group in groups:
                logs.extend(group.stop()[0])
            groups = []
            sockets = _socket_faults(logs, replay)
            checks = _check_store(cluster.servers[0], replay, series)
        finally:
            sampler.stop()
            for group in groups:
                group.kill()
            cluster.close()
    finally:
        replay.stop()
        for relay in relays.values():
            relay.cut()
    freeze = sorted(r["takeover_s"] for r in results if r["kind"] == "freeze")
    partition = sorted(r["takeover_s"] for r in results if r["kind"] != "freeze")
    return {
        "faults_series": count,
        "faults_cycles": cycles,
        "freeze_takeover_s_each": [round(t, 3) for t in freeze],
        "freeze_takeover_max_s": round(freeze[-1], 3),
        "partition_takeover_s_each": {kind: [round(r["takeover_s"], 3) for r in results
                                             if r["kind"] == kind] for kind in ("cut", "blackhole")},
        "partition_takeover_max_s": round(partition[-1], 3),
        "faults_upstream_samples": sampler.samples,
        "faults_double_upstream_samples": len(sampler.doubles),
        # by the fault running when sampled (from the fault until its victim is ready again)
        "faults_double_upstream_by_fault": dict(Counter(phase for phase, _ in sampler.doubles)),
        "faults_double_upstream_example": sampler.doubles[0][1] if sampler.doubles else None,
        "faults_sockets": len(logs),
        "faults_candles_received": sum(len(log.closed_candles) for log in logs),
        "faults_missing": sockets["missing"] + checks["missing"],
        "faults_duplicates": sockets["duplicates"] + checks["duplicates"],
        "faults_gap_frames": sockets["gap_frames"],  # the recordings' own holes send gaps too
        "faults_sockets_closed": sockets["sockets_closed"],
        "faults_missing_examples": sockets["examples"],  # (series, candle time)
        "faults_store_mismatched": checks["mismatched"],
    }


# --- minute boundary ---------------------------------------------------------------------------


def _burst(port: int, series: list[str], t: int, threads: int = 16) -> tuple[float, dict[str, float]]:
    """POST one closed candle at ``t`` for every series at once; return the start and acks."""
    acks: dict[str, float] = {}
    lock = threading.Lock()
    todo = list(series)

    def worker() -> None:
        client = Http(port)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    sid = todo.pop()
                body = orjson.dumps({"series_id": sid, "candle": candle(t)})
                status, data = client.request("POST", CLOSED_PATH, body)
                if status != 200:
                    raise RuntimeError(f"candle_closed -> {status}: {data[:200]!r}")
                with lock:
                    acks[sid] = time.monotonic()
        finally:
            client.close()

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:  # noqa: BLE001  re-raised by the driver below
            errors.append(exc)

    pool = [threading.Thread(target=guarded, daemon=True) for _ in range(threads)]
    start = time.monotonic()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise RuntimeError(f"minute boundary burst failed: {errors[0]!r}")
    return start, acks


def _owned_bursts(cluster: Cluster, series: list[str], t: int,
                  writer_of: dict[str, ServerProcess]) -> tuple[float, dict[str, float]]:
    """Post every series' candle on its writer, all writers at once (16 connections in all)."""
    by_server: dict[ServerProcess, list[str]] = {}
    for sid in series:
        by_server.setdefault(writer_of[sid], []).append(sid)
    results: list[tuple[float, dict[str, float]]] = []
    errors: list[BaseException] = []
    threads = max(1, 16 // len(by_server))

    def run(server: ServerProcess, mine: list[str]) -> None:
        try:
            results.append(_burst(server.port, mine, t, threads))
        except BaseException as exc:  # noqa: BLE001  re-raised below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=item, daemon=True) for item in by_server.items()]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise RuntimeError(f"minute boundary burst failed: {errors[0]!r}")
    acks: dict[str, float] = {}
    for _, part in results:
        acks.update(part)
    return min(start for start, _ in results), acks


def _boundary(cluster: Cluster, series_count: int) -> dict[str, Any]:
    """One closed candle of ``series_count`` series written at once; when does each reach the
    subscribers of the other processes (one socket per 10 series on every process)?"""
    servers = cluster.servers[:3]
    series = [f"bench:spot:MB{k}/USDT:1m" for k in range(series_count)]
    t0 = aligned_past(60, 10)
    plan = [tuple(series[i:i + 10]) for i in range(0, series_count, 10)]
    groups = []
    figures: dict[str, Any] = {"boundary_series": series_count}
    try:
        for server in servers:
            groups.append(Subscribers(server.port, plan, processes=1))
        registered = [wait_subscribed(server, set(series), series_count) for server in servers]
        figures["boundary_subscribed"] = sum(registered)
        everything_on_p1 = {sid: servers[0] for sid in series}
        _burst(servers[0].port, series, t0)  # warm-up minute: each follower's first write reads
        time.sleep(4.0)
        start_p1, acks_p1 = _burst(servers[0].port, series, t0 + 60)  # the earlier shape
        time.sleep(3.0)
        _wait_owned(cluster, set(series), 60.0)
        alive = cluster.wait_nodes()
        by_name = {cluster.node_of[s]: s for s in servers}
        owners = _owners(cluster.view(), set(series))
        writer_of = {sid: by_name[alive[node]] for sid, node in owners.items()}  # type: ignore[index]
        start, acks = _owned_bursts(cluster, series, t0 + 120, writer_of)
        time.sleep(3.0)
        per_node = [group.stop()[0] for group in groups]
    except BaseException:
        for group in groups:
            group.kill()
        raise
    for label, t, begun, acked, writers in (
            ("boundary_p1_", t0 + 60, start_p1, acks_p1, everything_on_p1),
            ("boundary_", t0 + 120, start, acks, writer_of)):
        from_start: list[float] = []
        from_ack: list[float] = []
        lost = 0
        for server, logs in zip(servers, per_node):
            arrived: dict[str, float] = {}
            for log in logs:
                for sid, candle_time, received_at in log.closed_candles:
                    if candle_time == t:
                        arrived.setdefault(sid, received_at)
            others = [sid for sid in series if writers[sid] is not server]
            lost += sum(1 for sid in others if sid not in arrived)
            for sid in others:
                if sid in arrived:
                    from_start.append(arrived[sid] - begun)
                    from_ack.append(arrived[sid] - acked[sid])
        from_start.sort()
        from_ack.sort()
        figures.update({
            f"{label}write_s": round(max(acked.values()) - begun, 3),
            f"{label}p50_s": round(percentile(from_start, 0.5), 3),
            f"{label}p99_s": round(percentile(from_start, 0.99), 3),
            f"{label}max_s": round(from_start[-1], 3),
            f"{label}from_ack_p50_ms": round(percentile(from_ack, 0.5) * 1000, 1),
            f"{label}from_ack_p99_ms": round(percentile(from_ack, 0.99) * 1000, 1),
            f"{label}lost": lost,
        })
    return figures


# --- fan-out across processes -------------------------------------------------------------------


def _fanout(cluster: Cluster, subscribers: int, rounds: int, history: int) -> dict[str, Any]:
    p1, p2, p3 = cluster.servers[:3]
    start = aligned_past(60, history + rounds + 5)
    candles = real_candles(history + rounds, start)
    figures: dict[str, Any] = {}
    for label, targets in (("local", [p1]), ("remote", [p2, p3]), ("remote1", [p2])):
        series = f"bench:spot:CLU{label.upper()}/USDT:1m"
        ingest_batches(p1.port, series, candles[:history])
        _wait_green(p1, [series], 120.0)
        groups = []
        try:
            for k, server in enumerate(targets):
                share = subscribers // len(targets) + (k < subscribers % len(targets))
                groups.append(Subscribers(server.port, [(series,)] * share,
                                          processes=2 // len(targets),
                                          since=candles[history - 1]["candle_time"]))
            registered = sum(wait_subscribed(server, {series}, subscribers // len(targets))
                             for server in targets)
            acks, rate = _drive(p1.port, [series], candles[history:])
            time.sleep(1.0 + subscribers / 5000)
            logs = []
            for group in groups:
                logs.extend(group.stop()[0])
        except BaseException:
            for group in groups:
                group.kill()
            raise
        score = _score(logs, acks, rounds)
        figures[f"fanout_{label}_subscribed"] = registered
        for key in ("lost", "duplicates", "dropped", "p50_ms", "p99_ms", "max_ms",
                    "from_send_p50_ms", "from_send_p99_ms", "from_send_max_ms"):
            figures[f"fanout_{label}_{key}"] = score[key]
        figures["fanout_candles_per_s"] = rate
    figures["fanout_subscribers"] = subscribers
    figures["fanout_rounds"] = rounds
    figures["fanout_added_p50_ms"] = round(
        figures["fanout_remote_from_send_p50_ms"] - figures["fanout_local_from_send_p50_ms"], 2)
    figures["fanout_added_p99_ms"] = round(
        figures["fanout_remote_from_send_p99_ms"] - figures["fanout_local_from_send_p99_ms"], 2)
    figures["fanout_added_p50_ms_one_remote"] = round(
        figures["fanout_remote1_from_send_p50_ms"] - figures["fanout_local_from_send_p50_ms"], 2)
    figures["fanout_added_p99_ms_one_remote"] = round(
        figures["fanout_remote1_from_send_p99_ms"] - figures["fanout_local_from_send_p99_ms"], 2)
    return figures


# --- throughput --------------------------------------------------------------------------------


def _throughput(cluster: Cluster, series_count: int, per_series: int) -> dict[str, Any]:
    p1, remotes = cluster.servers[0], cluster.servers[1:3]
    series = [f"bench:spot:THR{k}/USDT:1m" for k in range(series_count)]
    candles = real_candles(per_series, aligned_past(60, per_series + 5))
    bodies = [orjson.dumps({"series_id": sid, "candles": candles[b:b + THROUGHPUT_BATCH],
                            "publish_ws": True})
              for b in range(0, per_series, THROUGHPUT_BATCH) for sid in series]
    groups = []
    try:
        for server in remotes:
            groups.append(Subscribers(server.port, [(sid,) for sid in series], processes=1))
        registered = [wait_subscribed(server, set(series), series_count) for server in remotes]
        client = Http(p1.port)
        first_send = time.monotonic()
        try:
            for body in bodies:
                status, data = client.request("POST", BATCH_PATH, body)
                if status != 200:
                    raise RuntimeError(f"batch ingest -> {status}: {data[:200]!r}")
        finally:
            client.close()
        last_ack = time.monotonic()
        time.sleep(3.0)  # a resync period and more: what is still missing then is lost
        per_node = [group.stop()[0] for group in groups]
    except BaseException:
        for group in groups:
            group.kill()
        raise
    expected = series_count * per_series
    rates, lost, duplicates, spans = [], 0, 0, []
    for logs in per_node:
        got: set[tuple[str, int]] = set()
        last = first_send
        for log in logs:
            for sid, t, received_at in log.closed_candles:
                if (sid, t) in got:
                    duplicates += 1
                got.add((sid, t))
                last = max(last, received_at)
        lost += expected - len(got)
        spans.append(last - first_send)
        rates.append(len(got) / (last - first_send) if last > first_send else 0.0)
    return {
        "throughput_series": series_count,
        "throughput_candles": expected,
        "throughput_batch": THROUGHPUT_BATCH,
        "throughput_subscribed": sum(registered),
        "throughput_ingest_candles_per_s": round(expected / (last_ack - first_send)),
        "throughput_remote_candles_per_s": round(min(rates)),
        "throughput_remote_total_candles_per_s": round(sum(rates)),
        "throughput_remote_last_after_ack_s": round(max(spans) - (last_ack - first_send), 2),
        "throughput_lost": lost,
        "throughput_duplicates": duplicates,
    }


# --- ingest ------------------------------------------------------------------------------------


def _ingest_drive(server: ServerProcess, singles: int, batches: int, prefix: str) -> dict[str, Any]:
    mp = multiprocessing.get_context("fork")
    parent, child = mp.Pipe()
    proc = mp.Process(target=ingest._drive, args=(server.port, singles, batches, child),
                      daemon=True)
    proc.start()
    if not parent.poll(900):
        proc.terminate()
        raise RuntimeError("ingest client did not finish")
    result = parent.recv()
    proc.join(timeout=10)
    return {
        f"{prefix}_single_candles_per_s": round(singles / result["single_s"]),
        f"{prefix}_single_mean_ms": round(result["single_s"] / singles * 1000, 3),
        f"{prefix}_batch_candles_per_s": round(batches * ingest.BATCH / result["batch_s"]),
        f"{prefix}_batch_request_ms": round(result["batch_s"] / batches * 1000, 1),
    }


def _ingest(ctx: Context, singles: int, batches: int) -> dict[str, Any]:
    """Cluster mode (one node), then the same driver against a plain Postgres server."""
    cluster = Cluster(ctx, "ingest", {})
    try:
        figures = _ingest_drive(cluster.add(), singles, batches, "ingest")
    finally:
        cluster.close()
    with ctx.server("ingest-plain") as server:
        figures.update(_ingest_drive(server, singles, batches, "ingest_plain"))
    return figures


def run(ctx: Context) -> dict[str, Any]:
    """Return takeover, cross-process fan-out, throughput and ingest figures of cluster mode."""
    if ctx.store.kind != "postgres":
        raise ValueError("cluster needs --store postgres")
    if ctx.quick:
        takeover_args, fanout_args, throughput_args, ingest_args = \
            (10, 1, 3), (200, 10, 100), (20, 100), (1000, 2)
        faults_args, boundary_args = (6, 1), (200,)
    else:
        takeover_args, fanout_args, throughput_args, ingest_args = \
            (30, 5, 5), (1000, 100, 500), (100, 500), (10_000, 10)
        faults_args, boundary_args = (30, 3), (1000,)
    figures: dict[str, Any] = {"processes": 3, "nproc": os.cpu_count()}
    print("   takeover", flush=True)
    figures.update(_takeover(ctx, *takeover_args))
    print("   freeze and partition", flush=True)
    figures.update(_faults(ctx, *faults_args))
    if figures["faults_double_upstream_samples"] or figures["faults_missing"] \
            or figures["faults_duplicates"] or figures["faults_store_mismatched"]:
        ctx.problems.append(
            f"faults: {figures['faults_double_upstream_samples']} double upstream samples, "
            f"{figures['faults_missing']} missing, {figures['faults_duplicates']} duplicated, "
            f"{figures['faults_store_mismatched']} stored candles unlike the exchange's")
    print("   fan-out and throughput", flush=True)
    cluster = Cluster(ctx, "fanout", {})
    try:
        for _ in range(3):
            cluster.add()
        cluster.wait_nodes()
        figures.update(_fanout(cluster, *fanout_args))
        figures.update(_throughput(cluster, *throughput_args))
        print("   minute boundary", flush=True)
        figures.update(_boundary(cluster, *boundary_args))
    finally:
        cluster.close()
    if figures["boundary_lost"]:
        ctx.problems.append(f"minute boundary: {figures['boundary_lost']} candles never arrived")
    for side in ("local", "remote", "remote1"):
        if figures[f"fanout_{side}_lost"] or figures[f"fanout_{side}_duplicates"]:
            ctx.problems.append(f"fan-out ({side}): lost {figures[f'fanout_{side}_lost']}, "
                                f"duplicated {figures[f'fanout_{side}_duplicates']}")
    if figures["throughput_lost"] or figures["throughput_duplicates"]:
        ctx.problems.append(f"throughput: lost {figures['throughput_lost']}, "
                            f"duplicated {figures['throughput_duplicates']}")
    if figures["store_missing"] or figures["store_duplicates"] or figures["store_mismatched"]:
        ctx.problems.append(f"takeover: store != exchange (missing {figures['store_missing']}, "
                            f"duplicates {figures['store_duplicates']}, "
                            f"mismatched {figures['store_mismatched']})")
    print("   ingest", flush=True)
    figures.update(_ingest(ctx, *ingest_args))
    return figures

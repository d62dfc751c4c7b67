"""Everything the backend keeps in Redis, behind one class; the key schema lives here only.

Keys (``{p}`` = Label Studio project id, ``{key}`` = score key ``<model>|<adapter version or base>``):
  wtd:projects                     set of known project ids (reconcile walks it)
  wtd:p:{p}:setup                  hash: label_config, extra_params (JSON) from the last /setup
  wtd:p:{p}:scores:{key}           hash task id -> JSON score row (prompt, task, response, metrics)
  wtd:p:{p}:adapter                current adapter version (drafts); absent = base model
  wtd:p:{p}:round_adapters         hash round r (>= 2) -> adapter version that selects it (round 1: base)
  wtd:p:{p}:round_open             set of the latest round's picks not yet annotated, while rounds remain
  wtd:p:{p}:selection              JSON frozen selection (every planned round) + the fingerprint it was computed for
  wtd:p:{p}:pass                   counter of queue-writing passes (model_version suffix)
  wtd:p:{p}:queue                  JSON state of the last written queue (version, order, budget...)
  wtd:p:{p}:positions              hash task id -> queue position of the last written queue
  wtd:p:{p}:pending:{kind}         coalescing flag = id of the {kind} job queued and not started
  wtd:p:{p}:jobs                   hash kind -> id of the latest job of that kind (metrics, chaining)
  wtd:p:{p}:seq:{kind}             counter behind the deterministic job ids wtd-{kind}-{p}-{n}
  wtd:p:{p}:lock:queue             lock held while a queue is written (one writer per project)
  wtd:p:{p}:changed                set of annotation change signatures seen by webhooks since the last
                                   training started (copies of one event count once)
  wtd:p:{p}:train:trained_on       set of annotation signatures the last training read
  wtd:p:{p}:train:last             JSON result of the last training
  wtd:reconcile:scheduled          flag: a reconcile pass is scheduled
  wtd:p:{p}:train:skipped          hash: count, last_reason, last_at of trainings skipped as duplicates
  wtd:p:{p}:adapters               sorted set of the adapter versions published here (score = number)
  wtd:p:{p}:adapter_files:{v}      hash: version {v}'s files as a tar in chunks c0, c1, ... + size, sha256
  wtd:p:{p}:adapter_high           highest version number ever published (pruning never lowers it)
  wtd:p:{p}:quality                hash adapter version -> JSON held-out quality record (backend.quality)
  wtd:p:{p}:quality:base           hash held-out example key -> the base model's NLL on it (a cache)
  wtd:p:{p}:webhook_auth           fingerprint of the credentials last put on Label Studio's webhook
  wtd:p:{p}:config_warnings        JSON list: why the last /setup's label config hides the draft
  wtd:p:{p}:train:history          list of JSON training records, oldest first (the last TRAINING_HISTORY)
  wtd:p:{p}:tasks                  hash task id -> JSON task data (the index, read once per import)
  wtd:p:{p}:annotations            hash task id -> JSON annotations, of annotated tasks only
  wtd:p:{p}:drafted                hash task id -> score key its draft in Label Studio was written from
  wtd:p:{p}:annotated              set of annotated task ids (webhooks add, passes reconcile): progress
  wtd:p:{p}:task_labels            hash task id -> task label (given or inferred) of the selection pool
"""
from __future__ import annotations

import json
import uuid
from typing import Iterable

import redis

PREFIX = "wtd"
_PUBLISH = ("if redis.call('renamenx', KEYS[1], KEYS[2]) == 0 then return 0 end "
            "redis.call('persist', KEYS[2]) redis.call('zadd', KEYS[3], ARGV[1], ARGV[2]) "
            "if tonumber(redis.call('get', KEYS[4]) or '0') < tonumber(ARGV[1]) then "
            "redis.call('set', KEYS[4], ARGV[1]) end return 1")
"""Make a fully written temporary copy the version's copy, once (never over an existing one), and
raise the high-water mark of version numbers."""
TRAINING_HISTORY = 100
"""Training records kept per project for /metrics and the dashboard (older ones are dropped)."""
_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_ADD_CHANGES = ("for _, s in ipairs(ARGV) do if redis.call('sismember', KEYS[2], s) == 0 then "
                "redis.call('sadd', KEYS[1], s) end end return redis.call('scard', KEYS[1])")


def connect(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A lazy client: nothing connects until the first command, so a dead Redis fails per request."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                health_check_interval=30)


MAX_PROJECT_ID = 2**63 - 1
"""Label Studio's ids are positive 64-bit database keys."""


def valid_project_id(project) -> bool:
    return isinstance(project, int) and not isinstance(project, bool) and 1 <= project <= MAX_PROJECT_ID


class Store:
    def __init__(self, conn: redis.Redis):
        self.conn = conn

    def _k(self, project: int, *parts: str) -> str:
        return ":".join((PREFIX, "p", str(project)) + parts)

    def _replace_hash(self, key: str, mapping: dict, pipe=None) -> None:
        """``key`` becomes exactly ``mapping`` in one MULTI (``pipe``'s, when given: the caller executes)."""
        p = self.conn.pipeline() if pipe is None else pipe
        p.delete(key)
        if mapping:
            p.hset(key, mapping={str(k): v for k, v in mapping.items()})
        if pipe is None:
            p.execute()

    def _replace_set(self, key: str, members, pipe=None) -> None:
        """``key`` becomes exactly the set of ``members`` (as ``_replace_hash``)."""
        p = self.conn.pipeline() if pipe is None else pipe
        p.delete(key)
        members = [str(m) for m in members]
        if members:
            p.sadd(key, *members)
        if pipe is None:
            p.execute()

    # --- projects and their setup -------------------------------------------------------------
    def add_project(self, project: int) -> None:
        if not valid_project_id(project):
            raise ValueError(f"not a Label Studio project id: {project!r}")
        self.conn.sadd(f"{PREFIX}:projects", project)

    def projects(self) -> list[int]:
        return sorted(int(p) for p in self.conn.smembers(f"{PREFIX}:projects"))

    def save_setup(self, project: int, label_config: str, extra_params: dict) -> bool:
        """Record the project's setup; True if it differs from the one recorded before."""
        changed = self.setup(project) != (label_config, extra_params)
        self.conn.hset(self._k(project, "setup"), mapping={
            "label_config": label_config, "extra_params": json.dumps(extra_params)})
        self.add_project(project)
        return changed

    def setup(self, project: int) -> tuple[str, dict] | None:
        h = self.conn.hgetall(self._k(project, "setup"))
        if not h:
            return None
        return h[b"label_config"].decode(), json.loads(h[b"extra_params"])

    # --- scores -------------------------------------------------------------------------------
    def put_scores(self, project: int, key: str, rows: dict) -> None:
        if rows:
            self.conn.hset(self._k(project, "scores", key),
                           mapping={str(t): json.dumps(r) for t, r in rows.items()})

    def scores(self, project: int, key: str, task_ids: Iterable | None = None) -> dict[int, dict]:
        """Stored score rows under ``key``: of ``task_ids`` only, or all of them (reports, tests)."""
        k = self._k(project, "scores", key)
        if task_ids is None:
            items = self.conn.hgetall(k).items()
        else:
            ids = [str(t) for t in task_ids]
            items = zip(ids, self.conn.hmget(k, ids) if ids else [])
        return {int(t): json.loads(v) for t, v in items if v is not None}

    def scored_ids(self, project: int, key: str) -> set[int]:
        return {int(t) for t in self.conn.hkeys(self._k(project, "scores", key))}

    # --- adapters and rounds --------------------------------------------------------------------
    def _get(self, key: str) -> str | None:
        v = self.conn.get(key)
        return v.decode() if v is not None else None

    def adapter(self, project: int) -> str | None:
        return self._get(self._k(project, "adapter"))

    def set_adapter(self, project: int, version: str) -> None:
        self.conn.set(self._k(project, "adapter"), version)

    def round_adapters(self, project: int) -> dict[int, str]:
        """Round r (>= 2) -> the adapter trained when round r - 1 ended (it scores round r's pool)."""
        return {int(r): v.decode() for r, v in self.conn.hgetall(self._k(project, "round_adapters")).items()}

    def set_round_adapter(self, project: int, round_no: int, version: str) -> None:
        self.conn.hset(self._k(project, "round_adapters"), str(round_no), version)

    def set_round_open(self, project: int, task_ids: Iterable[int]) -> None:
        """The latest round's picks still to annotate (empty: no round is waiting to end)."""
        self._replace_set(self._k(project, "round_open"), task_ids)

    def close_pick(self, project: int, task_id: int) -> bool:
        """Mark a pick annotated; True for exactly the call that annotated the round's last open pick."""
        pipe = self.conn.pipeline()  # MULTI: of two concurrent last picks, one sees the set empty
        pipe.srem(self._k(project, "round_open"), str(task_id))
        pipe.scard(self._k(project, "round_open"))
        removed, left = pipe.execute()
        return bool(removed) and left == 0

    # --- selection and queue ------------------------------------------------------------------
    def _get_json(self, key: str):
        v = self.conn.get(key)
        return json.loads(v) if v is not None else None

    def selection(self, project: int) -> dict | None:
        return self._get_json(self._k(project, "selection"))

    def save_selection(self, project: int, selection: dict) -> None:
        self.conn.set(self._k(project, "selection"), json.dumps(selection))

    def next_pass(self, project: int) -> int:
        return int(self.conn.incr(self._k(project, "pass")))

    def queue(self, project: int) -> dict | None:
        return self._get_json(self._k(project, "queue"))

    def save_queue(self, project: int, state: dict, positions: dict[int, int]) -> None:
        pipe = self.conn.pipeline()
        pipe.set(self._k(project, "queue"), json.dumps(state))
        self._replace_hash(self._k(project, "positions"), positions, pipe)
        pipe.execute()

    def positions(self, project: int, task_ids: Iterable) -> dict[int, int]:
        ids = [str(t) for t in task_ids]
        vals = self.conn.hmget(self._k(project, "positions"), ids) if ids else []
        return {int(t): int(v) for t, v in zip(ids, vals) if v is not None}

    # --- jobs and coalescing ------------------------------------------------------------------
    def claim_pending(self, project: int, kind: str, job_id: str, ttl_s: int) -> bool:
        """True for the first caller while no ``kind`` job is pending; the flag holds that job's id."""
        return bool(self.conn.set(self._k(project, "pending", kind), job_id, nx=True, ex=ttl_s))

    def pending(self, project: int, kind: str) -> tuple[str, int] | None:
        """(job id, seconds the flag has left) of the pending ``kind`` job, if any."""
        pipe = self.conn.pipeline()
        pipe.get(self._k(project, "pending", kind))
        pipe.ttl(self._k(project, "pending", kind))
        job_id, ttl = pipe.execute()
        return (job_id.decode(), int(ttl)) if job_id is not None else None

    def clear_pending(self, project: int, kind: str, job_id: str) -> bool:
        """Drop the flag only if it is still ``job_id``'s (never a newer claim's)."""
        return bool(self.conn.eval(_DELETE_IF_EQUAL, 1, self._k(project, "pending", kind), job_id))

    def is_pending(self, project: int, kind: str) -> bool:
        return bool(self.conn.exists(self._k(project, "pending", kind)))

    def next_job_id(self, project: int, kind: str) -> str:
        return f"{PREFIX}-{kind}-{project}-{self.conn.incr(self._k(project, 'seq', kind))}"

    def queue_lock(self, project: int, timeout_s: int):
        return self.conn.lock(self._k(project, "lock", "queue"), timeout=timeout_s)

    def set_job(self, project: int, kind: str, job_id: str) -> None:
        self.conn.hset(self._k(project, "jobs"), kind, job_id)

    def jobs(self, project: int) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.conn.hgetall(self._k(project, "jobs")).items()}

    # --- training -----------------------------------------------------------------------------
    def reset_changes(self, project: int) -> None:
        self.conn.delete(self._k(project, "changed"), self._k(project, "changes"))  # changes: the old counter

    def trained_on(self, project: int) -> set[str]:
        return {s.decode() for s in self.conn.smembers(self._k(project, "train", "trained_on"))}

    def save_training(self, project: int, result: dict, signatures: Iterable[str]) -> None:
        pipe = self.conn.pipeline()
        sigs = list(signatures)
        pipe.set(self._k(project, "train", "last"), json.dumps(result))
        pipe.rpush(self._k(project, "train", "history"), json.dumps({**result, "annotations": len(sigs)}))
        pipe.ltrim(self._k(project, "train", "history"), -TRAINING_HISTORY, -1)
        self._replace_set(self._k(project, "train", "trained_on"), sigs, pipe)
        pipe.execute()

    def last_training(self, project: int) -> dict | None:
        return self._get_json(self._k(project, "train", "last"))

    # --- reconcile schedule -------------------------------------------------------------------
    def claim_reconcile(self, ttl_s: int) -> bool:
        return bool(self.conn.set(f"{PREFIX}:reconcile:scheduled", 1, nx=True, ex=ttl_s))

    def clear_reconcile(self) -> None:
        self.conn.delete(f"{PREFIX}:reconcile:scheduled")

    # --- skipped trainings, forgotten projects --------------------------------------------------
    def record_training_skip(self, project: int, reason: str, at: float) -> None:
        key = self._k(project, "train", "skipped")
        pipe = self.conn.pipeline()
        pipe.hincrby(key, "count", 1)
        pipe.hset(key, mapping={"last_reason": reason, "last_at": at})
        pipe.execute()

    def training_skips(self, project: int) -> dict:
        h = {k.decode(): v.decode() for k, v in self.conn.hgetall(self._k(project, "train", "skipped")).items()}
        return {"count": int(h.get("count", 0)), "last_reason": h.get("last_reason"),
                "last_at": float(h["last_at"]) if "last_at" in h else None}

    def forget_project(self, project: int) -> int:
        """Drop the project and every key under ``wtd:p:{project}:``; the number of keys deleted."""
        self.conn.srem(f"{PREFIX}:projects", project)
        keys = list(self.conn.scan_iter(match=self._k(project, "*"), count=500))
        return int(self.conn.unlink(*keys)) if keys else 0

    # --- adapter copies (hosts without a shared MODEL_DIR fetch them) ---------------------------
    def publish_adapter_files(self, project: int, version: str, number: int, data: bytes, sha256: str,
                              chunk_bytes: int, partial_ttl_s: int = 3600) -> bool:
        """Store ``data`` as ``version``'s copy; False if a copy of it exists already (left as is).

        Written chunk by chunk (each command stays small under the socket timeout) into a temporary
        key that expires if the writer dies, then renamed into place: a reader sees all or nothing.
        """
        final = self._k(project, "adapter_files", version)
        tmp = f"{final}:partial:{uuid.uuid4().hex}"
        chunks = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
        self.conn.hset(tmp, mapping={"size": len(data), "sha256": sha256, "chunks": len(chunks)})
        self.conn.expire(tmp, partial_ttl_s)
        for i, chunk in enumerate(chunks):
            self.conn.hset(tmp, f"c{i}", chunk)
        if self.conn.eval(_PUBLISH, 4, tmp, final, self._k(project, "adapters"), self._k(project, "adapter_high"),
                          number, version):
            return True
        self.conn.delete(tmp)
        return False

    def adapter_files_info(self, project: int, version: str) -> dict | None:
        """{"size", "sha256", "chunks"} of ``version``'s copy, or None if there is none."""
        size, sha, chunks = self.conn.hmget(self._k(project, "adapter_files", version), "size", "sha256", "chunks")
        if size is None:
            return None
        return {"size": int(size), "sha256": sha.decode(), "chunks": int(chunks)}

    def adapter_files(self, project: int, version: str) -> bytes | None:
        """``version``'s copy as written, or None if it is missing (or deleted while being read)."""
        info = self.adapter_files_info(project, version)
        if info is None:
            return None
        key, parts = self._k(project, "adapter_files", version), []
        for i in range(info["chunks"]):
            part = self.conn.hget(key, f"c{i}")
            if part is None:
                return None
            parts.append(part)
        return b"".join(parts)

    def published_adapters(self, project: int) -> list[str]:
        """Versions with a copy here, oldest first."""
        return [v.decode() for v in self.conn.zrange(self._k(project, "adapters"), 0, -1)]

    def highest_published(self, project: int) -> int:
        """The highest version number ever published: new versions on any host are numbered above it."""
        return int(self._get(self._k(project, "adapter_high")) or 0)

    def delete_adapter_files(self, project: int, versions: Iterable[str]) -> None:
        versions = list(versions)
        if versions:
            pipe = self.conn.pipeline()
            pipe.zrem(self._k(project, "adapters"), *versions)
            pipe.delete(*(self._k(project, "adapter_files", v) for v in versions))
            pipe.execute()

    # --- held-out quality -----------------------------------------------------------------------
    def save_quality(self, project: int, version: str, record: dict) -> None:
        self.conn.hset(self._k(project, "quality"), version, json.dumps(record))

    def quality(self, project: int) -> list[dict]:
        """Every adapter version's quality record, oldest version first."""
        items = self.conn.hgetall(self._k(project, "quality")).items()
        return [json.loads(v) for _, v in sorted(items, key=lambda kv: (len(kv[0]), kv[0]))]

    def base_nll(self, project: int, keys: list[str]) -> dict[str, float]:
        vals = self.conn.hmget(self._k(project, "quality", "base"), keys) if keys else []
        return {k: float(v) for k, v in zip(keys, vals) if v is not None}

    def set_base_nll(self, project: int, values: dict[str, float]) -> None:
        """Replace the cache with ``values``: entries of examples no longer held out are dropped."""
        self._replace_hash(self._k(project, "quality", "base"), values)

    # --- annotation changes and webhook credentials (server side of duplicate events, auth) -----
    def add_changes(self, project: int, signatures: Iterable[str]) -> int:
        """Count changed-annotation signatures toward retraining, each once and none the last training
        read; returns how many distinct ones were seen since the last training started. O(signatures)."""
        sigs = list(signatures)
        return int(self.conn.eval(_ADD_CHANGES, 2, self._k(project, "changed"),
                                  self._k(project, "train", "trained_on"), *sigs))

    def has_project(self, project: int) -> bool:
        return bool(self.conn.sismember(f"{PREFIX}:projects", project))

    def webhook_auth(self, project: int) -> str | None:
        return self._get(self._k(project, "webhook_auth"))

    def set_webhook_auth(self, project: int, fingerprint: str) -> None:
        self.conn.set(self._k(project, "webhook_auth"), fingerprint)

    # --- label config warnings ----------------------------------------------------------------
    def set_config_warnings(self, project: int, warnings: list[str]) -> None:
        self.conn.set(self._k(project, "config_warnings"), json.dumps(warnings))

    def config_warnings(self, project: int) -> list[str]:
        return self._get_json(self._k(project, "config_warnings")) or []

    def training_history(self, project: int) -> list[dict]:
        """The last ``TRAINING_HISTORY`` training records (version, n_examples, loss, duration_s, ...)."""
        return [json.loads(v) for v in self.conn.lrange(self._k(project, "train", "history"), 0, -1)]

    # --- task index (issue #8: jobs read Label Studio by difference, not whole) ----------------
    def put_tasks(self, project: int, data: dict[int, dict]) -> None:
        """Index tasks' data (id -> data dict), read once per import."""
        if data:
            self.conn.hset(self._k(project, "tasks"), mapping={str(t): json.dumps(d) for t, d in data.items()})

    def task_data(self, project: int) -> dict[int, dict]:
        return {int(t): json.loads(d) for t, d in self.conn.hgetall(self._k(project, "tasks")).items()}

    def task_ids(self, project: int) -> set[int]:
        return {int(t) for t in self.conn.hkeys(self._k(project, "tasks"))}

    def drop_tasks(self, project: int, task_ids: Iterable) -> None:
        ids = [str(t) for t in task_ids]
        if ids:
            self.conn.hdel(self._k(project, "tasks"), *ids)
            self.conn.hdel(self._k(project, "annotations"), *ids)

    def replace_annotations(self, project: int, annotations: dict[int, list[dict]]) -> None:
        """The annotations of every task that has any (Label Studio's truth as of this read)."""
        self._replace_hash(self._k(project, "annotations"), {t: json.dumps(a) for t, a in annotations.items()})

    def annotations(self, project: int) -> dict[int, list[dict]]:
        return {int(t): json.loads(a) for t, a in self.conn.hgetall(self._k(project, "annotations")).items()}

    # --- drafts: which score key each task's draft in Label Studio was written from ----------------
    def drafted(self, project: int, task_ids: Iterable | None = None) -> dict[int, str]:
        k = self._k(project, "drafted")
        if task_ids is None:
            return {int(t): v.decode() for t, v in self.conn.hgetall(k).items()}
        ids = [str(t) for t in task_ids]
        return {int(t): v.decode() for t, v in zip(ids, self.conn.hmget(k, ids) if ids else []) if v is not None}

    def set_drafted(self, project: int, keys: dict[int, str], replace: bool = False) -> None:
        if replace:
            self._replace_hash(self._k(project, "drafted"), keys)
        elif keys:
            self.conn.hset(self._k(project, "drafted"), mapping={str(t): k for t, k in keys.items()})

    def all_positions(self, project: int) -> dict[int, int]:
        return {int(t): int(p) for t, p in self.conn.hgetall(self._k(project, "positions")).items()}

    def save_queue_state(self, project: int, state: dict) -> None:
        """The queue's state after a window pass (positions unchanged)."""
        self.conn.set(self._k(project, "queue"), json.dumps(state))

    # --- live progress: annotated tasks per task label ------------------------------------------
    def mark_annotated(self, project: int, task_id: int) -> None:
        self.conn.sadd(self._k(project, "annotated"), task_id)

    def replace_annotated(self, project: int, task_ids: Iterable) -> None:
        self._replace_set(self._k(project, "annotated"), task_ids)

    def annotated_ids(self, project: int) -> set[int]:
        return {int(t) for t in self.conn.smembers(self._k(project, "annotated"))}

    def save_task_labels(self, project: int, labels: dict[int, str]) -> None:
        """Task id -> task label (given or inferred) of the selection pool."""
        self._replace_hash(self._k(project, "task_labels"), labels)

    def task_labels(self, project: int, task_ids: Iterable) -> dict[int, str]:
        ids = [str(t) for t in task_ids]
        vals = self.conn.hmget(self._k(project, "task_labels"), ids) if ids else []
        return {int(t): v.decode() for t, v in zip(ids, vals) if v is not None}

    def progress(self, project: int) -> dict[str, dict[str, int]]:
        """Per task label: prompts annotated (live, from webhooks and passes) vs allocated by the selection.

        O(A) reads: the annotated set and their labels."""
        sel = self.selection(project) or {}
        out = {label: {"annotated": 0, "allocated": int(n)} for label, n in (sel.get("allocation") or {}).items()}
        for label in self.task_labels(project, self.annotated_ids(project)).values():
            out.setdefault(label, {"annotated": 0, "allocated": 0})["annotated"] += 1
        return out

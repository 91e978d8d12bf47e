"""A test double of the Hugging Face Hub: the HTTP endpoints huggingface_hub 2.x calls to read,
list, pre-upload and commit files, served from memory on 127.0.0.1 by werkzeug.

It is small on purpose and not a Hub: branches but no tags or pull requests, LFS "basic"
transfers only (clients must run with Xet disabled, `HF_HUB_DISABLE_XET=1`). Any token is
accepted, except that a private repo answers only the token that created it (others get the
Hub's 401 "Repository not found"). What it does implement, it implements as the Hub does
(status codes, `X-Error-Code` headers, JSON shapes, Link-header pagination), so
huggingface_hub's own code — and transformers' `from_pretrained` on top — runs unmodified:

| request | huggingface_hub caller |
|---|---|
| GET  /api/{models,datasets}/OWNER/REPO[/revision/REV] | `HfApi.repo_info` (the commit a branch is at) |
| GET  /api/…/tree/REV[/PATH]?recursive=&cursor= | `HfApi.list_repo_tree` (`page_size` entries a page) |
| POST /api/…/paths-info/REV (form: paths, expand) | `HfApi.get_paths_info` |
| POST /api/repos/create (json: name, organization, visibility) | `HfApi.create_repo` (409 if it exists) |
| POST /api/…/branch/BRANCH | `HfApi.create_branch` (from main; 409 if it exists) |
| POST /api/validate-yaml | `create_commit` of a README.md: its front matter must be a mapping, `base_model` repo ids |
| POST /api/…/preupload/REV | `_fetch_upload_modes`: "lfs" for binary samples or ≥ 10 MB, else "regular" |
| POST /[datasets/]OWNER/REPO.git/info/lfs/objects/batch | `lfs.post_lfs_batch_info` (no action if the repo has it) |
| PUT  /lfs-upload/TYPE/OWNER/REPO/SHA256 | `lfs._upload_single_part` (the sha256 is checked) |
| POST /api/…/commit/REV (ndjson) | `_send_commit`; `parentCommit` ≠ the branch head → 412 |
| GET, HEAD /[datasets/]OWNER/REPO/resolve/REV/PATH | `hf_hub_download`, `HfFileSystem` and other range reads |

REV is a branch or a commit id. Test hooks: `create_repo`, `corrupt` (serve other bytes for a
path), `fail_commits` (answer the next commits with a status, before or after applying them),
`before_next_commit` (run a function, e.g. a rival commit, just before the next commit is
applied), counters of what arrived (`lfs_bytes`, `regular_bytes`, `commits`) and a record of
every download (`reads`: repo, path and byte range of each GET on `resolve`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import yaml
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

LFS_FROM_BYTES = 10 << 20
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_TESTS = object()  # who calls when a test hook, not a request, reads a repo: sees everything
_REPO = r"(?:(?P<datasets>datasets)/)?(?P<repo>[^/]+/[^/]+)"
_API = r"/api/(?P<type>models|datasets)/(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", re.compile(_API + r"(?:/revision/(?P<rev>[^/]+))?"), "revision"),
    ("POST", re.compile(r"/api/repos/create"), "create"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(_API + r"/branch/(?P<branch>[^/]+)"), "branch"),
    ("GET", re.compile(_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), "listing"),
    ("POST", re.compile(_API + r"/paths-info/(?P<rev>[^/]+)"), "paths_info"),
    ("POST", re.compile(_API + r"/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(_API + r"/commit/(?P<rev>[^/]+)"), "commit"),
    ("POST", re.compile("/" + _REPO + r"\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("PUT", re.compile(r"/lfs-upload" + _API.removeprefix("/api") + r"/(?P<oid>[0-9a-f]{64})"), "lfs_upload"),
    ("GET", re.compile("/" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
    ("HEAD", re.compile("/" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RepoEntry:
    """A file in a commit's tree: its bytes live in `HubDouble.blobs` under `key`."""

    size: int
    key: str  # sha256 for LFS files, git blob id for regular ones
    lfs: bool
    commit: str  # the commit that last wrote it

    def to_json(self, path: str, last_commit: dict[str, str] | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": self.size}
        if self.lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.key}\nsize {self.size}\n".encode()
            entry.update(
                oid=git_blob_id(pointer), lfs={"oid": self.key, "size": self.size, "pointerSize": len(pointer)}
            )
        else:
            entry["oid"] = self.key
        if last_commit is not None:
            entry["lastCommit"] = last_commit
        return entry


@dataclass
class Repo:
    branches: dict[str, str]  # branch -> the commit it is at
    commits: dict[str, dict[str, RepoEntry]]  # commit id -> tree (path -> entry)
    dates: dict[str, str] = field(default_factory=dict)
    damaged: dict[str, bytes] = field(default_factory=dict)  # path -> the bytes served instead
    lfs: set[str] = field(default_factory=set)  # the LFS objects uploaded to this repo (the Hub's are per repo)
    private: bool = False
    owner: str | None = None  # the token that created it (the only one a private repo answers)

    @property
    def head(self) -> str:
        return self.branches["main"]


@dataclass(frozen=True)
class Read:
    """One download: which repo and file, which bytes (`end` exclusive)."""

    repo: str
    path: str
    start: int
    end: int


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class HubDouble:
    """The server; `url` is its endpoint (what HF_ENDPOINT should be)."""

    def __init__(self, page_size: int = 1000) -> None:
        self.page_size = page_size  # the Hub's is 1000
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 (LFS) or git blob id (regular) -> bytes
        self.lock = threading.RLock()
        self.lfs_bytes = 0
        self.regular_bytes = 0
        self.commits = 0
        self.reads: list[Read] = []
        self._caller: object = _TESTS  # the token of the request being answered
        self._failures: list[tuple[int, bool]] = []
        self._before_commit: Callable[[], None] | None = None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HubDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    # -- test hooks ---------------------------------------------------------------------

    def create_repo(
        self, repo_id: str, repo_type: str = "model", private: bool = False, owner: str | None = None
    ) -> None:
        """A repo whose first commit holds `.gitattributes`, as the Hub creates them; a private
        one answers only the token `owner`."""
        with self.lock:
            repo = Repo(branches={"main": ""}, commits={"": {}}, private=private, owner=owner)
            self.repos[(repo_type, repo_id)] = repo
            self._apply(repo, {".gitattributes": self._store(b"*.bin filter=lfs\n")})

    def upload(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", branch: str = "main") -> str:
        """Commit `files` (binary ones as LFS files, as the Hub stores them); the commit id."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            stored = {path: self._store(data, lfs=b"\0" in data[:512]) for path, data in files.items()}
            repo.lfs.update(key for _size, key, lfs in stored.values() if lfs)
            return self._apply(repo, stored, branch=branch)

    def reads_of(self, repo_id: str, since: int = 0) -> list[Read]:
        """The downloads from `repo_id` after the first `since` downloads of the server."""
        with self.lock:
            return [read for read in self.reads[since:] if read.repo == repo_id]

    def corrupt(self, repo_id: str, path: str, repo_type: str = "model") -> None:
        """Serve other bytes for `path` of this repo from now on (its storage went bad)."""
        with self.lock:
            data = bytearray(self.files(repo_id, repo_type)[path])
            data[-1] ^= 0xFF
            self.repos[(repo_type, repo_id)].damaged[path] = bytes(data)

    def fail_commits(self, status: int, times: int = 1, after_applying: bool = False) -> None:
        """Answer the next `times` commits with `status`; `after_applying`: the commit lands anyway."""
        self._failures += [(status, after_applying)] * times

    def before_next_commit(self, action: Callable[[], None]) -> None:
        self._before_commit = action

    def commit_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> None:
        """A commit made behind the clients' backs (a rival writer)."""
        with self.lock:
            self._apply(self.repos[(repo_type, repo_id)], {p: self._store(d, lfs=False) for p, d in files.items()})

    def files(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> dict[str, bytes]:
        """Every file at the head of a branch, with the bytes it serves."""
        with self.lock:
            repo, tree = self._repo(repo_type, repo_id), self._tree(repo_type, repo_id, branch)
            return {path: repo.damaged.get(path, self.blobs[entry.key]) for path, entry in tree.items()}

    # -- storage ------------------------------------------------------------------------

    def _store(self, data: bytes, lfs: bool = False) -> tuple[int, str, bool]:
        key = hashlib.sha256(data).hexdigest() if lfs else git_blob_id(data)
        self.blobs[key] = data
        return len(data), key, lfs

    def _apply(
        self,
        repo: Repo,
        added: dict[str, tuple[int, str, bool]],
        deleted: tuple[str, ...] = (),
        branch: str = "main",
    ) -> str:
        parent = repo.branches[branch]
        tree = dict(repo.commits[parent])
        commit = hashlib.sha1(f"{parent}{sorted(added.items())}{deleted}{len(repo.commits)}".encode()).hexdigest()
        for path in deleted:
            tree = {p: e for p, e in tree.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
        tree.update({path: RepoEntry(size, key, lfs, commit) for path, (size, key, lfs) in added.items()})
        repo.commits[commit] = tree
        repo.dates[commit] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        repo.branches[branch] = commit
        return commit

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is not None and repo.private and self._caller not in (_TESTS, repo.owner):
            raise HubError(401, "Repository not found", "RepoNotFound")  # the Hub does not say it exists
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit_of(self, repo_type: str, repo_id: str, rev: str) -> str:
        repo = self._repo(repo_type, repo_id)
        commit = repo.branches.get(rev, rev)
        if commit not in repo.commits:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _tree(self, repo_type: str, repo_id: str, rev: str) -> dict[str, RepoEntry]:
        return self._repo(repo_type, repo_id).commits[self._commit_of(repo_type, repo_id, rev)]

    # -- HTTP ---------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            response = self._route(request)
        except HubError as exc:
            headers = {"X-Error-Code": exc.code} if exc.code else {}
            headers["X-Error-Message"] = str(exc)
            response = Response(json.dumps({"error": str(exc)}), exc.status, headers, content_type="application/json")
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        for method, pattern, name in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match and request.method == method:
                args = match.groupdict()
                if "type" in args:
                    args["repo_type"] = args.pop("type")[:-1]
                elif "datasets" in args:
                    args["repo_type"] = "dataset" if args.pop("datasets") else "model"
                with self.lock:
                    self._caller = request.headers.get("Authorization", "").removeprefix("Bearer ") or None
                    try:
                        return getattr(self, "_" + name)(request, **args)
                    finally:
                        self._caller = _TESTS
        raise HubError(404, f"no route for {request.method} {request.path}")

    def _revision(self, request: Request, repo_type: str, repo: str, rev: str | None) -> Response:
        state, sha = self._repo(repo_type, repo), self._commit_of(repo_type, repo, rev or "main")
        siblings = [{"rfilename": path} for path in state.commits[sha]]
        return _json({"id": repo, "sha": sha, "private": state.private, "siblings": siblings})

    def _create(self, request: Request) -> Response:
        body = json.loads(request.get_data())
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        if (repo_type, repo_id) in self.repos:  # the Hub's answer names the repo, as create_repo(exist_ok) expects
            error = {"error": f"You already created this {repo_type} repo", "url": f"{self.url}/{prefix}{repo_id}"}
            return _json(error, status=409)
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        self.create_repo(repo_id, repo_type, private=private, owner=self._caller)
        return _json({"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id})

    def _validate_yaml(self, request: Request) -> Response:
        content = json.loads(request.get_data())["content"]
        front = content.split("---\n", 2)[1] if content.startswith("---\n") and content.count("---\n") >= 2 else ""
        try:
            metadata = yaml.safe_load(front) or {}
        except yaml.YAMLError as exc:
            return _json({"errors": [{"message": f"invalid YAML: {exc}"}]}, status=400)
        base = metadata.get("base_model", []) if isinstance(metadata, dict) else None
        ids = [base] if isinstance(base, str) else base
        if not isinstance(ids, list) or not all(
            isinstance(i, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", i) for i in ids
        ):
            return _json({"errors": [{"message": "metadata must be a mapping; base_model repo ids"}]}, status=400)
        return _json({"errors": [], "warnings": []})

    def _branch(self, request: Request, repo_type: str, repo: str, branch: str) -> Response:
        state = self._repo(repo_type, repo)
        if branch in state.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        state.branches[branch] = state.head
        return Response(status=200)

    def _entries(self, repo_type: str, repo_id: str, rev: str, paths: list[str], expand: bool) -> list[dict[str, Any]]:
        repo = self._repo(repo_type, repo_id)
        tree = self._tree(repo_type, repo_id, rev)
        out = []
        for path in paths:
            if path in tree:
                entry = tree[path]
                last = {"id": entry.commit, "title": "commit", "date": repo.dates[entry.commit]} if expand else None
                out.append(entry.to_json(path, last))
            elif any(p.startswith(path + "/") for p in tree):
                out.append({"type": "directory", "path": path, "oid": git_blob_id(path.encode()), "size": 0})
        return out

    def _listing(self, request: Request, repo_type: str, repo: str, rev: str, path: str | None) -> Response:
        tree = self._tree(repo_type, repo, rev)
        prefix = f"{path.strip('/')}/" if path else ""
        below = [p[len(prefix) :] for p in tree if p.startswith(prefix)]
        if prefix and not below:
            raise HubError(404, f"{path} is not a folder on {rev}", "EntryNotFound")
        recursive = request.args.get("recursive", "false").lower() == "true"
        names: set[str] = set()
        for rest in below:
            parts = rest.split("/")
            names.update("/".join(parts[: i + 1]) for i in range(len(parts)) if recursive or i == 0)
        listed = [
            tree[prefix + name].to_json(prefix + name, None)
            if prefix + name in tree
            else {"type": "directory", "path": prefix + name, "oid": git_blob_id(name.encode()), "size": 0}
            for name in sorted(names)
        ]
        start = int(request.args.get("cursor", "0"))
        page = listed[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(listed):
            query = f"recursive={str(recursive).lower()}&cursor={start + self.page_size}"
            headers["Link"] = f'<{request.base_url}?{query}>; rel="next"'
        return _json(page, headers)

    def _paths_info(self, request: Request, repo_type: str, repo: str, rev: str) -> Response:
        expand = request.form.get("expand", "false").lower() == "true"
        return _json(self._entries(repo_type, repo, rev, request.form.getlist("paths"), expand))

    def _preupload(self, request: Request, repo_type: str, repo: str, rev: str) -> Response:
        tree = self._tree(repo_type, repo, rev)
        files = []
        for file in json.loads(request.get_data())["files"]:
            sample = base64.b64decode(file["sample"])
            lfs = file["size"] >= LFS_FROM_BYTES or b"\0" in sample
            existing = tree.get(file["path"])
            oid = existing.key if existing is not None and existing.lfs == lfs else None
            files.append(
                {"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return _json({"files": files, "commitOid": self._commit_of(repo_type, repo, rev)})

    def _lfs_batch(self, request: Request, repo_type: str, repo: str) -> Response:
        self._repo(repo_type, repo)
        objects = []
        for obj in json.loads(request.get_data())["objects"]:
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self._repo(repo_type, repo).lfs:
                href = f"{self.url}/lfs-upload/{repo_type}s/{repo}/{obj['oid']}"
                answer["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(answer)
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, request: Request, repo_type: str, repo: str, oid: str) -> Response:
        data = request.get_data()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "uploaded bytes do not match the oid")
        self.blobs[oid] = data
        self._repo(repo_type, repo).lfs.add(oid)
        self.lfs_bytes += len(data)
        return Response(status=200)

    def _commit(self, request: Request, repo_type: str, repo: str, rev: str) -> Response:
        action, self._before_commit = self._before_commit, None
        if action is not None:
            action()
        target = self._repo(repo_type, repo)
        if rev not in target.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in request.get_data().splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, target.branches[rev]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        added: dict[str, tuple[int, str, bool]] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                data = base64.b64decode(value["content"])
                self.regular_bytes += len(data)
                added[value["path"]] = self._store(data)
            elif line["key"] == "lfsFile":
                if value["oid"] not in target.lfs:
                    raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                added[value["path"]] = (len(self.blobs[value["oid"]]), value["oid"], True)
            elif line["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        status, after = self._failures.pop(0) if self._failures else (0, False)
        if status and not after:
            raise HubError(status, "injected failure")
        commit = self._apply(target, added, tuple(deleted), branch=rev)
        self.commits += 1
        if status:
            raise HubError(status, "injected failure (the commit landed)")
        prefix = "datasets/" if repo_type == "dataset" else ""
        return _json({"commitUrl": f"{self.url}/{prefix}{repo}/commit/{commit}", "commitOid": commit})

    def _resolve(self, request: Request, repo_type: str, repo: str, rev: str, path: str) -> Response:
        tree = self._tree(repo_type, repo, rev)
        if path not in tree:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        entry, state = tree[path], self._repo(repo_type, repo)
        headers = {"ETag": f'"{entry.key}"', "X-Repo-Commit": self._commit_of(repo_type, repo, rev)}
        if entry.lfs:  # what hf_hub_download names the blob by (the Hub sends it with its CDN redirect)
            headers.update({"X-Linked-Etag": f'"{entry.key}"', "X-Linked-Size": str(entry.size)})
        data = state.damaged.get(path, self.blobs[entry.key])
        span = request.range.range_for_length(entry.size) if request.range is not None else None
        if request.range is not None and span is None:
            raise HubError(416, "Requested Range Not Satisfiable")
        start, stop = span or (0, entry.size)
        headers.update({"Accept-Ranges": "bytes", "Content-Length": str(stop - start)})
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{entry.size}"
        if request.method == "GET":
            self.reads.append(Read(repo, path, start, stop))
        body = _pieces(data, start, stop)  # no copy of the whole file per request, as werkzeug's ranges make
        return Response(body, 206 if span else 200, headers, content_type="application/octet-stream",
                        direct_passthrough=True)  # fmt: skip


def _pieces(data: bytes, start: int, stop: int, size: int = 4 << 20) -> Iterator[bytes]:
    view = memoryview(data)
    for offset in range(start, stop, size):
        yield bytes(view[offset : min(offset + size, stop)])


def _json(document: Any, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(json.dumps(document), status, headers or {}, content_type="application/json")

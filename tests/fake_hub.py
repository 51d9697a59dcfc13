"""A local stand-in of the Hugging Face hub, for tests of the real download code (``HF_ENDPOINT`` on 127.0.0.1).

It implements what huggingface_hub (and so diffusers and transformers) calls:

- ``GET /api/models/{repo}[/revision/{rev}]``: model info with the file list (``siblings``, with sizes when
  ``blobs=true``), ``sha`` and ``gated``;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file tree;
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: file metadata (``X-Repo-Commit``, ``ETag``, ``Content-Length``)
  and content;

with the hub's error answers (``X-Error-Code: RepoNotFound`` / ``GatedRepo`` / ``EntryNotFound``). Repositories
are laid out like the real ones (``tests/hub_listings/*.json``: names, folders, variants): files vip loads hold
tiny real weights, every other file holds junk that vip must never fetch. Every request is logged.

Also here: a server that accepts connections and never answers, and a forwarding HTTP proxy that logs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LISTINGS = Path(__file__).parent / "hub_listings"


def junk(path: str) -> bytes:
    return f"JUNK {path}: vip must never fetch this file\n".encode()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    sha: str = field(default="")

    def __post_init__(self) -> None:
        if not self.sha:
            self.sha = hashlib.sha1(self.repo_id.encode()).hexdigest()


def listing_paths(repo_id: str) -> list[str]:
    """The real repository's file names, from the recorded listing."""
    data = json.loads((LISTINGS / (repo_id.replace("/", "--") + ".json")).read_text())
    return [entry["path"] for entry in data["files"]]


def repo_from_listing(repo_id: str, content: Path | dict[str, bytes], *, gated: bool = False) -> Repo:
    """The real file tree of ``repo_id``; each file's bytes from ``content`` when it has that path, else junk."""
    files: dict[str, bytes] = {}
    for path in listing_paths(repo_id):
        if isinstance(content, dict):
            data = content.get(path)
        else:
            data = (content / path).read_bytes() if (content / path).is_file() else None
        files[path] = data if data is not None else junk(path)
    return Repo(repo_id, files, gated=gated)


class FakeHub:
    """The stand-in hub: ``url`` for HF_ENDPOINT, ``add`` repositories, ``log`` of (method, path)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: Repo) -> Repo:
        self.repos[repo.repo_id] = repo
        return repo

    def fetched(self, repo_id: str, methods: tuple[str, ...] = ("GET",)) -> set[str]:
        """Files of ``repo_id`` whose content was sent (GET on resolve); ``methods=("GET", "HEAD")``: asked for at all
        (huggingface_hub skips the GET of a file whose content it already holds under another name)."""
        prefix = f"/{repo_id}/resolve/"
        found = set()
        for method, path in self.log:
            if method in methods and path.startswith(prefix):
                found.add(path[len(prefix) :].split("/", 1)[1])
        return found

    def requests_for(self, repo_id: str) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.log if p.startswith((f"/{repo_id}/", f"/api/models/{repo_id}"))]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ request handling

    def _send(self, handler, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body)

    def _error(self, handler, status: int, code: str, message: str, head: bool, extra: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(handler, status, body, {**headers, **(extra or {})}, head)

    def _split_repo(self, parts: list[str]) -> tuple[Repo | None, str, list[str]]:
        repo_id = "/".join(parts[:2])
        return self.repos.get(repo_id), repo_id, parts[2:]

    def _handle(self, handler, head: bool) -> None:
        url = urlsplit(handler.path)
        path = unquote(url.path)
        self.log.append(("HEAD" if head else "GET", path))
        parts = [part for part in path.split("/") if part]
        if parts[:2] == ["api", "models"]:
            repo, repo_id, rest = self._split_repo(parts[2:])
            if repo is None:
                return self._error(handler, 401, "RepoNotFound", f"Repository Not Found for url: {path}.", head)
            if rest[:1] == ["tree"]:
                return self._tree(handler, repo, "/".join(rest[2:]), head)
            return self._info(handler, repo, "blobs" in parse_qs(url.query), head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, repo_id, rest = self._split_repo(parts)
            if repo is None:
                return self._error(handler, 401, "RepoNotFound", f"Repository Not Found for url: {path}.", head)
            revision, filename = rest[1], "/".join(rest[2:])
            if revision not in ("main", repo.sha):
                return self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            if repo.gated and not handler.headers.get("authorization"):
                return self._error(
                    handler,
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated.",
                    head,
                )
            commit = {"X-Repo-Commit": repo.sha}
            if filename not in repo.files:
                return self._error(handler, 404, "EntryNotFound", f"{filename} does not exist", head, commit)
            data = repo.files[filename]
            headers = {
                **commit,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            return self._send(handler, 200, data, headers, head)
        return self._error(handler, 404, "NotFound", f"no route {path}", head)

    def _info(self, handler, repo: Repo, blobs: bool, head: bool) -> None:
        siblings = []
        for name, data in sorted(repo.files.items()):
            entry = {"rfilename": name}
            if blobs:
                entry.update(size=len(data), blobId=hashlib.sha1(data).hexdigest())
            siblings.append(entry)
        info = {
            "_id": repo.sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "createdAt": "2024-09-06T00:00:00.000Z",
            "lastModified": "2024-09-06T00:00:00.000Z",
        }
        self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)

    def _tree(self, handler, repo: Repo, prefix: str, head: bool) -> None:
        entries = []
        folders = set()
        for name, data in sorted(repo.files.items()):
            if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                continue
            for index in range(1, name.count("/") + 1):
                folders.add("/".join(name.split("/")[:index]))
            entries.append({"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()})
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        self._send(handler, 200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)


@contextmanager
def online_through(hub: FakeHub, monkeypatch) -> Iterator[FakeHub]:
    """This process online for the `with` body, every hub request going to `hub`, which is closed at its end."""
    import huggingface_hub.constants

    with monkeypatch.context() as online:
        online.setenv("HF_ENDPOINT", hub.url)
        online.setenv("HF_HUB_OFFLINE", "")
        online.setenv("VIP_HUB_TIMEOUT", "3")
        online.delenv("HF_TOKEN", raising=False)
        online.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        try:
            yield hub
        finally:
            hub.close()


class SilentServer:
    """Accepts TCP connections and never answers (a hub that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(connection)  # kept open, never read or answered

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.sock.close()


def free_port() -> int:
    """A port nothing listens on (a hub that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ForwardProxy:
    """A plain HTTP forward proxy: any ``GET http://HOST/...`` goes to ``target`` (the fake hub), logged."""

    def __init__(self, target: FakeHub) -> None:
        self.log: list[str] = []
        proxy = self
        host, port = target.server.server_address[:2]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self, method: str) -> None:
                proxy.log.append(self.path)
                url = urlsplit(self.path)
                connection = http.client.HTTPConnection(host, port, timeout=10)
                headers = {
                    key: value for key, value in self.headers.items() if key.lower() not in ("host", "proxy-connection")
                }
                connection.request(method, url.path + (f"?{url.query}" if url.query else ""), headers=headers)
                response = connection.getresponse()
                body = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if method == "HEAD" else None
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)
                connection.close()

            def do_GET(self) -> None:
                self._forward("GET")

            def do_HEAD(self) -> None:
                self._forward("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

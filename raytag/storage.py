"""Run directories in object storage (``s3://``, ``gs://``, ``file://``; any URI ``pyarrow.fs``
resolves), the way Ray Train's ``storage_path`` works.

A remote run directory has a local working copy on every node that touches it, under
``$RAYTAG_CACHE_DIR`` (default ``~/.cache/raytag/runs``), one folder per URI. Stages read
and write the working copy with ordinary file I/O; ``pull`` brings files down and ``push``
sends them up, each copying only files whose size or modification time differ (a pulled or
pushed file takes the remote copy's mtime, so an unchanged file is never copied twice).
Completion markers (``*.done.json``) are pushed after everything else, so a remote marker
always names complete files. ``ray_results/`` is never copied: Ray Train and Tune read and
write it at the URI themselves.

Credentials and endpoints come from the environment, exactly as for Ray Train (``AWS_*``
variables, ``AWS_ENDPOINT_URL`` for an S3-compatible server, instance profiles,
``GOOGLE_APPLICATION_CREDENTIALS``, …), never from configs.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

CACHE_DIR_ENV = "RAYTAG_CACHE_DIR"
RAY_MANAGED = "ray_results"
MARKER_SUFFIX = ".done.json"


class RunDirError(ValueError):
    """A run directory that cannot be used (unresolvable URI, not visible on this node)."""


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def working_copy_root(uri: str) -> Path:
    """This node's local working copy of the run directory at ``uri``."""
    cache = Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/raytag/runs").expanduser()
    return (cache / hashlib.sha256(uri.encode()).hexdigest()[:16]).resolve()


class RemoteRunDir:
    """A run directory at a URI, mirrored file by file into a local working copy."""

    def __init__(self, uri: str):
        parts = urlsplit(uri)
        self.uri = urlunsplit(parts._replace(path=parts.path.rstrip("/")))
        try:
            self.filesystem, path = pafs.FileSystem.from_uri(self.uri)
        except (ValueError, OSError) as error:
            raise RunDirError(f"--run-dir {uri!r}: {error}. Use a local path or an s3://bucket/prefix, "
                              "gs://bucket/prefix or file:///absolute/path URI; credentials and endpoints "
                              "come from the environment (AWS_*, AWS_ENDPOINT_URL, "
                              "GOOGLE_APPLICATION_CREDENTIALS), not from the URI") from error
        self.path = path.rstrip("/")
        self.local = working_copy_root(self.uri)

    def uri_of(self, relative: str) -> str:
        """The URI of a run-relative path (any query string stays at the end)."""
        parts = urlsplit(self.uri)
        return urlunsplit(parts._replace(path=posixpath.join(parts.path, relative) if relative != "." else parts.path))

    # ---- listing: run-relative posix path -> (size, mtime_ns)
    def remote_files(self, relative: str = ".") -> dict[str, tuple[int, int]]:
        target = self._remote_path(relative)
        info = self.filesystem.get_file_info(target)
        if info.type == pafs.FileType.File:
            return {relative: (info.size, info.mtime_ns)}
        if info.type == pafs.FileType.NotFound:
            return {}
        found = self.filesystem.get_file_info(pafs.FileSelector(target, recursive=True, allow_not_found=True))
        files = {posixpath.relpath(item.path, self.path): (item.size, item.mtime_ns)
                 for item in found if item.type == pafs.FileType.File}
        return {name: stat for name, stat in files.items() if not _ray_managed(name)}

    def local_files(self, relative: str = ".") -> dict[str, tuple[int, int]]:
        target = self.local / relative
        if target.is_file():
            return {relative: _stat(target)}
        paths = (p for p in target.rglob("*") if p.is_file() and not _is_temp(p)) if target.is_dir() else ()
        files = {p.relative_to(self.local).as_posix(): _stat(p) for p in paths}
        return {name: stat for name, stat in files.items() if not _ray_managed(name)}

    # ---- copying
    def pull(self, relative: str = ".", *, mirror: bool = False) -> int:
        """Download remote files under ``relative`` that differ locally; with ``mirror`` also
        delete local files the remote lacks. Returns the number of files downloaded."""
        remote, local = self.remote_files(relative), self.local_files(relative)
        changed = [name for name, stat in remote.items() if local.get(name) != stat]
        for name in changed:
            self._download(name, remote[name][1])
        if mirror:
            for name in local.keys() - remote.keys():
                (self.local / name).unlink(missing_ok=True)
        return len(changed)

    def push(self, relative: str = ".", *, mirror: bool = False) -> int:
        """Upload local files under ``relative`` that differ remotely (markers last); with
        ``mirror`` also delete remote files the local copy lacks. Returns the number uploaded."""
        local, remote = self.local_files(relative), self.remote_files(relative)
        changed = sorted((name for name, stat in local.items() if remote.get(name) != stat),
                         key=lambda name: name.endswith(MARKER_SUFFIX))
        for name in changed:
            self._upload(name)
        if mirror:
            for name in remote.keys() - local.keys():
                self.filesystem.delete_file(self._remote_path(name))
        return len(changed)

    def remove(self, relative: str = ".") -> None:
        """Delete ``relative`` (a file or a folder) remotely and locally."""
        target = self._remote_path(relative)
        info = self.filesystem.get_file_info(target)
        if info.type == pafs.FileType.File:
            self.filesystem.delete_file(target)
        elif info.type == pafs.FileType.Directory:
            self.filesystem.delete_dir_contents(target, missing_dir_ok=True)
            if relative != ".":
                self.filesystem.delete_dir(target)
        remove_local(self.local / relative)

    def _remote_path(self, relative: str) -> str:
        return self.path if relative == "." else f"{self.path}/{relative}"

    def _download(self, name: str, mtime_ns: int) -> None:
        destination = self.local / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.filesystem.open_input_stream(self._remote_path(name)) as source:
                shutil.copyfileobj(source, out, 1 << 22)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, destination)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _upload(self, name: str) -> None:
        source, target = self.local / name, self._remote_path(name)
        before = os.stat(source)
        try:
            stream = self.filesystem.open_output_stream(target)
        except FileNotFoundError:  # a local-filesystem target needs its folder; object stores have none
            self.filesystem.create_dir(posixpath.dirname(target), recursive=True)
            stream = self.filesystem.open_output_stream(target)
        with stream, open(source, "rb") as handle:
            shutil.copyfileobj(handle, stream, 1 << 22)
        uploaded = self.filesystem.get_file_info(target).mtime_ns
        after = os.stat(source)
        if (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size):
            os.utime(source, ns=(uploaded, uploaded))  # mark in sync, unless it was rewritten meanwhile


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _is_temp(path: Path) -> bool:
    """An atomic write in progress (raytag.io's temp files)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _ray_managed(name: str) -> bool:
    return name.split("/", 1)[0] == RAY_MANAGED


def remove_local(path: Path) -> None:
    """Delete a local file or folder (nothing if it is missing)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()

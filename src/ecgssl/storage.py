"""Files ecgssl writes: atomic (temp file in the same folder, then rename) and fingerprinted;
and s3:// paths, mirrored to and from local folders."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ecgssl.errors import CorruptFileError, EcgsslError


def _umask() -> int:
    """The process umask, read without changing it where Linux lets us (/proc), so that no
    other thread ever sees a temporary umask of 0."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


# Out-of-space errors: a full disk, a full quota, a file-size limit (ulimit -f).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_space_error(exc: OSError, where: str | Path) -> EcgsslError:
    return EcgsslError(f"no space left writing to {where} ({os.strerror(exc.errno)}): free "
                       "space (or raise the quota) and rerun; what was already written there "
                       "is intact")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` in one rename, so
    readers see the old file or the new one, never a partial one (after a power loss too:
    the file is fsynced before the rename, the folder after). The file gets the mode a
    plain open() would give (0666 minus the umask), not mkstemp's 0600, so that shared
    readers (a DVC cache, a team folder) can read what we write. A full disk is an
    EcgsslError naming the folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space_error(exc, path.parent) from None
        raise
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        # The data on disk before the name, so that a power loss after the rename never
        # leaves an empty or partial file under it; then the rename itself.
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent, folder=True)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space_error(exc, path.parent) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_path(path: str | Path, folder: bool = False) -> None:
    """Flush a file's data (or a folder's entries) to the disk. A folder's is best effort:
    some filesystems refuse fsync on a folder, and the file is in place by then."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


@contextmanager
def exclusive(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold a lock on an output folder; a second writer refuses at once instead of mixing
    its files with ours."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _held(folder / ".ecgssl.lock", folder, command):
        yield folder


@contextmanager
def _held(lock_file: Path, folder: Path, command: str) -> Iterator[None]:
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise EcgsslError(f"another `ecgssl {command}` is writing to {folder}; refusing to "
                          "write at the same time") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def staged_folder(folder: str | Path, owned: tuple[str, ...], last: tuple[str, ...],
                  keep=lambda old: False, command: str = "evaluate") -> Iterator[Path]:
    """Write a stage's output files all at once: yield an empty staging folder beside
    `folder`; when the block succeeds, the files it made replace ours in `folder` (`owned`:
    glob patterns of what the stage writes; other files there are left alone), the commit
    files `last` are removed first and moved in last. A killed or failed run leaves `folder`
    as it was, and a run killed during the swap leaves no commit file, so nothing ever pairs
    new files with old ones. `keep(folder)` says whether our old files carry over into the
    staging folder (e.g. metrics of other modes of the same encoder). One run at a time: a
    second refuses at once (two runs that each carried the old files over would each swap in
    their own, and the first one's results would be gone); the lock sits beside the folder,
    not in it, so that the folder holds results only."""
    with exclusive_beside(folder, command) as folder:
        yield from _staged_swap(folder, owned, last, keep)


@contextmanager
def exclusive_beside(folder: str | Path, command: str) -> Iterator[Path]:
    """`exclusive`, with the lock file beside the folder instead of in it: for a folder that
    is shipped whole (a model folder is copied into the registry, pushed to s3://)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _held(folder.parent / f".{folder.name}.ecgssl.lock", folder, command):
        yield folder


def _staged_swap(folder: Path, owned, last, keep) -> Iterator[Path]:
    prefix = f".{folder.name}.staging-"
    for old in folder.parent.glob(prefix + "*"):            # left by killed runs
        pid = old.name[len(prefix):]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    stage = folder.parent / f"{prefix}{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    ours = lambda root: sorted({p for pat in owned for p in root.glob(pat)})  # noqa: E731
    try:
        if keep(folder):
            for p in ours(folder):
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, stage / p.name)
        yield stage
        for name in last:                     # the commit point goes first ...
            if (folder / name).exists():
                os.unlink(folder / name)
        for p in ours(folder):
            shutil.rmtree(p) if p.is_dir() else os.unlink(p)
        for p in sorted(stage.iterdir(), key=lambda p: p.name in last):   # ... and comes last
            os.replace(p, folder / p.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def read_json(path: str | Path):
    """A JSON file we (or a stage before us) wrote; one cut short or garbled (a full disk, a
    killed copy) is a CorruptFileError naming it, not a decoder traceback."""
    return parse_json(Path(path).read_bytes(), path)


def parse_json(text: str | bytes, where: str | Path) -> object:
    """JSON text (UTF-8 bytes: a file's or an S3 object's) that `where` holds, as
    `read_json` reads it."""
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        raise _corrupt(where, f"not text at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise _corrupt(where, exc) from None


def _corrupt(where: str | Path, what) -> CorruptFileError:
    if isinstance(what, json.JSONDecodeError):
        what = "empty" if not what.doc.strip() else \
            f"{what.msg} (line {what.lineno}, column {what.colno})"
    return CorruptFileError(f"{redact(where)}: not valid JSON (truncated?): {what}; rerun the "
                            "stage that wrote it")


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def expand_folder(path: str | Path, marker: str, names: list[str], what: str) -> list[Path]:
    """`path` itself when it holds `marker` (or is no folder); else its subfolders holding
    `marker`: those in `names`, in that order, when any exist, else all by name."""
    path = Path(path)
    if (path / marker).is_file() or not path.is_dir():
        return [path]
    found = {p.name: p for p in path.iterdir() if (p / marker).is_file()}
    chosen = [found[n] for n in names if n in found] or [found[n] for n in sorted(found)]
    if not chosen:
        raise EcgsslError(f"{path} is no {what} and holds none (no {marker} in it or its "
                          "subfolders)")
    return chosen


def tree_fingerprint(root: str | Path) -> str:
    """sha256 over (relative path, size, mtime) of every file below root.

    Stat-based so that fingerprinting costs no extra read of the data; content-addressed
    versioning of the raw data is DVC's job (`dvc add`).
    """
    top = os.fspath(Path(root))
    cut = len(os.path.join(top, ""))    # the relative path by slicing: relpath() costs ~8 us
    entries = []
    for dirpath, _, files in os.walk(top):
        for f in files:
            if f in _OURS or _is_temp(f):   # an S3 mirror's bookkeeping, a write in flight
                continue
            p = os.path.join(dirpath, f)
            try:
                st = os.stat(p)
            except FileNotFoundError:   # a dangling symlink: its record is quarantined later
                st = os.lstat(p)
            entries.append((p[cut:], st.st_size, st.st_mtime_ns))
    return _fingerprint(entries)


def source_version(uri: str | os.PathLike, single: bool = False) -> str:
    """What a folder or s3:// prefix (`single`: a file or object) holds now, cheaply (a
    listing, no data read): the Kubeflow ingest task's cache key, so a source that changed
    under the same `data_root` is ingested again. On S3 the ETags, which change with an
    object's content."""
    if is_s3(uri) and single:
        return _fingerprint([("", 0, _object_etag(_split(str(uri))))])
    if is_s3(uri):
        remote = _object_listing(_split(str(uri)))
        return _fingerprint([(k, size, etag) for k, (size, _, etag) in remote.items()
                             if k.rsplit("/", 1)[-1] not in _OURS])
    if single:
        st = os.stat(uri)
        return _fingerprint([("", st.st_size, st.st_mtime_ns)])
    return tree_fingerprint(uri)


def _is_temp(name: str) -> bool:
    """An `atomic_path` temp file (`.<name>.<random>.tmp`): a write in flight, or one that a
    killed process (SIGKILL, SIGTERM: no `finally` runs) left."""
    return name.startswith(".") and name.endswith(".tmp")


def _fingerprint(entries: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    for e in sorted(entries):
        h.update(repr(e).encode())
    return "stat-sha256:" + h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


ENCODER_HASH = "encoder_sha256"   # key in test_data.json and classifier.json
# What differs on every run of a stage (times, throughput) goes to this file beside its outputs,
# never into them: .dvcignore hides it, so DVC's hashes (dvc.lock) stay those of the results.
RUN_FILE = "_run.json"


def encoder_hash(folder: str | Path) -> str | None:
    """Identity of a pretrained encoder: sha256 of its weights file (None when it has none).
    Evaluation records it next to its metrics and in its classifiers; register compares."""
    p = Path(folder) / "encoder.safetensors"
    return file_sha256(p) if p.is_file() else None


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --- s3:// paths -------------------------------------------------------------------------------
# Stages work on local files; an s3:// input is mirrored into a local cache before the stage
# runs, and an s3:// output is written to a local staging folder and uploaded when the stage
# succeeds (data files first, the manifest last, so readers never see a half table). Endpoint,
# region and credentials come from the standard AWS environment (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, profiles) plus
# AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for MinIO and other S3-compatible servers.

DEFAULT_S3_ATTEMPTS = 5
_SYNC_RECORD = ".ecgssl-sync.json"
_FATAL = ("ACCESS_DENIED", "AccessDenied", "NO_SUCH_BUCKET", "NoSuchBucket",
          "InvalidAccessKeyId", "SignatureDoesNotMatch")


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def redact(uri: str | os.PathLike | None) -> str:
    """A URI as it may be printed: any `user:secret@` part replaced by `***@`. Every message
    that names a tracking URI or an S3 URI goes through this."""
    return _USERINFO.sub(r"\1***@", str(uri))


def _split(uri: str) -> str:
    """'s3://bucket/key' -> 'bucket/key' (pyarrow's path form)."""
    path = str(uri)[len("s3://"):].strip("/")
    if "@" in path.split("/", 1)[0]:
        # pyarrow would read `key:secret@bucket` as a bucket name and print it in its error
        raise EcgsslError(f"S3 URI {redact(uri)} carries credentials: remove them and use the "
                          "AWS environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or a "
                          "profile")
    if not path or path.startswith("/"):
        raise EcgsslError(f"not a valid S3 URI: {redact(uri)!r} (expected s3://bucket/prefix)")
    return path


def safe_join(root: Path, key: str, what: str) -> Path:
    """root/key for a key that came from outside (an object store listing): refused when it is
    absolute, has '.'/'..'/empty parts, or resolves outside root, so that no object name can
    make us write elsewhere."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise EcgsslError(f"{what}: refusing object key {key!r} (absolute, or with empty, '.' or "
                          "'..' parts): it would be written outside the local mirror")
    dst = root / Path(*parts)
    base = os.path.realpath(root)
    if os.path.commonpath([base, os.path.realpath(dst)]) != base:
        raise EcgsslError(f"{what}: object key {key!r} resolves outside the local mirror {root}")
    return dst


def s3_filesystem():
    from pyarrow import fs
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    # One attempt per call here: the backoff lives in _retry, so that it is the same for every
    # operation and ends in an error that names the object.
    return fs.S3FileSystem(retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1),
                           connect_timeout=5, request_timeout=60, **kwargs)


def s3_attempts() -> int:
    """Attempts per S3 call: $ECGSSL_S3_RETRIES (read when a call is made, not at import)."""
    try:
        return max(1, int(os.environ.get("ECGSSL_S3_RETRIES") or DEFAULT_S3_ATTEMPTS))
    except ValueError:
        raise EcgsslError("ECGSSL_S3_RETRIES must be a whole number of attempts, got "
                          f"{os.environ['ECGSSL_S3_RETRIES']!r}") from None


def _retry(what: str, fn, *args):
    delay, attempts = 0.5, s3_attempts()
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args)
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as exc:
            if any(f in str(exc) for f in _FATAL) or attempt == attempts:
                raise EcgsslError(f"S3 {what} failed after {attempt} attempt(s): "
                                  f"{redact(str(exc))}") from None
            time.sleep(delay)
            delay *= 2


s3_retry = _retry   # for readers outside this module (the table's streaming readers)


# One S3 filesystem per process, made on first use: a forked child (a loader worker) makes
# its own instead of using its parent's client, which the AWS SDK does not support.
_FS: dict[int, object] = {}


def _process_fs():
    fs = _FS.get(os.getpid())
    if fs is None:
        fs = _FS[os.getpid()] = s3_filesystem()
    return fs


def s3_source(uri: str):
    """A random-access file on the object s3://…, for readers that fetch byte ranges of it
    (Parquet footers and row groups) instead of downloading it."""
    return _process_fs().open_input_file(_split(uri))


def read_object(uri: str) -> str | None:
    """The text of a small object s3://… (a manifest), None when there is no such object."""
    def read():
        with _process_fs().open_input_stream(_split(uri)) as f:
            return f.read().decode()
    try:
        return _retry(f"read of {redact(uri)}", read)
    except FileNotFoundError:
        return None


def _cache_root() -> Path:
    return Path(os.environ.get("ECGSSL_CACHE_DIR") or Path.home() / ".cache" / "ecgssl")


def _listing(fs, path: str) -> dict[str, tuple[int, int]]:
    """{relative key: (size, mtime_ns)} of every object below path ({} if none)."""
    from pyarrow.fs import FileSelector, FileType
    infos = _retry(f"listing of s3://{path}", fs.get_file_info,
                   FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path[len(path) + 1:]: (i.size, int(i.mtime.timestamp() * 1e9) if i.mtime else 0)
            for i in infos if i.type == FileType.File}


def _download(fs, src: str, dst: Path, mtime_ns: int) -> None:
    def copy():
        with atomic_path(dst) as tmp, fs.open_input_stream(src) as fin, open(tmp, "wb") as out:
            shutil.copyfileobj(fin, out, 1 << 20)
    _retry(f"download of s3://{src}", copy)
    if mtime_ns:   # keep the object's time, so stat-based fingerprints are stable across pulls
        os.utime(dst, ns=(mtime_ns, mtime_ns))


def _upload(fs, src: Path, dst: str) -> None:
    def copy():
        with open(src, "rb") as fin, fs.open_output_stream(dst) as out:
            shutil.copyfileobj(fin, out, 1 << 20)
    _retry(f"upload to s3://{dst}", copy)


def _parallel(fn, jobs: list) -> None:
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(fn, *job) for job in jobs]:
            f.result()


def _object_listing(path: str) -> dict[str, tuple[int, int, str]]:
    """{relative key: (size, mtime_ns, ETag)} of every object below bucket/prefix `path`.

    Through boto3 because pyarrow's listing has no ETag, and size + time (one-second
    resolution) cannot tell an object overwritten with one of the same size."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
    bucket, _, prefix = path.partition("/")
    prefix = prefix + "/" if prefix else ""

    def listing():
        try:
            pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix)
            return {o["Key"][len(prefix):]: (o["Size"], int(o["LastModified"].timestamp() * 1e9),
                                             o.get("ETag", "").strip('"'))
                    for page in pages for o in page.get("Contents", [])
                    if not o["Key"].endswith("/")}
        except ClientError as exc:
            raise OSError(f"{exc.response.get('Error', {}).get('Code')}: {exc}") from None
        except BotoCoreError as exc:
            raise OSError(str(exc)) from None
    return _retry(f"listing of s3://{path}", listing)


_MIRROR_RECORD = ".ecgssl-mirror.json"   # {key: ETag} of what a pull fetched
_MIRROR_LOCK = ".ecgssl-mirror.lock"     # one pull into a mirror at a time
# A WFDB record's payloads (samples, annotations), named after the record: what a slice of a
# source on S3 fetches for its own records only (Paths.input_records).
PAYLOAD_SUFFIXES = (".dat", ".mat", ".atr", ".edf")
_OURS = (_SYNC_RECORD, _MIRROR_RECORD, _MIRROR_LOCK, ".ecgssl.lock")


def pull(uri: str, local: Path, exact: bool = False,
         want: Callable[[str], bool] | None = None,
         remote: dict[str, tuple[int, int, str]] | None = None) -> Path:
    """Mirror s3://… (one object or a prefix) into `local`; only new or changed objects
    (by size, time or ETag) are fetched, and of a prefix only the keys `want` accepts. With
    `exact` (inputs), local files the prefix no longer has are removed, so a deleted object is
    never read again. Object keys that would land outside `local` ('..', absolute) are
    refused. `remote`: the prefix's listing (`_object_listing`) when the caller has it, so
    that pulls in parts list a large bucket once. Returns the local path."""
    fs, path = s3_filesystem(), _split(uri)
    if remote is None:
        from pyarrow.fs import FileType
        info = _retry(f"lookup of {redact(uri)}", fs.get_file_info, path)
        if info.type == FileType.File:
            _pull_object(fs, path, local, info)
            return local
        remote = _object_listing(path)
    if not remote:
        raise EcgsslError(f"{redact(uri)}: no such object or prefix")
    local.mkdir(parents=True, exist_ok=True)
    # Pulls into one mirror (two slices of a source on one machine) take turns: each then
    # may remove the temp files a killed pull left, none of which is another's in flight.
    with FileLock(str(local / _MIRROR_LOCK)):
        return _pull_prefix(fs, uri, path, local, exact, want, remote)


def _pull_object(fs, path: str, local: Path, info) -> None:
    """One object: fetched when its size, time or ETag differ from the local copy's. Size
    and time alone (one-second resolution) miss an object overwritten with one of the same
    size within a second (a metadata CSV whose content is a table's key)."""
    mtime = int(info.mtime.timestamp() * 1e9) if info.mtime else 0
    etag = _object_etag(path)
    if not local.is_file() or local.stat().st_size != info.size or \
            (mtime and local.stat().st_mtime_ns != mtime) or _etags(local.parent).get(
                local.name) != etag:
        _download(fs, path, local, mtime)
        _remember_etag(local, etag)


def _etags(folder: Path) -> dict[str, str]:
    """{key: ETag} of the objects pulled into (or pushed from) a folder."""
    try:
        return read_json(folder / _MIRROR_RECORD)
    except (OSError, ValueError):
        return {}


def _remember_etag(local: Path, etag: str) -> None:
    """Record a single object's ETag beside its local copy (keyed by name, as a prefix
    mirror keys its objects)."""
    write_json(local.parent / _MIRROR_RECORD, {**_etags(local.parent), local.name: etag})


def _object_etag(path: str) -> str:
    """The ETag of object bucket/key (pyarrow's file info has none)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
    bucket, _, key = path.partition("/")

    def head():
        try:
            return boto3.client("s3").head_object(Bucket=bucket, Key=key).get(
                "ETag", "").strip('"')
        except ClientError as exc:
            raise OSError(f"{exc.response.get('Error', {}).get('Code')}: {exc}") from None
        except BotoCoreError as exc:
            raise OSError(str(exc)) from None
    return _retry(f"lookup of s3://{path}", head)


def _pull_prefix(fs, uri: str, path: str, local: Path, exact: bool, want,
                 remote: dict[str, tuple[int, int, str]]) -> Path:
    targets = {k: safe_join(local, k, redact(uri)) for k in remote}
    record_file, etags = local / _MIRROR_RECORD, _etags(local)

    def stale(k: str, size: int, m: int, etag: str) -> bool:
        p = targets[k]
        if not p.is_file():
            return True
        st = p.stat()
        return st.st_size != size or bool(m and st.st_mtime_ns != m) or etags.get(k) != etag
    todo = [(fs, f"{path}/{k}", targets[k], m) for k, (size, m, etag) in remote.items()
            if (want is None or want(k)) and stale(k, size, m, etag)]
    _parallel(_download, todo)
    if exact and local.is_dir():
        keep = {os.path.realpath(p) for p in targets.values()}
        for p in list(local.rglob("*")):
            if p.is_file() and p.name not in _OURS and os.path.realpath(p) not in keep:
                p.unlink()          # a deleted object, or a killed pull's temp file
    new = {k: etag for k, (_, _, etag) in remote.items()
           if want is None or want(k) or (k in etags and targets[k].is_file())}
    if new != etags:
        write_json(record_file, new)
    return local


# The files whose presence says a folder is whole: a table's manifest, a checkpoint's state.pt,
# a run's or model's config.json (every reader of an encoder or classifier requires it) and an
# evaluation's or run's metrics.json (what register reads).
COMMIT_FILES = ("_manifest.json", "state.pt", "config.json", "metrics.json")


def push(local: Path, uri: str, last: tuple[str, ...] = COMMIT_FILES) -> int:
    """Upload a staged file or folder to s3://…: changed files only, `last` names after all
    others (the commit points, COMMIT_FILES; an outdated remote copy of one is deleted first,
    so that while new weights upload a reader sees the old folder or none, never new
    config.json beside old weights), and
    remote files that the local folder no longer has are deleted at the end. Returns the
    number of files uploaded."""
    fs, path = s3_filesystem(), _split(uri)
    if local.is_file():
        _upload(fs, local, path)
        # as after a folder's push: the next run's pull finds this very object, fetches nothing
        info = _retry(f"lookup of s3://{path}", fs.get_file_info, path)
        if info.size == local.stat().st_size and info.mtime:
            mtime = int(info.mtime.timestamp() * 1e9)
            os.utime(local, ns=(mtime, mtime))
            _remember_etag(local, _object_etag(path))
        return 1
    record_file = local / _SYNC_RECORD
    record = read_json(record_file) if record_file.is_file() else {}
    files = {p.relative_to(local).as_posix(): p for p in local.rglob("*")
             if p.is_file() and p.name not in _OURS}
    state = {k: [p.stat().st_size, p.stat().st_mtime_ns] for k, p in files.items()}
    remote = _listing(fs, path)
    changed = [k for k in files if k not in remote or record.get(k) != state[k]]
    firsts = [k for k in changed if Path(k).name not in last]
    lasts = [k for k in changed if Path(k).name in last]
    for k in lasts:
        if k in remote:
            _retry(f"delete of s3://{path}/{k}", fs.delete_file, f"{path}/{k}")
    _parallel(_upload, [(fs, files[k], f"{path}/{k}") for k in firsts])
    for k in lasts:
        _upload(fs, files[k], f"{path}/{k}")
    for k in set(remote) - set(files):
        _retry(f"delete of s3://{path}/{k}", fs.delete_file, f"{path}/{k}")
    # The folder now mirrors the bucket: give its files the objects' times and record their
    # ETags, as a pull would, so that the next run's pull (Paths.output) fetches nothing and
    # its push uploads nothing (and never takes the manifest off the bucket meanwhile).
    after = _object_listing(path)
    mirror = {}
    for k, p in files.items():
        size, mtime, etag = after.get(k, (-1, 0, ""))
        if size == p.stat().st_size:
            if mtime:
                os.utime(p, ns=(mtime, mtime))
            mirror[k] = etag
    write_json(local / _MIRROR_RECORD, mirror)
    write_json(record_file, {k: [p.stat().st_size, p.stat().st_mtime_ns]
                             for k, p in files.items()})
    return len(changed)


def drop_sync_records(local: Path) -> None:
    """Forget that `local` mirrors S3 (our bookkeeping files in it), for a folder that is
    shipped on as results (a Model artifact)."""
    for name in (_SYNC_RECORD, _MIRROR_RECORD, _MIRROR_LOCK):
        (local / name).unlink(missing_ok=True)


def remove_prefix(uri: str) -> None:
    """Delete everything under an s3:// prefix (folder markers included)."""
    from pyarrow.fs import FileType
    fs, path = s3_filesystem(), _split(uri)
    if _retry(f"lookup of s3://{path}", fs.get_file_info, path).type == FileType.Directory:
        _retry(f"delete of s3://{path}", fs.delete_dir, path)


def _staging(uri: str, kind: str) -> Path:
    return _cache_root() / kind / _split(uri)


def table_files(table: str | os.PathLike) -> Path:
    """The folder of a table's small side files (manifest, PTB-XL's scp_statements.csv): the
    table itself, or for an s3:// table a local mirror of every object but its Parquet shards,
    which readers stream by row group instead (a streamed evaluation still reads label maps)."""
    if not is_s3(table):
        return Path(table)
    return pull(str(table), _staging(str(table), "s3-in"), exact=True,
                want=lambda k: not k.endswith(".parquet"))


def _named_by_headers(local: Path, records: list[str]) -> set[str]:
    """The files the records' (local) headers name: a header may name a signal file other
    than `<record>.dat`."""
    from wfdb.io.header import parse_header_content, rx_signal
    files = set()
    for rec in records:
        if rec.startswith("/") or ".." in rec.split("/"):
            continue                    # refused when read (check_record_path)
        try:
            text = (local / f"{rec}.hea").read_text(encoding="ascii", errors="ignore")
            lines = parse_header_content(text)[0]
        except (OSError, ValueError):
            continue
        folder = rec.rpartition("/")[0]
        for line in lines[1:]:
            m = rx_signal.match(line)
            if m and m["file_name"]:
                files.add(f"{folder}/{m['file_name']}" if folder else m["file_name"])
    return files


class Paths:
    """Local paths for a stage's arguments, local or s3://. Inputs are pulled at once; outputs
    are staged locally and pushed by `commit()` (the CLI calls it when the stage succeeded)."""

    def __init__(self):
        self.outputs: list[tuple[Path, str]] = []

    def input(self, uri: str | os.PathLike | None) -> Path | None:
        if uri is None or not is_s3(uri):
            return None if uri is None else Path(uri)
        return pull(str(uri), _staging(str(uri), "s3-in"), exact=True)

    def input_records(self, uri: str | os.PathLike
                      ) -> tuple[Path, str | None, Callable[[list[str]], None] | None]:
        """A source folder whose records' payloads are fetched only when asked for (`ingest
        --part`: a slice reads its own records, not the whole source): (local folder, the
        fingerprint a whole copy would have, fetch(record names)). Everything but payloads
        (headers, RECORDS, label tables) comes at once, since planning reads it. A folder is
        itself, with nothing to fetch."""
        if not is_s3(uri):
            return Path(uri), None, None
        uri, local = str(uri), _staging(str(uri), "s3-in")
        remote = _object_listing(_split(uri))
        # one listing for both pulls and the fingerprint: they agree on what the source is
        pull(uri, local, exact=True, want=lambda k: not k.endswith(PAYLOAD_SUFFIXES),
             remote=remote)

        def fetch(records: list[str]) -> None:
            names, files = set(records), _named_by_headers(local, records)
            pull(uri, local, want=lambda k: k.endswith(PAYLOAD_SUFFIXES)
                 and (k.rsplit(".", 1)[0] in names or k in files), remote=remote)
        return local, _fingerprint([(k, size, m) for k, (size, m, _) in remote.items()
                                    if k != _MIRROR_RECORD]), fetch

    def stream(self, uri: str | os.PathLike) -> str | Path:
        """A table that the stage reads row group by row group: an s3:// prefix stays one (its
        readers fetch what they need, no local copy); a folder is a Path."""
        return str(uri) if is_s3(uri) else Path(uri)

    def output(self, uri: str | os.PathLike | None, pull_existing: bool = True,
               file: bool = False) -> Path | None:
        """A local path for the output (a folder, or a `file`); with `pull_existing`, what is
        already there is fetched first, so reruns are no-ops and `--resume` finds its
        checkpoints."""
        if uri is None or not is_s3(uri):
            if uri is not None:
                writable_path(Path(uri), file)
            return None if uri is None else Path(uri)
        local = _staging(str(uri), "s3-out")
        if pull_existing:
            try:
                pull(str(uri), local)
            except EcgsslError as exc:
                if "no such object or prefix" not in str(exc):
                    raise
        self.outputs.append((local, str(uri)))
        return local

    def commit(self) -> None:
        for local, _ in self.outputs:
            self.sync(local)

    def sync(self, local: Path) -> None:
        """Push one staged output now, not only when the stage ends: a pretraining run pushes
        each checkpoint, so a pod (or TrainJob) recreated after a failure resumes from it
        instead of from step 0. A local output is left alone."""
        # Under torchrun only the global rank 0 writes the run (ecgssl.distributed): another
        # rank's staging copy is stale, and pushing it would delete what rank 0 uploaded.
        if int(os.environ.get("RANK", "0")) != 0:
            return
        for staged_at, uri in self.outputs:
            if staged_at == local and local.exists():
                push(local, uri)


def writable_path(path: Path, file: bool) -> None:
    """Refuse a local output path that the filesystem is in the way of, before any work (it
    was a FileExistsError or IsADirectoryError traceback, at the end for file outputs)."""
    if file and path.is_dir():
        raise EcgsslError(f"output {path} is a folder; give a file path")
    for p in ([] if file else [path]) + list(path.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise EcgsslError(f"output {path}: {p} is not a folder; give another "
                                  "path, or move what is there")
            return


@contextmanager
def staged() -> Iterator[Paths]:
    """`with staged() as io: run(io.input(a), io.output(b))`: outputs reach S3 only when the
    block succeeds; a failed stage leaves its partial work in the local staging folder (a
    rerun picks it up) and nothing already in S3 is touched."""
    paths = Paths()
    yield paths
    paths.commit()
